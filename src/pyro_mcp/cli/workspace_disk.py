"""`pyro workspace disk …`: a stopped workspace's disk, read by a helper VM (export an ext4
image of its root; list and read its /workspace as `file list` and `file read` do)."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli import workspace as ws
from pyro_mcp.cli.output import show
from pyro_mcp.cli.workspace_render import tag_line


def register(sub: Any) -> None:
    disk = ws.group(
        sub, "disk", "a stopped workspace's disk, read by a helper VM", parser_class=ws.Intermixed
    )
    export = ws.on_workspace(disk, "export", "write the root as one ext4 image", _export)
    export.add_argument("--output", required=True, metavar="HOST_PATH", help="a new file")
    ws.add_readers(disk, "disk")


def _export(args: argparse.Namespace) -> int:
    done = ws.sdk().export_workspace_disk(args.workspace_id, output_path=args.output)

    def render(result: dict[str, Any]) -> None:
        tag_line(
            "workspace-disk-export", workspace_id=result["workspace_id"],
            output_path=result["output_path"], disk_format=result["disk_format"],
            bytes_written=result["bytes_written"],
        )  # fmt: skip

    show(done, args.json, render)
    return 0
