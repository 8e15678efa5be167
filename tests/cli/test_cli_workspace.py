"""`pyro workspace …` against a fake SDK: argument mapping, output modes, streams, exit codes."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.workspace_fakes import RESULTS, WID, WORKSPACE, FakeSdk
from pyro_mcp import sdk
from pyro_mcp.cli.main import build_parser, main
from pyro_mcp.errors import NotFoundError


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSdk:
    instance = FakeSdk()
    monkeypatch.setattr(sdk, "Pyro", lambda **kwargs: instance)
    return instance


Runner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main(["workspace", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


# --- parser shape -------------------------------------------------------------------------

SUBCOMMANDS = (
    "create list update status logs delete stop start reset exec sync export diff patch file"
)


def test_workspace_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workspace", "--help"]) == 0
    out, _ = capsys.readouterr()
    for name in SUBCOMMANDS.split():
        assert f"    {name} " in out
    assert main(["--help"]) == 0
    assert "workspace" in capsys.readouterr().out


LEAVES = [
    ["create", "debian:12"],
    ["list"],
    ["update", WID],
    ["status", WID],
    ["logs", WID],
    ["delete", WID],
    ["stop", WID],
    ["start", WID],
    ["reset", WID],
    ["exec", WID],
    ["sync", "push", WID, "src"],
    ["export", WID, "p", "--output", "o"],
    ["diff", WID],
    ["file", "list", WID],
    ["file", "read", WID, "p"],
    ["file", "write", WID, "p", "--text", "t"],
    ["patch", "apply", WID, "--patch", "p"],
]


@pytest.mark.parametrize("argv", LEAVES, ids=lambda a: " ".join(a[:2]))
def test_every_leaf_takes_json(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["workspace", *argv, "--json"]).json is True
    assert parser.parse_args(["workspace", *argv]).json is False


@pytest.mark.parametrize(
    "argv",
    [
        ["workspace"],
        ["workspace", "shell"],
        ["workspace", "create"],
        ["workspace", "create", "debian:12", "--json", "--id-only"],
        ["workspace", "create", "debian:12", "--network-policy", "wide-open"],
        ["workspace", "update", WID, "--name", "x", "--clear-name"],
        ["workspace", "export", WID, "p"],
        ["workspace", "file", "read", WID, "p", "--json", "--content-only"],
        ["workspace", "file", "write", WID, "p"],
        ["workspace", "file", "write", WID, "p", "--text", "a", "--text-file", "f"],
        ["workspace", "file", "list", WID, "a", "b"],
        ["workspace", "patch", "apply", WID],
        ["workspace", "status", WID, "--", "true"],
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], fake: FakeSdk, argv: list[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage:" in err
    assert fake.calls == []


def test_a_command_after_dashes_names_workspace_exec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workspace", "diff", WID, "--", "ls"]) == 2
    assert "`pyro workspace exec`" in capsys.readouterr().err


# --- lifecycle ----------------------------------------------------------------------------


def test_create_defaults(fake: FakeSdk, run: Runner) -> None:
    code, out, err = run("create", "debian:12")
    assert code == 0
    assert err == ""
    assert fake.call == (
        "create_workspace",
        (),
        {
            "environment": "debian:12",
            "vcpu_count": 1,
            "mem_mib": 1024,
            "ttl_seconds": 600,
            "network_policy": "off",
            "allow_host_compat": False,
            "seed_path": None,
            "name": None,
            "labels": None,
            "secrets": None,
            "allow_hosts": None,
        },
    )
    assert out.splitlines() == [
        f"Workspace ID: {WID}",
        "Name: demo",
        "Labels: env=dev, team=core",
        "Environment: debian:12 1.0.0",
        "State: started",
        "Workspace: /workspace",
        "Network policy: off",
        "Workspace seed: directory /src/app -> /workspace (3 entries, 2048 bytes)",
        "Secrets: -",
        "Execution mode: guest_vsock",
        "Resources: 1 vCPU / 1024 MiB",
        "Expires at: 2026-01-01T00:00:00Z (epoch 1767225600)",
        "Command count: 2",
        "Reset count: 0",
        "Services: 0/0 running",
        "Last command: #2 exit_code=0 duration_ms=120 cwd=/workspace $ make test",
    ]


OPTIONS = shlex.split(
    "--vcpu-count 2 --mem-mib 2048 --ttl-seconds 60 --allow-host-compat --seed-path ./seed "
    "--network-policy egress+published-ports --label a=1 --label b=x=y --label a=2 --name 'my ws' "
    "--allow-host api.example.com --allow-host 203.0.113.0/24"
)


@pytest.mark.parametrize("before", [True, False])
def test_create_maps_every_option(fake: FakeSdk, run: Runner, before: bool) -> None:
    argv = [*OPTIONS, "debian:12-build"] if before else ["debian:12-build", *OPTIONS]
    code, _, _ = run("create", *argv)
    assert code == 0
    assert fake.call[2] == {
        "environment": "debian:12-build",
        "vcpu_count": 2,
        "mem_mib": 2048,
        "ttl_seconds": 60,
        "network_policy": "egress+published-ports",
        "allow_host_compat": True,
        "seed_path": "./seed",
        "name": "my ws",
        "labels": {"a": "2", "b": "x=y"},
        "secrets": None,
        "allow_hosts": ["api.example.com", "203.0.113.0/24"],
    }


def test_create_id_only_and_json(fake: FakeSdk, run: Runner) -> None:
    assert run("create", "debian:12", "--id-only") == (0, f"{WID}\n", "")
    code, out, err = run("create", "--json", "debian:12")
    assert (code, err) == (0, "")
    assert json.loads(out) == WORKSPACE


@pytest.mark.parametrize("label", ["novalue", "=v"])
def test_create_rejects_a_bad_label(fake: FakeSdk, run: Runner, label: str) -> None:
    code, out, err = run("create", "debian:12", "--label", label)
    assert (code, out) == (1, "")
    assert err == f"[error] --label expects KEY=VALUE, got {label!r}\n"
    code, out, err = run("create", "debian:12", "--label", label, "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "ok": False,
        "error": {
            "type": "invalid_argument",
            "message": f"--label expects KEY=VALUE, got {label!r}",
        },
    }
    assert fake.calls == []


def test_list_human_and_empty(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("list")
    assert code == 0
    assert out == (
        f"[workspace] workspace_id={WID} name=demo state=started environment=debian:12 "
        "labels=env=dev,team=core last_activity_at=2025-12-31T23:59:00Z "
        "expires_at=2026-01-01T00:00:00Z commands=2 services=0/0\n"
    )
    fake.results["list_workspaces"] = {"count": 0, "workspaces": []}
    assert run("list") == (0, "No workspaces.\n", "")
    code, out, _ = run("list", "--json")
    assert json.loads(out) == {"count": 0, "workspaces": []}


def test_list_quotes_a_name_with_spaces(fake: FakeSdk, run: Runner) -> None:
    fake.results["list_workspaces"]["workspaces"][0].update(name="my ws", labels={})
    _, out, _ = run("list")
    assert " name='my ws' " in out
    assert " labels=- " in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", "new", "--label", "k=v", "--clear-label", "a", "--clear-label", "b", WID],
        [WID, "--name", "new", "--label", "k=v", "--clear-label", "a", "--clear-label", "b"],
    ],
)
def test_update_maps_options(fake: FakeSdk, run: Runner, argv: list[str]) -> None:
    code, out, _ = run("update", *argv)
    assert code == 0
    assert fake.call == (
        "update_workspace",
        (WID,),
        {
            "name": "new",
            "clear_name": False,
            "labels": {"k": "v"},
            "clear_labels": ["a", "b"],
            "allow_hosts": None,
            "clear_allow_hosts": False,
        },
    )
    assert out.startswith(f"Workspace ID: {WID}\n")


def test_update_replaces_or_lifts_the_allowlist(fake: FakeSdk, run: Runner) -> None:
    assert run("update", WID, "--allow-host", "pypi.org", "--allow-host", "10.0.0.5")[0] == 0
    assert run("update", "--clear-allow-hosts", WID)[0] == 0
    code, _, err = run("update", WID, "--allow-host", "x.org", "--clear-allow-hosts")
    assert code == 2 and "not allowed with" in err
    first, second = (call[2] for call in fake.calls)
    assert (first["allow_hosts"], first["clear_allow_hosts"]) == (["pypi.org", "10.0.0.5"], False)
    assert (second["allow_hosts"], second["clear_allow_hosts"]) == (None, True)


def test_update_clear_name(fake: FakeSdk, run: Runner) -> None:
    assert run("update", WID, "--clear-name", "--json")[0] == 0
    assert fake.call[2] == {
        "name": None,
        "clear_name": True,
        "labels": None,
        "clear_labels": None,
        "allow_hosts": None,
        "clear_allow_hosts": False,
    }


@pytest.mark.parametrize(
    ("command", "method", "first_line"),
    [
        ("status", "status_workspace", f"Workspace ID: {WID}"),
        ("start", "start_workspace", f"Started workspace ID: {WID}"),
        ("stop", "stop_workspace", f"Stopped workspace ID: {WID}"),
        ("delete", "delete_workspace", f"Deleted workspace: {WID}"),
    ],
)
def test_single_id_commands(
    fake: FakeSdk, run: Runner, command: str, method: str, first_line: str
) -> None:
    code, out, err = run(command, WID)
    assert (code, err) == (0, "")
    assert fake.call == (method, (WID,), {})
    assert out.splitlines()[0] == first_line
    fake.calls.clear()
    code, out, _ = run(command, "--json", WID)
    assert json.loads(out) == RESULTS[method]


def test_stopped_state_shows_the_reason(fake: FakeSdk, run: Runner) -> None:
    _, out, _ = run("stop", WID)
    assert "State: stopped (user_request)\n" in out


def test_reset(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("reset", WID, "--snapshot", "before-upgrade")
    assert code == 0
    assert fake.call == ("reset_workspace", (WID,), {"snapshot": "before-upgrade"})
    assert "Reset count: 1\n" in out
    assert out.endswith(
        "Reset source: baseline (baseline)\nReset restore: 3 entries, 2048 bytes -> /workspace\n"
    )
    fake.calls.clear()
    run("reset", WID)
    assert fake.call[2] == {"snapshot": "baseline"}


def test_logs_splits_streams(fake: FakeSdk, run: Runner) -> None:
    code, out, err = run("logs", WID)
    assert code == 0
    assert fake.call == ("logs_workspace", (WID,), {})
    assert out.splitlines() == [
        "#1 exit_code=0 duration_ms=9 cwd=/workspace recorded_at=2025-12-31T23:58:20Z",
        "$ echo out; echo err >&2",
        "out",
        "#2 exit_code=unknown duration_ms=9 cwd=/workspace recorded_at=2025-12-31T23:59:10Z",
        "$ sleep 100",
    ]
    assert err == "err\n"


# --- exec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout-seconds", "5", WID, "--", "echo", "hi"],
        [WID, "--timeout-seconds", "5", "--", "echo", "hi"],
    ],
)
def test_exec_streams_output_then_the_trailer(fake: FakeSdk, run: Runner, argv: list[str]) -> None:
    code, out, err = run("exec", *argv)
    assert code == 0
    name, args, kwargs = fake.call
    assert (name, args) == ("exec_workspace", (WID,))
    assert kwargs["command"] == ["echo", "hi"]
    assert kwargs["timeout_seconds"] == 5
    assert callable(kwargs["on_output"])
    assert out == "hi\n"
    assert err == (
        "warn\n"
        f"[workspace-exec] workspace_id={WID} sequence=3 cwd=/workspace "
        "execution_mode=guest_vsock exit_code=0 duration_ms=15\n"
    )


def test_create_secrets_from_flags(fake: FakeSdk, run: Runner) -> None:
    code, _, _ = run(
        "create", "debian:12", "--secret", "A=x=y", "--secret-file", "B=/k/b.key",
        "--secret", "C=",
    )  # fmt: skip
    assert code == 0
    assert fake.call[2]["secrets"] == [
        {"name": "A", "value": "x=y"},
        {"name": "C", "value": ""},
        {"name": "B", "file_path": "/k/b.key"},
    ]


def test_a_malformed_secret_flag_never_echoes_its_value(fake: FakeSdk, run: Runner) -> None:
    code, out, err = run("create", "debian:12", "--secret", "hunter2-value")
    assert (code, out, fake.calls) == (1, "", [])
    assert "--secret expects NAME=VALUE" in err and "hunter2" not in err
    code, _, err = run("create", "debian:12", "--secret-file", "/k/b.key")
    assert code == 1 and "--secret-file expects NAME=FILE_PATH, got '/k/b.key'" in err


@pytest.mark.parametrize(
    ("flags", "mapping"),
    [
        (["--secret-env", "API_TOKEN"], {"API_TOKEN": "API_TOKEN"}),
        (["--secret-env", "A=TOKEN", "--secret-env", "B"], {"A": "TOKEN", "B": "B"}),
    ],
)
def test_exec_secret_env(
    fake: FakeSdk, run: Runner, flags: list[str], mapping: dict[str, str]
) -> None:
    assert run("exec", WID, *flags, "--", "true")[0] == 0
    assert run("exec", WID, "--", "true")[0] == 0
    assert [call[2]["secret_env"] for call in fake.calls] == [mapping, None]
    code, _, err = run("exec", WID, "--secret-env", "A=1X", "--", "true")
    assert code == 1 and "must match" in err


def test_exec_one_spaced_word_is_a_shell_line(fake: FakeSdk, run: Runner) -> None:
    run("exec", WID, "--", "echo a && echo b")
    assert fake.call[2]["command"] == "echo a && echo b"
    assert fake.call[2]["timeout_seconds"] == 30


@pytest.mark.parametrize(("guest", "host"), [(3, 3), (256 + 7, 7), (-1, 255)])
def test_exec_exit_status_is_the_guest_one(
    fake: FakeSdk, run: Runner, guest: int, host: int
) -> None:
    fake.results["exec_workspace"].update(exit_code=guest, timed_out=True, stdout_truncated=True)
    code, _, err = run("exec", WID, "--", "false")
    assert code == host
    assert err.endswith(f"exit_code={guest} duration_ms=15 timed_out=true output_truncated=true\n")
    code, out, err = run("exec", WID, "--json", "--", "false")
    assert (code, err) == (host, "")
    assert json.loads(out)["exit_code"] == guest
    assert fake.calls[-1][2]["on_output"] is None


@pytest.mark.parametrize("argv", [[WID], [WID, "--"]])
def test_exec_without_a_command(fake: FakeSdk, run: Runner, argv: list[str]) -> None:
    code, out, err = run("exec", *argv)
    assert (code, out) == (1, "")
    assert err.startswith("[error] no command given; put the command after `--`")
    code, out, _ = run("exec", "--json", *argv)
    assert code == 1
    assert json.loads(out)["error"]["type"] == "invalid_argument"
    assert fake.calls == []


# --- transfer, diff, patch ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--dest", "/workspace/app", WID, "/src/app"], [WID, "/src/app", "--dest", "/workspace/app"]],
)
def test_sync_push(fake: FakeSdk, run: Runner, argv: list[str]) -> None:
    code, out, err = run("sync", "push", *argv)
    assert (code, err) == (0, "")
    assert fake.call == ("push_workspace_sync", (WID, "/src/app"), {"dest": "/workspace/app"})
    assert out == (
        f"[workspace-sync] workspace_id={WID} mode=directory source=/src/app "
        "destination=/workspace/app entry_count=4 bytes_written=4096 execution_mode=guest_vsock\n"
    )
    fake.calls.clear()
    run("sync", "push", WID, "src")
    assert fake.call[2] == {"dest": "/workspace"}


def test_export(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("export", "--output", "/tmp/out", WID, "out")
    assert code == 0
    assert fake.call == ("export_workspace", (WID, "out"), {"output_path": "/tmp/out"})
    assert out == (
        f"[workspace-export] workspace_id={WID} workspace_path=/workspace/out "
        "output_path=/tmp/out artifact_type=directory entry_count=2 bytes_written=10 "
        "execution_mode=guest_vsock\n"
    )


def test_diff(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("diff", WID)
    assert code == 0
    assert fake.call == ("diff_workspace", (WID,), {})
    assert out.splitlines() == [
        f"[workspace-diff] workspace_id={WID} total=2 added=1 modified=0 deleted=0 "
        "type_changed=0 text_patched=1 non_text=1",
        "--- /dev/null",
        "+++ b/a.txt",
        "@@ -0,0 +1 @@",
        "+x",
        "added: b.bin (file, no text patch)",
    ]
    fake.results["diff_workspace"].update(changed=False, entries=[], patch="")
    assert run("diff", WID) == (0, "No workspace changes.\n", "")


def test_patch_apply_text_and_file(fake: FakeSdk, run: Runner, tmp_path: Path) -> None:
    code, out, _ = run("patch", "apply", "--patch", "P", WID)
    assert code == 0
    assert fake.call == ("apply_workspace_patch", (WID,), {"patch": "P"})
    assert out == (
        f"[workspace-patch] workspace_id={WID} changed=true total=1 added=0 modified=1 "
        "deleted=0 execution_mode=guest_vsock\nmodified: /workspace/a.txt\n"
    )
    patch_file = tmp_path / "change.diff"
    patch_file.write_bytes(b"--- a/x\r\n+++ b/x\r\n")
    fake.calls.clear()
    run("patch", "apply", WID, "--patch-file", str(patch_file))
    assert fake.call[2] == {"patch": "--- a/x\r\n+++ b/x\r\n"}


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "path", "recursive"),
    [
        ([WID], "/workspace", False),
        ([WID, "--recursive", "/workspace/src"], "/workspace/src", True),
        (["--recursive", WID, "src"], "src", True),
        ([WID, "src", "--recursive"], "src", True),
    ],
)
def test_file_list_arguments(
    fake: FakeSdk, run: Runner, argv: list[str], path: str, recursive: bool
) -> None:
    assert run("file", "list", *argv)[0] == 0
    assert fake.call == ("list_workspace_files", (WID,), {"path": path, "recursive": recursive})


def test_file_list_human(fake: FakeSdk, run: Runner) -> None:
    _, out, _ = run("file", "list", WID)
    assert out.splitlines() == [
        f"[workspace-file-list] workspace_id={WID} path=/workspace recursive=false entries=2 "
        "truncated=false",
        "/workspace/a.txt [file] size=2",
        "/workspace/link [symlink] size=5 -> a.txt",
    ]


def test_file_read(fake: FakeSdk, run: Runner) -> None:
    code, out, err = run("file", "read", WID, "a.txt", "--max-bytes", "9")
    assert code == 0
    assert fake.call == ("read_workspace_file", (WID, "a.txt"), {"max_bytes": 9})
    assert out == "x\r\ny é"
    assert err == (
        f"[workspace-file-read] workspace_id={WID} path=/workspace/a.txt size_bytes=9 "
        "truncated=false\n"
    )


def test_file_read_content_only_and_json(fake: FakeSdk, run: Runner) -> None:
    assert run("file", "read", "--content-only", WID, "a.txt") == (0, "x\r\ny é", "")
    code, out, err = run("file", "read", WID, "a.txt", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == RESULTS["read_workspace_file"]
    assert fake.calls[-1][2] == {"max_bytes": 65536}


def test_file_write_text(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("file", "write", "--text", "hello", WID, "a.txt")
    assert code == 0
    assert fake.call == ("write_workspace_file", (WID, "a.txt"), {"text": "hello"})
    assert out == (
        f"[workspace-file-write] workspace_id={WID} path=/workspace/a.txt size_bytes=5 "
        "bytes_written=5 execution_mode=guest_vsock\n"
    )


def test_file_write_text_file_is_read_exactly(fake: FakeSdk, run: Runner, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes("é\r\nend".encode())
    assert run("file", "write", WID, "a.txt", "--text-file", str(source), "--json")[0] == 0
    assert fake.call[2] == {"text": "é\r\nend"}


def test_file_write_unreadable_text_file(fake: FakeSdk, run: Runner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    code, out, err = run("file", "write", WID, "a.txt", "--text-file", str(missing))
    assert (code, out) == (1, "")
    assert err == f"[error] cannot read --text-file {missing}: No such file or directory\n"
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    code, out, _ = run("file", "write", WID, "a.txt", "--text-file", str(binary), "--json")
    assert code == 1
    assert "is not UTF-8 text" in json.loads(out)["error"]["message"]
    assert fake.calls == []


# --- SDK errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "json_argv", "method"),
    [
        (["status", WID], ["status", WID, "--json"], "status_workspace"),
        (["exec", WID, "--", "true"], ["exec", WID, "--json", "--", "true"], "exec_workspace"),
        (
            ["file", "read", WID, "a", "--content-only"],
            ["file", "read", WID, "a", "--json"],
            "read_workspace_file",
        ),
    ],
)
def test_sdk_not_found_error(
    fake: FakeSdk, run: Runner, argv: list[str], json_argv: list[str], method: str
) -> None:
    message = f"workspace {WID!r} does not exist"
    fake.errors[method] = NotFoundError(message)
    code, out, err = run(*argv)
    assert (code, out, err) == (1, "", f"[error] {message}\n")
    code, out, err = run(*json_argv)
    assert (code, err) == (1, "")
    assert json.loads(out) == {"ok": False, "error": {"type": "not_found", "message": message}}


@pytest.mark.parametrize("argv", [["create", "debian:12"], ["start", WID], ["reset", WID]])
def test_boots_report_progress_on_stderr_for_people_only(
    fake: FakeSdk, run: Runner, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run(*argv)
    run(*argv, "--json")
    human, machine = fake.phase_callbacks
    assert machine is None and human is not None
    human("start execution_mode=qemu-tcg")
    assert capsys.readouterr().err == "[workspace] phase=start execution_mode=qemu-tcg\n"


def test_snapshot_commands(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("snapshot", "create", WID, "s1")
    assert code == 0 and fake.calls[-1] == ("create_snapshot", (WID, "s1"), {})
    assert out == (
        f"[workspace-snapshot-create] workspace_id={WID} snapshot_name=s1 kind=named "
        "entry_count=12 bytes_written=4096\n"
    )
    code, out, _ = run("snapshot", "list", WID)
    assert out.splitlines() == [
        "baseline [baseline] 12 4096 deletable=no", "s1 [named] 12 4096 deletable=yes",
    ]  # fmt: skip
    code, out, _ = run("snapshot", "delete", WID, "s1")
    assert (code, out) == (0, "Deleted workspace snapshot: s1\n")
    code, out, _ = run("snapshot", "list", WID, "--json")
    assert json.loads(out)["count"] == 2


def test_disk_commands(fake: FakeSdk, run: Runner) -> None:
    code, out, _ = run("disk", "export", WID, "--output", "/tmp/root.ext4")
    assert code == 0 and fake.calls[-1] == (
        "export_workspace_disk", (WID,), {"output_path": "/tmp/root.ext4"},
    )  # fmt: skip
    assert "disk_format=ext4" in out
    assert run("disk", "list", WID, "sub", "--recursive")[0] == 0
    assert fake.calls[-1] == ("list_workspace_disk", (WID,), {"path": "sub", "recursive": True})
    code, _, err = run("disk", "read", WID, "a.txt")
    assert code == 0 and fake.calls[-1][0] == "read_workspace_disk"
    assert err.startswith("[workspace-disk-read] ")
