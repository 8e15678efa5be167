"""pyro guest agent, system: where the agent keeps its state, the machine's identity, power.

stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro_mcp.protocol import ops

log = logging.getLogger("pyro-agent")

Params = dict[str, Any]

_RNDADDENTROPY = 0x40085203
_RNDRESEEDCRNG = 0x5207
REBOOT_CMDS = {"poweroff": 0x4321FEDC, "reboot": 0x01234567}


def _power(action: str) -> None:
    """Stop the machine through reboot(2); a VMM without ACPI exits on reboot."""
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.reboot(REBOOT_CMDS[action]) != 0:
        log.error("reboot(2) failed: %s", os.strerror(ctypes.get_errno()))
        os.system(f"{action} -f")


@dataclass
class AgentConfig:
    """Where the agent writes identity files and keeps the workspace, and whether it may
    change kernel state."""

    hostname_path: str = "/etc/hostname"
    machine_id_path: str = "/etc/machine-id"
    urandom_path: str = "/dev/urandom"
    random_path: str = "/dev/random"
    workspace_root: str = "/workspace"
    system_calls: bool = True
    power: Callable[[str], None] = _power

    @classmethod
    def sandboxed(cls, root: str) -> AgentConfig:
        """Files under `root`; no hostname, clock, entropy credit or power changes (tests)."""
        return cls(
            hostname_path=os.path.join(root, "etc/hostname"),
            machine_id_path=os.path.join(root, "etc/machine-id"),
            urandom_path=os.path.join(root, "dev/urandom"),
            random_path=os.path.join(root, "dev/random"),
            workspace_root=os.path.join(root, "workspace"),
            system_calls=False,
            power=lambda action: log.info("sandboxed: not doing %s", action),
        )


def configure(config: AgentConfig, params: Params) -> Params:
    """Apply the identity settings given; a failed one is a warning, not a failed request."""
    ident = ops.parse_configure(params)
    steps: list[tuple[str, Any, Callable[[Any], None]]] = [
        ("hostname", ident.hostname, lambda name: _set_hostname(config, name)),
        ("machine_id", ident.machine_id, lambda mid: _write_line(config.machine_id_path, mid)),
        ("time", ident.time_ns, lambda stamp: _set_clock(config, stamp)),
        ("entropy", ident.entropy, lambda seed: _add_entropy(config, seed)),
    ]
    applied: list[str] = []
    warnings: list[str] = []
    for name, value, apply in steps:
        if value is None:
            continue
        try:
            apply(value)
            applied.append(name)
        except OSError as exc:
            warnings.append(f"{name}: {exc}")
            log.warning("configure %s failed: %s", name, exc)
    return {"applied": applied, "warnings": warnings}


def _write_line(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


def _set_hostname(config: AgentConfig, name: str) -> None:
    if config.system_calls:
        socket.sethostname(name)
    try:
        _write_line(config.hostname_path, name)
    except OSError as exc:
        # A read-only /etc is fine: the kernel's hostname is what counts.
        log.info("not writing %s: %s", config.hostname_path, exc)


def _set_clock(config: AgentConfig, stamp: int) -> None:
    if config.system_calls:
        time.clock_settime_ns(time.CLOCK_REALTIME, stamp)


def _add_entropy(config: AgentConfig, seed: bytes) -> None:
    # Writing mixes the seed in without crediting it; only the ioctl credits entropy.
    with open(config.urandom_path, "ab", buffering=0) as pool:
        pool.write(seed)
    if config.system_calls and os.geteuid() == 0:
        request = struct.pack("ii", len(seed) * 8, len(seed)) + seed
        with open(config.random_path, "wb", buffering=0) as device:
            fcntl.ioctl(device.fileno(), _RNDADDENTROPY, request)
            # Clones restored from one snapshot share the kernel's CRNG state; crediting new
            # entropy does not reseed it before the next interval, so force the reseed now.
            fcntl.ioctl(device.fileno(), _RNDRESEEDCRNG)
