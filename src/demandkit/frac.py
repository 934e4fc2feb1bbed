"""Compatibility path: ``demandkit.frac`` is :mod:`demandkit.blp.frac` (FRAC starting values)."""

from .blp.frac import FRACResults, estimate

__all__ = ["FRACResults", "estimate"]
