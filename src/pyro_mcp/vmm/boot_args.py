"""The guest kernel command line, shared by every backend and by the doctor's boot probe."""

from __future__ import annotations

import re
from pathlib import Path

_BASE = ("console=ttyS0", "reboot=k", "panic=-1", "i8042.noaux", "i8042.nomux")


def host_tsc_khz() -> int | None:
    """The host's TSC rate; None when the CPU does not promise a constant one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if not re.search(r"^flags\s*:.*\bconstant_tsc\b", text, re.MULTILINE):
        return None
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    return int(float(match.group(1)) * 1000) if match else None


def boot_args(accel: str, *extra: str, quiet: bool = True) -> str:
    """Kernel arguments for a guest running under `accel` ("kvm" or "tcg").

    Under TCG the guest TSC is the host's constant TSC. Its calibration against the emulated
    PIT fails at random when the host is busy (and the boot then hangs), so its rate is given;
    and after a snapshot restore the TSC jumps, which the clocksource watchdog would take for
    instability, dropping the guest to a 4 ms jiffies clock, so it is declared reliable.
    """
    args = list(_BASE)
    if quiet:
        args.append("quiet")
    if accel == "tcg" and (khz := host_tsc_khz()) is not None:
        args += [f"tsc_early_khz={khz}", "tsc=reliable"]
    args.extend(extra)
    return " ".join(args)
