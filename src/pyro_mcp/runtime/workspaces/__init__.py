"""Persistent workspaces: a VM whose writable disk, baseline and command history outlive it."""
