"""QemuBackend.command: the argv of a cold boot, a template and a restore (no QEMU is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.qemu import QemuBackend

BINARY = "/opt/qemu/bin/qemu-system-x86_64"


def make_spec(tmp_path: Path, *, disk: bool = False, mem_mib: int = 1024) -> VmSpec:
    return VmSpec(
        "abc123",
        tmp_path / "vm",
        tmp_path / "kernel",
        tmp_path / "initramfs",
        tmp_path / "rootfs",
        2,
        mem_mib,
        "pyro-abc123",
        rw_disk=tmp_path / "vm" / "disk.ext4" if disk else None,
    )


def after(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def backend(accel: str = "tcg") -> QemuBackend:
    return QemuBackend(accel, binary=BINARY)


def test_a_cold_boot_loads_kernel_and_initramfs_with_the_vms_hostname(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    argv = backend().command(spec)
    assert argv[0] == BINARY
    assert after(argv, "-kernel") == [str(spec.kernel)]
    assert after(argv, "-initrd") == [str(spec.initramfs)]
    (append,) = after(argv, "-append")
    assert append == boot_args("tcg", "pyro.transport=serial", "pyro.hostname=pyro-abc123")
    assert "pyro.rw" not in append
    assert "-incoming" not in argv
    # plain RAM, under the name a suspended VM's stream uses for it
    assert after(argv, "-object") == ["memory-backend-ram,id=mem,size=1024M"]
    assert after(argv, "-M") == [
        "microvm,x-option-roms=off,rtc=off,isa-serial=on,memory-backend=mem"
    ]
    assert after(argv, "-m") == ["1024M"] and after(argv, "-smp") == ["2"]
    assert after(argv, "-accel") == ["tcg"] and after(argv, "-cpu") == ["max"]
    assert after(argv, "-drive") == [f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on"]
    # Socket paths are relative to the VM directory (QEMU's working directory).
    chardev = after(argv, "-chardev")
    assert chardev == ["socket,id=agent,path=agent.sock,server=on,wait=off"]
    assert after(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = backend("kvm").command(make_spec(tmp_path))
    assert after(argv, "-accel") == ["kvm"] and after(argv, "-cpu") == ["host"]
    (append,) = after(argv, "-append")
    assert "tsc_early_khz" not in append


def test_an_unknown_accelerator_is_refused() -> None:
    with pytest.raises(ValueError, match="accelerator"):
        QemuBackend("hvf", binary=BINARY)


def test_a_writable_disk_is_the_second_drive_and_named_on_the_command_line(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, disk=True)
    argv = backend().command(spec)
    assert after(argv, "-drive") == [
        f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on",
        f"id=rw,file={spec.rw_disk},format=raw,if=none,cache=unsafe",
    ]
    blk = [d for d in after(argv, "-device") if d.startswith("virtio-blk-device")]
    assert blk == ["virtio-blk-device,drive=root", "virtio-blk-device,drive=rw"]  # vda, vdb
    (append,) = after(argv, "-append")
    assert "pyro.rw=/dev/vdb" in append.split()


def test_a_template_keeps_guest_ram_in_a_shared_file(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, mem_mib=2048)
    memory = tmp_path / "staging" / "memory.ram"
    argv = backend().command(spec, memory)
    assert after(argv, "-object") == [
        f"memory-backend-file,id=mem,size=2048M,mem-path={memory},share=on"
    ]
    assert after(argv, "-M") == [
        "microvm,x-option-roms=off,rtc=off,isa-serial=on,memory-backend=mem"
    ]
    assert after(argv, "-kernel") == [str(spec.kernel)]  # a template boots
    assert "-incoming" not in argv


def test_a_restore_maps_the_ram_privately_and_waits_for_the_state(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    memory = tmp_path / "blobs" / "sha256" / ("a" * 64)
    argv = backend().command(spec, memory, restore=True)
    assert after(argv, "-object") == [
        f"memory-backend-file,id=mem,size=1024M,mem-path={memory},share=off"
    ]
    assert after(argv, "-incoming") == ["defer"]
    for flag in ("-kernel", "-initrd", "-append"):  # already past its boot
        assert flag not in argv


@pytest.mark.parametrize("disk", [False, True])
def test_a_restore_has_exactly_the_devices_of_its_template(tmp_path: Path, disk: bool) -> None:
    """The device state only loads into the very machine that wrote it."""
    spec = make_spec(tmp_path, disk=disk)
    memory = tmp_path / "memory.ram"
    template = backend().command(spec, memory)
    restore = backend().command(spec, memory, restore=True)

    def machine(argv: list[str]) -> list[str]:
        out, skip = [], False
        for i, arg in enumerate(argv):
            if skip:
                skip = False
                continue
            if arg in ("-kernel", "-initrd", "-append", "-incoming"):
                skip = True
                continue
            out.append(arg.replace("share=off", "share=on") if argv[i - 1] == "-object" else arg)
        return out

    assert machine(restore) == machine(template)
