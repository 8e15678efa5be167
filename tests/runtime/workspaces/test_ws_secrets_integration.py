"""Workspace secrets in a real guest (QEMU TCG on this host): one scripted session that uses
two secrets (a literal and one from a file) in every surface, then looks for either value, in
any of its common encodings, in every byte pyro produced: SDK, CLI and MCP results, errors,
every file under the state and cache directories (the secret store itself excepted), the
console log, and /proc/*/cmdline and /proc/*/environ of every host process.

The encodings are computed here, independently of protocol/redaction.py. `leak_guard`
(framework/vm_leaks.py) proves afterwards that no VM process or file was left. Nothing
asserts a duration.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from framework.waiting import wait_until
from pyro_mcp.errors import InvalidArgumentError, PyroError
from pyro_mcp.mcp.roots import Roots
from pyro_mcp.mcp.tools import PyroTools
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
TOKEN = "tok+Zq8x=V3pL&2mN7 ~w"  # URL-encoding and base64 alignments all differ from it
DEPLOY = "deploy-key-Kp93hDqR\nsecond-line-Wm27fXrB\n"  # from a file; CRLF in a PTY
MARKER = "[REDACTED]"
WAIT = 60.0


def encodings(value: str) -> set[bytes]:
    """The value and the encodings the issue names: base64 (both alphabets, with and without
    padding), URL-encoding (upper and lower %XX), hex; CRLF line ends for a multi-line one."""
    raw = value.encode()
    found = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for b64 in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        found |= {b64, b64.rstrip(b"=")}
    for quoted in (urllib.parse.quote(raw, safe=""), urllib.parse.quote(raw),
                   urllib.parse.quote_plus(raw)):  # fmt: skip
        found |= {quoted.encode(), lower_escapes(quoted).encode()}
    if "\n" in value:
        found.add(raw.replace(b"\n", b"\r\n"))
    return found


def lower_escapes(quoted: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted)


FORBIDDEN = encodings(TOKEN) | encodings(DEPLOY)
OVERLAP = max(map(len, FORBIDDEN))
CHUNK = 16 * 1024 * 1024


def leaks(data: bytes | str) -> list[bytes]:
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [pattern for pattern in FORBIDDEN if pattern in blob]


class Outputs:
    """Everything the session got back, to be searched at the end (and along the way)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, what: str, value: Any) -> Any:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        assert not leaks(text), f"{what} leaked a secret: {text[:300]!r}"
        self.items.append((what, text))
        return value

    def error(self, what: str, call: Any) -> PyroError:
        with pytest.raises(PyroError) as info:
            call()
        exc = info.value
        self.add(what, f"{exc!s} {exc.to_dict()!r} {exc.args!r}")
        return exc


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def file_leaks(path: Path) -> list[bytes]:
    """leaks() of a file's data extents (holes skipped: disks and memory files are sparse),
    read in overlapping chunks."""
    with path.open("rb") as handle:
        fd, pos, size = handle.fileno(), 0, os.fstat(handle.fileno()).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return []  # no data after pos
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for at in range(start, end, CHUNK):
                chunk = os.pread(fd, min(CHUNK + OVERLAP, end - at), at)
                if found := leaks(chunk):
                    return found
            pos = end
    return []


def assert_no_leak_on_disk(roots: list[Path], skip: list[Path], since: float) -> int:
    """Every file under roots written since `since` is clean, except those in or under
    `skip`; returns how many were read. (A file older than the test cannot hold its values.)"""
    count = 0
    for path in files_under(*roots):
        if any(path == s or s in path.parents for s in skip) or path.stat().st_mtime < since:
            continue
        count += 1
        assert not file_leaks(path), f"{path} holds a secret"
    return count


