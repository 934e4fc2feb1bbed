"""Compatibility path: ``demandkit.montecarlo`` is :mod:`demandkit.simulation.montecarlo`."""

from .simulation.montecarlo import run, summarize

__all__ = ["run", "summarize"]
