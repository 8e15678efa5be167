"""How every CLI command speaks: JSON or human text on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from pyro_mcp.errors import PyroError

if TYPE_CHECKING:
    from rich.progress import Progress

EXIT_ERROR = 1
EXIT_USAGE = 2


def emit_json(payload: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    out.flush()


def stream_chunk(stream_name: str, chunk: bytes) -> None:
    """Guest output as it arrives, raw, on the matching host stream."""
    out = sys.stdout if stream_name == "stdout" else sys.stderr
    out.flush()
    out.buffer.write(chunk)
    out.buffer.flush()


def report_error(error: PyroError, as_json: bool) -> int:
    """Print `error` the way the command was asked to speak; returns the exit status."""
    if as_json:
        emit_json({"ok": False, "error": error.to_dict()})
    else:
        sys.stderr.write(f"[error] {error}\n")
    return EXIT_ERROR


class PhaseReporter:
    """Build progress: a bar on a terminal, `[tag] phase=… message` lines otherwise."""

    def __init__(self, tag: str, phases: tuple[str, ...], enabled: bool = True) -> None:
        self.tag = tag
        self.phases = phases
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: Any = None
        self._seen: list[str] = []

    def __enter__(self) -> PhaseReporter:
        if self.enabled and sys.stderr.isatty():
            # rich costs ~0.2 s to import: only a terminal that shows a bar pays for it.
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.fields[tag]}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("starting", total=len(self.phases), tag=self.tag)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            if exc[0] is None:
                self._bar.update(self._task, completed=len(self.phases), description="done")
            self._bar.stop()

    def phase(self, name: str, message: str) -> None:
        if not self.enabled:
            return
        if name not in self._seen:
            self._seen.append(name)
        if self._bar is not None:
            done = max(len(self._seen) - 1, 0)
            self._bar.update(self._task, completed=done, description=f"{name}: {message}")
        else:
            sys.stderr.write(f"[{self.tag}] phase={name} {message}\n")
            sys.stderr.flush()


Renderer = Callable[[Any], None]


def show(payload: Any, as_json: bool, render: Renderer) -> None:
    if as_json:
        emit_json(payload)
    else:
        render(payload)