def assert_no_leak_in_proc() -> int:
    checked = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue  # gone, or not ours to read
            checked += 1
            assert not leaks(data), f"/proc/{pid}/{part} holds a secret"
    return checked


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def cli(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYRO_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "pyro_mcp.cli.main", *args],
        capture_output=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_secrets_never_leave_the_guest(
    vm_pyro: Pyro, built_debian12: Any, leak_guard: LeakGuard, tmp_path: Path
) -> None:
    pyro, out, began = vm_pyro, Outputs(), time.time() - 1
    key_file = tmp_path / "deploy.key"
    key_file.write_text(DEPLOY)
    created = pyro.create_workspace(
        environment=ENV,
        secrets=[
            {"name": "API_TOKEN", "value": TOKEN},
            {"name": "DEPLOY_KEY", "file_path": str(key_file)},
        ],
    )
    wid = out.add("create", created)["workspace_id"]
    assert created["secrets"] == [
        {"name": "API_TOKEN", "source_kind": "literal"},
        {"name": "DEPLOY_KEY", "source_kind": "file"},
    ]
    both = {"API_TOKEN": "TOKEN", "DEPLOY_KEY": "DEPLOY"}

    def run(command: str, secret_env: dict[str, str] | None = both) -> dict[str, Any]:
        result = pyro.exec_workspace(wid, command=command, secret_env=secret_env)
        return out.add(f"exec {command}", result)  # type: ignore[no-any-return]

    # In the guest: exactly the values, in a root-only tmpfs, only where asked for.
    check = 'printf %s "$TOKEN" | sha256sum; printf %s "$DEPLOY" | sha256sum; sync'
    assert run(check)["stdout"].split()[::2] == [sha(TOKEN), sha(DEPLOY)]
    got = run(
        "stat -c '%a %U %n' /run/pyro-secrets /run/pyro-secrets/*; python3 -c \"print(["
        "l.split()[2] for l in open('/proc/mounts') if l.split()[1] == '/run'][-1])\"",
        None,
    )
    assert got["stdout"].splitlines() == [
        "700 root /run/pyro-secrets",
        "600 root /run/pyro-secrets/API_TOKEN",
        "600 root /run/pyro-secrets/DEPLOY_KEY",
        "tmpfs",
    ], got
    assert run('echo "${TOKEN-unset} ${API_TOKEN-unset}"', None)["stdout"] == "unset unset\n"
    # the guest has them, and its disk does not (until a command writes one to a file)
    state, cache = Path(os.environ["PYRO_STATE_DIR"]), built_debian12.cache_dir
    disk = pyro.workspaces.disk_path(pyro.workspaces.row(wid))
    assert not file_leaks(disk)
    got = run('test -n "$T2" && echo mapped', {"API_TOKEN": "T2"})
    assert got["stdout"] == "mapped\n"

    # exec: stdout, stderr, encodings, a value split across writes and lines
    got = run('printf %s "$TOKEN"; printf %s "$DEPLOY" >&2')
    assert (got["stdout"], got["stderr"]) == (MARKER, MARKER)
    got = run(
        'printf %s "$TOKEN" | base64 -w0; echo; printf %s "$DEPLOY" | base64 -w0; echo; '
        'printf %s "$TOKEN" | od -An -tx1 | tr -d " \\n"; echo; '
        "python3 -c \"import os, urllib.parse as u; v = os.environ['TOKEN']; "
        "import re; print(u.quote(v, safe='')); "
        "print(re.sub('%[0-9A-F]{2}', lambda m: m.group(0).lower(), u.quote_plus(v)))\""
    )
    assert got["stdout"].count(MARKER) == 5, got["stdout"]
    got = run(
        "python3 -c \"import os, sys, time; v = os.environ['TOKEN']\n"
        "for part in (v[:7], v[7:13], v[13:]): sys.stdout.write(part); sys.stdout.flush(); "
        'time.sleep(0.2)"'
    )
    assert got["stdout"] == MARKER
    # the command text, recorded and returned, when it holds a value itself
    got = run(f"echo '{TOKEN}' > /dev/null; echo typed")
    assert MARKER in got["command"] and got["stdout"] == "typed\n"
    status = out.add("status", pyro.status_workspace(wid))
    assert MARKER in status["last_command"]["command"]

    # a file the guest wrote: read, diff and export show no value
    run('printf "%s\\n" "$TOKEN" > leak.txt; printf %s "$DEPLOY" | base64 > leak64.txt')
    read = out.add("file read", pyro.read_workspace_file(wid, "leak.txt"))
    assert read["content"] == MARKER + "\n"
    cut = out.add("file read cut", pyro.read_workspace_file(wid, "leak.txt", max_bytes=9))
    assert cut["truncated"] and cut["content"] == ""
    out.add("file list", pyro.list_workspace_files(wid, recursive=True))
    patch = out.add("diff", pyro.diff_workspace(wid))["patch"]
    assert "+" + MARKER in patch
    exported = out.add(
        "export", pyro.export_workspace(wid, "/workspace", output_path=tmp_path / "exp")
    )
    assert exported["artifact_type"] == "directory"
    assert (tmp_path / "exp" / "leak.txt").read_text() == MARKER + "\n"
    assert not leaks((tmp_path / "exp" / "leak64.txt").read_bytes())

    # a shell: the ring in the guest never holds a value, even one typed, split or multi-line
    shells = pyro.manager.shells
    shell = out.add("shell open", pyro.open_shell(wid, secret_env=both))
    sid, text = shell["shell_id"], ""

    def read_until(needle: str) -> None:  # typed as s1''-done, so only the output matches
        def look() -> bool:
            nonlocal text
            got = out.add("shell read", pyro.read_shell(wid, sid, cursor=len(text)))
            text += got["output"]
            return needle in text

        wait_until(look, f"{needle!r} in the shell", WAIT)

    pyro.write_shell(wid, sid, input='printf "%s\\n" "$DEPLOY"; echo "$TOKEN"; echo s1' + "''-done")
    read_until("s1-done\r\n")
    pyro.write_shell(
        wid, sid,
        input="python3 -c \"import os, sys, time; v = os.environ['DEPLOY']\n"
        "for c in v: sys.stdout.write(c); sys.stdout.flush(); time.sleep(0.01)\"; echo s2''-done",
    )  # fmt: skip
    read_until("s2-done\r\n")
    pyro.write_shell(wid, sid, input=f"echo '{TOKEN}' | wc -c; echo s3''-done")  # typed: echoed
    read_until("s3-done\r\n")
    assert text.count(MARKER) >= 4, text
    out.add("shell plain", shells.read(wid, sid, cursor=0, plain=True))
    out.add("shell close", pyro.close_shell(wid, sid))

    # a service: its logs, stored command and readiness
    svc = pyro.start_service(
        wid, "app",
        command='echo "$TOKEN"; printf %s "$DEPLOY" | base64 >&2; touch ready; exec sleep 600',
        readiness={"type": "file", "path": "ready"}, secret_env=both,
    )  # fmt: skip
    assert out.add("service start", svc)["state"] == "running"
    logs = out.add("service logs", pyro.logs_service(wid, "app"))
    assert logs["stdout"] == MARKER + "\n" and MARKER in logs["stderr"]
    out.add("service list", pyro.list_services(wid))
    failing = pyro.start_service(
        wid, "bad", command=f"echo '{TOKEN}'; exit 3", secret_env={"API_TOKEN": "TOKEN"}
    )
    assert MARKER in out.add("service failed", failing)["command"]

    # errors provoked on purpose: each quotes what was asked, which held a value
    out.error("read error", lambda: pyro.read_workspace_file(wid, f"/workspace/{TOKEN}"))
    out.error("write error", lambda: pyro.write_workspace_file(wid, f"/etc/{TOKEN}", text="x"))
    out.error("shell cwd error", lambda: pyro.open_shell(wid, cwd=f"/workspace/{TOKEN}"))
    unknown = out.error("unknown secret", lambda: run("true", {"NOPE": "X"}))
    assert isinstance(unknown, InvalidArgumentError)
    assert "unknown workspace secret 'NOPE'" in str(unknown)
    out.error("bad env name", lambda: run("true", {"API_TOKEN": "1BAD"}))

    # the CLI and MCP faces of the same workspace
    done = cli(["workspace", "exec", wid, "--secret-env", "API_TOKEN=TOKEN", "--",
                "sh", "-c", 'printf %s "$TOKEN"'], built_debian12.cache_dir)  # fmt: skip
    assert done.returncode == 0 and done.stdout == MARKER.encode(), done
    out.add("cli exec", done.stdout.decode() + done.stderr.decode())
    for args in (["workspace", "logs", wid, "--json"], ["workspace", "status", wid],
                 ["workspace", "service", "logs", wid, "app", "--json"]):  # fmt: skip
        done = cli(args, built_debian12.cache_dir)
        assert done.returncode == 0, done
        out.add(f"cli {args}", done.stdout.decode() + done.stderr.decode())
    tools = {n: t for n, (t, _) in PyroTools(pyro, Roots([tmp_path])).table().items()}
    got = tools["workspace_exec"](
        workspace_id=wid, command='printf %s "$K"', secret_env={"DEPLOY_KEY": "K"}
    )
    assert out.add("mcp exec", got)["stdout"] == MARKER
    out.add("mcp logs", tools["workspace_logs"](workspace_id=wid))

    # logs of every command: text and output
    history = out.add("logs", pyro.logs_workspace(wid))
    assert any(MARKER in entry["command"] for entry in history["entries"])

    # nothing on the host holds a value but the store itself; nor any process's /proc
    store = pyro.workspaces.directory(wid) / "secrets"
    assert sorted(p.name for p in store.iterdir()) == ["API_TOKEN", "DEPLOY_KEY", "kinds.json"]
    assert (store.stat().st_mode & 0o777, (store / "API_TOKEN").stat().st_mode & 0o777) == (
        0o700, 0o600,
    )  # fmt: skip
    # (the workspace's disk holds what its commands wrote: leak.txt, by design)
    roots, skip = [state, Path(os.environ["PYRO_CACHE_DIR"]), cache], [store, disk]
    consoles = [p for p in files_under(state) if p.name == "console.log"]
    assert consoles, "the running VM's console log is under the state directory"
    assert assert_no_leak_on_disk(roots, skip, began) > 0
    assert assert_no_leak_in_proc() > 0

    # the secrets survive reset and stop/start, and are the same values
    out.add("reset", pyro.reset_workspace(wid))
    assert run(check)["stdout"].split()[::2] == [sha(TOKEN), sha(DEPLOY)]
    assert not file_leaks(disk), "reset: a fresh disk, and /run is not on it"
    assert out.add("stop", pyro.stop_workspace(wid))["workspace_stop"]["memory_kept"]
    # Stop kept the guest's memory: its processes (a shell given a secret, the agent) hold the
    # values there. That file is the guest's RAM, kept like the store: 0600, in the
    # workspace's own directory, gone at start; the tmpfs copy left the guest before it.
    memory = pyro.workspaces.directory(wid) / "suspended"
    assert (memory / "state.bin").stat().st_mode & 0o777 == 0o600
    assert assert_no_leak_on_disk(roots, [store, memory], began) > 0
    out.add("start", pyro.start_workspace(wid))
    assert run(check)["stdout"].split()[::2] == [sha(TOKEN), sha(DEPLOY)]
    assert run("stat -c %a /run/pyro-secrets", None)["stdout"] == "700\n"
    assert assert_no_leak_in_proc() > 0

    out.add("delete", pyro.delete_workspace(wid))
    assert not store.exists()
    assert_no_leak_on_disk(roots, [], began)
