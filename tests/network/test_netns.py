"""Unnamed network namespaces and TAPs, for real: what a new one holds, that entering one moves
only the calling thread, and that the kernel frees it with its last holder.

Links are only ever made inside namespaces the test created: the one standing in for the host
is itself a throwaway (`netns_sandbox`), and a VM's namespace is created from inside it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from framework.sandbox_netns import (
    forwarding_here,
    holders_of,
    links_here,
    namespace_id,
    needs_namespaces,
    run_python,
)
from framework.waiting import WAIT, wait_until
from pyro_mcp.network import netns

pytestmark = needs_namespaces()

TUNGETDEVNETNS = 0x54E3  # the namespace a TAP lives in, as a new fd (Linux 5.2)
VETH, PEER = "probe0", "probe0home"


def veth_into(host_ns: int) -> None:
    """A veth pair from the calling thread's namespace, its peer in `host_ns`."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=VETH, kind="veth", peer={"ifname": PEER, "net_ns_fd": host_ns})


def test_a_new_namespace_holds_only_loopback_and_the_thread_stays_home(
    home_namespace_unchanged: None,
) -> None:
    home = namespace_id()
    ns = netns.create()
    try:
        assert namespace_id() == home
        assert namespace_id(ns) != home
        with netns.entered(ns):
            assert namespace_id() == namespace_id(ns)
            assert list(links_here()) == ["lo"]
            assert links_here()["lo"]["up"] is False
        assert namespace_id() == home
    finally:
        os.close(ns)


def test_two_new_namespaces_are_distinct(home_namespace_unchanged: None) -> None:
    first, second = netns.create(), netns.create()
    try:
        assert namespace_id(first) != namespace_id(second)
    finally:
        os.close(first)
        os.close(second)


def test_entering_moves_only_the_calling_thread(home_namespace_unchanged: None) -> None:
    home = namespace_id()
    asked, answered = threading.Event(), threading.Event()
    seen: list[str] = []

    def other_thread() -> None:
        asked.wait(WAIT)
        seen.append(namespace_id())
        answered.set()

    # Started before the main thread moves: a thread starts in its creator's namespace.
    worker = threading.Thread(target=other_thread, name="ns-observer", daemon=True)
    worker.start()
    with netns.throwaway_namespace() as ns, netns.entered(ns):
        asked.set()
        assert answered.wait(WAIT)
        assert namespace_id() == namespace_id(ns)
    worker.join(WAIT)
    assert seen == [home]
    assert namespace_id() == home


def test_a_process_forked_while_entered_runs_in_that_namespace(
    home_namespace_unchanged: None,
) -> None:
    show = "import os; print(os.readlink('/proc/self/ns/net'))"
    with netns.throwaway_namespace() as ns, netns.entered(ns):
        inside = subprocess.run([sys.executable, "-c", show], capture_output=True, check=True)
        assert inside.stdout.decode().strip() == namespace_id(ns)
    outside = subprocess.run([sys.executable, "-c", show], capture_output=True, check=True)
    assert outside.stdout.decode().strip() == namespace_id()


def test_entered_comes_back_home_when_the_block_raises(home_namespace_unchanged: None) -> None:
    home = namespace_id()
    with (
        pytest.raises(RuntimeError, match="inside"),
        netns.throwaway_namespace() as ns,
        netns.entered(ns),
    ):
        raise RuntimeError("inside")
    assert namespace_id() == home


def test_entering_something_that_is_not_a_namespace_fails_and_stays_home(
    home_namespace_unchanged: None, tmp_path: Path
) -> None:
    home = namespace_id()
    with (
        open(tmp_path / "plain", "w") as plain,
        pytest.raises(OSError),
        netns.entered(plain.fileno()),
    ):
        pytest.fail("entered a regular file")
    assert namespace_id() == home


def test_a_tap_goes_with_its_last_fd(netns_sandbox: int) -> None:
    tap = netns.open_tap("tap0")
    assert "tap0" in links_here()
    os.close(tap)
    wait_until(lambda: "tap0" not in links_here(), "the TAP to go with its fd")


