"""Secrets in the real agent process (a sandboxed workspace on this host): secrets.put into a
private directory, secret_env on exec, shells and services, and redaction of every output the
guest keeps or sends. No duration is asserted."""

from __future__ import annotations

import base64
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.agent_harness import (
    WAIT,
    Raw,
    RunningAgent,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from pyro_mcp.agent import guest_secrets
from pyro_mcp.agent_client import services as guest_services
from pyro_mcp.agent_client import shells as sh
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.agent_client.secrets import install_secrets
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.protocol import frames
from pyro_mcp.protocol.ops import ParamError
from pyro_mcp.protocol.redaction import MARKER_TEXT

TOKEN = "tok-9f8e7d6c5b4a-SECRET"
KEY = "line one\nline two of the key"


@pytest.fixture
def running() -> Iterator[RunningAgent]:
    with short_workdir("pyro-secrets-") as workdir:
        agent = start_agent(workdir)
        try:
            yield agent
        finally:
            with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as client:
                for shell in sh.list_shells(client):
                    sh.close_shell(client, shell.shell_id)
            stop_agent(agent, forbid_traceback=True)


@pytest.fixture
def client(running: RunningAgent) -> Iterator[GuestClient]:
    with GuestClient.connect_unix(running.socket_path, timeout=WAIT) as connected:
        install_secrets(connected, {"TOKEN": TOKEN.encode(), "KEY": KEY.encode()})
        yield connected


def secrets_dir(agent: RunningAgent) -> Path:
    root = Path(agent.socket_path).parent / "root"
    return root / "run" / "pyro-secrets"


def test_put_writes_a_private_directory_and_replaces_the_set(
    running: RunningAgent, client: GuestClient
) -> None:
    folder = secrets_dir(running)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["KEY", "TOKEN"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert (folder / "TOKEN").read_text() == TOKEN
    assert install_secrets(client, {"OTHER": b"other-value"}) == ["OTHER"]
    assert sorted(p.name for p in folder.iterdir()) == ["OTHER"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".pyro-secrets")]
    with pytest.raises(InvalidArgumentError, match="unknown workspace secret 'TOKEN'"):
        client.exec(["true"], timeout=10, secret_env={"TOKEN": "TOKEN"})
    assert install_secrets(client, {}) == []
    assert list(folder.iterdir()) == []


def test_put_refuses_bad_sets_without_echoing_values(running: RunningAgent) -> None:
    conn = Raw(running.socket_path)
    try:
        conn.hello()
        bodies = [
            b"not json",
            b'{"bad-name": "eA=="}',
            b'{"A": "not base64!"}',
            b'{"A": ""}',
            b'["A"]',
        ]
        for rid, body in enumerate(bodies, start=1):
            conn.request(rid, "secrets.put", {})
            conn.send(frames.in_header(rid), body)
            conn.send(frames.in_header(rid), b"")
            answer = conn.until_result(rid)[1]
            assert not answer["ok"] and answer["error"]["code"] == frames.ERR_INVALID_ARGUMENT
            assert "base64!" not in answer["error"]["message"]
    finally:
        conn.close()
    with (
        GuestClient.connect_unix(running.socket_path, timeout=WAIT) as client,
        pytest.raises(InvalidArgumentError, match="must match"),
    ):
        install_secrets(client, {"bad-name": b"x"})


def test_exec_gets_only_the_secrets_it_asks_for_and_its_output_is_redacted(
    client: GuestClient,
) -> None:
    plain = client.exec(["sh", "-c", 'echo "[$TOKEN][$GH]"'], timeout=10)
    assert plain.stdout == "[][]\n"
    mapped = client.exec(
        ["sh", "-c", 'echo "$GH"; printf %s "$GH" | base64; echo "$GH" >&2'],
        timeout=10,
        secret_env={"TOKEN": "GH"},
    )
    assert TOKEN not in mapped.stdout + mapped.stderr
    assert mapped.stdout.splitlines()[0] == MARKER_TEXT
    assert base64.b64encode(TOKEN.encode()).decode() not in mapped.stdout
    assert mapped.stderr == MARKER_TEXT + "\n"
    # Any process can read the tmpfs as root: the output is redacted whatever asked for it.
    read_back = client.exec(["sh", "-c", "cat ../run/pyro-secrets/*"], timeout=10)
    assert TOKEN not in read_back.stdout and "line two of the key" not in read_back.stdout


def test_exec_redacts_a_secret_split_across_pipe_reads(client: GuestClient) -> None:
    half = len(TOKEN) // 2
    script = f"printf %s '{TOKEN[:half]}'; sleep 0.2; printf '%s\\n' '{TOKEN[half:]}'"
    streamed: list[bytes] = []
    result = client.exec(
        ["sh", "-c", script], timeout=10, on_output=lambda s, data: streamed.append(data)
    )
    assert result.exit_code == 0
    assert b"".join(streamed) == (MARKER_TEXT + "\n").encode()


def test_stdout_and_stderr_are_redacted_as_two_streams(client: GuestClient) -> None:
    # One stream's undecided tail must never mix with the other's.
    half = len(TOKEN) // 2
    script = (
        f"printf %s '{TOKEN[:half]}'; printf %s '{TOKEN[:half]}' >&2; sleep 0.2; "
        f"printf %s '{TOKEN[half:]}' >&2; printf %s '{TOKEN[half:]}'"
    )
    result = client.exec(["sh", "-c", script], timeout=10)
    assert (result.stdout, result.stderr) == (MARKER_TEXT, MARKER_TEXT)


def test_exec_output_cap_applies_after_redaction(client: GuestClient) -> None:
    result = client.exec(["sh", "-c", f"echo {TOKEN}{TOKEN}"], timeout=10, max_output=5)
    assert result.stdout == MARKER_TEXT[:5] and result.stdout_truncated


def test_shell_env_and_ring_are_redacted_even_split_across_reads(client: GuestClient) -> None:
    info = sh.open_shell(client, secret_env={"TOKEN": "API_TOKEN", "KEY": "KEY"})
    text = ""
    cursor = 0

    def read_until(pattern: str) -> None:
        def look() -> bool:
            nonlocal text, cursor
            got = sh.read_shell(client, info.shell_id, cursor=cursor, wait_for_idle_ms=50)
            text += got.output
            cursor = got.next_cursor
            return re.search(pattern, text) is not None

        wait_until(look, f"{pattern!r} in the shell's output")

    read_until(re.escape("pyro$ "))
    half = len(TOKEN) // 2
    # The secret is printed in two halves with a pause, so two reads could see one each.
    sh.write_shell(
        client,
        info.shell_id,
        f"printf %s \"${{API_TOKEN:0:{half}}}\"; sleep 0.3; printf '%s|%s\\n' "
        f'"${{API_TOKEN:{half}}}" "$KEY"; echo D""ONE',
    )
    read_until(r"DONE\r\n")
    assert TOKEN not in text and TOKEN[:half] not in text
    assert "line two" not in text
    assert f"{MARKER_TEXT}|{MARKER_TEXT}" in text


def test_service_env_and_logs_are_redacted(client: GuestClient) -> None:
    record = guest_services.start_service(
        client,
        {
            "name": "web",
            "command": 'echo "token=$T"; printf %s "$T" | od -An -tx1 | tr -d " \\n"; echo',
            "secret_env": {"TOKEN": "T"},
        },
    )
    wait_until(
        lambda: guest_services.service_status(client, "web").state != "running",
        "the service to end",
    )
    logs = guest_services.service_logs(client, "web", tail_lines=None)
    assert record.name == "web"
    assert TOKEN not in logs.stdout and TOKEN.encode().hex() not in logs.stdout
    assert logs.stdout.splitlines() == [f"token={MARKER_TEXT}", MARKER_TEXT]
    with pytest.raises(InvalidArgumentError, match="unknown workspace secret 'NOPE'"):
        guest_services.start_service(
            client, {"name": "w2", "command": "true", "secret_env": {"NOPE": "X"}}
        )


def test_an_agent_that_restarts_finds_the_set(tmp_path: Path) -> None:
    store = guest_secrets.SecretStore(str(tmp_path / "run" / "pyro-secrets"))
    assert store.names() == [] and not store.redactor().active
    store.put({"TOKEN": TOKEN.encode()})
    again = guest_secrets.SecretStore(store.directory)
    assert again.names() == ["TOKEN"]
    assert again.env_for({"TOKEN": "X"}) == {"X": TOKEN}
    assert again.redactor().redact(TOKEN.encode()) == MARKER_TEXT.encode()
    again.put({"NUL": b"a\0b"})
    with pytest.raises(ParamError, match="NUL") as info:
        again.env_for({"NUL": "N"})
    assert "a\0b" not in str(info.value)


def test_the_agents_own_log_never_shows_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = guest_secrets.SecretStore(str(tmp_path / "pyro-secrets"))
    store.put({"TOKEN": TOKEN.encode()})
    with caplog.at_level(logging.INFO, logger="pyro-agent"):
        logging.getLogger("pyro-agent").info("request 7 failed: no file /workspace/%s", TOKEN)
    assert caplog.messages == [f"request 7 failed: no file /workspace/{MARKER_TEXT}"]
