"""Unnamed network namespaces and the TAP devices in them.

A VM's namespace is never mounted under a name: it lives exactly as long as something holds
it (the supervisor's fd, the VMM, a TAP's fd), so however those processes die, the kernel
frees it with every link, address, route and nftables rule inside. Namespaces belong to
threads, so entering one changes only the calling thread, and only for the `with` block.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator

from pyro_mcp.errors import HostRequirementError

_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_THIS_THREAD = "/proc/thread-self/ns/net"


def current() -> int:
    """An fd holding the calling thread's network namespace."""
    return os.open(_THIS_THREAD, os.O_RDONLY | os.O_CLOEXEC)


def create() -> int:
    """A new, empty network namespace (held by the returned fd); the thread stays where it is."""
    home = current()
    try:
        try:
            os.unshare(os.CLONE_NEWNET)
        except OSError as exc:
            raise HostRequirementError(
                f"cannot create a network namespace: {exc.strerror}",
                hint="guest networking needs root (CAP_SYS_ADMIN); `pyro doctor` checks it",
            ) from exc
        try:
            return current()
        finally:
            os.setns(home, os.CLONE_NEWNET)
    finally:
        os.close(home)


@contextlib.contextmanager
def entered(ns_fd: int) -> Iterator[None]:
    """Run the block (and anything it forks) in the namespace `ns_fd`, then come back."""
    home = current()
    try:
        os.setns(ns_fd, os.CLONE_NEWNET)
        try:
            yield
        finally:
            os.setns(home, os.CLONE_NEWNET)
    finally:
        os.close(home)


def open_tap(name: str, *, persist: bool = False) -> int:
    """Create TAP `name` in the calling thread's namespace; returns its queue fd.

    A TAP that does not persist goes when its last fd closes (QEMU takes the fd); a VMM
    that opens the TAP by name itself (Firecracker) needs it to persist, until its
    namespace goes.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostRequirementError(
            f"cannot open /dev/net/tun: {exc.strerror}",
            hint="load the tun module (modprobe tun); `pyro doctor` checks it",
        ) from exc
    try:
        request = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, request)
        if persist:
            fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_forwarding(on: bool) -> None:
    """Turn IPv4 forwarding on or off in the calling thread's namespace (written only when it
    differs: /proc/sys/net shows the namespace of the thread that opens it)."""
    want = b"1" if on else b"0"
    fd = os.open("/proc/sys/net/ipv4/ip_forward", os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.read(fd, 4).strip() != want:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, want)
    finally:
        os.close(fd)


@contextlib.contextmanager
def throwaway_namespace() -> Iterator[int]:
    """A namespace held only by the block (and whatever joins it meanwhile)."""
    ns = create()
    try:
        yield ns
    finally:
        os.close(ns)
