"""Disk tools of a stopped workspace: list and read its /workspace, export its root as one
ext4 image. Nothing on the host parses the disk: its guest wrote it and may have made it
hostile. A short-lived helper VM (no network, its own tmpfs root) gets the disk read-only,
its kernel mounts it (init.sh, pyro.inspect), and the usual file operations answer through
the agent protocol with the host's usual checks; an export is the helper's mke2fs writing an
image the host only moves into place. Whatever the helper does, it ends with the call.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import InvalidArgumentError, PyroError, WrongStateError
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces import archives, locks
from pyro_mcp.runtime.workspaces.files import FileReader
from pyro_mcp.vmm.disks import DEFAULT_DISK_MIB

HELPER_MEM_MIB = 512
HELPER_TTL_S = 3600
EXPORT_TIMEOUT_S = 1800
STATUS = "/run/pyro-inspect"
VIEW = "/mnt/view"  # the root as the workspace saw it, in the helper
OUTPUT_DEVICE = "/dev/vdc"  # after the root image and the inspected disk
# The exported image: room for the environment's root and all the writable disk can hold, and
# ext4's own; sparse, so the host pays only for what mke2fs writes.
EXPORT_SLACK_MIB = 1024


class WorkspaceDisk(FileReader):
    """list_workspace_disk, read_workspace_disk and export_workspace_disk of the SDK."""

    @contextlib.contextmanager
    def _client(self, workspace_id: str, op: str) -> Iterator[tuple[dict[str, Any], GuestClient]]:
        with self._helper(workspace_id, op, None) as (row, client):
            yield row, client

    def export(self, workspace_id: str, *, output_path: str) -> dict[str, Any]:
        """One ext4 image of the workspace's root (image and writable layer merged) at a new
        host path."""
        output = archives.check_output_free(Path(output_path))
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".pyro-disk-", suffix=".ext4", dir=output.parent)
        staging = Path(name)
        try:
            os.close(fd)
            os.truncate(staging, self._export_size(self.service.row(workspace_id)))
            with self._helper(workspace_id, "disk export", staging) as (_, client):
                argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-d", VIEW, OUTPUT_DEVICE]
                done = client.exec(argv, timeout=EXPORT_TIMEOUT_S)
                if done.exit_code != 0:
                    raise WrongStateError(
                        f"the helper VM could not write the image: {done.stderr.strip()[:500]}",
                        hint="check that the workspace's disk is not full of garbage",
                    )
                client.sync(timeout=60.0)
            archives.place(staging, output)
        finally:
            staging.unlink(missing_ok=True)
        return {
            "workspace_id": workspace_id,
            "output_path": str(output),
            "disk_format": "ext4",
            "bytes_written": output.stat().st_blocks * 512,
        }

    def _export_size(self, row: dict[str, Any]) -> int:
        rootfs = self.service.vms.envs.ensure(row["environment"]).rootfs.stat().st_size
        return rootfs + ((DEFAULT_DISK_MIB + EXPORT_SLACK_MIB) << 20)

    @contextlib.contextmanager
    def _helper(
        self, workspace_id: str, op: str, output: Path | None
    ) -> Iterator[tuple[dict[str, Any], GuestClient]]:
        """A helper VM over the stopped workspace's disk, its mounts checked; it is deleted
        when the block ends. No lifecycle change of the workspace can happen meanwhile."""
        directory = self.service.known_directory(workspace_id)
        with locks.hold(directory, locks.LIFE, exclusive=True, timeout=60.0):
            row = self.service.row(workspace_id, held=True)
            if row["state"] != "stopped":
                raise WrongStateError(
                    f"workspace {workspace_id} is {row['state']}; {op} reads a stopped "
                    "workspace's disk",
                    hint=f"stop it with `pyro workspace stop {workspace_id}` (start resumes "
                    "it where it was), or use the file tools while it runs",
                )
            disk = self.service.disk_path(row)
            vm = self.service.vms.create_vm(
                environment=row["environment"], mem_mib=HELPER_MEM_MIB, ttl_seconds=HELPER_TTL_S
            )
            try:
                self.service.vms.start_vm(vm["vm_id"], _inspect=(disk, output))
                started = self.service.store.get_vm(vm["vm_id"])
                assert started is not None
                with launch.connect(Path(started["vm_dir"])) as client:
                    _check_mounted(client, workspace_id)
                    yield {**row, "execution_mode": started["execution_mode"]}, client
            finally:
                with contextlib.suppress(PyroError):
                    self.service.vms.delete_vm(vm["vm_id"], reason="disk tool done")


def _check_mounted(client: GuestClient, workspace_id: str) -> None:
    status = client.exec(["cat", STATUS], timeout=30).stdout.strip()
    if status != "ok":
        detail = status.removeprefix("error: ") or "the helper VM did not say"
        raise InvalidArgumentError(
            f"the disk of workspace {workspace_id} cannot be read: {detail[:500]}",
            hint="its guest may have damaged it; reset the workspace to a snapshot or the "
            "baseline to go on",
        )
