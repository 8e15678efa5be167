"""Turn Debian's cloud kernel package into what a microVM boots: an ELF vmlinux and its modules.

Firecracker only loads ELF kernels, so the compressed payload inside the bzImage is unpacked.
The guest needs a handful of modules (virtio transport, disk, console, vsock, net, overlay);
Debian ships no modules.dep in the package, so the load order comes from each module's own
`depends=` field.
"""

from __future__ import annotations

import lzma
import struct
import subprocess
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp.errors import BuildError

# The guest's device drivers; their dependencies are added by `module_load_order`.
GUEST_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "overlay",
)

_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class KernelModule:
    name: str
    path: Path
    depends: tuple[str, ...]


def _decompress_with(tool: list[str], payload: bytes) -> bytes:
    try:
        proc = subprocess.run(tool, input=payload, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(
            f"`{tool[0]}` is needed to unpack the guest kernel",
            hint=f"install it: apt-get install {tool[0]}",
        ) from exc
    # Trailing bytes after the compressed stream make some tools exit non-zero; the
    # output is judged by its ELF header instead.
    return proc.stdout


def _decompress_xz(payload: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)


def _decompress_gzip(payload: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)


def _unpack_payload(payload: bytes) -> bytes:
    if payload.startswith(b"\x02\x21\x4c\x18"):  # lz4 legacy frame, what `lz4 -l` writes
        return _decompress_with(["lz4", "-dc"], payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return _decompress_xz(payload)
    if payload.startswith(b"\x1f\x8b"):
        return _decompress_gzip(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return _decompress_with(["zstd", "-dc"], payload)
    raise BuildError(
        f"unsupported kernel compression (payload starts with {payload[:6].hex()})",
        hint="use a Debian amd64 kernel compressed with lz4, xz, gzip or zstd",
    )


def extract_vmlinux(vmlinuz: Path, output: Path) -> None:
    """Write the uncompressed ELF kernel inside the bzImage `vmlinuz` to `output`."""
    image = vmlinuz.read_bytes()
    if image.startswith(_ELF_MAGIC):
        output.write_bytes(image)
        return
    if image[0x202:0x206] != b"HdrS":
        raise BuildError(f"{vmlinuz} is neither an ELF kernel nor an x86 bzImage")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    elf = _unpack_payload(image[start : start + payload_length])
    if not elf.startswith(_ELF_MAGIC):
        raise BuildError(f"unpacking {vmlinuz} did not produce an ELF kernel")
    output.write_bytes(elf)


def _modinfo_depends(data: bytes) -> tuple[str, ...]:
    # The .modinfo section holds NUL-separated key=value strings; `depends=` is set by modpost.
    marker = data.find(b"\x00depends=")
    if marker < 0:
        return ()
    end = data.index(b"\x00", marker + 1)
    value = data[marker + len(b"\x00depends=") : end].decode()
    return tuple(name.replace("-", "_") for name in value.split(",") if name)


def read_module(path: Path) -> tuple[KernelModule, bytes]:
    """A module's name, dependencies and (uncompressed) bytes."""
    data = path.read_bytes()
    name = path.name.split(".ko")[0].replace("-", "_")
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    return KernelModule(name, path, _modinfo_depends(data)), data


def index_modules(modules_root: Path) -> dict[str, Path]:
    """Module name -> file, for every module under `lib/modules/<version>/kernel`."""
    found: dict[str, Path] = {}
    for path in modules_root.rglob("*.ko*"):
        if path.name.endswith((".ko", ".ko.xz")):
            found[path.name.split(".ko")[0].replace("-", "_")] = path
    return found


def module_load_order(index: dict[str, Path], wanted: Iterable[str]) -> list[KernelModule]:
    """`wanted` and everything they depend on, each after its dependencies."""
    order: list[KernelModule] = []
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in trail:
            raise BuildError(f"kernel modules depend on each other in a cycle: {trail}")
        path = index.get(name)
        if path is None:
            raise BuildError(
                f"kernel module {name!r} is not in the kernel package",
                hint="the guest needs a Debian cloud kernel with virtio and vsock modules",
            )
        module, _ = read_module(path)
        for dep in module.depends:
            visit(dep, (*trail, name))
        done.add(name)
        order.append(module)

    for name in wanted:
        visit(name, ())
    return order
