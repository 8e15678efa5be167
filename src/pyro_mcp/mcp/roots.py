"""Host paths an MCP client may name: only inside the allowed roots.

The model driving the client is untrusted, so `seed_path`, `source_path` and `output_path`
are resolved (symbolic links followed) and must land inside a root before pyro reads or
writes anything. The resolved path is what the SDK gets, so a link swapped in afterwards
cannot redirect the call.

The default root is the server's working directory, except `/`: MCP hosts often start
servers there, and a root of `/` would hand the model the whole disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pyro_mcp.errors import InvalidArgumentError


class Roots:
    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        self.paths = tuple(Path(os.path.realpath(root)) for root in roots)

    def _inside(self, path: Path) -> bool:
        return any(path == root or root in path.parents for root in self.paths)

    def _refuse(self, what: str, given: str) -> InvalidArgumentError:
        shown = ", ".join(str(root) for root in self.paths) or "none were given"
        return InvalidArgumentError(
            f"{what} {given!r} is outside the host paths this server may use ({shown})",
            hint="name a path inside them, or start the server with --allow-path DIR",
        )

    def existing(self, what: str, given: str) -> str:
        """A path that must exist (a seed or sync source), resolved."""
        real = Path(os.path.realpath(os.path.expanduser(given)))
        if not self._inside(real):
            raise self._refuse(what, given)
        return str(real)

    def new(self, what: str, given: str) -> str:
        """A path to be created (an export output): its nearest existing ancestor is
        resolved, and the rest may not climb with '..'."""
        path = Path(os.path.abspath(os.path.expanduser(given)))
        missing: list[str] = []
        while not path.exists() and not path.is_symlink() and path != path.parent:
            missing.insert(0, path.name)
            path = path.parent
        real = Path(os.path.realpath(path)).joinpath(*missing)
        if ".." in missing or not self._inside(real):
            raise self._refuse(what, given)
        return str(real)


def default_roots(cwd: str, extra: Iterable[str | os.PathLike[str]]) -> Roots:
    """The working directory (unless it is `/`) plus every --allow-path."""
    base = [] if os.path.realpath(cwd) == "/" else [cwd]
    return Roots([*base, *extra])
