"""The package version: a literal the build backend reads too (importlib.metadata costs ~60 ms)."""

__version__ = "0.1.0"
