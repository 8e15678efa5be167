"""`pyro workspace snapshot …`: named snapshots of a workspace's whole disk. A reset to one
is `pyro workspace reset ID --snapshot NAME`."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli import workspace as ws
from pyro_mcp.cli.output import show
from pyro_mcp.cli.workspace_render import tag_line


def register(sub: Any) -> None:
    snapshot = ws.group(sub, "snapshot", "named snapshots of the whole disk")
    ws.on_workspace(
        snapshot, "create", "snapshot the started workspace's disk", _create, "snapshot_name"
    )
    ws.on_workspace(snapshot, "list", "the baseline, then named snapshots, newest first", _list)
    ws.on_workspace(snapshot, "delete", "delete a named snapshot", _delete, "snapshot_name")


def _create(args: argparse.Namespace) -> int:
    made = ws.sdk().create_snapshot(args.workspace_id, args.snapshot_name)

    def render(result: dict[str, Any]) -> None:
        snap = result["snapshot"]
        tag_line(
            "workspace-snapshot-create", workspace_id=snap["workspace_id"],
            snapshot_name=snap["snapshot_name"], kind=snap["kind"],
            entry_count=snap["entry_count"], bytes_written=snap["bytes_written"],
        )  # fmt: skip

    show(made, args.json, render)
    return 0


def _list(args: argparse.Namespace) -> int:
    def render(result: dict[str, Any]) -> None:
        for snap in result["snapshots"]:
            print(
                f"{snap['snapshot_name']} [{snap['kind']}] {snap['entry_count']} "
                f"{snap['bytes_written']} deletable={'yes' if snap['deletable'] else 'no'}"
            )

    show(ws.sdk().list_snapshots(args.workspace_id), args.json, render)
    return 0


def _delete(args: argparse.Namespace) -> int:
    done = ws.sdk().delete_snapshot(args.workspace_id, args.snapshot_name)
    show(done, args.json, lambda r: print(f"Deleted workspace snapshot: {r['snapshot_name']}"))
    return 0
