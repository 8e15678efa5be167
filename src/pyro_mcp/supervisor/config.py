"""What the launcher tells a VM's supervisor, written as `supervisor.json` in the VM directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyro_mcp.vmm.base import VmSpec

CONFIG_FILE = "supervisor.json"
SOCKET = "supervisor.sock"
CONSOLE_LOG = "console.log"
LOG = "supervisor.log"


@dataclass(frozen=True)
class SupervisorConfig:
    spec: VmSpec
    backend: str  # "qemu" or "firecracker"
    accel: str  # "kvm" or "tcg"
    state_root: Path
    expires_at: float
    boot_timeout: float
    owner_pid: int | None = None  # one-shot runs: the VM dies with this process
    owner_start: int | None = None
    delete_on_exit: bool = False  # drop the VM's record too (one-shot runs)
    snapshot_memory: str | None = None  # warm start: restore this snapshot instead of booting
    snapshot_state: str | None = None
    standby: bool = False  # restored and warmed up ahead of demand, waiting to be claimed
    network: dict[str, Any] | None = None  # a NetworkPlan's JSON; None: no NIC at all
    resume_state: str | None = None  # a suspended VM's state file: run it instead of booting

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["spec"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data["spec"].items()}
        data["spec"].pop("nic", None)  # the supervisor makes the NIC: its fds are its own
        data["state_root"] = str(self.state_root)
        return json.dumps(data, indent=2)

    @classmethod
    def load(cls, vm_dir: Path) -> SupervisorConfig:
        data = json.loads((vm_dir / CONFIG_FILE).read_text())
        raw = data.pop("spec")
        for key in ("vm_dir", "kernel", "initramfs", "rootfs"):
            raw[key] = Path(raw[key])
        for key in ("rw_disk", "inspect_disk", "output_disk"):
            raw[key] = Path(raw[key]) if raw.get(key) else None
        data["state_root"] = Path(data["state_root"])
        return cls(spec=VmSpec(**raw), **data)
