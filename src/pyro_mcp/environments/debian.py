"""Fetch Debian packages with mmdebstrap: apt resolves and verifies every package's signature."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyro_mcp.environments.catalog import KERNEL_PACKAGE, SUITE
from pyro_mcp.errors import BuildError, HostRequirementError

MIRROR_ENV = "PYRO_DEBIAN_MIRROR"
_HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))

# Keep the images small: no manuals, docs or translations in a machine nobody reads.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)

# mmdebstrap copies the host's hostname and resolver into the tree; the guest gets its own.
_ROOT_HOOK = (
    'mkdir -p "$1/opt/pyro" "$1/workspace" && echo pyro >"$1/etc/hostname"'
    ' && : >"$1/etc/resolv.conf" && rm -f "$1/etc/machine-id" && : >"$1/etc/machine-id"'
)


def mirror() -> str:
    """The mmdebstrap mirror argument: `PYRO_DEBIAN_MIRROR`, else the host's bookworm sources."""
    override = os.environ.get(MIRROR_ENV)
    if override:
        return override
    for path in _HOST_SOURCES:
        try:
            if SUITE in path.read_text():
                return str(path)
        except OSError:
            continue
    raise HostRequirementError(
        f"no Debian {SUITE} package source found on this host",
        hint=f"set {MIRROR_ENV} to a Debian mirror URL or to a sources.list file for {SUITE}",
    )


def _run(args: list[str], log: Path, what: str) -> None:
    env = {**os.environ, "TMPDIR": str(log.parent)}
    with log.open("ab") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        raise BuildError(
            f"{what} failed (mmdebstrap exit {proc.returncode}):\n  " + "\n  ".join(tail),
            hint=f"full log: {log}; check the package source ({MIRROR_ENV}) and free disk space",
        )


def _base_args(variant: str, packages: list[str]) -> list[str]:
    if os.geteuid() != 0:
        raise HostRequirementError(
            "building an environment needs root (mmdebstrap's root mode creates root-owned files)",
            hint="run `pyro env pull` as root, e.g. with sudo",
        )
    args = ["mmdebstrap", "--quiet", "--mode=root", f"--variant={variant}"]
    args += ['--aptopt=Acquire::Languages "none"']
    if packages:
        args.append("--include=" + ",".join(packages))
    return args


def fetch_kernel_tree(target: Path, log: Path) -> None:
    """Unpack the cloud kernel and busybox-static packages (not installed) into `target`."""
    args = _base_args("extract", [KERNEL_PACKAGE, "busybox-static"])
    _run([*args, SUITE, str(target), mirror()], log, "downloading the guest kernel")


def build_root_tree(target: Path, packages: list[str], log: Path) -> None:
    """A minimal Debian root with `packages` installed, in the directory `target`."""
    args = _base_args("minbase", packages)
    args += [f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES]
    args.append(f"--customize-hook={_ROOT_HOOK}")
    _run([*args, SUITE, str(target), mirror()], log, "building the root file system")


def installed_packages(root: Path) -> list[str]:
    """`name=version` for every package installed in the tree `root`."""
    proc = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package}=${Version}\n"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"cannot list the packages of {root}: {proc.stderr.strip()}")
    return sorted(line for line in proc.stdout.splitlines() if line)


def mmdebstrap_version() -> str:
    proc = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip().removeprefix("mmdebstrap ")
