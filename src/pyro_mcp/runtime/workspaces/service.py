"""Workspace lifecycle: create, list, status, update, stop, start, reset, delete.

A workspace is a record, a directory (its writable disk, the baseline tar and manifest, the
command logs) and, while started, one VM whose writable disk is the workspace's own. The VM
comes and goes (stop, start, reset); the disk survives stop and start, and reset replaces it
with a fresh one (from the warm-start snapshot) holding the baseline again.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.agent_client.files import ArchiveResult
from pyro_mcp.environments.blobs import remove_tree
from pyro_mcp.errors import (
    GuestError,
    NotFoundError,
    PyroError,
    WrongStateError,
)
from pyro_mcp.protocol.redaction import Redactor
from pyro_mcp.runtime import launch
from pyro_mcp.runtime import network as net
from pyro_mcp.runtime.arguments import check_range
from pyro_mcp.runtime.vm_views import vm_metadata
from pyro_mcp.runtime.vms import VmService
from pyro_mcp.runtime.workspaces import archives, diff, locks, records, snapshots, suspend
from pyro_mcp.runtime.workspaces import secrets as ws_secrets
from pyro_mcp.state import services as service_rows
from pyro_mcp.state import snapshots as snapshot_rows
from pyro_mcp.state import vms as vm_rows
from pyro_mcp.state import workspaces as rows
from pyro_mcp.vmm.disks import DEFAULT_DISK_MIB

DISK = "disk.ext4"  # raw: for a VMM that takes no disk snapshots (Firecracker)
DISK_QCOW2 = "disk.qcow2"
BASELINE_TAR = "baseline.tar"
BASELINE_MANIFEST = "baseline.json"
# How long a call waits for another process's lifecycle change (a cold boot under TCG is the
# slowest thing it can be waiting for).
CHANGE_WAIT_S = 300.0
Phase = Callable[[str], None]


class WorkspaceService:
    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self.store = vms.store
        self._redactors = ws_secrets.RedactorCache()

    def directory(self, workspace_id: str) -> Path:
        return self.store.workspace_dir(workspace_id)

    def disk_path(self, row: Mapping[str, Any]) -> Path:
        """The workspace's writable disk: the one it has, else the kind its VMM keeps
        snapshots in (qcow2 under QEMU)."""
        directory = self.directory(row["workspace_id"])
        for name in (DISK_QCOW2, DISK):
            if (directory / name).exists():
                return directory / name
        qemu = self.vms.backend_for(row["environment"]).name == "qemu"
        return directory / (DISK_QCOW2 if qemu else DISK)

    @staticmethod
    def seed(row: Mapping[str, Any]) -> dict[str, Any]:
        seed: dict[str, Any] = json.loads(row["seed"])
        return seed

    def known_directory(self, workspace_id: str) -> Path:
        """The directory of a workspace that exists (NotFoundError otherwise); no
        reconciliation, so it is cheap enough to call before the call that does it."""
        return self.directory(self._load(workspace_id)["workspace_id"])

    def redactor(self, workspace_id: object) -> Redactor:
        """The redactor of the workspace's secrets (inactive when it has none or is unknown)."""
        if not isinstance(workspace_id, str) or not workspace_id.isalnum():
            return Redactor([])
        return self._redactors.get(self.directory(workspace_id))

    def secret_env(self, workspace_id: str, secret_env: Any) -> dict[str, str]:
        """A call's {SECRET: ENV}, checked against the workspace's secrets."""
        if not secret_env:
            return {}
        names = ws_secrets.names(self.known_directory(workspace_id))
        return ws_secrets.check_secret_env(secret_env, names)

    # --- reading --------------------------------------------------------------------------

    def _load(self, workspace_id: str) -> dict[str, Any]:
        row = None
        if isinstance(workspace_id, str) and workspace_id.isalnum():
            row = self.store.get("workspaces", workspace_id)
        if row is None:
            raise NotFoundError(
                f"workspace {workspace_id!r} does not exist",
                hint="list workspaces with `pyro workspace list`",
            )
        return row

    def row(self, workspace_id: str, *, held: bool = False) -> dict[str, Any]:
        """The record, reconciled with its VM; an expired workspace is deleted and NotFound.
        `held`: the caller holds the lifecycle lock."""
        row = self._load(workspace_id)
        fresh = self._reconcile(row, held=held)
        if fresh is None:
            raise NotFoundError(
                f"workspace {workspace_id} expired (ttl_seconds={row['ttl_seconds']}) and was "
                "deleted",
                hint="create a new workspace, with a longer ttl_seconds if it needs one",
            )
        return fresh

    def _reconcile(self, row: dict[str, Any], *, held: bool = False) -> dict[str, Any] | None:
        """The record as it really is; None when the workspace reached its TTL and was
        deleted here. (Its VM ends at the TTL by itself; the workspace goes when a call
        next looks at it.)"""
        if row["expires_at"] <= time.time():
            self._expire(row, held=held)
            return None
        state, reason = row["state"], None
        if state in records.TRANSITIONAL:
            # Only a live lifecycle call holds the lock; if it is ours, that call is gone.
            if held or locks.is_free(self.directory(row["workspace_id"]), locks.LIFE):
                reason = f"interrupted: the call that was {state} the workspace ended mid-way"
        elif state == "started":
            vm = self.store.get_vm(row["vm_id"] or "")
            vm = self.vms.reconcile(vm) if vm is not None else None
            if vm is None or vm["state"] != "started":
                reason = (vm or {}).get("stop_reason") or "the workspace's VM is gone"
        if reason is None:
            return row
        self._settle(row, reason)
        return self._load(row["workspace_id"])

    def _settle(self, row: Mapping[str, Any], reason: str) -> None:
        """Record a workspace as stopped for `reason`, unless someone changed it meanwhile."""
        rows.stop_unchanged(self.store, row, reason)
        self._end_vms(row["workspace_id"], "workspace_stopped")
        service_rows.end_running(self.store, row["workspace_id"], "workspace_stopped", time.time())

    def _end_vms(self, workspace_id: str, reason: str) -> None:
        """End every VM serving the workspace: its current one, and any that a call killed
        mid-way (say, in the middle of a create) left running until its TTL."""
        for vm_id in vm_rows.serving_workspace(self.store, workspace_id):
            with contextlib.suppress(NotFoundError):
                self.vms.delete_vm(vm_id, reason=reason)

    def view(self, workspace_id: str) -> dict[str, Any]:
        row = self.row(workspace_id)
        services = service_rows.counts_of(self.store, workspace_id)
        last = rows.last_command(self.store, workspace_id)
        secrets = ws_secrets.views(self.directory(workspace_id))
        view = records.workspace_view(row, last, services, secrets)
        vm = self.store.get_vm(row["vm_id"]) if row["vm_id"] else None
        if vm is not None:
            view["metadata"] = vm_metadata(vm)
        return view

    def list(self) -> dict[str, Any]:
        fresh = [f for row in rows.list_workspaces(self.store) if (f := self._reconcile(row))]
        counts = service_rows.counts(self.store)  # after reconciling: a dead VM's are stopped
        items = [records.list_item(f, counts.get(f["workspace_id"], (0, 0))) for f in fresh]
        items.sort(key=lambda item: item["last_activity_at"], reverse=True)
        return {"count": len(items), "workspaces": items}

    # --- using the running VM -------------------------------------------------------------

    @contextlib.contextmanager
    def using(self, workspace_id: str, op: str) -> Iterator[tuple[dict[str, Any], Path]]:
        """The started workspace and its VM's directory, held so no lifecycle change can swap
        the VM meanwhile; waits out a change another call is making."""
        directory = self.known_directory(workspace_id)
        deadline = time.monotonic() + CHANGE_WAIT_S
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            with locks.hold(directory, locks.USE, exclusive=False, timeout=left):
                row = self.row(workspace_id)
                if row["state"] not in records.TRANSITIONAL:
                    vm_dir = self._started_vm_dir(row, op)
                    try:
                        yield row, vm_dir
                    except GuestError as exc:
                        raise self._explain(row, op, exc) from exc
                    self.touch(workspace_id)
                    return
            if time.monotonic() >= deadline:
                raise WrongStateError(f"workspace {workspace_id} is still {row['state']}")
            time.sleep(0.1)

    def _explain(self, row: Mapping[str, Any], op: str, error: GuestError) -> PyroError:
        """Say why the guest went away mid-call when the workspace knows: TTL, a dead VM."""
        workspace_id = row["workspace_id"]
        fresh = self.store.get("workspaces", workspace_id)
        fresh = self._reconcile(fresh) if fresh is not None else None
        if fresh is None:
            return NotFoundError(
                f"workspace {workspace_id} was deleted while {op} ran (it reached its TTL "
                "or another call deleted it)",
                hint="create a new workspace, with a longer ttl_seconds if it needs one",
            )
        if fresh["state"] in records.TRANSITIONAL:
            return WrongStateError(
                f"workspace {workspace_id} is {fresh['state']} by another call, which ended "
                f"the VM {op} was using",
                hint="retry when that call finishes",
            )
        if fresh["state"] == "stopped":
            return WrongStateError(
                f"workspace {workspace_id} stopped while {op} ran ({fresh['stop_reason']})",
                hint=f"start it with `pyro workspace start {workspace_id}`",
            )
        return error

    def _started_vm_dir(self, row: Mapping[str, Any], op: str) -> Path:
        if row["state"] != "started":
            why = f" ({row['stop_reason']})" if row["stop_reason"] else ""
            raise WrongStateError(
                f"workspace {row['workspace_id']} is {row['state']}{why}; {op} needs it started",
                hint=f"start it with `pyro workspace start {row['workspace_id']}`",
            )
        vm = self.store.get_vm(row["vm_id"])
        assert vm is not None  # reconciled just now, under the use lock
        return Path(vm["vm_dir"])

    def touch(self, workspace_id: str) -> None:
        self.store.update("workspaces", workspace_id, last_activity_at=time.time())

    # --- lifecycle ------------------------------------------------------------------------

    def create(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network_policy: str = "off",
        seed_path: str | None = None,
        secrets: Iterable[Any] | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        allow_hosts: Iterable[str] | None = None,
        on_phase: Phase | None = None,
    ) -> dict[str, Any]:
        """Boot a workspace with `seed_path` (a directory or .tar/.tar.gz/.tgz) in /workspace
        and `secrets` ({name, value} or {name, file_path} each) kept for its guest."""
        found = ws_secrets.parse(secrets)
        record = self._new_record(
            environment, vcpu_count, mem_mib, ttl_seconds, network_policy, name, labels
        )
        record["allow_hosts"] = json.dumps(
            net.check_allow_hosts(allow_hosts, record["network_policy"] != "off")
        )
        directory = paths.ensure_private_dir(self.directory(record["workspace_id"]))
        try:
            with (
                locks.hold(directory, locks.LIFE, exclusive=True, timeout=0),
                locks.hold(directory, locks.USE, exclusive=True, timeout=0),
            ):
                if found:
                    ws_secrets.store(directory, found)
                seed = archives.prepare_archive(seed_path, directory / BASELINE_TAR)
                record["seed"] = json.dumps(_seed_view(seed, seed.entry_count, 0))
                self.store.insert("workspaces", record)
                self._boot_with_baseline(record, on_phase, first=True)
        except BaseException:
            self._destroy(record["workspace_id"], "create_failed")
            raise
        return self.view(record["workspace_id"])

    def _new_record(
        self,
        environment: str,
        vcpu_count: int,
        mem_mib: int,
        ttl_seconds: int,
        network_policy: str,
        name: str | None,
        labels: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        vcpu_count = check_range("vcpu_count", vcpu_count)
        mem_mib = check_range("mem_mib", mem_mib)
        ttl_seconds = records.check_ttl(ttl_seconds)
        policy = net.check_policy(network_policy)
        env = self.vms.envs.inspect(environment)
        workspace_id, now = uuid.uuid4().hex[:12], time.time()
        return {
            "workspace_id": workspace_id,
            "name": records.check_name(name),
            "labels": json.dumps(records.check_labels(labels), sort_keys=True),
            "environment": env["name"],
            "environment_version": env["version"],
            "vcpu_count": vcpu_count,
            "mem_mib": mem_mib,
            "ttl_seconds": ttl_seconds,
            "created_at": now,
            "last_activity_at": now,
            "expires_at": now + ttl_seconds,
            "state": "creating",
            "workspace_dir": str(self.directory(workspace_id)),
            "network_policy": policy,
        }

    def _boot_with_baseline(
        self, row: Mapping[str, Any], on_phase: Phase | None, *, first: bool
    ) -> ArchiveResult:
        """Start a VM on the workspace's disk and unpack the baseline into /workspace (the
        caller holds both locks). The first time, the baseline manifest is taken too."""
        workspace_id, directory = row["workspace_id"], self.directory(row["workspace_id"])
        snapshots.fresh_disk(self.store, workspace_id, self.disk_path(row))
        vm = self._boot(row, on_phase)
        if on_phase:
            on_phase("seed /workspace")
        with (
            launch.connect(Path(vm["vm_dir"])) as client,
            (directory / BASELINE_TAR).open("rb") as tar,
        ):
            done = client.extract_tar(tar, dest=records.WORKSPACE_PATH)
            if first:
                diff.save_baseline(directory / BASELINE_MANIFEST, client.manifest())
        fields: dict[str, Any] = {"state": "started", "stop_reason": None}
        if first:
            seed = self.seed(row)
            seed.update(entry_count=done.entry_count, bytes_written=done.bytes_written)
            fields["seed"] = json.dumps(seed)
        self._started(workspace_id, vm, **fields)
        return done

    def _boot(
        self,
        row: Mapping[str, Any],
        on_phase: Phase | None,
        *,
        resume: tuple[Path, str] | None = None,
    ) -> dict[str, Any]:
        """A started VM whose writable disk is the workspace's (made afresh if missing);
        `resume` runs a suspended VM of the workspace instead (see suspend.py)."""
        directory = self.directory(row["workspace_id"])
        vm = self.vms.create_vm(
            environment=row["environment"],
            vcpu_count=row["vcpu_count"],
            mem_mib=row["mem_mib"],
            ttl_seconds=row["ttl_seconds"],
            _disk_mib=DEFAULT_DISK_MIB,
            _disk_path=self.disk_path(row),
            _workspace_id=row["workspace_id"],
            _expires_at=row["expires_at"],
            network=row["network_policy"] != "off",
            _allow_hosts=json.loads(row["allow_hosts"]),
        )
        try:
            self.vms.start_vm(vm["vm_id"], on_phase=on_phase, _resume=resume)
            started = self.store.get_vm(vm["vm_id"])
            assert started is not None
            ws_secrets.install(directory, Path(started["vm_dir"]))
        except BaseException:
            with contextlib.suppress(PyroError):
                self.vms.delete_vm(vm["vm_id"], reason="workspace_boot_failed")
            raise
        return started

    def _started(self, workspace_id: str, vm: Mapping[str, Any], **fields: Any) -> None:
        self.store.update(
            "workspaces",
            workspace_id,
            vm_id=vm["vm_id"],
            execution_mode=vm["execution_mode"],
            last_activity_at=time.time(),
            **fields,
        )

    @contextlib.contextmanager
    def _changing(self, workspace_id: str, state: str) -> Iterator[dict[str, Any]]:
        """Hold the workspace's lifecycle lock; a change that fails leaves it `stopped` with
        the reason."""
        directory = self.known_directory(workspace_id)
        with locks.hold(directory, locks.LIFE, exclusive=True, timeout=CHANGE_WAIT_S):
            row = self.row(workspace_id, held=True)
            try:
                yield row
            except BaseException as exc:
                failed = self.store.get("workspaces", workspace_id)
                if failed is not None and failed["state"] in records.TRANSITIONAL:
                    self._settle(failed, f"{state} failed: {exc}")
                raise

    def _halt(self, row: Mapping[str, Any], state: str, reason: str, *, sync: bool) -> None:
        """Mark the change, end the VM, then wait until no call is using it."""
        self.store.update("workspaces", row["workspace_id"], state=state)
        vm = self.store.get_vm(row["vm_id"]) if row["vm_id"] else None
        if vm is not None and vm["state"] == "started" and sync:
            with (
                contextlib.suppress(PyroError, OSError),
                launch.connect(Path(vm["vm_dir"]), timeout=5.0) as client,
            ):
                client.sync(timeout=30.0)  # flush the guest's page cache to the disk
        self._end_vms(row["workspace_id"], reason)
        self.store.update("workspaces", row["workspace_id"], vm_id=None)

    def _use_exclusive(self, workspace_id: str) -> contextlib.AbstractContextManager[None]:
        return locks.hold(
            self.directory(workspace_id), locks.USE, exclusive=True, timeout=CHANGE_WAIT_S
        )

    def stop(self, workspace_id: str) -> dict[str, Any]:
        """End the workspace's VM, keeping its memory when the backend can (start resumes
        every process); its disk (and whatever was installed) stays either way."""
        stopped: dict[str, Any] = {"memory_kept": False, "note": "the workspace was stopped"}
        with self._changing(workspace_id, "stopping") as row:
            if row["state"] == "started":
                self.store.update("workspaces", workspace_id, state="stopping")
                with self._use_exclusive(workspace_id):
                    vm = self.store.get_vm(row["vm_id"] or "")
                    why = suspend.suspend(self.directory(workspace_id), row, vm) if vm else ""
                    stopped = {"memory_kept": why is None, "note": why or ""}
                    self._halt(row, "stopping", "stopped: stop_workspace", sync=why is not None)
                    self.store.update(
                        "workspaces", workspace_id, state="stopped",
                        stop_reason="stopped: stop_workspace",
                    )  # fmt: skip
                    if why is not None:  # nothing runs any more
                        service_rows.end_running(
                            self.store, workspace_id, "workspace_stopped", time.time()
                        )
        return {**self.view(workspace_id), "workspace_stop": stopped}

    def start(self, workspace_id: str, *, on_phase: Phase | None = None) -> dict[str, Any]:
        """Resume a stopped workspace where it stopped, or boot it on its own disk when its
        memory was not kept or cannot be used (the result says why)."""
        started: dict[str, Any] = {"resumed": False, "note": "the workspace was running"}
        with self._changing(workspace_id, "starting") as row:
            if row["state"] != "started":
                self.store.update("workspaces", workspace_id, state="starting")
                with self._use_exclusive(workspace_id):
                    started = self._start(row, on_phase)
        return {**self.view(workspace_id), "workspace_start": started}

    def _start(self, row: Mapping[str, Any], on_phase: Phase | None) -> dict[str, Any]:
        workspace_id, directory = row["workspace_id"], self.directory(row["workspace_id"])
        plan = suspend.plan(directory, row)
        resume = (plan.state, row["execution_mode"]) if plan.state else None
        try:
            vm = self._boot(row, on_phase, resume=resume)
        finally:
            suspend.discard(directory)  # used once, whatever happened
        resumed = vm["boot_mode"] == "resumed"
        if resumed:
            notes = suspend.after_resume(Path(vm["vm_dir"]), plan.ports)
        else:  # a fresh boot: nothing that ran before the stop runs now
            notes = [plan.note or str(vm.get("boot_note") or "")]
            service_rows.end_running(self.store, workspace_id, "workspace_stopped", time.time())
        self._started(workspace_id, vm, state="started", stop_reason=None)
        return {"resumed": resumed, "note": "; ".join(n for n in notes if n)}

    def reset(
        self, workspace_id: str, *, snapshot: str = "baseline", on_phase: Phase | None = None
    ) -> dict[str, Any]:
        """A fresh VM on the disk of named snapshot `snapshot`, or on a fresh disk with
        /workspace back at the baseline; the command history stays."""
        name = snapshots.check_name(snapshot)
        if name != snapshots.BASELINE:
            self.row(workspace_id)  # an unknown workspace is said first
        with self._changing(workspace_id, "resetting") as row:
            suspend.discard(self.directory(workspace_id))  # a fresh VM: nothing to resume
            self._halt(row, "resetting", "reset: reset_workspace", sync=False)
            with self._use_exclusive(workspace_id):
                service_rows.end_running(self.store, workspace_id, "workspace_reset", time.time())
                if name == snapshots.BASELINE:
                    done = self._boot_with_baseline(row, on_phase, first=False)
                    counts = (done.entry_count, done.bytes_written)
                else:
                    found = snapshots.revert(self.store, workspace_id, self.disk_path(row), name)
                    vm = self._boot(row, on_phase)
                    self._started(workspace_id, vm, state="started", stop_reason=None)
                    counts = (found["entry_count"], found["bytes_written"])
                rows.count_reset(self.store, workspace_id, time.time())
        result = self.view(workspace_id)
        result["workspace_reset"] = {
            "snapshot_name": name,
            "kind": "baseline" if name == snapshots.BASELINE else "named",
            "destination": records.WORKSPACE_PATH,
            "entry_count": counts[0],
            "bytes_written": counts[1],
        }
        return result

    def delete(self, workspace_id: str) -> dict[str, Any]:
        """Stop the workspace's VM and remove every trace of it (record, disk, logs)."""
        row = self._load(workspace_id)
        directory = self.directory(row["workspace_id"])
        if not directory.is_dir():  # left behind by a crash: only the record remains
            self._destroy(row["workspace_id"], "deleted")
        else:
            with locks.hold(directory, locks.LIFE, exclusive=True, timeout=CHANGE_WAIT_S):
                self._halt(self._load(workspace_id), "deleting", "deleted", sync=False)
                with locks.hold(directory, locks.USE, exclusive=True, timeout=CHANGE_WAIT_S):
                    self._remove(row["workspace_id"])
        return {"workspace_id": row["workspace_id"], "deleted": True, "reason": "explicit_delete"}

    def _destroy(self, workspace_id: str, reason: str) -> None:
        """Remove a workspace whatever state it is in (the caller owns it or it expired)."""
        self._end_vms(workspace_id, reason)
        self._remove(workspace_id)

    def _remove(self, workspace_id: str) -> None:
        """The record, the command history and the directory (disk, baseline, logs)."""
        rows.delete_workspace(self.store, workspace_id)
        service_rows.delete_for_workspace(self.store, workspace_id)
        snapshot_rows.delete_for_workspace(self.store, workspace_id)
        remove_tree(self.directory(workspace_id))

    def _expire(self, row: Mapping[str, Any], *, held: bool = False) -> None:
        """Delete an expired workspace unless another call is changing it right now."""
        directory = self.directory(row["workspace_id"])
        if held or not directory.is_dir():
            self._destroy(row["workspace_id"], "ttl_expired")
            return
        with (
            contextlib.suppress(PyroError, OSError),
            locks.hold(directory, locks.LIFE, exclusive=True, timeout=0),
        ):
            self._destroy(row["workspace_id"], "ttl_expired")


def _seed_view(seed: archives.SeedArchive, entry_count: int, bytes_written: int) -> dict[str, Any]:
    return {
        "mode": seed.mode,
        "seed_path": seed.source_path,
        "destination": records.WORKSPACE_PATH,
        "entry_count": entry_count,
        "bytes_written": bytes_written,
    }
