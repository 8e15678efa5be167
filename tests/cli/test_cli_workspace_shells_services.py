"""`pyro workspace shell|service …` against a recording stand-in for the SDK: options before
or after the positionals (and before `--`) map to the same call, and output goes where the
contract puts it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pyro_mcp import sdk
from pyro_mcp.cli.main import main

WID, SID = "0123456789ab", "ba9876543210"
SHELL = {"workspace_id": WID, "shell_id": SID, "cwd": "/workspace", "cols": 120, "rows": 30,
         "state": "running", "started_at": 1.0, "ended_at": None, "exit_code": None,
         "execution_mode": "qemu-tcg"}  # fmt: skip
SERVICE = {"workspace_id": WID, "service_name": "web", "state": "running", "command": "srv",
           "cwd": "/workspace", "started_at": 1.0, "ended_at": None, "exit_code": None,
           "pid": 42, "execution_mode": "qemu-tcg", "readiness": None, "ready_at": 1.0,
           "stop_reason": None,
           "published_ports": [{"host": "127.0.0.1", "host_port": 8080, "guest_port": 80,
                                "protocol": "tcp"}]}  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.calls.append((name, args, kwargs))
            if "shell" in name:
                extra = {
                    "cursor": 0,
                    "next_cursor": 3,
                    "output": "hi\n",
                    "truncated": False,
                    "plain": False,
                    "input_length": 2,
                    "signal": "INT",
                    "closed": True,
                }
                return {**SHELL, **extra}  # fmt: skip
            if name == "list_services":
                return {"workspace_id": WID, "count": 1, "running_count": 1, "services": [SERVICE]}
            return {**SERVICE, "stdout": "out\n", "stderr": "err\n", "truncated": False}

        return method


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(sdk, "Pyro", lambda **kwargs: recorder)
    return recorder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["workspace", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "start", WID, "web", "--ready-file", ".ready", "--publish", "8080:80"],
        ["service", "start", "--ready-file", ".ready", WID, "--publish", "8080:80", "web"],
    ],
)
def test_service_start_options_anywhere_before_the_command(
    fake: Recorder, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv, "--", "python3", "-m", "http.server", "80")
    assert (code, out) == (0, "")
    name, args, kwargs = fake.calls[0]
    assert (name, args) == ("start_service", (WID, "web"))
    assert kwargs["command"] == ["python3", "-m", "http.server", "80"]
    assert kwargs["readiness"] == {"type": "file", "path": ".ready"}
    assert kwargs["published_ports"] == [{"guest_port": 80, "host_port": 8080}]
    assert kwargs["secret_env"] is None
    assert err.startswith("[workspace-service-start] ") and "127.0.0.1:8080->80/tcp" in err


def test_shell_and_service_take_secret_env(
    fake: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "shell", "open", WID, "--secret-env", "TOKEN=GH_TOKEN")[0] == 0
    code, _, _ = run(capsys, "service", "start", WID, "web", "--secret-env", "DB", "--", "x")
    assert code == 0
    assert [call[2]["secret_env"] for call in fake.calls] == [{"TOKEN": "GH_TOKEN"}, {"DB": "DB"}]


def test_two_readiness_options_and_a_bad_publish_are_refused(
    fake: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "service", "start", WID, "web", "--ready-file", "a",
                       "--ready-tcp", "127.0.0.1:80", "--", "srv")  # fmt: skip
    assert code == 2 and "not allowed with" in err
    code, _, err = run(capsys, "service", "start", WID, "web", "--publish", "x:80", "--", "srv")
    assert code == 1 and "[HOST_PORT:]GUEST_PORT" in err
    assert fake.calls == []


def test_service_list_logs_and_json(fake: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "service", "list", WID)[1] == (
        "web [running] cwd=/workspace published=127.0.0.1:8080->80/tcp\n"
    )
    code, out, err = run(capsys, "service", "logs", WID, "web", "--tail-lines", "5")
    assert (code, out) == (0, "out\n") and err.startswith("err\n[workspace-service-logs] ")
    assert fake.calls[-1][2] == {"tail_lines": 5, "all": False}
    code, out, _ = run(capsys, "service", "stop", "--json", WID, "web")
    assert code == 0 and json.loads(out)["service_name"] == "web"


@pytest.mark.parametrize(
    "argv",
    [
        ["shell", "read", WID, SID, "--cursor", "7", "--plain", "--wait-for-idle-ms", "200"],
        ["shell", "read", "--plain", WID, "--cursor", "7", SID, "--wait-for-idle-ms", "200"],
    ],
)
def test_shell_read_prints_output_on_stdout_and_the_summary_on_stderr(
    fake: Recorder, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (0, "hi\n")
    assert err.startswith("[workspace-shell-read] ") and "next_cursor=3" in err
    kwargs = {"cursor": 7, "max_chars": 65536, "plain": True, "wait_for_idle_ms": 200}
    assert fake.calls == [("read_shell", (WID, SID), kwargs)]


def test_shell_open_id_only_write_signal_close(
    fake: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "shell", "open", WID, "--id-only", "--cols", "80")[1] == f"{SID}\n"
    assert run(capsys, "shell", "write", WID, SID, "--input", "ls", "--no-newline")[0] == 0
    assert run(capsys, "shell", "signal", WID, SID, "--signal", "TERM")[0] == 0
    code, out, err = run(capsys, "shell", "close", WID, SID)
    assert (code, out) == (0, "") and "closed=true" in err
    assert [c[0] for c in fake.calls] == [
        "open_shell",
        "write_shell",
        "signal_shell",
        "close_shell",
    ]
    assert fake.calls[1][2] == {"input": "ls", "append_newline": False}
    assert fake.calls[2][2] == {"signal_name": "TERM"}
