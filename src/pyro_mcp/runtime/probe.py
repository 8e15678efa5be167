"""Boot probe: can this host really run our guest kernel with a given accelerator?

A stock kernel under a nested PVM hypervisor does not fail fast: it crawls for about a minute
before dying. So the probe boots the real kernel and initramfs with `pyro.probe=1`, where the
init prints a marker and reboots at once, and gives up after a short deadline. Results are
cached (in the cache directory) per host kernel, QEMU version and guest kernel digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pyro_mcp import paths
from pyro_mcp.vmm.boot_args import boot_args

MARKER = b"PYRO_PROBE_OK"
KVM_DEADLINE_S = 8.0
TCG_DEADLINE_S = 90.0


@dataclass(frozen=True)
class ProbeResult:
    accel: str
    ok: bool
    seconds: float
    reason: str
    host_kernel: str
    guest_kernel_sha256: str
    probed_at: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def qemu_identity(binary: str) -> str:
    """Names a QEMU build for the probe cache without running it (a run costs ~20 ms)."""
    st = os.stat(binary)
    return f"{st.st_size}-{st.st_mtime_ns}"


def qemu_probe_command(qemu: str, accel: str, kernel: Path, initramfs: Path) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    return [
        qemu, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on", "-accel", accel,
        "-cpu", cpu, "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel), "-initrd", str(initramfs),
        "-append", boot_args(accel, "pyro.probe=1", quiet=False),
    ]  # fmt: skip


def _watch(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bool, bytes]:
    """Read the console until the marker, the VMM's exit, or the deadline."""
    assert proc.stdout is not None
    seen = b""
    fd = proc.stdout.fileno()
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen = (seen + chunk)[-16384:]
            if MARKER in seen:
                return True, seen
        elif proc.poll() is not None:
            break
    return False, seen


def _run_probe(command: list[str], deadline: float) -> tuple[bool, str]:
    # A session of its own, so the kill below reaches anything the VMM started, too.
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ok, output = _watch(proc, deadline)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    text = output.decode(errors="replace").strip()
    if ok:
        return True, "the guest kernel reached user space"
    last = text.splitlines()[-1] if text else "no console output"
    if proc.returncode not in (None, -9) and "error" in text.lower():
        return False, f"QEMU refused to start the guest: {last}"
    return False, f"the guest kernel did not reach user space within {deadline:.0f} s ({last})"


def _cache_path(accel: str, kernel_sha: str, qemu_version: str) -> Path:
    host = platform.release()
    name = f"{accel}-{host}-{qemu_version}-{kernel_sha[:16]}.json"
    return paths.cache_dir() / "probes" / name.replace("/", "_")


def cached_probe(accel: str, kernel_sha: str, qemu_version: str) -> ProbeResult | None:
    try:
        data = json.loads(_cache_path(accel, kernel_sha, qemu_version).read_text())
        return ProbeResult(**data)
    except (OSError, ValueError, TypeError):
        return None


def boot_probe(
    qemu: str,
    qemu_version: str,
    accel: str,
    kernel: Path,
    initramfs: Path,
    kernel_sha: str,
    *,
    use_cache: bool = True,
) -> ProbeResult:
    """Boot `kernel` under `accel` ("kvm" or "tcg") and report whether it reached user space."""
    if use_cache and (hit := cached_probe(accel, kernel_sha, qemu_version)) is not None:
        return hit
    deadline = KVM_DEADLINE_S if accel == "kvm" else TCG_DEADLINE_S
    started = time.monotonic()
    ok, reason = _run_probe(qemu_probe_command(qemu, accel, kernel, initramfs), deadline)
    result = ProbeResult(
        accel=accel,
        ok=ok,
        seconds=round(time.monotonic() - started, 2),
        reason=reason,
        host_kernel=platform.release(),
        guest_kernel_sha256=kernel_sha,
        probed_at=time.time(),
    )
    if not ok and accel == "tcg":
        return result  # a software CPU always works in the end: a failure here is transient
    path = _cache_path(accel, kernel_sha, qemu_version)
    # An unwritable cache only costs a probe next time; the doctor must not fail over it.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict()))
    return result
