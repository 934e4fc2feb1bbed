"""Compatibility path: ``demandkit.replications`` is :mod:`demandkit.interfaces.replications`."""

from .interfaces.replications import REPLICATIONS, blp, blp_problem, nevo, nevo_problem

__all__ = ["REPLICATIONS", "blp", "blp_problem", "nevo", "nevo_problem"]
