"""The environment catalog: which Debian 12 variants exist and what goes into each."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_mcp.errors import NotFoundError

CATALOG_VERSION = "1.0.0"
DISTRIBUTION = "debian"
DISTRIBUTION_VERSION = "12"
SUITE = "bookworm"
PLATFORM = "linux-x86_64"
KERNEL_PACKAGE = "linux-image-cloud-amd64"

# Everything the guest agent and init need, whatever the variant.
BASE_PACKAGES = ("python3", "ca-certificates")


@dataclass(frozen=True)
class Environment:
    """One catalog entry; `packages` is what the root image really installs."""

    name: str
    version: str
    description: str
    default_packages: tuple[str, ...]
    packages: tuple[str, ...]

    @property
    def slug(self) -> str:
        """File-system friendly `name-version`, e.g. `debian_12-1.0.0`."""
        return f"{self.name.replace(':', '_')}-{self.version}"


CATALOG: tuple[Environment, ...] = (
    Environment(
        name="debian:12",
        version="1.0.0",
        description="Debian 12 with Git",
        default_packages=("bash", "coreutils", "git"),
        packages=("git",),
    ),
    Environment(
        name="debian:12-base",
        version="1.0.0",
        description="Minimal Debian 12",
        default_packages=("bash", "coreutils"),
        packages=(),
    ),
    Environment(
        name="debian:12-build",
        version="1.0.0",
        description="Debian 12 with Git and build tools",
        default_packages=("bash", "coreutils", "git", "gcc", "make", "cmake", "python3"),
        # libc6-dev: gcc alone cannot link a program.
        packages=("git", "gcc", "libc6-dev", "make", "cmake"),
    ),
)

DEFAULT_ENVIRONMENT = "debian:12"


def names() -> list[str]:
    return [env.name for env in CATALOG]


def get(name: str) -> Environment:
    """The catalog entry called `name`, or an error that lists the valid names."""
    for env in CATALOG:
        if env.name == name:
            return env
    raise NotFoundError(
        f"unknown environment {name!r}",
        hint=f"expected one of: {', '.join(names())} (see `pyro env list`)",
    )
