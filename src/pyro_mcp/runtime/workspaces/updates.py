"""Changing a workspace's metadata: its name, labels and egress allowlist (a running VM's
filter changes at once)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyro_mcp.errors import InvalidArgumentError, NotFoundError
from pyro_mcp.runtime import network as net
from pyro_mcp.runtime.workspaces import locks, records
from pyro_mcp.runtime.workspaces.service import CHANGE_WAIT_S, WorkspaceService
from pyro_mcp.state import workspaces as rows


class WorkspaceUpdates:
    """update_workspace of the SDK."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.store = service.store

    def update(
        self,
        workspace_id: str,
        *,
        name: str | None = None,
        clear_name: bool = False,
        labels: Mapping[str, str] | None = None,
        clear_labels: Iterable[str] | None = None,
        allow_hosts: Iterable[str] | None = None,
        clear_allow_hosts: bool = False,
    ) -> dict[str, Any]:
        """Change the name, labels or egress allowlist (at once, on a running workspace); an
        update that changes nothing is refused."""
        if name is not None and clear_name:
            raise InvalidArgumentError("pass either name or clear_name, not both")
        new_name, new_labels = records.check_name(name), records.check_labels(labels)
        drop = [records.check_label_key(key) for key in (clear_labels or [])]
        hosts = _allowlist_change(allow_hosts, clear_allow_hosts)
        self.service.row(workspace_id)  # exists, not expired
        if hosts is not None:
            self._set_allow_hosts(workspace_id, hosts)
            if name is None and not clear_name and not labels and not clear_labels:
                return self.service.view(workspace_id)

        def change(row: dict[str, Any]) -> tuple[str | None, str]:
            current = json.loads(row["labels"])
            merged = {k: v for k, v in {**current, **new_labels}.items() if k not in drop}
            final_name = None if clear_name else (new_name if name is not None else row["name"])
            if merged == current and final_name == row["name"] and hosts is None:
                raise InvalidArgumentError(
                    "the update changes nothing",
                    hint="pass a new name, clear_name, labels or clear_labels",
                )
            return final_name, json.dumps(merged, sort_keys=True)

        try:
            rows.rename(self.store, workspace_id, change)
        except LookupError:
            raise NotFoundError(f"workspace {workspace_id!r} does not exist") from None
        return self.service.view(workspace_id)

    def _set_allow_hosts(self, workspace_id: str, hosts: Sequence[str]) -> None:
        """Record the allowlist and apply it to the running VM, with no lifecycle change
        swapping the VM meanwhile (a VM started later reads the record)."""
        directory = self.service.known_directory(workspace_id)
        with locks.hold(directory, locks.USE, exclusive=False, timeout=CHANGE_WAIT_S):
            row = self.service.row(workspace_id)
            if row["network_policy"] == "off":
                raise InvalidArgumentError(
                    f"workspace {workspace_id} has no network (network_policy 'off')",
                    hint="an allowlist filters egress: create a workspace with "
                    "network_policy='egress' to use one",
                )
            self.store.update("workspaces", workspace_id, allow_hosts=json.dumps([*hosts]))
            if row["state"] == "started" and row["vm_id"]:
                self.service.vms.set_allow_hosts(row["vm_id"], [*hosts])


def _allowlist_change(allow_hosts: Iterable[str] | None, clear: bool) -> list[str] | None:
    """The new allowlist an update asks for, or None to keep it."""
    if allow_hosts is not None and clear:
        raise InvalidArgumentError("pass either allow_hosts or clear_allow_hosts, not both")
    if clear:
        return []
    if allow_hosts is None:
        return None
    hosts = net.check_allow_hosts(allow_hosts, True)
    if not hosts:
        raise InvalidArgumentError(
            "allow_hosts is empty",
            hint="to lift the allowlist (plain egress), pass clear_allow_hosts=True "
            "(CLI: --clear-allow-hosts)",
        )
    return hosts
