"""The public surface keeps pyro-mcp 3.11's names and signatures (contract §0 and §2).

Code written against 3.11 must run unchanged: each contract method exists with the same
parameters, in the same order, of the same kind, with the same defaults. Extra parameters
are allowed only keyword-only with a default, so no old call can break. A method of a feature
still to come is listed in PENDING with the issue that brings it; the test fails both when a
method disappears and when a pending one lands without moving here.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest

import pyro_mcp
from pyro_mcp import errors

# §2.1, verbatim but for `self`: 47 methods.
CONTRACT = {
    "list_environments": "",
    "inspect_environment": "environment",
    "pull_environment": "environment",
    "prune_environments": "",
    "run_in_vm": "*, environment, command, vcpu_count=1, mem_mib=1024, timeout_seconds=30, "
    "ttl_seconds=600, network=False, allow_host_compat=False",
    "create_vm": "*, environment, vcpu_count=1, mem_mib=1024, ttl_seconds=600, network=False, "
    "allow_host_compat=False",
    "start_vm": "vm_id",
    "exec_vm": "vm_id, *, command, timeout_seconds=30",
    "stop_vm": "vm_id",
    "status_vm": "vm_id",
    "delete_vm": "vm_id",
    "network_info_vm": "vm_id",
    "reap_expired": "",
    "create_workspace": "*, environment, vcpu_count=1, mem_mib=1024, ttl_seconds=600, "
    "network_policy='off', allow_host_compat=False, seed_path=None, secrets=None, name=None, "
    "labels=None",
    "list_workspaces": "",
    "update_workspace": "workspace_id, *, name=None, clear_name=False, labels=None, "
    "clear_labels=None",
    "status_workspace": "workspace_id",
    "stop_workspace": "workspace_id",
    "start_workspace": "workspace_id",
    "delete_workspace": "workspace_id",
    "exec_workspace": "workspace_id, *, command, timeout_seconds=30, secret_env=None",
    "logs_workspace": "workspace_id",
    "push_workspace_sync": "workspace_id, source_path, *, dest='/workspace'",
    "export_workspace": "workspace_id, path, *, output_path",
    "diff_workspace": "workspace_id",
    "list_workspace_files": "workspace_id, *, path='/workspace', recursive=False",
    "read_workspace_file": "workspace_id, path, *, max_bytes=65536",
    "write_workspace_file": "workspace_id, path, *, text",
    "apply_workspace_patch": "workspace_id, *, patch",
    "export_workspace_disk": "workspace_id, *, output_path",
    "list_workspace_disk": "workspace_id, *, path='/workspace', recursive=False",
    "read_workspace_disk": "workspace_id, path, *, max_bytes=65536",
    "create_snapshot": "workspace_id, snapshot_name",
    "list_snapshots": "workspace_id",
    "delete_snapshot": "workspace_id, snapshot_name",
    "reset_workspace": "workspace_id, *, snapshot='baseline'",
    "open_shell": "workspace_id, *, cwd='/workspace', cols=120, rows=30, secret_env=None",
    "read_shell": "workspace_id, shell_id, *, cursor=0, max_chars=65536, plain=False, "
    "wait_for_idle_ms=None",
    "write_shell": "workspace_id, shell_id, *, input, append_newline=True",
    "signal_shell": "workspace_id, shell_id, *, signal_name='INT'",
    "close_shell": "workspace_id, shell_id",
    "start_service": "workspace_id, service_name, *, command, cwd='/workspace', readiness=None, "
    "ready_timeout_seconds=30, ready_interval_ms=500, secret_env=None, published_ports=None",
    "list_services": "workspace_id",
    "status_service": "workspace_id, service_name",
    "stop_service": "workspace_id, service_name",
    "logs_service": "workspace_id, service_name, *, tail_lines=200, all=False",
    "create_server": "*, profile='workspace-full'",
}

PENDING: dict[str, str] = {}  # method -> the issue that brings it


def contract_signature(params: str) -> inspect.Signature:
    namespace: dict[str, Any] = {}
    exec(f"def method(self, {params}): pass", namespace)  # the table's text, as Python
    return inspect.signature(namespace["method"])


def compatible(ours: inspect.Signature, theirs: inspect.Signature) -> list[str]:
    """What would break a call written against `theirs`; empty when nothing would."""
    problems = []
    mine = list(ours.parameters.values())
    for index, want in enumerate(theirs.parameters.values()):
        have = mine[index] if index < len(mine) else None
        if have is None or have.name != want.name:
            problems.append(f"parameter {index} is {have and have.name!r}, expected {want.name!r}")
            break
        if have.kind != want.kind:
            problems.append(f"{want.name} is {have.kind.description}, not {want.kind.description}")
        if have.default != want.default:
            problems.append(f"{want.name} defaults to {have.default!r}, not {want.default!r}")
    for extra in mine[len(theirs.parameters) :]:
        if extra.kind is not inspect.Parameter.KEYWORD_ONLY or extra.default is extra.empty:
            problems.append(f"extra parameter {extra.name} must be keyword-only with a default")
    return problems


def test_the_contract_lists_47_methods() -> None:
    assert len(CONTRACT) == 47
    assert set(PENDING) <= set(CONTRACT)


@pytest.mark.parametrize("name", sorted(set(CONTRACT) - set(PENDING)))
def test_each_contract_method_keeps_its_signature(name: str) -> None:
    method = getattr(pyro_mcp.Pyro, name, None)
    assert callable(method), f"Pyro.{name} is gone"
    assert compatible(inspect.signature(method), contract_signature(CONTRACT[name])) == []


def test_pending_methods_are_exactly_the_features_still_to_come() -> None:
    missing = {name for name in CONTRACT if not hasattr(pyro_mcp.Pyro, name)}
    landed = sorted(set(PENDING) - missing)
    assert not landed, f"{landed} landed: check their signatures here and remove them from PENDING"
    assert missing == set(PENDING)


def test_the_checker_catches_a_changed_signature() -> None:
    theirs = contract_signature("workspace_id, *, max_bytes=65536")
    assert compatible(contract_signature("workspace_id, *, max_bytes=65536, extra=1"), theirs) == []
    assert compatible(contract_signature("workspace_id, *, max_bytes=4096"), theirs)
    assert compatible(contract_signature("workspace_id, max_bytes=65536"), theirs)
    assert compatible(contract_signature("vm_id, *, max_bytes=65536"), theirs)
    assert compatible(contract_signature("workspace_id, *, max_bytes=65536, need"), theirs)
    assert compatible(contract_signature("workspace_id"), theirs)


def test_the_package_exports_the_contract_names() -> None:
    from pyro_mcp.mcp.server import create_server
    from pyro_mcp.runtime.manager import VmManager
    from pyro_mcp.sdk import Pyro

    assert set(pyro_mcp.__all__) == {"Pyro", "VmManager", "create_server", "__version__"}
    assert pyro_mcp.Pyro is Pyro
    assert pyro_mcp.VmManager is VmManager
    assert pyro_mcp.create_server is create_server
    assert isinstance(pyro_mcp.__version__, str)
    with pytest.raises(AttributeError):
        pyro_mcp.NoSuchName  # noqa: B018


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = "import sys, pyro_mcp; print(sorted(m for m in sys.modules if m.startswith('pyro_mcp')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['pyro_mcp', 'pyro_mcp.version']"


def test_a_manager_can_be_shared_by_several_pyro_objects(tmp_path: Any) -> None:
    manager = pyro_mcp.VmManager(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state")
    first, second = pyro_mcp.Pyro(manager), pyro_mcp.Pyro(manager=manager)
    assert first.manager is second.manager is manager
    with pytest.raises(ValueError, match="either a manager or cache_dir"):
        pyro_mcp.Pyro(manager, cache_dir=tmp_path)


# §2 and §10: bad input and unknown ids are ValueError, state and transport problems
# RuntimeError; old `except` clauses must keep catching them.
@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.InvalidArgumentError, ValueError),
        (errors.NotFoundError, ValueError),
        (errors.ConflictError, RuntimeError),
        (errors.WrongStateError, RuntimeError),
        (errors.HostRequirementError, RuntimeError),
        (errors.BuildError, RuntimeError),
        (errors.IntegrityError, RuntimeError),
        (errors.DownloadError, RuntimeError),
        (errors.VmmError, RuntimeError),
        (errors.GuestError, RuntimeError),
        (errors.PyroTimeoutError, RuntimeError),
    ],
)
def test_errors_subclass_the_builtins_the_contract_names(error: type, builtin: type) -> None:
    assert issubclass(error, errors.PyroError)
    assert issubclass(error, builtin)


def test_a_timeout_is_not_an_os_error() -> None:
    # An OSError would be caught by every `except OSError` around socket code and read as a
    # dead connection.
    assert not issubclass(errors.PyroTimeoutError, OSError)


def test_unknown_names_raise_value_errors(tmp_path: Any) -> None:
    pyro = pyro_mcp.Pyro(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state")
    with pytest.raises(ValueError, match=r"ubuntu:24\.04"):
        pyro.inspect_environment("ubuntu:24.04")
    with pytest.raises(ValueError, match="does not exist"):
        pyro.status_vm("vm-nope")
    with pytest.raises(ValueError, match="does not exist"):
        pyro.status_workspace("ws-nope")