def test_a_persistent_tap_outlives_its_fd(netns_sandbox: int) -> None:
    tap = netns.open_tap("tap0", persist=True)
    index = links_here()["tap0"]["index"]
    os.close(tap)
    # Opening the name again attaches to the same device (same index) if it survived.
    again = netns.open_tap("tap0")
    try:
        assert links_here()["tap0"]["index"] == index
    finally:
        os.close(again)
    assert links_here()["tap0"]["index"] == index


def test_a_tap_is_made_in_the_entered_namespace_only(netns_sandbox: int) -> None:
    inner = netns.create()
    try:
        with netns.entered(inner):
            tap = netns.open_tap("tap0")
            assert "tap0" in links_here()
        try:
            assert "tap0" not in links_here()
        finally:
            os.close(tap)
    finally:
        os.close(inner)


def test_a_tap_name_taken_by_another_kind_of_link_is_refused(netns_sandbox: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname="tap0", kind="veth", peer={"ifname": VETH})
    with pytest.raises(OSError):
        netns.open_tap("tap0")
    # The failed attempt closed its queue fd: only the sandbox's fd and this thread hold it.
    expected = {f"fd {netns_sandbox}", f"thread {threading.get_native_id()}"}
    assert set(holders_of(namespace_id())) == expected


def test_set_forwarding_changes_only_the_calling_threads_namespace(netns_sandbox: int) -> None:
    netns.set_forwarding(False)
    assert forwarding_here() == "0"
    inner = netns.create()
    try:
        with netns.entered(inner):
            netns.set_forwarding(True)
            assert forwarding_here() == "1"
        assert forwarding_here() == "0"
        netns.set_forwarding(True)
        netns.set_forwarding(True)  # already on: nothing to write, nothing fails
        with netns.entered(inner):
            netns.set_forwarding(False)
            assert forwarding_here() == "0"
        assert forwarding_here() == "1"
    finally:
        os.close(inner)


@pytest.mark.parametrize("persist", [False, True])
def test_a_namespace_is_freed_once_its_fd_and_tap_fds_are_closed(
    netns_sandbox: int, persist: bool
) -> None:
    # The sandbox stands in for the host: the VM namespace's veth peer lives there, and the
    # kernel deletes that peer only when it frees the VM namespace.
    vm_ns = netns.create()
    vm_id = namespace_id(vm_ns)
    with netns.entered(vm_ns):
        tap = netns.open_tap("tap0", persist=persist)
        veth_into(netns_sandbox)
    assert PEER in links_here()
    os.close(vm_ns)
    if persist:
        os.close(tap)  # a persistent TAP does not hold its namespace
    else:
        # A TAP's fd holds the namespace it was opened in, as a VMM given the fd does.
        held = fcntl.ioctl(tap, TUNGETDEVNETNS)
        assert namespace_id(held) == vm_id
        os.close(held)
        assert PEER in links_here()
        os.close(tap)
    wait_until(lambda: PEER not in links_here(), "the freed namespace's veth peer to go")
    assert holders_of(vm_id) == []


def test_creating_a_namespace_without_privilege_names_the_fix() -> None:
    # A child that drops root once it has imported pyro: unshare() then fails for real.
    script = (
        "import os, sys\n"
        "from pyro_mcp.errors import HostRequirementError\n"
        "from pyro_mcp.network import netns\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "home = os.readlink('/proc/thread-self/ns/net')\n"
        "try:\n"
        "    netns.create()\n"
        "except HostRequirementError as exc:\n"
        "    assert os.readlink('/proc/thread-self/ns/net') == home\n"
        "    print(exc.message); print(exc.hint)\n"
        "    sys.exit(0)\n"
        "sys.exit('created a namespace without privilege')\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    message, hint = done.stdout.splitlines()
    assert message.startswith("cannot create a network namespace: ")
    assert "root" in hint and "pyro doctor" in hint
