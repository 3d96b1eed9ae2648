"""Error classes for bad input (``ValueError``s the command line prints as one line), importable anywhere."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class DataError(ValueError):
    """A data file or data setting is unusable; the message names the file and what is wrong."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and, for typos, the nearest valid one."""
