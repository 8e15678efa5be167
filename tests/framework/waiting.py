"""Waiting for a state, never for a time: these machines are shared and their speed varies 2x.

A limit is only how long to keep looking before calling it a failure; nothing asserts that a
thing happened fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

WAIT = 15.0


def wait_until(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Check `condition` until it holds; fail the test after `limit` seconds of looking."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(0.02)
