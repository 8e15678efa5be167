"""pyro guest agent, services: the service.* operations over a registry of named runs.

A service's files live under /run/pyro-services/<name>/ (a tmpfs, not /workspace): its logs
(service_logs.py) and its leader's pid. service.start answers once the readiness check
(readiness.py) passes, the service exits first (failed, process_exited_before_ready), the
timeout passes (its whole session killed; failed, readiness_timeout) or its caller gives up
(killed too; failed, start_cancelled), so nothing keeps running that nobody waited for; see
service_process.py for one run. A name whose service has ended may be started again: the old
run and its logs are replaced. An agent that starts finds what an earlier run of itself left
(it crashed and init restarted it) and kills it. stdlib-only and Python 3.11 compatible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent.files import Tree
from pyro_mcp.agent.readiness import check_ready
from pyro_mcp.agent.service_process import Service, kill_session
from pyro_mcp.protocol import file_ops, frames, ops
from pyro_mcp.protocol import service_ops as sp

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.guest_secrets import SecretStore
    from pyro_mcp.agent.server import Call
    from pyro_mcp.agent.system import AgentConfig

Params = dict[str, Any]

RUN_DIR = "/run/pyro-services"


def operations(
    config: AgentConfig, store: SecretStore | None = None
) -> dict[str, Callable[[Call, Params], Params]]:
    """The service operations, by op name; services live under the config's run directory.
    With a store, secret_env maps its secrets and the logs are redacted with them."""
    registry = Registry(config.workspace_root, run_dir(config), store)
    return {
        "service.start": registry.start,
        "service.list": registry.list,
        "service.status": registry.status,
        "service.logs": registry.logs,
        "service.stop": registry.stop,
        "service.wait": registry.wait,
    }


def run_dir(config: AgentConfig) -> str:
    """/run/pyro-services in the guest; beside the workspace in a sandboxed (test) agent."""
    if config.system_calls:
        return RUN_DIR
    return os.path.join(os.path.dirname(config.workspace_root), "run", "pyro-services")


def _invalid(message: str) -> frames.OpError:
    return frames.OpError(frames.ERR_INVALID_ARGUMENT, message)


class Registry:
    """Every service of this agent, by name (at most sp.MAX_SERVICES, ended ones included)."""

    def __init__(
        self, workspace_root: str, directory: str, store: SecretStore | None = None
    ) -> None:
        self.tree, self.directory, self.store = Tree(workspace_root), directory, store
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        _sweep(directory)

    def _find(self, name: str) -> Service:
        with self._lock:
            service = self._services.get(name)
        if service is None:
            raise frames.OpError(frames.ERR_NOT_FOUND, f"service {name!r} does not exist")
        return service

    def _cwd(self, parts: file_ops.Parts) -> str:
        real = self.tree.resolve(parts, follow_final=True)  # no symlink leads out
        path = os.path.join(self.tree.root, *real)
        if not os.path.isdir(path):
            message = f"working directory {file_ops.logical(parts)} does not exist in the guest"
            raise frames.OpError(frames.ERR_NOT_FOUND, message)
        return path

    def _claim(self, spec: sp.StartSpec) -> Service:
        """A new run under `spec.name`, replacing an ended one; a running one is a conflict."""
        with self._lock:
            old = self._services.get(spec.name)
            if old is not None and not old.ended:
                raise frames.OpError(
                    sp.ERR_CONFLICT,
                    f"service {spec.name!r} is already running; stop it or pick another name",
                )
            if old is None and len(self._services) >= sp.MAX_SERVICES:
                self._evict()
            directory = os.path.join(self.directory, spec.name)
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory, mode=0o700)
            store = self.store
            service = Service(spec, directory, store.redactor if store is not None else _none)
            self._services[spec.name] = service
        return service

    def _evict(self) -> None:
        """Make room by forgetting the service that ended first (lock held)."""
        ended = [s for s in self._services.values() if s.ended]
        if not ended:
            raise frames.OpError(
                sp.ERR_CONFLICT, f"{sp.MAX_SERVICES} services are running; stop one first"
            )
        oldest = min(ended, key=lambda s: s.ended_at or 0.0)
        del self._services[oldest.spec.name]
        shutil.rmtree(oldest.directory, ignore_errors=True)

    # --- operations -------------------------------------------------------------------------

    def start(self, call: Call, params: Params) -> Params:
        spec = self._parse(sp.parse_start, params)
        if spec.secret_env:
            store = self.store
            if store is None:
                raise _invalid("this agent keeps no secrets")
            mapped = self._parse(lambda p: store.env_for(spec.secret_env), params)
            spec = dataclasses.replace(spec, env={**spec.env, **mapped})
        cwd = self._cwd(spec.cwd)
        service = self._claim(spec)
        service.launch(cwd)
        root = self.tree.root
        service.await_ready(
            call, lambda left: check_ready(spec.readiness, root, cwd, spec.env, left)
        )
        return service.record()

    def list(self, call: Call, params: Params) -> Params:
        self._parse(lambda p: ops.check_keys(p, ()), params)
        with self._lock:
            services = sorted(self._services.values(), key=lambda s: s.started_at)
        return {"services": [service.record() for service in services]}

    def status(self, call: Call, params: Params) -> Params:
        return self._find(self._parse(sp.parse_name, params)).record()

    def logs(self, call: Call, params: Params) -> Params:
        spec = self._parse(sp.parse_logs, params)
        service = self._find(spec.name)
        result: Params = {"service": service.record(), "truncated": False}
        for stream, sink in service.logs.items():
            data, truncated = sink.tail(spec.tail_lines, spec.max_bytes)
            for start in range(0, len(data), frames.MAX_BODY_BYTES):
                call.send_output(stream, data[start : start + frames.MAX_BODY_BYTES])
            result[f"{stream}_bytes"] = len(data)
            result[f"{stream}_truncated"] = truncated
            result["truncated"] = result["truncated"] or truncated
        return result

    def stop(self, call: Call, params: Params) -> Params:
        name = self._parse(lambda p: sp.parse_name(p, "grace_seconds"), params)
        grace = self._parse(sp.parse_grace, params)
        service = self._find(name)
        service.stop(grace)
        return service.record()

    def wait(self, call: Call, params: Params) -> Params:
        name = self._parse(lambda p: sp.parse_name(p, "run_id"), params)
        run_id = self._parse(lambda p: sp.parse_run_id(p.get("run_id")), params)
        with self._lock:
            service = self._services.get(name)
        if service is None or service.run_id != run_id:
            return {"ended": True, "service": service.record() if service else None}
        if not service.wait_ended(call):
            raise frames.OpError(frames.ERR_CANCELLED, "the request was cancelled")
        return {"ended": True, "service": service.record()}

    @staticmethod
    def _parse(parse: Callable[[Params], Any], params: Params) -> Any:
        try:
            return parse(params)
        except ops.ParamError as exc:
            raise _invalid(str(exc)) from None


def _none() -> None:
    return None


def _sweep(directory: str) -> None:
    """Kill what an earlier run of the agent left (it restarted): no service may run that
    this agent does not know. Runs before any request, so no new session can hold those ids."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            leader = os.path.join(directory, name, "leader")
            with contextlib.suppress(OSError, ValueError), open(leader, encoding="ascii") as f:
                kill_session(int(f.read().strip()))
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
