"""Synthetic data with known truth: PyBLP's ``Simulation`` (equilibrium prices and shares for every market at
once) and its results, and the Monte Carlo helper that estimates many simulated problems."""

from .results import SimulationResults
from .simulation import Simulation, SimulationError

__all__ = ["Simulation", "SimulationError", "SimulationResults"]
