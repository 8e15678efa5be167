"""The QMP client against a fake monitor: a UNIX socket server speaking QMP's JSON lines.

Each fake runs a script (a function of the accepted connection) in a thread; what the client
sent is kept in `received`. Waits are bounded: a client that misbehaves fails, never hangs.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.errors import PyroError, PyroTimeoutError, VmmError
from pyro_mcp.host.unix import bind_unix
from pyro_mcp.vmm.qmp import Qmp

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}
WAIT = 10.0


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


class Peer:
    """The server's side of one client connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.received: list[dict[str, Any]] = []
        conn.settimeout(WAIT)

    def read(self, count: int = 1) -> list[dict[str, Any]]:
        """The next `count` commands (fails the script after WAIT seconds)."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            while b"\n" not in self.buffer:
                chunk = self.conn.recv(65536)
                if not chunk:
                    raise EOFError("the client hung up")
                self.buffer += chunk
            raw, _, self.buffer = self.buffer.partition(b"\n")
            got.append(json.loads(raw))
        self.received += got
        return got

    def send(self, *messages: Any) -> None:
        self.conn.sendall(b"".join(line(m) for m in messages))


Script = Callable[[Peer], None]


class FakeMonitor:
    def __init__(self, path: Path, script: Script, *, greet: bool = True) -> None:
        self.path = path
        self.script = script
        self.greet = greet
        self.peer: Peer | None = None
        self.error: BaseException | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeMonitor:
        bind_unix(self.listener, self.path)
        self.listener.listen(1)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.listener.settimeout(WAIT)
            conn, _ = self.listener.accept()
            with conn:
                self.peer = Peer(conn)
                if self.greet:
                    self.peer.send(GREETING)
                self.script(self.peer)
        except BaseException as exc:
            self.error = exc

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.peer.received if self.peer else []

    def finish(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the fake monitor's script did not end"
        self.listener.close()
        if self.error is not None:
            raise self.error


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "qmp.sock"


@pytest.fixture
def monitor(sock_path: Path) -> Iterator[Callable[..., FakeMonitor]]:
    made: list[FakeMonitor] = []

    def make(script: Script, **kwargs: Any) -> FakeMonitor:
        fake = FakeMonitor(sock_path, script, **kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.listener.close()


def connect(path: Path) -> Qmp:
    return Qmp.connect(path, timeout=WAIT)


# --- round trips ---------------------------------------------------------------------------


def test_execute_sends_the_command_and_returns_its_answer(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.send({"return": {}})
        peer.read()
        peer.send({"return": {"status": "running", "running": True}})

    fake = monitor(script)
    qmp = connect(sock_path)
    try:
        assert qmp.execute("qmp_capabilities") == {}
        args = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
        assert qmp.execute("migrate-set-capabilities", args) == {
            "status": "running",
            "running": True,
        }
    finally:
        qmp.close()
    fake.finish()
    assert fake.received == [
        {"execute": "qmp_capabilities"},  # no "arguments" when there are none
        {"execute": "migrate-set-capabilities", "arguments": args},
    ]


def test_an_answer_without_a_return_value_is_none(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.send({"id": 1})

    fake = monitor(script)
    qmp = connect(sock_path)
    assert qmp.execute("stop") is None
    qmp.close()
    fake.finish()


def test_pipelined_commands_go_out_before_any_answer_is_read(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    """The server answers only once it holds all three commands: a client that waited for
    each answer before sending the next would fail here (after WAIT), not pass."""

    def script(peer: Peer) -> None:
        peer.read(3)
        peer.send(
            {"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}},
            {"return": {}},
            {"return": {"second": 2}},
            {"event": "MIGRATION", "data": {"status": "setup"}},
            {"return": {"third": 3}},
        )

    fake = monitor(script)
    qmp = connect(sock_path)
    qmp.send("qmp_capabilities")
    qmp.send("migrate-set-capabilities", {"capabilities": []})
    qmp.send("migrate-incoming", {"uri": "fd:3"})
    assert [qmp.result() for _ in range(3)] == [{}, {"second": 2}, {"third": 3}]
    assert [e["event"] for e in qmp.events] == ["RESUME", "MIGRATION"]
    qmp.close()
    fake.finish()
    assert [m["execute"] for m in fake.received] == [
        "qmp_capabilities",
        "migrate-set-capabilities",
        "migrate-incoming",
    ]
    assert fake.received[2]["arguments"] == {"uri": "fd:3"}


def test_answers_split_into_single_bytes_are_put_back_together(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read(2)
        for byte in line({"return": {"a": "x" * 100}}) + line({"return": [1, 2]}):
            peer.conn.sendall(bytes([byte]))

    fake = monitor(script)
    qmp = connect(sock_path)
    qmp.send("one")
    qmp.send("two")
    assert qmp.result() == {"a": "x" * 100}
    assert qmp.result() == [1, 2]
    qmp.close()
    fake.finish()


# --- errors --------------------------------------------------------------------------------


def test_an_error_answer_raises_a_vmm_error_with_qemus_description(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read(3)
        peer.send(
            {"return": {}},
            {"error": {"class": "GenericError", "desc": "Migration is disabled"}},
            {"return": {"after": True}},
        )

    fake = monitor(script)
    qmp = connect(sock_path)
    for name in ("a", "b", "c"):
        qmp.send(name)
    assert qmp.result() == {}
    with pytest.raises(VmmError, match="QEMU refused a command: Migration is disabled"):
        qmp.result()
    assert qmp.result() == {"after": True}  # the stream stays in step after an error
    qmp.close()
    fake.finish()


def test_an_error_without_a_description_names_what_qemu_sent(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.send({"error": {"class": "CommandNotFound"}})

    fake = monitor(script)
    qmp = connect(sock_path)
    with pytest.raises(VmmError, match="CommandNotFound"):
        qmp.execute("nonsense")
    qmp.close()
    fake.finish()


@pytest.mark.parametrize("message", [[1, 2], "text", 42, None])
def test_a_message_that_is_not_an_object_raises(
    monitor: Callable[..., FakeMonitor], sock_path: Path, message: Any
) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.send(message)

    fake = monitor(script)
    qmp = connect(sock_path)
    with pytest.raises(VmmError, match="unexpected QMP message"):
        qmp.execute("query-status")
    qmp.close()
    fake.finish()


def test_a_line_that_is_not_json_raises_a_vmm_error(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read()
        peer.conn.sendall(b"{this is not json\n")

    fake = monitor(script)
    qmp = connect(sock_path)
    with pytest.raises(VmmError, match="unexpected QMP message"):
        qmp.execute("query-status")
    qmp.close()
    fake.finish()


def test_a_monitor_that_hangs_up_raises_a_vmm_error(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    def script(peer: Peer) -> None:
        peer.read()  # and close, answering nothing

    fake = monitor(script)
    qmp = connect(sock_path)
    with pytest.raises(VmmError, match="closed its monitor"):
        qmp.execute("quit")
    qmp.close()
    fake.finish()


def test_a_monitor_that_dies_with_commands_unread_raises_a_vmm_error(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    """A QEMU that exits (say, on a bad migration stream) with our commands still queued:
    the kernel resets the connection. That is the VMM failing, and must read as such (the
    supervisor falls back to a cold boot on a VmmError, not on an OSError)."""
    sent = threading.Event()

    def script(peer: Peer) -> None:
        sent.wait(WAIT)
        # SO_LINGER 0: close at once, whatever is queued (as a process that is killed).
        peer.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    fake = monitor(script)
    qmp = connect(sock_path)
    qmp.send("qmp_capabilities")
    qmp.send("migrate-incoming", {"uri": "fd:3"})
    sent.set()
    with pytest.raises(VmmError):
        qmp.result()
    with pytest.raises(VmmError):  # and sending to the dead monitor, too
        for _ in range(100):
            qmp.send("query-status")
    qmp.close()
    fake.finish()


def test_a_monitor_that_never_answers_times_out(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    release = threading.Event()

    def script(peer: Peer) -> None:
        peer.read()
        release.wait(WAIT)

    fake = monitor(script)
    qmp = Qmp.connect(sock_path, timeout=0.2)  # an answer then gets 1 s (the floor)
    with pytest.raises(PyroTimeoutError):
        qmp.execute("query-migrate")
    release.set()
    qmp.close()
    fake.finish()


# --- connecting ----------------------------------------------------------------------------


def test_connect_waits_for_the_socket_to_appear(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    """QEMU creates its monitor socket a moment after it starts."""
    fakes: list[FakeMonitor] = []

    def later() -> None:
        time.sleep(0.2)
        fakes.append(monitor(lambda peer: peer.read()))

    starter = threading.Thread(target=later)
    starter.start()
    qmp = connect(sock_path)
    qmp.close()
    starter.join(WAIT)
    with pytest.raises(EOFError):
        fakes[0].finish()  # the client read the greeting and hung up


def test_connect_gives_up_when_no_monitor_appears(sock_path: Path) -> None:
    with pytest.raises(PyroTimeoutError, match="did not open its monitor"):
        Qmp.connect(sock_path, timeout=0.1)


def test_connect_gives_up_on_a_socket_nobody_listens_on(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(stale, sock_path)  # bound, never listening: connect is refused
    try:
        with pytest.raises(PyroTimeoutError):
            Qmp.connect(sock_path, timeout=0.1)
    finally:
        stale.close()


def test_connect_to_a_monitor_that_hangs_up_before_its_greeting_raises(
    monitor: Callable[..., FakeMonitor], sock_path: Path
) -> None:
    fake = monitor(lambda peer: None, greet=False)
    with pytest.raises(VmmError):
        connect(sock_path)
    fake.finish()


def test_a_long_socket_path_works(tmp_path: Path, monitor: Callable[..., FakeMonitor]) -> None:
    del monitor
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "qmp.sock"
    assert len(str(path)) > 108

    def script(peer: Peer) -> None:
        peer.read()
        peer.send({"return": {"ok": 1}})

    fake = FakeMonitor(path, script).start()
    qmp = connect(path)
    assert qmp.execute("x") == {"ok": 1}
    qmp.close()
    fake.finish()


def test_every_failure_is_a_pyro_error() -> None:
    assert issubclass(VmmError, PyroError) and issubclass(PyroTimeoutError, PyroError)
