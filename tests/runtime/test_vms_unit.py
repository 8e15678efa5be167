"""The VM service's checks and records without booting anything, and `pyro run`'s parsing.

Nothing here starts a VMM: every VM stays `created` (or is a hand-made record).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import paths
from pyro_mcp.cli import main as cli_main
from pyro_mcp.cli.run import as_command, split_command
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime.vms import LIMITS, check_range, command_parts
from pyro_mcp.sdk import Pyro

# --- check_range ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_check_range_accepts_both_ends(name: str) -> None:
    low, high = LIMITS[name]
    assert check_range(name, low) == low
    assert check_range(name, high) == high


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vcpu_count", 0),
        ("vcpu_count", 9),
        ("mem_mib", 100),
        ("mem_mib", 40000),
        ("ttl_seconds", 10),
        ("ttl_seconds", 86401),
        ("timeout_seconds", 0),
        ("timeout_seconds", -1),
        ("vcpu_count", True),  # a bool is not a count
        ("vcpu_count", "2"),
        ("mem_mib", None),
        ("timeout_seconds", float("nan")),
    ],
)
def test_check_range_names_the_field_and_its_range(name: str, value: Any) -> None:
    low, high = LIMITS[name]
    with pytest.raises(InvalidArgumentError) as caught:
        check_range(name, value)
    assert f"{name} must be between {low} and {high}" in str(caught.value)
    assert caught.value.hint is not None and name in caught.value.hint


# --- commands ------------------------------------------------------------------------------


def test_a_string_command_is_shell_text() -> None:
    assert command_parts("echo hi && exit 3") == (None, "echo hi && exit 3", "echo hi && exit 3")


def test_an_argv_command_is_kept_exactly_and_shown_quoted() -> None:
    argv = ["sh", "-c", 'printf "%s|" "$@"', "x", "a b", "it's", '"q"', ""]
    got_argv, shell, text = command_parts(tuple(argv))
    assert got_argv == argv and shell is None
    assert text == "sh -c 'printf \"%s|\" \"$@\"' x 'a b' 'it'\"'\"'s' '\"q\"' ''"


@pytest.mark.parametrize("command", ["", "   \n", [], ["ls", 3], [None]])
def test_empty_or_non_string_commands_are_refused(command: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="command"):
        command_parts(command)


def test_split_command_cuts_at_the_first_double_dash_only() -> None:
    assert split_command(["run", "debian:12"]) == (["run", "debian:12"], None)
    assert split_command(["run", "e", "--json", "--", "sh", "--", "-c"]) == (
        ["run", "e", "--json"],
        ["sh", "--", "-c"],
    )
    assert split_command(["run", "e", "--"]) == (["run", "e"], [])


def test_as_command_treats_one_word_with_spaces_as_a_shell_line() -> None:
    assert as_command(["echo hi | wc -c"]) == "echo hi | wc -c"
    assert as_command(["true"]) == ["true"]
    assert as_command(["echo", "a b"]) == ["echo", "a b"]
    assert as_command(["tab\there"]) == "tab\there"


# --- `pyro run` parsing (no VM: these fail before one would start) ----------------------------


def test_run_options_go_before_or_after_the_environment() -> None:
    parser = cli_main.build_parser()
    for words in (
        ["run", "--timeout-seconds", "5", "--json", "debian:12"],
        ["run", "debian:12", "--timeout-seconds", "5", "--json"],
        ["run", "--json", "debian:12", "--timeout-seconds", "5"],
    ):
        args = parser.parse_args(words)
        assert (args.environment, args.timeout_seconds, args.json) == ("debian:12", 5, True)


def test_run_without_a_command_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["run", "debian:12"]) == 1
    err = capsys.readouterr().err
    assert "no command given" in err and "--" in err


def test_a_command_after_double_dash_only_goes_with_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main.main(["doctor", "--", "true"]) == 2
    assert "only goes with `pyro run`" in capsys.readouterr().err


def test_run_rejects_out_of_range_options_before_any_vm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main.main(["run", "debian:12", "--vcpu-count", "9", "--", "true"]) == 1
    assert "vcpu_count must be between 1 and 8" in capsys.readouterr().err
    assert cli_main.main(["run", "nosuch:1", "--json", "--", "true"]) == 1
    out = capsys.readouterr().out
    assert '"not_found"' in out and "nosuch:1" in out


# --- the VM service, without booting ---------------------------------------------------------


@pytest.fixture
def pyro() -> Pyro:
    return Pyro()  # cache and state in this test's own directories


def rows(pyro: Pyro) -> list[dict[str, Any]]:
    return pyro.vms.store.list_vms()


@pytest.mark.parametrize(
    ("field", "value", "bounds"),
    [
        ("vcpu_count", 0, "1 and 8"),
        ("vcpu_count", 9, "1 and 8"),
        ("mem_mib", 100, "256 and 32768"),
        ("mem_mib", 40000, "256 and 32768"),
        ("ttl_seconds", 10, "60 and 86400"),
    ],
)
def test_create_vm_refuses_out_of_range_resources(
    pyro: Pyro, field: str, value: int, bounds: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"{field} must be between {bounds}"):
        pyro.create_vm(environment="debian:12", **{field: value})
    with pytest.raises(InvalidArgumentError, match=f"{field} must be between {bounds}"):
        pyro.run_in_vm(environment="debian:12", command="true", **{field: value})
    assert rows(pyro) == []


def test_run_and_exec_refuse_a_zero_timeout_before_creating_anything(pyro: Pyro) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout_seconds must be between 1 and"):
        pyro.run_in_vm(environment="debian:12", command="true", timeout_seconds=0)
    with pytest.raises(InvalidArgumentError, match="command is empty"):
        pyro.run_in_vm(environment="debian:12", command=" ")
    assert rows(pyro) == []


def test_networking_is_refused_with_a_hint(pyro: Pyro) -> None:
    with pytest.raises(InvalidArgumentError, match="networking") as caught:
        pyro.create_vm(environment="debian:12", network=True)
    assert caught.value.hint is not None and "network=False" in caught.value.hint
    assert rows(pyro) == []


def test_an_unknown_environment_lists_the_known_ones(pyro: Pyro) -> None:
    with pytest.raises(NotFoundError, match="unknown environment 'debian:99'") as caught:
        pyro.create_vm(environment="debian:99")
    assert caught.value.hint is not None and "debian:12" in caught.value.hint
    with pytest.raises(NotFoundError, match="unknown environment"):
        pyro.run_in_vm(environment="debian:99", command="true")
    assert rows(pyro) == []


def test_an_unknown_vm_id_is_not_found_everywhere(pyro: Pyro) -> None:
    calls = {
        "start_vm": lambda: pyro.start_vm("nosuchvm"),
        "status_vm": lambda: pyro.status_vm("nosuchvm"),
        "exec_vm": lambda: pyro.exec_vm("nosuchvm", command="true"),
        "stop_vm": lambda: pyro.stop_vm("nosuchvm"),
        "delete_vm": lambda: pyro.delete_vm("nosuchvm"),
        "network_info_vm": lambda: pyro.network_info_vm("nosuchvm"),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError, match="VM 'nosuchvm' does not exist"):
            call()
        assert name  # (keeps the failing call's name in the traceback)


def test_create_vm_records_a_created_vm_with_the_contract_keys(pyro: Pyro) -> None:
    before = time.time()
    vm = pyro.create_vm(environment="debian:12", vcpu_count=2, mem_mib=512, ttl_seconds=120)
    assert set(vm) >= {
        "vm_id", "environment", "environment_version", "vcpu_count", "mem_mib", "ttl_seconds",
        "created_at", "expires_at", "state", "network_enabled", "allow_host_compat",
        "guest_ip", "tap_name", "execution_mode", "metadata",
    }  # fmt: skip
    assert (vm["state"], vm["environment"], vm["vcpu_count"], vm["mem_mib"]) == (
        "created",
        "debian:12",
        2,
        512,
    )
    assert vm["network_enabled"] is False and vm["allow_host_compat"] is False
    assert vm["created_at"] >= before
    assert vm["expires_at"] == pytest.approx(vm["created_at"] + 120)
    assert pyro.status_vm(vm["vm_id"]) == vm
    info = pyro.network_info_vm(vm["vm_id"])
    assert (info["network_enabled"], info["outbound_connectivity_expected"]) == (False, False)
    assert "network" in info["reason"]


def test_exec_on_a_vm_that_is_not_started_is_refused_and_keeps_the_vm(pyro: Pyro) -> None:
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    with pytest.raises(WrongStateError, match=f"VM {vm_id} is created") as caught:
        pyro.exec_vm(vm_id, command="true")
    assert caught.value.hint is not None and "start_vm" in caught.value.hint
    with pytest.raises(InvalidArgumentError, match="timeout_seconds"):
        pyro.exec_vm(vm_id, command="true", timeout_seconds=0)
    assert pyro.status_vm(vm_id)["state"] == "created"  # a refused request deletes nothing


def test_stop_and_delete_a_vm_that_never_started(pyro: Pyro) -> None:
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    stopped = pyro.stop_vm(vm_id)
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "stopped: stop_vm")
    with pytest.raises(WrongStateError, match="is stopped"):
        pyro.exec_vm(vm_id, command="true")
    assert pyro.delete_vm(vm_id) == {"vm_id": vm_id, "deleted": True, "reason": "explicit_delete"}
    with pytest.raises(NotFoundError):
        pyro.status_vm(vm_id)
    with pytest.raises(NotFoundError):
        pyro.delete_vm(vm_id)


def test_an_expired_vm_cannot_start_and_is_reaped(pyro: Pyro) -> None:
    old = pyro.create_vm(environment="debian:12")["vm_id"]
    fresh = pyro.create_vm(environment="debian:12")["vm_id"]
    assert pyro.reap_expired() == {"deleted_vm_ids": [], "count": 0}
    pyro.vms.store.update_vm(old, expires_at=time.time() - 1)
    with pytest.raises(WrongStateError, match="expired"):
        pyro.start_vm(old)
    assert pyro.reap_expired() == {"deleted_vm_ids": [old], "count": 1}
    assert [row["vm_id"] for row in rows(pyro)] == [fresh]


def test_a_started_vm_whose_supervisor_is_gone_reads_as_stopped_and_loses_its_files(
    pyro: Pyro,
) -> None:
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    dead = subprocess.Popen(["true"])
    ref = ProcessRef.of(dead.pid)
    dead.wait()
    assert ref is not None and not ref.alive()
    vm_dir = Path(pyro.vms.store.vm_dir(vm_id))
    paths.ensure_private_dir(vm_dir)
    (vm_dir / "console.log").write_text("left behind")
    pyro.vms.store.update_vm(
        vm_id, state="started", supervisor_pid=ref.pid, supervisor_start=ref.start
    )
    vm = pyro.status_vm(vm_id)
    assert vm["state"] == "stopped"
    assert vm["stop_reason"].startswith("supervisor_died")
    assert not vm_dir.exists()
    row = pyro.vms.store.get_vm(vm_id)
    assert row is not None and (row["state"], row["supervisor_pid"]) == ("stopped", None)
    with pytest.raises(WrongStateError, match="supervisor_died"):
        pyro.exec_vm(vm_id, command="true")
    pyro.delete_vm(vm_id)
