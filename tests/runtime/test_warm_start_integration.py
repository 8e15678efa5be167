"""Warm start against real VMs (QEMU TCG on this host): snapshots, restored VMs, standby VMs.

Every test ends with the leak check of `leak_guard` (see conftest.py). Standby VMs are
started through `launch.spawn_supervisor` like any other, so the guard records their
supervisors and VMMs too, and its teardown deletes their rows (stopping them) before it
proves that nothing is left. The tests that turn the pool on also clear it themselves and
check that.

Warm start is on here whatever PYRO_TEST_WARM_START says: it is what these tests are about.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pyro_mcp.environments.store import write_json_atomic
from pyro_mcp.errors import NotFoundError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.protocol import frames
from pyro_mcp.runtime import backends, launch, snapshots, standby
from pyro_mcp.runtime.snapshots import SnapshotCache, key_digest, snapshot_key
from pyro_mcp.runtime.vm_boot import DISK_FILE
from pyro_mcp.runtime.vms import VmService
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
CLOCK_SLACK_S = 5  # "within a few seconds of the host's clock"
STANDBY_READY_S = 120.0  # a standby VM restores and warms up under TCG within this
CLEANUP_DEADLINE = 15.0
MIB = 1 << 20


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def pyro(vm_pyro: Pyro, monkeypatch: pytest.MonkeyPatch) -> Pyro:
    monkeypatch.delenv("PYRO_WARM_START", raising=False)  # on, whatever the test knob says
    return vm_pyro


@pytest.fixture
def templates(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keys of the template VMs booted (the real make_template, counted)."""
    made: list[dict[str, Any]] = []
    real = snapshots.make_template

    def counting(key: dict[str, Any], *args: Any) -> Any:
        made.append(key)
        return real(key, *args)

    monkeypatch.setattr(snapshots, "make_template", counting)
    return made


@pytest.fixture
def standby_on(pyro: Pyro, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pyro]:
    monkeypatch.setenv(standby.STANDBY_ENV, "1")
    yield pyro
    with contextlib.suppress(Exception):  # the leak guard reports what this could not stop
        pyro.vms.clear_standby()


def key_for(svc: VmService, mem_mib: int = 1024, disk_mib: int = 0) -> dict[str, Any]:
    installed = svc.envs.ensure(ENV)
    return snapshot_key(installed, backends.choose(installed), 1, mem_mib, disk_mib)


