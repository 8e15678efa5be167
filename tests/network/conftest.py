"""Fixtures of the networking unit tests (framework/sandbox_netns.py): a throwaway namespace
to run in, and the proof that the process's own namespace was left alone."""

from __future__ import annotations

from framework.sandbox_netns import home_namespace_unchanged, netns_sandbox

__all__ = ["home_namespace_unchanged", "netns_sandbox"]
