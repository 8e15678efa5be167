"""A stopped workspace's memory: stop writes the running VM (RAM and devices) to one file, and
start runs that file again, so shells, services and every other process go on where they were.

    <workspace dir>/suspended/state.bin       the VMM's migration stream (0600)
    <workspace dir>/suspended/manifest.json   what wrote it, its digest, the published ports

The file is used once: start takes it (resumed, or a cold boot if it cannot be used) and
removes it; reset and delete remove it too. It is refused, with the reason start reports,
when it cannot describe this host any more: another VMM binary or host kernel, another
environment build or VM size, or bytes that no longer match the digest taken at stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.agent_client import services as agent_services
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.agent_client.secrets import install_secrets
from pyro_mcp.errors import PyroError
from pyro_mcp.host import tools
from pyro_mcp.runtime import launch

DIR = "suspended"
STATE = "state.bin"
MANIFEST = "manifest.json"
SUSPEND_TIMEOUT_S = 600.0  # writing a big guest's RAM under TCG


@dataclass(frozen=True)
class Resume:
    """What start does: run `state` (None: boot fresh, for the reason in `note`)."""

    state: Path | None
    note: str
    ports: list[dict[str, Any]]


def _identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """What must be the same at start for the file to run: the VMM and how it runs, the host
    kernel, the environment build and the VM's size and NIC."""
    vmm = tools.QEMU.path() if str(row["execution_mode"]).startswith("qemu") else None
    info = os.stat(vmm) if vmm else None
    return {
        "execution_mode": row["execution_mode"],
        "vmm": [str(vmm), info.st_size, info.st_mtime_ns] if info else None,
        "host_kernel": os.uname().release,
        "environment_version": row["environment_version"],
        "vcpu_count": row["vcpu_count"],
        "mem_mib": row["mem_mib"],
        "network": row["network_policy"] != "off",
    }


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def held(workspace_dir: Path) -> bool:
    """Whether the stopped workspace's processes wait in a memory snapshot."""
    return (workspace_dir / DIR / MANIFEST).exists()


def discard(workspace_dir: Path) -> None:
    folder = workspace_dir / DIR
    for name in (STATE, MANIFEST):
        (folder / name).unlink(missing_ok=True)
    if folder.exists():
        folder.rmdir()


def suspend(workspace_dir: Path, row: Mapping[str, Any], vm: Mapping[str, Any]) -> str | None:
    """Write the workspace's running VM out; None when done, else why not (the caller then
    stops it the old way). The guest's secrets leave its tmpfs first; start puts them back."""
    discard(workspace_dir)
    folder = workspace_dir / DIR
    vm_dir = Path(vm["vm_dir"])
    try:
        folder.mkdir(mode=0o700)
        with launch.connect(vm_dir) as client:
            client.sync(timeout=60.0)  # the disk as the guest sees it, for the disk tools
            ports = _published(client, row)
            install_secrets(client, {})
            client.request("vm.suspend", {"state": str(folder / STATE)}, timeout=SUSPEND_TIMEOUT_S)
        manifest = {
            "identity": _identity(row),
            "sha256": _digest(folder / STATE),
            "suspended_at": time.time(),
            "ports": ports,
        }
        paths.write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
    except (PyroError, OSError) as exc:
        discard(workspace_dir)
        return f"could not keep the VM's memory ({exc}): stopped it instead"
    return None


def _published(client: GuestClient, row: Mapping[str, Any]) -> list[dict[str, Any]]:
    if row["network_policy"] != "egress+published-ports":
        return []
    return [
        {"name": name, "run_id": run_id,
         "ports": [{"guest_port": p.guest_port, "host_port": p.host_port} for p in ports]}
        for name, (run_id, ports) in agent_services.published(client).items()
    ]  # fmt: skip


def plan(workspace_dir: Path, row: Mapping[str, Any]) -> Resume:
    """Whether start can resume the stopped workspace, and why not if not."""
    folder = workspace_dir / DIR
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return Resume(None, "", [])
    except (OSError, ValueError) as exc:
        return Resume(None, f"the memory snapshot's manifest is unreadable ({exc})", [])
    was, now = manifest.get("identity", {}), _identity(row)
    changed = sorted(key for key in now if was.get(key) != now[key])
    if changed:
        return Resume(None, f"the memory snapshot was made with another {', '.join(changed)}", [])
    try:
        if _digest(folder / STATE) != manifest.get("sha256"):
            return Resume(None, "the memory snapshot is damaged (its digest does not match)", [])
    except OSError as exc:
        return Resume(None, f"the memory snapshot cannot be read ({exc})", [])
    return Resume(folder / STATE, "", list(manifest.get("ports") or []))


def after_resume(vm_dir: Path, ports: list[dict[str, Any]]) -> list[str]:
    """Relay the published ports of the services that ran at stop again; the problems."""
    problems = []
    with launch.connect(vm_dir) as client:
        for item in ports:
            try:
                agent_services.adopt_ports(client, item["name"], item["run_id"], item["ports"])
            except PyroError as exc:
                problems.append(f"service {item['name']}: ports not published again: {exc}")
    return problems