def manifest_of(svc: VmService, key: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(svc.snapshots.manifest_path(key_digest(key)).read_text())
    return data


def start(svc: VmService, **create: Any) -> str:
    vm_id: str = svc.create_vm(environment=ENV, **create)["vm_id"]
    svc.start_vm(vm_id)
    return vm_id


def sh(svc: VmService, vm_id: str, command: str) -> str:
    _, result, _ = svc.exec_in(vm_id, command, timeout_seconds=60)
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return result.stdout


def boot_mode(svc: VmService, vm_id: str) -> tuple[str, str]:
    meta = svc.status_vm(vm_id)["metadata"]
    return meta["boot_mode"], meta["boot_note"]


def guest_clock_is_the_hosts(run: Callable[[], str]) -> None:
    before = time.time()
    guest = int(run().strip())
    after = time.time()
    assert before - CLOCK_SLACK_S <= guest <= after + CLOCK_SLACK_S, (before, guest, after)


def standby_rows(svc: VmService, *states: str) -> list[dict[str, Any]]:
    wanted = states or standby.STANDBY_STATES
    return [row for row in svc.store.list_vms() if row["state"] in wanted]


def wait_for_standby(
    svc: VmService, guard: LeakGuard, *, exclude: Collection[str] = ()
) -> dict[str, Any]:
    """The next standby VM that is ready to be claimed."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [r for r in standby_rows(svc, "standby") if r["vm_id"] not in exclude]
        return bool(found)

    guard.wait_until(ready, "a standby VM to be ready", STANDBY_READY_S)
    return found[0]


def supervisor_ref(row: dict[str, Any]) -> ProcessRef:
    return ProcessRef(int(row["supervisor_pid"]), int(row["supervisor_start"]))


def mark_standby(row: dict[str, Any], text: str) -> None:
    """Leave a file in a standby VM's guest, to recognise the VM once it is claimed."""
    with launch.connect(Path(row["vm_dir"])) as client:
        result = client.exec(None, f"echo {text} > /tmp/standby-mark", timeout=30)
    assert result.exit_code == 0, result.stderr


def gone(svc: VmService, guard: LeakGuard, row: dict[str, Any], what: str) -> None:
    """Wait until a VM's row, supervisor, VMM and files are all gone."""
    sup = supervisor_ref(row)
    vm_dir = Path(row["vm_dir"])
    guard.scan()
    vmms = [ref for ref in guard.vmms.values() if ref.alive() and _cwd(ref.pid) == vm_dir]

    def all_gone() -> bool:
        launch.reap_children()
        return (
            svc.store.get_vm(row["vm_id"]) is None
            and not sup.alive()
            and not any(ref.alive() for ref in vmms)
            and not vm_dir.exists()
        )

    guard.wait_until(all_gone, what, CLEANUP_DEADLINE)


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def holds(path: Path, needle: bytes) -> bool:
    """Whether `needle` is in the file's data (its holes are not read)."""
    with path.open("rb") as handle:
        fd, size, offset = handle.fileno(), os.fstat(handle.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # only a hole is left
                return False
            end = os.lseek(fd, start, os.SEEK_HOLE)
            handle.seek(start)
            tail = b""
            while handle.tell() < end:
                chunk = tail + handle.read(min(MIB, end - handle.tell()))
                if needle in chunk:
                    return True
                tail = chunk[-len(needle) :]
            offset = end
    return False


def vmm_maps(guard: LeakGuard, svc: VmService, vm_id: str) -> list[str]:
    row = svc.store.get_vm(vm_id)
    assert row is not None
    vmm = guard.vmm_of(guard.add_supervisor_of(row))
    return Path(f"/proc/{vmm.pid}/maps").read_text().splitlines()


# --- 1. restored VMs are unique ------------------------------------------------------------------

PROBE = (
    "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; "
    "cat /proc/sys/kernel/random/boot_id /etc/machine-id; date +%s"
)


def test_two_vms_restored_from_one_snapshot_are_unique(
    pyro: Pyro, templates: list[dict[str, Any]]
) -> None:
    svc = pyro.vms
    first = start(svc)  # makes the snapshot unless the cache has it
    made = len(templates)
    manifest = manifest_of(svc, key_for(svc))
    second = start(svc)
    assert len(templates) == made  # the second came from the same snapshot
    assert manifest_of(svc, key_for(svc)) == manifest
    outputs = {}
    for vm_id in (first, second):
        assert boot_mode(svc, vm_id) == ("restored", "")
        before = time.time()
        lines = sh(svc, vm_id, PROBE).splitlines()
        after = time.time()
        assert len(lines) == 5, lines
        random, hostname, boot_id, machine_id, clock = lines
        assert re.fullmatch("[0-9a-f]{64}", random), random
        assert hostname == f"pyro-{vm_id[:8]}"
        assert re.fullmatch("[0-9a-f-]{36}", boot_id) and re.fullmatch("[0-9a-f]{32}", machine_id)
        assert before - CLOCK_SLACK_S <= int(clock) <= after + CLOCK_SLACK_S, (before, clock)
        outputs[vm_id] = lines
    a, b = outputs[first], outputs[second]
    assert a[0] != b[0], "two restored VMs read the same bytes from /dev/urandom"
    assert a[1] != b[1], "same hostname"
    assert a[2] != b[2], "same boot_id"
    assert a[3] != b[3], "same machine-id"
    # The template's own identity is gone from both.
    for lines in (a, b):
        assert lines[1] != "pyro-template"
    # A second read in the same VM differs too: the pool keeps running after the reseed.
    assert sh(svc, first, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'") != a[0]
    for vm_id in (first, second):
        svc.delete_vm(vm_id)


# --- 2. the snapshot cache -----------------------------------------------------------------------


def test_the_snapshot_is_made_once_reused_verified_and_rebuilt(
    pyro: Pyro, templates: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of its own: this test corrupts snapshots and must start without one.
    svc = VmService(pyro.environments, pyro.vms.store, SnapshotCache(tmp_path / "snapshots"))
    key = key_for(svc)
    path = svc.snapshots.manifest_path(key_digest(key))
    assert not path.exists()

    # First start: a template boots, is snapshotted, and the VM is restored from it.
    vm_id = start(svc)
    assert len(templates) == 1 and templates[0] == key
    assert boot_mode(svc, vm_id) == ("restored", "")
    first = manifest_of(svc, key)
    assert first["key"] == key
    assert path.parent == tmp_path / "snapshots" / key_digest(key)
    assert first["memory"]["size"] == 1024 * MIB
    assert 0 < first["state"]["size"] < MIB  # device state only: RAM stays in its own file
    for part in ("memory", "state"):
        assert re.fullmatch("[0-9a-f]{64}", first[part]["sha256"])
        blob = svc.snapshots.blobs.path(first[part]["sha256"])
        assert blob.stat().st_size == first[part]["size"]
        assert blob.stat().st_mode & 0o777 == 0o444
    assert first["disk"] is None
    assert sh(svc, vm_id, "echo first") == "first\n"
    svc.delete_vm(vm_id)
    stat_before = path.stat()

    # Second start: the same snapshot, no template.
    vm_id = start(svc)
    assert len(templates) == 1
    assert boot_mode(svc, vm_id) == ("restored", "")
    assert path.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert path.stat().st_ino == stat_before.st_ino
    assert manifest_of(svc, key) == first
    svc.delete_vm(vm_id)

    # A flipped byte in guest RAM: the next start discards the snapshot and makes a new one.
    memory = svc.snapshots.blobs.path(first["memory"]["sha256"])
    os.chmod(memory, 0o644)
    with memory.open("r+b") as handle:
        offset = os.lseek(handle.fileno(), 0, os.SEEK_DATA) + 1000
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))
    vm_id = start(svc)
    assert len(templates) == 2
    rebuilt = manifest_of(svc, key)
    assert rebuilt["created_at"] >= first["created_at"]
    assert rebuilt["memory"]["sha256"] != first["memory"]["sha256"]
    assert boot_mode(svc, vm_id) == ("restored", "")
    assert sh(svc, vm_id, "echo rebuilt") == "rebuilt\n"
    svc.delete_vm(vm_id)

    # Another key (a new agent version): another snapshot; the old one stays as it is.
    with monkeypatch.context() as patch:
        patch.setattr(frames, "AGENT_VERSION", frames.AGENT_VERSION + "+test")
        other_key = key_for(svc)
        assert key_digest(other_key) != key_digest(key)
        vm_id = start(svc)
        assert len(templates) == 3 and templates[2] == other_key
        assert manifest_of(svc, other_key)["key"] == other_key
        assert boot_mode(svc, vm_id) == ("restored", "")
        svc.delete_vm(vm_id)
    assert manifest_of(svc, key) == rebuilt
    # ... and a changed size is another key as well.
    assert key_digest(key_for(svc, mem_mib=2048)) != key_digest(key)

    # A state file of junk whose digest matches its manifest: it verifies, QEMU cannot load
    # it, and the supervisor cold boots instead, saying why.
    junk = tmp_path / "junk.state"
    junk.write_bytes(os.urandom(rebuilt["state"]["size"]))
    digest, size = svc.snapshots.blobs.add(junk)
    write_json_atomic(path, {**rebuilt, "state": {"sha256": digest, "size": size}})
    assert svc.snapshots.lookup(key) is not None
    vm_id = start(svc)
    assert len(templates) == 3
    mode, note = boot_mode(svc, vm_id)
    assert mode == "cold"
    assert note.startswith("restore failed, cold boot instead"), note
    assert sh(svc, vm_id, "hostname") == f"pyro-{vm_id[:8]}\n"
    guest_clock_is_the_hosts(lambda: sh(svc, vm_id, "date +%s"))
    svc.delete_vm(vm_id)


# --- 3. warm start off ---------------------------------------------------------------------------


def test_warm_start_off_cold_boots_and_says_so(
    pyro: Pyro, templates: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRO_WARM_START", "0")
    monkeypatch.setenv(standby.STANDBY_ENV, "1")  # no snapshot: no standby VM either
    svc = pyro.vms
    vm_id = start(svc)
    assert boot_mode(svc, vm_id) == ("cold", "warm start is off (PYRO_WARM_START=0)")
    assert templates == []
    assert standby_rows(svc) == []
    assert sh(svc, vm_id, "hostname") == f"pyro-{vm_id[:8]}\n"
    svc.delete_vm(vm_id)


# --- 6. restore does not depend on the guest's RAM size ------------------------------------------


@pytest.mark.parametrize("mem_mib", [256, 2048])
def test_small_and_large_guests_restore_with_ram_mapped_from_the_snapshot(
    pyro: Pyro, leak_guard: LeakGuard, mem_mib: int
) -> None:
    svc = pyro.vms
    vm_id = start(svc, mem_mib=mem_mib)
    assert boot_mode(svc, vm_id) == ("restored", "")
    manifest = manifest_of(svc, key_for(svc, mem_mib))
    assert manifest["memory"]["size"] == mem_mib * MIB
    assert 0 < manifest["state"]["size"] < MIB  # the same few kilobytes whatever the RAM
    total_kib = int(sh(svc, vm_id, "awk '/^MemTotal/ {print $2}' /proc/meminfo"))
    assert mem_mib * 1024 * 0.75 < total_kib <= mem_mib * 1024
    assert sh(svc, vm_id, "echo $((6 * 7))") == "42\n"
    # Guest RAM is the snapshot's file, mapped privately (copy-on-write), whole.
    blob = os.path.realpath(svc.snapshots.blobs.path(manifest["memory"]["sha256"]))
    mapped = [m.split() for m in vmm_maps(leak_guard, svc, vm_id) if m.endswith(" " + blob)]
    assert mapped, f"{blob} is not mapped by the VMM"
    for fields in mapped:
        assert fields[1].endswith("p"), f"a shared mapping of the snapshot: {fields}"
    spans = [int(end, 16) - int(begin, 16) for begin, end in (f[0].split("-") for f in mapped)]
    assert sum(spans) == mem_mib * MIB
    svc.delete_vm(vm_id)


# --- 5. VMs with a writable disk -----------------------------------------------------------------

DISK_MIB = 1024


def test_disk_vms_get_a_sparse_copy_of_the_snapshots_disk_and_keep_apart(pyro: Pyro) -> None:
    svc = pyro.vms
    ids = [start(svc, _disk_mib=DISK_MIB) for _ in range(2)]
    key = key_for(svc, disk_mib=DISK_MIB)
    manifest = manifest_of(svc, key)
    assert manifest["disk"] is not None and manifest["disk"]["size"] == DISK_MIB * MIB
    snapshot_disk = svc.snapshots.blobs.path(manifest["disk"]["sha256"])
    disks = {}
    for vm_id in ids:
        assert boot_mode(svc, vm_id) == ("restored", "")
        disk = Path(svc.store.vm_dir(vm_id)) / DISK_FILE
        st = disk.stat()
        assert st.st_size == DISK_MIB * MIB == snapshot_disk.stat().st_size
        assert st.st_blocks * 512 * 16 < st.st_size, "the VM's disk is not sparse"
        assert st.st_ino != snapshot_disk.stat().st_ino
        mounts = sh(svc, vm_id, "grep ' /workspace ' /proc/mounts").split()
        assert mounts[:3] == ["/dev/vdb", "/workspace", "ext4"], mounts
        assert int(sh(svc, vm_id, "cat /sys/block/vdb/size")) * 512 == DISK_MIB * MIB
        disks[vm_id] = disk
    a, b = ids

    assert sh(svc, a, "echo from-a > /workspace/a.txt && sync && cat /workspace/a.txt") == (
        "from-a\n"
    )
    assert sh(svc, b, "ls -A /workspace") == ""
    assert sh(svc, b, "echo from-b > /workspace/b.txt && sync && ls -A /workspace") == "b.txt\n"
    assert sh(svc, a, "ls -A /workspace") == "a.txt\n"

    # What a VM writes lands in its own disk file, not in the other's nor the snapshot's.
    token = f"written-by-{a}-{os.urandom(8).hex()}"
    sh(svc, a, f"for i in $(seq 200); do echo {token}; done > /workspace/token && sync")
    assert holds(disks[a], token.encode())
    assert not holds(disks[b], token.encode())
    assert not holds(snapshot_disk, token.encode())
    assert svc.snapshots.lookup(key) is not None  # the snapshot's disk still verifies
    for vm_id in ids:
        svc.delete_vm(vm_id)
        assert not disks[vm_id].exists()


# --- 4. standby VMs ------------------------------------------------------------------------------


def test_a_standby_vm_is_claimed_by_the_next_start_and_replaced(
    standby_on: Pyro, leak_guard: LeakGuard
) -> None:
    svc = standby_on.vms
    first = start(svc)
    assert boot_mode(svc, first) == ("restored", "")  # the pool was empty
    ready = wait_for_standby(svc, leak_guard)
    assert ready["boot_mode"] == "restored"
    assert ready["vm_id"] not in {vm["vm_id"] for vm in svc.list_vms()}  # not a user's VM
    mark_standby(ready, "one")

    # The next VM of this kind is the standby VM, under the new VM's name.
    second = start(svc)
    assert boot_mode(svc, second) == ("standby", "")
    assert svc.store.get_vm(ready["vm_id"]) is None
    row = svc.store.get_vm(second)
    assert row is not None and row["state"] == "started"
    assert supervisor_ref(row) == supervisor_ref(ready)
    assert row["vm_dir"] == ready["vm_dir"]
    mark, hostname = sh(svc, second, "cat /tmp/standby-mark; hostname").split()
    assert (mark, hostname) == ("one", f"pyro-{second[:8]}")
    guest_clock_is_the_hosts(lambda: sh(svc, second, "date +%s"))
    # It answers to its new name: status, exec and stop all reach it.
    assert svc.status_vm(second)["state"] == "started"

    # A replacement was started in the background.
    replacements = [r for r in standby_rows(svc) if r["vm_id"] != ready["vm_id"]]
    assert len(replacements) == 1
    assert replacements[0]["state"] in ("standby-booting", "standby")
    replacement = wait_for_standby(svc, leak_guard, exclude={ready["vm_id"]})
    assert replacement["vm_id"] == replacements[0]["vm_id"]
    mark_standby(replacement, "two")

    # A one-shot run claims one too (and the VM goes afterwards, as ever).
    result = standby_on.run_in_vm(environment=ENV, command="cat /tmp/standby-mark; hostname")
    assert result["exit_code"] == 0, result["stderr"]
    assert result["stdout"] == f"two\npyro-{result['vm_id'][:8]}\n"
    with pytest.raises(NotFoundError):
        svc.status_vm(result["vm_id"])
    gone(svc, leak_guard, replacement, "the claimed one-shot VM to go")

    # The VMs users own are untouched by all this; the pool is cleared on demand.
    for vm_id in (first, second):
        assert svc.status_vm(vm_id)["state"] == "started"
    pool = standby_rows(svc)
    assert len(pool) == 1  # the replacement of the one-shot run's standby
    cleared = svc.clear_standby()
    assert cleared == {"stopped_vm_ids": [pool[0]["vm_id"]], "count": 1}
    assert standby_rows(svc) == []
    gone(svc, leak_guard, pool[0], "the cleared standby VM to go")
    for vm_id in (first, second):
        assert sh(svc, vm_id, "echo alive") == "alive\n"
        svc.delete_vm(vm_id)


def test_clear_standby_stops_every_standby_vm(standby_on: Pyro, leak_guard: LeakGuard) -> None:
    svc = standby_on.vms
    users = [start(svc), start(svc, mem_mib=256)]  # two kinds: two standby VMs
    pool = {wait_for_standby(svc, leak_guard)["vm_id"]}
    pool.add(wait_for_standby(svc, leak_guard, exclude=pool)["vm_id"])
    rows = standby_rows(svc)
    assert {r["vm_id"] for r in rows} == pool
    assert {r["mem_mib"] for r in rows} == {1024, 256}
    cleared = svc.clear_standby()
    assert cleared["count"] == 2 and set(cleared["stopped_vm_ids"]) == pool
    for row in rows:
        gone(svc, leak_guard, row, f"standby VM {row['vm_id']} to go")
    assert svc.clear_standby() == {"stopped_vm_ids": [], "count": 0}
    for vm_id in users:
        assert sh(svc, vm_id, "echo alive") == "alive\n"
        svc.delete_vm(vm_id)


def test_an_unclaimed_standby_vm_ends_by_itself_when_idle(
    standby_on: Pyro, leak_guard: LeakGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(standby.IDLE_ENV, "10")
    svc = standby_on.vms
    user = start(svc)
    (row,) = standby_rows(svc)
    assert row["expires_at"] - row["created_at"] == pytest.approx(10)
    leak_guard.add_supervisor_of(row)
    with contextlib.suppress(pytest.fail.Exception):  # it may end before its VMM is seen
        leak_guard.vmm_of(supervisor_ref(row))
    limit = max(0.0, row["expires_at"] - time.time()) + STANDBY_READY_S
    store_row = svc.store.get_vm
    leak_guard.wait_until(
        lambda: store_row(row["vm_id"]) is None and not supervisor_ref(row).alive(),
        "the idle standby VM to end",
        limit,
    )
    gone(svc, leak_guard, row, "the idle standby VM's processes and files to go")
    assert time.time() >= row["expires_at"]  # not before its time
    assert svc.status_vm(user)["state"] == "started"
    svc.delete_vm(user)


def test_with_the_pool_off_no_standby_vm_is_ever_started(pyro: Pyro, leak_guard: LeakGuard) -> None:
    assert not standby.enabled()  # the test isolation's default
    svc = pyro.vms
    vm_id = start(svc)
    assert boot_mode(svc, vm_id) == ("restored", "")
    result = pyro.run_in_vm(environment=ENV, command="true")
    assert result["exit_code"] == 0
    assert standby_rows(svc) == []
    # Exactly one supervisor per VM was started: the VM's and the one-shot run's.
    assert len(leak_guard.supervisors) == 2
    svc.delete_vm(vm_id)
