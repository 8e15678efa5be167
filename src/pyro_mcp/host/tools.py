"""Host tools pyro-mcp runs, which Debian package provides each, and what it is needed for."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from pyro_mcp.errors import HostRequirementError


@dataclass(frozen=True)
class Tool:
    command: str
    package: str
    purpose: str

    def path(self) -> str | None:
        return shutil.which(self.command) or shutil.which(self.command, path="/usr/sbin:/sbin")

    @property
    def install_hint(self) -> str:
        return f"apt-get install -y {self.package}"


IMAGE_BUILD_TOOLS = (
    Tool("mmdebstrap", "mmdebstrap", "builds environments from Debian packages"),
    Tool("mke2fs", "e2fsprogs", "writes the root and per-VM disk images"),
    Tool("lz4", "lz4", "unpacks Debian's cloud kernel"),
)

QEMU = Tool("qemu-system-x86_64", "qemu-system-x86", "runs VMs with KVM or TCG")
QEMU_IMG = Tool("qemu-img", "qemu-utils", "keeps workspace disks with copy-on-write snapshots")

NFT = Tool("nft", "nftables", "filters and NATs guest traffic")


def require(*tools: Tool) -> dict[str, str]:
    """Paths of `tools`, or one error naming every missing tool and the command to install it."""
    found: dict[str, str] = {}
    missing: list[Tool] = []
    for tool in tools:
        path = tool.path()
        if path is None:
            missing.append(tool)
        else:
            found[tool.command] = path
    if missing:
        names = ", ".join(f"`{t.command}` ({t.purpose})" for t in missing)
        packages = " ".join(sorted({t.package for t in missing}))
        raise HostRequirementError(
            f"missing host tools: {names}",
            hint=f"install them with: apt-get install -y {packages}",
            missing=[t.command for t in missing],
        )
    return found
