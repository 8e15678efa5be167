"""GuestClient when the guest answers (or goes away) while the client is still sending input.

Each test forces one interleaving with a HeldSocket: the client's reader sees nothing the guest
sent until the sender has reached the named point. Whatever the guest said first must decide
the outcome: a malformed answer is reported as malformed, never as "connection closed".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from framework.scripted_guest import ScriptedGuest
from framework.waiting import WAIT
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import GuestError
from pyro_mcp.protocol import frames

# Far more than a socketpair buffers: the sender is still sending when the guest acts.
BIG = bytes(8 * 1024 * 1024)

Upload = Callable[[GuestClient], object]
UPLOADS: dict[str, tuple[Upload, dict[str, Any], str]] = {
    "write": (
        lambda client: client.write_file("f", BIG),
        {"bytes_written": 3, "size_bytes": 3},
        "bytes_written",
    ),
    "tar": (
        lambda client: client.extract_tar(BIG),
        {"entry_count": -1, "bytes_written": 0},
        "entry_count",
    ),
}


@pytest.fixture
def let_go() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def answer_then(result: dict[str, Any], after: Callable[[ScriptedGuest], None]) -> Any:
    """A guest that answers the request without reading its input, then does `after`."""

    def script(guest: ScriptedGuest) -> None:
        request = guest.next_request()
        guest.send(frames.ok_header(request.id, result))
        after(guest)

    return script


@pytest.mark.parametrize("name", UPLOADS)
def test_malformed_answer_then_hang_up_while_the_client_sends(name: str) -> None:
    """The guest answers and closes; the client's send fails before its reader saw the answer."""
    upload, result, message = UPLOADS[name]
    guest = ScriptedGuest(answer_then(result, lambda g: g.sock.close()), release_on="failure")
    client = GuestClient(guest.host)
    with pytest.raises(GuestError, match=message):
        upload(client)
    assert client.closed
    client.close()


@pytest.mark.parametrize("name", UPLOADS)
def test_malformed_answer_fails_the_connection_under_a_blocked_sender(
    name: str, let_go: threading.Event
) -> None:
    """The reader drops the connection for the malformed answer while the sender is blocked on
    input the guest never reads; the sender's failure must not replace that error."""
    upload, result, message = UPLOADS[name]
    guest = ScriptedGuest(answer_then(result, lambda g: let_go.wait(WAIT)), release_on="send")
    client = GuestClient(guest.host)
    with pytest.raises(GuestError, match=message):
        upload(client)
    with pytest.raises(GuestError, match=message):
        client.ping()  # the connection failed for that reason too
    client.close()


def test_a_guest_gone_without_an_answer_is_a_closed_connection() -> None:
    def hang_up(guest: ScriptedGuest) -> None:
        guest.next_request()
        guest.sock.close()

    client = GuestClient(ScriptedGuest(hang_up, release_on="failure").host)
    with pytest.raises(GuestError, match="connection closed"):
        client.write_file("f", BIG)
    assert client.closed
    client.close()


def test_a_good_answer_that_arrived_before_the_hang_up_is_kept() -> None:
    guest = ScriptedGuest(
        answer_then({"entry_count": 1, "bytes_written": 5}, lambda g: g.sock.close()),
        release_on="failure",
    )
    client = GuestClient(guest.host)
    done = client.extract_tar(BIG)
    assert (done.entry_count, done.bytes_written) == (1, 5)
    assert client.closed
    client.close()
