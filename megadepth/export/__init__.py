"""Exports of trained runs to other ecosystems."""

from megadepth.export.hf import export_hf

__all__ = ["export_hf"]
