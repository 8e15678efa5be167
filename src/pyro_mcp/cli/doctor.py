"""`pyro doctor`: print the host report."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli.output import show


def register(commands: Any) -> None:
    doctor = commands.add_parser("doctor", help="say what this host can run and why")
    doctor.add_argument(
        "--no-probe", action="store_true", help="use cached boot probes only (no test boot)"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=_doctor)


def _yes(value: object) -> str:
    if value is None:
        return "unknown"
    return "yes" if value else "no"


def _render(report: dict[str, Any]) -> None:
    kvm, backend = report["kvm"], report["backend"]
    print(f"Platform: {report['platform']}")
    print(f"Backend: {backend['selected'] or 'NONE'} ({backend['reason']})")
    print(
        f"KVM: exists={_yes(kvm['exists'])} readable={_yes(kvm['readable'])} "
        f"writable={_yes(kvm['writable'])} hypervisor={kvm['hypervisor'] or 'none'}"
    )
    print(f"  usable for a stock guest kernel: {_yes(kvm['usable'])} ({kvm['reason']})")
    probes = report["boot_probes"]
    for accel in ("kvm", "tcg"):
        result = probes.get(accel)
        if result:
            verdict = "ok" if result["ok"] else "FAILED"
            print(f"  boot probe {accel}: {verdict} in {result['seconds']} s ({result['reason']})")
    if probes.get("skipped"):
        print(f"  boot probes skipped: {probes['skipped']}")
    qemu, fc = report["qemu"], report["firecracker"]
    print(f"QEMU: {qemu['path'] or 'missing'} {qemu['version'] or ''}".rstrip())
    fc_line = f"{fc['path']} v{fc['version']} ({fc['source']})" if fc["path"] else "not installed"
    print(f"Firecracker: {fc_line}")
    build = report["image_build"]
    print(
        "Image build tools: "
        + ", ".join(f"{k}={'ok' if v else 'MISSING'}" for k, v in build["tools"].items())
    )
    for key, info in report["directories"].items():
        free = info["free_bytes"] / (1 << 30)
        print(
            f"{key.title()} dir: {info['path']} mode={info['mode']} "
            f"writable={_yes(info['writable'])} free={free:.1f} GiB"
        )
    net = report["networking"]
    print(
        f"Networking: {'ok' if net['ok'] else 'UNAVAILABLE'} tun={_yes(net['tun_available'])} "
        f"nft={net['nft_binary'] or 'missing'} host_ip_forward={_yes(net['host_ip_forward'])}"
    )
    installed = [e["name"] for e in report["environments"] if e["installed"]]
    print(f"Environments installed: {', '.join(installed) or 'none'}")
    print("Issues:" if report["issues"] else "Issues: none")
    for issue in report["issues"]:
        print(f"- {issue}")


def _doctor(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    report = Pyro().doctor(probe=not args.no_probe)
    show(report, args.json, _render)
    return 0 if report["runtime_ok"] else 1
