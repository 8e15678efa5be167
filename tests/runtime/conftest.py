"""VM fixtures for these tests: see tests/vm_leaks.py."""

from vm_leaks import leak_guard, vm_pyro

__all__ = ["leak_guard", "vm_pyro"]
