"""The supervisor's frame relay, with socketpairs standing in for the guest and the clients.

The relay is pure routing code: these tests drive it frame by frame and check what each
side receives (ids remapped, answers routed to the client that asked, cancels forwarded).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from framework.waiting import wait_until
from pyro_mcp.protocol import frames
from pyro_mcp.protocol.frames import Frame, FrameReader
from pyro_mcp.supervisor.relay import LOCAL_OPS, Relay

WAIT = 10.0
AGENT_INFO = {"protocol": frames.PROTOCOL_VERSION, "agent_version": "test", "ops": ["exec"]}


class Peer:
    """One end of a socketpair that speaks frames, with a bounded read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.reader = FrameReader(sock)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.sock.sendall(frames.encode_frame(header, body))

    def read(self) -> Frame:
        frame = self.reader.read_frame()
        assert frame is not None, "the relay closed the connection"
        return frame

    def read_eof(self) -> None:
        """The relay closes this connection (possibly after frames we do not care about)."""
        while self.reader.read_frame() is not None:
            pass

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(WAIT)
        return not data

    def hello(self, rid: int = 1) -> dict[str, Any]:
        self.send(frames.req_header(rid, "hello", {"protocol": frames.PROTOCOL_VERSION}))
        frame = self.read()
        assert frame.id == rid and frame.header["ok"], frame.header
        result: dict[str, Any] = frame.header["result"]
        return result


