"""Every tool result stays under a size a model's context can take.

The SDK's results are already capped (exec output, file reads, patches), but a few add up
(logs of many commands, a listing, a diff with many text patches). Over the limit, the
longest strings are cut, largest first, each with a note of what was cut, and the result
says `result_truncated: true`.
"""

from __future__ import annotations

import json
from typing import Any

MAX_RESULT_CHARS = 256 * 1024
_FLOOR = 1024  # a string is never cut below this many characters


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str))


def _strings(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[int, tuple[Any, ...]]]:
    """(length, path) of every string leaf."""
    if isinstance(value, str):
        return [(len(value), path)]
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    found: list[tuple[int, tuple[Any, ...]]] = []
    for key, child in items:
        found += _strings(child, (*path, key))
    return found


def _cut(value: Any, path: tuple[Any, ...], keep: int) -> None:
    holder = value
    for key in path[:-1]:
        holder = holder[key]
    text: str = holder[path[-1]]
    holder[path[-1]] = f"{text[:keep]}\n[... {len(text) - keep} more characters cut by pyro mcp]"


def bound(result: dict[str, Any], limit: int = MAX_RESULT_CHARS) -> dict[str, Any]:
    """`result` itself when small enough; otherwise a copy with its longest strings cut."""
    if _size(result) <= limit:
        return result
    bounded: dict[str, Any] = json.loads(json.dumps(result, default=str))
    while (over := _size(bounded) - limit) > 0:
        length, path = max(_strings(bounded), key=lambda item: item[0], default=(0, ()))
        if length <= _FLOOR or not path:
            break  # only many small strings are left: the note below still tells the model
        _cut(bounded, path, max(length - over - 100, _FLOOR, length // 4))
    bounded["result_truncated"] = True
    return bounded
