"""The one error tree of pyro-mcp: the caller's fault versus the system's.

Every message says what happened and what to do next; faces (CLI, MCP) print it as is.
The classes also subclass the builtins pyro-mcp 3.11 raised, so code written against it keeps
working: bad input and unknown ids are `ValueError`, state and transport problems
`RuntimeError` (a timeout too: it is not an `OSError`).
"""

from __future__ import annotations

from typing import Any


class PyroError(Exception):
    """Root of every error pyro-mcp raises on purpose."""

    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        self.message = message
        self.hint = hint
        self.details = details
        super().__init__(message if hint is None else f"{message}; {hint}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description for `--json` output and MCP tool errors."""
        payload: dict[str, Any] = {"type": self.kind, "message": str(self)}
        if self.details:
            payload["details"] = self.details
        return payload


# --- the caller's fault -------------------------------------------------------------------


class CallerError(PyroError):
    """The request cannot succeed as given; changing the request fixes it."""

    kind = "caller_error"


class InvalidArgumentError(CallerError, ValueError):
    kind = "invalid_argument"


class NotFoundError(CallerError, ValueError):
    kind = "not_found"


class ConflictError(CallerError, RuntimeError):
    """Something else holds or changed what the request needs; retrying later may work."""

    kind = "conflict"


class WrongStateError(CallerError, RuntimeError):
    """The VM or workspace is not in a state that allows the request (e.g. stopped)."""

    kind = "wrong_state"


# --- the system's fault -------------------------------------------------------------------


class SystemFault(PyroError, RuntimeError):
    """The host, the VMM or the guest failed; the request itself was fine."""

    kind = "system_error"


class HostRequirementError(SystemFault):
    """A host tool, device or permission is missing; the hint names how to get it."""

    kind = "host_requirement"


class BuildError(SystemFault):
    kind = "build_failed"


class IntegrityError(SystemFault):
    """A cached artefact does not match the digest its manifest records."""

    kind = "integrity"


class DownloadError(SystemFault):
    kind = "download_failed"


class VmmError(SystemFault):
    kind = "vmm_failed"


class GuestError(SystemFault):
    kind = "guest_failed"


class PyroTimeoutError(SystemFault):
    kind = "timeout"