class Harness:
    def __init__(self) -> None:
        relay_end, guest_end = socket.socketpair()
        self.relay = Relay(relay_end, AGENT_INFO)
        self.guest = Peer(guest_end)
        self.lost: list[str] = []
        self.local_calls: list[tuple[str, dict[str, Any]]] = []
        self.relay.on_guest_lost = self.lost.append
        self.relay.local_handler = self._local
        self.threads: list[threading.Thread] = []
        reader = FrameReader(relay_end)
        self._start(self.relay.run_guest_reader, reader)

    def _local(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        self.local_calls.append((op, params))
        if params.get("explode"):
            raise RuntimeError("local op failed")
        return {"op": op}

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def client(self) -> Peer:
        server_end, client_end = socket.socketpair()
        self._start(self.relay.serve_client, server_end)
        return Peer(client_end)

    def close(self) -> None:
        self.relay.close_clients()
        self.guest.sock.close()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def exec_req(rid: int, command: str) -> dict[str, Any]:
    return frames.req_header(rid, "exec", {"command": command, "timeout": 5})


def test_hello_is_answered_locally_with_the_agents_and_the_local_ops(harness: Harness) -> None:
    client = harness.client()
    result = client.hello(rid=7)
    assert result["protocol"] == frames.PROTOCOL_VERSION
    assert result["agent_version"] == "test"
    assert set(result["ops"]) == {"exec", *LOCAL_OPS}
    assert harness.guest.nothing_pending()  # the guest never saw the hello


def test_requests_before_hello_are_refused_and_never_reach_the_guest(harness: Harness) -> None:
    client = harness.client()
    client.send(exec_req(3, "true"))
    frame = client.read()
    assert frame.id == 3 and frame.header["ok"] is False
    assert frame.header["error"]["code"] == frames.ERR_HANDSHAKE_REQUIRED
    client.send(frames.req_header(4, "vm.status"))
    frame = client.read()
    assert frame.header["error"]["code"] == frames.ERR_HANDSHAKE_REQUIRED
    assert harness.local_calls == []
    assert harness.guest.nothing_pending()


def test_a_hello_with_another_protocol_version_is_refused(harness: Harness) -> None:
    client = harness.client()
    client.send(frames.req_header(1, "hello", {"protocol": frames.PROTOCOL_VERSION + 1}))
    frame = client.read()
    assert frame.header["error"]["code"] == frames.ERR_VERSION_MISMATCH
    client.send(exec_req(2, "true"))  # still not greeted
    assert client.read().header["error"]["code"] == frames.ERR_HANDSHAKE_REQUIRED


def test_client_ids_are_remapped_and_answers_go_back_to_the_client_that_asked(
    harness: Harness,
) -> None:
    one, two = harness.client(), harness.client()
    one.hello()
    two.hello()
    # Both clients use id 5: the guest must see two distinct ids.
    one.send(exec_req(5, "echo one"))
    first = harness.guest.read()
    two.send(exec_req(5, "echo two"))
    second = harness.guest.read()
    assert first.header["op"] == second.header["op"] == "exec"
    assert first.header["params"]["command"] == "echo one"
    assert second.header["params"]["command"] == "echo two"
    assert first.id != second.id

    # Answer in the opposite order, with output frames first.
    harness.guest.send(frames.out_header(second.id, "stdout"), b"two\n")
    harness.guest.send(frames.ok_header(second.id, {"exit_code": 2}))
    harness.guest.send(frames.out_header(first.id, "stderr"), b"one\n")
    harness.guest.send(frames.ok_header(first.id, {"exit_code": 1}))

    out = two.read()
    assert (out.id, out.type, out.header["stream"], out.body) == (5, "out", "stdout", b"two\n")
    res = two.read()
    assert (res.id, res.type, res.header["result"]) == (5, "res", {"exit_code": 2})
    out = one.read()
    assert (out.id, out.header["stream"], out.body) == (5, "stderr", b"one\n")
    res = one.read()
    assert (res.id, res.header["result"]) == (5, {"exit_code": 1})
    assert one.nothing_pending() and two.nothing_pending()


def test_a_guest_frame_for_a_finished_or_unknown_id_is_dropped(harness: Harness) -> None:
    client = harness.client()
    client.hello()
    client.send(exec_req(1, "true"))
    forwarded = harness.guest.read()
    harness.guest.send(frames.ok_header(forwarded.id, {"exit_code": 0}))
    assert client.read().header["result"] == {"exit_code": 0}
    # A second answer for the same id and one for an id nobody used go nowhere.
    harness.guest.send(frames.ok_header(forwarded.id, {"exit_code": 9}))
    harness.guest.send(frames.ok_header(forwarded.id + 100, {"exit_code": 9}))
    assert client.nothing_pending()
    assert harness.lost == []  # and the guest channel stays up


def test_cancel_is_forwarded_with_the_guest_side_id(harness: Harness) -> None:
    one, two = harness.client(), harness.client()
    one.hello()
    two.hello()
    two.send(exec_req(9, "sleep 100"))
    other = harness.guest.read()
    one.send(exec_req(9, "sleep 100"))
    mine = harness.guest.read()
    one.send(frames.cancel_header(9))
    cancel = harness.guest.read()
    assert (cancel.type, cancel.id) == (frames.CANCEL, mine.id)
    assert cancel.id != other.id
    # The agent answers the cancelled request; the client still gets its result.
    harness.guest.send(frames.ok_header(mine.id, {"cancelled": True}))
    res = one.read()
    assert (res.id, res.header["result"]) == (9, {"cancelled": True})
    # A cancel for an id that has no request in flight sends nothing.
    one.send(frames.cancel_header(42))
    assert harness.guest.nothing_pending()


def test_input_frames_are_forwarded_with_the_guest_side_id(harness: Harness) -> None:
    one, two = harness.client(), harness.client()
    one.hello()
    two.hello()
    # Both clients stream input to their own request 3 at once.
    one.send(frames.req_header(3, "file.write", {"path": "a"}))
    first = harness.guest.read()
    two.send(frames.req_header(3, "file.write", {"path": "b"}))
    second = harness.guest.read()
    one.send(frames.in_header(3), b"for a")
    two.send(frames.in_header(3), b"for b")
    one.send(frames.in_header(3))
    got = [harness.guest.read() for _ in range(3)]
    assert all(f.type == frames.IN for f in got)
    # Two clients' frames interleave in any order; one request's input keeps its order.
    assert [f.body for f in got if f.id == first.id] == [b"for a", b""]  # b"": end of input
    assert [f.body for f in got if f.id == second.id] == [b"for b"]
    harness.guest.send(frames.ok_header(first.id, {"bytes_written": 5}))
    res = one.read()
    assert (res.id, res.header["result"]) == (3, {"bytes_written": 5})
    # Input for a request that has ended, or that never existed, goes nowhere.
    one.send(frames.in_header(3), b"late")
    one.send(frames.in_header(77), b"stray")
    assert harness.guest.nothing_pending()
    assert harness.lost == []


def test_a_disconnecting_client_has_its_requests_cancelled(harness: Harness) -> None:
    leaving, staying = harness.client(), harness.client()
    leaving.hello()
    staying.hello()
    leaving.send(exec_req(1, "sleep 100"))
    a = harness.guest.read()
    leaving.send(exec_req(2, "sleep 100"))
    b = harness.guest.read()
    staying.send(exec_req(1, "sleep 100"))
    kept = harness.guest.read()

    leaving.sock.close()
    cancels = {harness.guest.read().id for _ in range(2)}
    assert cancels == {a.id, b.id}
    assert harness.guest.nothing_pending()  # the other client's request is not cancelled

    # Late answers for the abandoned requests are dropped; the other client is unaffected.
    harness.guest.send(frames.ok_header(a.id, {"exit_code": 137}))
    harness.guest.send(frames.ok_header(kept.id, {"exit_code": 0}))
    res = staying.read()
    assert (res.id, res.header["result"]) == (1, {"exit_code": 0})
    assert staying.nothing_pending()


def test_local_ops_run_in_the_supervisor_and_their_failures_are_errors(harness: Harness) -> None:
    client = harness.client()
    client.hello()
    client.send(frames.req_header(2, "vm.status", {"x": 1}))
    res = client.read()
    assert (res.id, res.header["result"]) == (2, {"op": "vm.status"})
    client.send(frames.req_header(3, "vm.shutdown", {"explode": True}))
    res = client.read()
    assert res.id == 3 and res.header["error"]["code"] == frames.ERR_INTERNAL
    assert "local op failed" in res.header["error"]["message"]
    assert harness.local_calls == [("vm.status", {"x": 1}), ("vm.shutdown", {"explode": True})]
    assert harness.guest.nothing_pending()


def test_clients_may_only_send_requests_input_and_cancels(harness: Harness) -> None:
    client = harness.client()
    client.hello()
    client.send(frames.ok_header(4, {}))
    res = client.read()
    assert res.id == 4 and res.header["error"]["code"] == frames.ERR_PROTOCOL
    assert harness.guest.nothing_pending()


def test_a_malformed_client_frame_drops_only_that_client(harness: Harness) -> None:
    bad, good = harness.client(), harness.client()
    bad.hello()
    good.hello()
    bad.send(exec_req(1, "sleep 100"))
    forwarded = harness.guest.read()
    bad.sock.sendall(b"\x00\x00\x00\x02\x00\x00\x00\x00{]")  # a header that is not JSON
    res = bad.read()
    assert res.id == 0 and res.header["error"]["code"] == frames.ERR_PROTOCOL
    bad.read_eof()
    cancel = harness.guest.read()
    assert (cancel.type, cancel.id) == (frames.CANCEL, forwarded.id)
    good.send(exec_req(1, "true"))
    assert harness.guest.read().header["params"]["command"] == "true"
    assert harness.relay.client_count() == 1


def test_losing_the_guest_closes_every_client_and_reports_why(harness: Harness) -> None:
    one, two = harness.client(), harness.client()
    one.hello()
    two.hello()
    harness.guest.sock.close()
    one.read_eof()
    two.read_eof()
    wait_until(lambda: bool(harness.lost), "the relay to report the lost guest")
    assert harness.lost == ["guest agent connection closed"]


def test_a_broken_guest_frame_is_reported_as_a_broken_channel(harness: Harness) -> None:
    client = harness.client()
    client.hello()
    harness.guest.sock.sendall(b"\xff\xff\xff\xff\x00\x00\x00\x00")  # header too large
    client.read_eof()
    wait_until(lambda: bool(harness.lost), "the relay to report the broken channel")
    assert len(harness.lost) == 1 and harness.lost[0].startswith("guest agent channel broken")


def test_client_count_follows_connections(harness: Harness) -> None:
    one = harness.client()
    one.hello()
    two = harness.client()
    two.hello()
    assert harness.relay.client_count() == 2
    one.sock.close()
    wait_until(lambda: harness.relay.client_count() == 1, "the relay to drop the client")
    assert harness.relay.client_count() == 1
