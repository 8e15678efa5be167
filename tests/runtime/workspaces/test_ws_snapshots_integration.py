"""Named snapshots of a whole workspace disk in a real guest (QEMU TCG on this host): a reset
to one brings back a package installed with dpkg -i and a file outside /workspace from
before it, and drops those from after it; the baseline reset keeps the snapshots; names
are checked. `leak_guard` (framework/vm_leaks.py) proves nothing was left. No durations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pyro_mcp.errors import ConflictError, InvalidArgumentError, NotFoundError
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"


def install(pyro: Pyro, wid: str, package: str) -> None:
    """A tiny package built in the guest and installed with dpkg -i, plus a file in /etc."""
    script = (
        f"set -e; d=/tmp/{package}; mkdir -p $d/DEBIAN $d/usr/share/{package}; "
        f"printf 'Package: {package}\\nVersion: 1.0\\nArchitecture: all\\n"
        f"Maintainer: t <t@example.com>\\nDescription: t\\n' > $d/DEBIAN/control; "
        f"echo {package} > $d/usr/share/{package}/data; dpkg-deb --build $d /tmp/{package}.deb "
        f">/dev/null; dpkg -i /tmp/{package}.deb >/dev/null; echo {package} > /etc/{package}; "
        f"echo {package} > /workspace/last.txt"
    )
    done = pyro.exec_workspace(wid, command=script, timeout_seconds=120)
    assert done["exit_code"] == 0, done


def installed(pyro: Pyro, wid: str) -> dict[str, Any]:
    probe = (
        "for p in pyro-before pyro-after; do dpkg -s $p >/dev/null 2>&1 && echo pkg:$p; "
        "test -e /etc/$p && echo etc:$p; done; cat /workspace/last.txt 2>/dev/null || true"
    )
    lines = pyro.exec_workspace(wid, command=probe)["stdout"].split()
    return {"found": [x for x in lines if ":" in x], "last": [x for x in lines if ":" not in x]}


def names(pyro: Pyro, wid: str) -> list[str]:
    return [s["snapshot_name"] for s in pyro.list_snapshots(wid)["snapshots"]]


def test_named_snapshots_capture_and_restore_the_whole_disk(
    vm_pyro: Pyro, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    install(pyro, wid, "pyro-before")
    made = pyro.create_snapshot(wid, "s1")
    snap = made["snapshot"]
    assert (snap["snapshot_name"], snap["kind"], snap["deletable"]) == ("s1", "named", True)
    assert snap["entry_count"] > 0 and snap["bytes_written"] > 0
    install(pyro, wid, "pyro-after")
    pyro.create_snapshot(wid, "s2")
    assert names(pyro, wid) == ["baseline", "s2", "s1"]
    listed = pyro.list_snapshots(wid)["snapshots"][0]
    assert (listed["kind"], listed["deletable"]) == ("baseline", False)

    # names are checked
    with pytest.raises(ConflictError, match="already exists"):
        pyro.create_snapshot(wid, "s1")
    with pytest.raises(InvalidArgumentError, match="reserved"):
        pyro.create_snapshot(wid, "baseline")
    for bad in ("", "../x", "a b", ".hidden", "x" * 65, "pyro.template/"):
        with pytest.raises(InvalidArgumentError, match="invalid"):
            pyro.create_snapshot(wid, bad)
    with pytest.raises(NotFoundError, match="does not exist"):
        pyro.reset_workspace(wid, snapshot="nope")

    both = ["pkg:pyro-before", "etc:pyro-before", "pkg:pyro-after", "etc:pyro-after"]
    before = ["pkg:pyro-before", "etc:pyro-before"]
    commands = pyro.status_workspace(wid)["command_count"]
    reset = pyro.reset_workspace(wid, snapshot="s1")
    assert reset["workspace_reset"]["snapshot_name"] == "s1"
    assert reset["workspace_reset"]["kind"] == "named"
    assert installed(pyro, wid) == {"found": before, "last": ["pyro-before"]}
    assert pyro.status_workspace(wid)["command_count"] == commands + 1  # history kept
    pyro.reset_workspace(wid, snapshot="s2")
    assert installed(pyro, wid) == {"found": both, "last": ["pyro-after"]}

    # the baseline: neither package, and the named snapshots stay
    pyro.reset_workspace(wid)
    assert installed(pyro, wid) == {"found": [], "last": []}
    assert names(pyro, wid) == ["baseline", "s2", "s1"]
    pyro.reset_workspace(wid, snapshot="s1")
    assert installed(pyro, wid)["found"] == before

    # deleting: named ones only, running or stopped
    assert pyro.delete_snapshot(wid, "s2") == {
        "workspace_id": wid, "snapshot_name": "s2", "deleted": True,
    }  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="cannot delete the baseline"):
        pyro.delete_snapshot(wid, "baseline")
    with pytest.raises(NotFoundError, match="does not exist"):
        pyro.delete_snapshot(wid, "s2")
    pyro.stop_workspace(wid)
    pyro.delete_snapshot(wid, "s1")
    assert names(pyro, wid) == ["baseline"]
    pyro.delete_workspace(wid)
