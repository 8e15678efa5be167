"""Unpacking a bzImage into an ELF vmlinux, and the guest modules' load order."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyro_mcp.environments import kernel
from pyro_mcp.environments.kernel import (
    extract_vmlinux,
    index_modules,
    module_load_order,
    read_module,
)
from pyro_mcp.errors import BuildError

ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"synthetic kernel body " * 64


def bzimage(payload: bytes, setup_sects: int = 3, payload_offset: int = 0x120) -> bytes:
    """A minimal x86 boot image: setup sectors, then the protected-mode part with the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    body = b"\xcc" * payload_offset + payload + b"\x00" * 64  # padding follows the payload
    return bytes(setup) + body


def extract(tmp_path: Path, image: bytes) -> bytes:
    source = tmp_path / "vmlinuz"
    source.write_bytes(image)
    out = tmp_path / "vmlinux"
    extract_vmlinux(source, out)
    return out.read_bytes()


def test_extracts_a_gzip_payload(tmp_path: Path) -> None:
    assert extract(tmp_path, bzimage(gzip.compress(ELF))) == ELF


def test_extracts_an_xz_payload(tmp_path: Path) -> None:
    payload = lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert extract(tmp_path, bzimage(payload, setup_sects=30, payload_offset=0)) == ELF


def test_zero_setup_sects_means_four(tmp_path: Path) -> None:
    image = bytearray(bzimage(gzip.compress(ELF), setup_sects=4))
    image[0x1F1] = 0
    assert extract(tmp_path, bytes(image)) == ELF


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 missing: apt-get install -y lz4")
def test_extracts_an_lz4_legacy_payload(tmp_path: Path) -> None:
    proc = subprocess.run(["lz4", "-l", "-c"], input=ELF, capture_output=True, check=True)
    assert proc.stdout.startswith(b"\x02\x21\x4c\x18")
    assert extract(tmp_path, bzimage(proc.stdout)) == ELF


def test_an_elf_kernel_passes_through(tmp_path: Path) -> None:
    assert extract(tmp_path, ELF) == ELF


def test_not_a_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="neither an ELF kernel nor an x86 bzImage"):
        extract(tmp_path, b"MZ" + b"\x00" * 2048)


def test_unsupported_compression_is_named(tmp_path: Path) -> None:
    payload = b"BZh91AY&SY" + b"\x00" * 32  # bzip2, which Debian does not use
    with pytest.raises(BuildError) as caught:
        extract(tmp_path, bzimage(payload))
    assert "unsupported kernel compression" in str(caught.value)
    assert payload[:6].hex() in str(caught.value)
    assert not (tmp_path / "vmlinux").exists()


def test_a_payload_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="did not produce an ELF kernel"):
        extract(tmp_path, bzimage(gzip.compress(b"not a kernel")))
    assert not (tmp_path / "vmlinux").exists()


def test_a_missing_decompressor_is_named_with_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def absent(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("zstd")

    monkeypatch.setattr(kernel.subprocess, "run", absent)
    with pytest.raises(BuildError) as caught:
        extract(tmp_path, bzimage(b"\x28\xb5\x2f\xfd" + b"\x00" * 16))
    assert "`zstd`" in str(caught.value)
    assert "apt-get install zstd" in str(caught.value)


# --- modules ----------------------------------------------------------------------------------


def module_bytes(depends: str | None) -> bytes:
    """What matters of a .ko: an ELF header and a .modinfo full of NUL-separated strings."""
    info = b"\x00license=GPL\x00"
    if depends is not None:
        info += b"depends=" + depends.encode() + b"\x00"
    info += b"vermagic=6.1.0 SMP mod_unload\x00"
    return b"\x7fELF" + b"\x00" * 60 + info + b"\x00" * 16


def write_modules(root: Path, deps: dict[str, str | None], xz: tuple[str, ...] = ()) -> Path:
    tree = root / "lib" / "modules" / "6.1.0" / "kernel"
    for number, (name, depends) in enumerate(deps.items()):
        folder = tree / "drivers" / f"d{number}"
        folder.mkdir(parents=True, exist_ok=True)
        data = module_bytes(depends)
        if name in xz:
            (folder / f"{name}.ko.xz").write_bytes(lzma.compress(data))
        else:
            (folder / f"{name}.ko").write_bytes(data)
    return tree


def test_modinfo_depends() -> None:
    assert kernel._modinfo_depends(module_bytes("a,b")) == ("a", "b")
    assert kernel._modinfo_depends(module_bytes("")) == ()
    assert kernel._modinfo_depends(module_bytes(None)) == ()
    # modinfo spells names with dashes at times; module files use underscores.
    assert kernel._modinfo_depends(module_bytes("virtio-ring,,x")) == ("virtio_ring", "x")


def test_index_and_read_modules_incl_xz(tmp_path: Path) -> None:
    tree = write_modules(
        tmp_path, {"virtio_blk": "virtio_ring", "virtio-ring": ""}, xz=("virtio_blk",)
    )
    (tree / "drivers" / "d0" / "README").write_text("not a module")
    (tree / "drivers" / "d0" / "x.ko.sig").write_text("not a module either")
    index = index_modules(tree)
    assert set(index) == {"virtio_blk", "virtio_ring"}
    module, data = read_module(index["virtio_blk"])
    assert module.name == "virtio_blk"
    assert module.depends == ("virtio_ring",)
    assert data == module_bytes("virtio_ring")  # handed back uncompressed


def test_load_order_puts_dependencies_first_once(tmp_path: Path) -> None:
    index = index_modules(
        write_modules(
            tmp_path,
            {
                "net": "core,ring",
                "blk": "core",
                "core": "ring",
                "ring": None,
                "unused": "ring",
            },
        )
    )
    order = [m.name for m in module_load_order(index, ["blk", "net"])]
    assert order == ["ring", "core", "blk", "net"]


def test_a_missing_module_is_named(tmp_path: Path) -> None:
    index = index_modules(write_modules(tmp_path, {"blk": "ghost"}))
    with pytest.raises(BuildError) as caught:
        module_load_order(index, ["blk"])
    assert "'ghost'" in str(caught.value)
    assert "virtio" in str(caught.value)  # the hint says what kernel is needed
    with pytest.raises(BuildError, match="'absent'"):
        module_load_order(index, ["absent"])


def test_a_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    index = index_modules(write_modules(tmp_path, {"a": "b", "b": "c", "c": "a"}))
    with pytest.raises(BuildError, match="cycle"):
        module_load_order(index, ["a"])


def test_the_guest_modules_are_the_ones_the_init_needs() -> None:
    assert {"virtio_blk", "virtio_console", "overlay", "vmw_vsock_virtio_transport"} <= set(
        kernel.GUEST_MODULES
    )
