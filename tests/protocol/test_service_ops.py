"""The service parameters both sides check: names, commands, paths, readiness, logs, ports."""

from __future__ import annotations

from typing import Any

import pytest

from pyro_mcp.protocol import service_ops as sp
from pyro_mcp.protocol.ops import ParamError


@pytest.mark.parametrize("name", ["a", "A9", "web.1", "db_main-2", "x" * 64])
def test_good_service_names(name: str) -> None:
    assert sp.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "a b", "a/b", "../x", "x" * 65, "a\n", "é", None, 3]
)
def test_bad_service_names(name: Any) -> None:
    with pytest.raises(ParamError, match="service name"):
        sp.check_name(name)


def test_a_start_with_defaults() -> None:
    spec = sp.parse_start({"name": "web", "command": "serve"})
    assert spec.argv == ["/bin/sh", "-lc", "serve"] and spec.command == "serve"
    assert spec.given_argv is None and spec.cwd == () and spec.readiness is None
    assert spec.ready_timeout == sp.DEFAULT_READY_TIMEOUT
    assert spec.ready_interval_ms == sp.DEFAULT_READY_INTERVAL_MS
    assert spec.env["PATH"].startswith("/usr/local/sbin")


def test_a_start_with_everything() -> None:
    spec = sp.parse_start(
        {
            "name": "web",
            "argv": ["python3", "-m", "http.server"],
            "cwd": "/workspace/site",
            "env": {"PORT": "8000"},
            "readiness": {"type": "tcp", "address": "127.0.0.1:8000"},
            "ready_timeout": 120,
            "ready_interval_ms": 50,
        }
    )
    assert spec.argv == spec.given_argv == ["python3", "-m", "http.server"]
    assert spec.cwd == ("site",) and spec.env["PORT"] == "8000"
    assert spec.readiness == sp.Readiness("tcp", "127.0.0.1:8000")
    assert (spec.ready_timeout, spec.ready_interval_ms) == (120.0, 50)


@pytest.mark.parametrize(
    ("readiness", "shown"),
    [
        ({"type": "file", "path": "ready"}, {"type": "file", "path": "/workspace/ready"}),
        ({"type": "file", "path": "/workspace/a/./b"}, {"type": "file", "path": "/workspace/a/b"}),
        ({"type": "tcp", "address": "localhost:5432"}, None),
        ({"type": "http", "url": "http://127.0.0.1:8000/health"}, None),
        ({"type": "http", "url": "https://example.test/"}, None),
        ({"type": "command", "command": "pg_isready -q"}, None),
    ],
)
def test_readiness_checks(readiness: dict[str, str], shown: dict[str, str] | None) -> None:
    parsed = sp.parse_readiness(readiness)
    assert parsed is not None and parsed.to_json() == (shown or readiness)


@pytest.mark.parametrize(
    ("readiness", "match"),
    [
        ({"type": "file", "path": "a", "url": "b"}, "at most one readiness check"),
        ({"type": "tcp", "address": "h:1", "command": "x"}, "at most one readiness check"),
        ({"type": "socket", "path": "a"}, "type file, tcp, http or command"),
        ({"path": "a"}, "type file, tcp, http or command"),
        ("ready.txt", "must be an object"),
        ({"type": "file", "path": "/etc/passwd"}, "outside /workspace"),
        ({"type": "file", "path": "a/../../x"}, r"'\.\.'"),
        ({"type": "file", "path": "/workspace"}, "inside /workspace"),
        ({"type": "file"}, "non-empty string"),
        ({"type": "tcp", "address": "nohost"}, "HOST:PORT"),
        ({"type": "tcp", "address": ":80"}, "HOST:PORT"),
        ({"type": "tcp", "address": "h:70000"}, "port"),
        ({"type": "http", "url": "ftp://x/"}, "http:// or https://"),
        ({"type": "http", "url": "http://a b/"}, "spaces"),
        ({"type": "command", "command": "  "}, "non-empty"),
    ],
)
def test_bad_readiness_checks(readiness: Any, match: str) -> None:
    with pytest.raises(ParamError, match=match):
        sp.parse_readiness(readiness)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"name": "a"}, "exactly one of argv and command"),
        ({"name": "a", "argv": ["x"], "command": "x"}, "exactly one of argv and command"),
        ({"name": "a", "argv": []}, "argv"),
        ({"name": "a", "command": "x", "cwd": "/tmp"}, "outside /workspace"),
        ({"name": "a", "command": "x", "cwd": "../up"}, r"'\.\.'"),
        ({"name": "a", "command": "x", "env": {"A=B": "c"}}, "environment variable"),
        ({"name": "a", "command": "x", "ready_timeout": 0}, "ready_timeout"),
        ({"name": "a", "command": "x", "ready_timeout": 3601}, "ready_timeout"),
        ({"name": "a", "command": "x", "ready_timeout": float("nan")}, "ready_timeout"),
        ({"name": "a", "command": "x", "ready_timeout": True}, "ready_timeout"),
        ({"name": "a", "command": "x", "ready_interval_ms": 0}, "ready_interval_ms"),
        ({"name": "a", "command": "x", "ready_interval_ms": 1.5}, "ready_interval_ms"),
        ({"name": "a", "command": "x", "secrets": {}}, "unknown parameter"),
        ({"name": "a", "command": "x", "secret_env": {"bad-name": "X"}}, "must match"),
        ({"name": "a", "command": "x", "secret_env": ["A"]}, "secret_env must be an object"),
    ],
)
def test_bad_starts(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ParamError, match=match):
        sp.parse_start(params)


def test_logs_parameters() -> None:
    assert sp.parse_logs({"name": "a"}) == sp.LogsSpec("a", 200, sp.DEFAULT_LOG_BYTES)
    assert sp.parse_logs({"name": "a", "tail_lines": None, "max_bytes": 0}).tail_lines is None
    for bad in ({"name": "a", "tail_lines": -1}, {"name": "a", "max_bytes": 2**30}):
        with pytest.raises(ParamError):
            sp.parse_logs(bad)


def test_stop_grace_and_run_ids() -> None:
    assert sp.parse_grace({}) == sp.STOP_GRACE and sp.parse_grace({"grace_seconds": 0}) == 0
    with pytest.raises(ParamError):
        sp.parse_grace({"grace_seconds": 61})
    assert sp.parse_run_id("0123456789abcdef") == "0123456789abcdef"
    for bad in ("0123456789ABCDEF", "abc", None):
        with pytest.raises(ParamError, match="run_id"):
            sp.parse_run_id(bad)


def test_published_ports() -> None:
    assert sp.parse_ports(None) == []
    ports = sp.parse_ports([{"guest_port": 80}, {"guest_port": 80, "host_port": 8080}])
    assert ports == [sp.PortSpec(80, None), sp.PortSpec(80, 8080)]


@pytest.mark.parametrize(
    ("ports", "match"),
    [
        ([{"guest_port": 0}], "guest_port"),
        ([{"guest_port": 80, "host_port": 80}], "host_port"),  # below 1025: never
        ([{"guest_port": 80, "host_port": 8080}, {"guest_port": 81, "host_port": 8080}], "twice"),
        ([{"guest_port": 80, "protocol": "udp"}], "unknown parameter"),
        ([80], "guest_port"),
        ({"guest_port": 80}, "list"),
        ([{"guest_port": p} for p in range(1, 18)], "at most 16"),
    ],
)
def test_bad_published_ports(ports: Any, match: str) -> None:
    with pytest.raises(ParamError, match=match):
        sp.parse_ports(ports)
