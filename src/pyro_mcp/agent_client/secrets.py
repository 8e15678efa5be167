"""The host's call of the guest's ``secrets.put``: install a workspace's secret set.

The values travel in the request's input (never in its header, a log or a command line); the
agent writes them to its tmpfs and answers with the names it holds, which must be exactly the
names sent (the guest is not trusted to say anything else).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent_client.base import field, malformed
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.protocol import redaction

if TYPE_CHECKING:
    from pyro_mcp.agent_client.base import Waiter
    from pyro_mcp.agent_client.client import GuestClient

SECRETS_TIMEOUT = 60.0  # as the contract's secret install


def install_secrets(
    client: GuestClient, values: Mapping[str, bytes], *, timeout: float = SECRETS_TIMEOUT
) -> list[str]:
    """Replace the guest's secret set with `values` (empty: remove them all); returns the
    names installed."""
    try:
        body = redaction.encode_secret_set(values)
    except redaction.SecretError as exc:
        raise InvalidArgumentError(str(exc)) from None
    expected = sorted(values)

    def parse(waiter: Waiter, result: dict[str, Any]) -> list[str]:
        names = field(result, "names", list)
        if names != expected:
            raise malformed("secrets.put result (names differ from the set sent)")
        return expected

    installed: list[str] = client._call("secrets.put", {}, timeout, parse, source=[body])
    return installed
