"""The error classes every part of megadepth raises for bad input, in a leaf module any package may import.
All are ``ValueError``; the command line prints them as one line instead of a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class DataError(ValueError):
    """A data file or data setting is unusable; the message names the file and what is wrong."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and, for typos, the nearest valid one."""
