"""Post-estimation at a simulation's true parameters (PyBLP's ``SimulationResults.compute_*`` methods).

:class:`TruePostEstimation` gives :class:`~demandkit.simulation.results.SimulationResults` every post-estimation
method of :class:`~demandkit.blp.results.ProblemResults` (elasticities, diversion ratios, costs, markups, merger
prices, micro values, ...). Each delegates to one :class:`ProblemResults` evaluated at the simulation's true
parameters, built on first use and cached: :meth:`SimulationResults.to_problem` solved with
``Optimization('return')`` and ``method='1s'``, with the true :math:`\\Sigma`, :math:`\\Pi`, :math:`\\rho` and the
true :math:`\\beta` (and :math:`\\gamma`) as starting values, so that they are the parameters (none is concentrated
out) and the structural errors are the simulation's.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..blp.results import ProblemResults
from ..configurations.iteration import Iteration
from ..configurations.optimization import Optimization

# The ProblemResults methods that PyBLP's SimulationResults also has (everything but estimation-specific ones such
# as tests, bootstrapping, optimal instruments and the merger wrapper).
DELEGATED = (
    "compute_agent_scores",
    "compute_aggregate_elasticities",
    "compute_approximate_prices",
    "compute_consumer_surpluses",
    "compute_costs",
    "compute_delta",
    "compute_demand_hessians",
    "compute_demand_jacobians",
    "compute_diversion_ratios",
    "compute_elasticities",
    "compute_hhi",
    "compute_long_run_diversion_ratios",
    "compute_markups",
    "compute_micro_scores",
    "compute_micro_values",
    "compute_passthrough",
    "compute_prices",
    "compute_probabilities",
    "compute_profit_hessians",
    "compute_profits",
    "compute_shares",
    "extract_diagonal_means",
    "extract_diagonals",
    "simulate_micro_data",
)


class TruePostEstimation:
    """Mixin: :class:`ProblemResults`' post-estimation methods at a simulation's true parameters.

    The class that uses it has ``simulation`` (a :class:`~demandkit.simulation.simulation.Simulation`), ``delta``
    (``N x 1`` mean utilities at the solution) and ``to_problem()``.
    """

    simulation: Any
    delta: np.ndarray

    def to_problem(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - defined by the class using this
        raise NotImplementedError

    @property
    def true_results(self) -> ProblemResults:
        """:class:`ProblemResults` at the simulation's true parameters, which the post-estimation methods use.

        Built once (then cached) from :meth:`to_problem` solved with ``Optimization('return')``, ``method='1s'``
        and ``check_optimality='gradient'``, the true :math:`\\Sigma`, :math:`\\Pi`, :math:`\\rho`, :math:`\\beta`
        and :math:`\\gamma` all given (so none is concentrated out), starting the inversion for :math:`\\delta` at
        the simulation's mean utilities.

        Returns
        -------
        ProblemResults
            Results whose ``delta``, ``xi`` and ``omega`` are the simulation's (up to the inversion's tolerance).
        """
        cached = self.__dict__.get("_true_results")
        if cached is None:
            cached = self.__dict__["_true_results"] = self._solve_at_truth()
        return cached

    def _solve_at_truth(self) -> ProblemResults:
        simulation = self.simulation
        problem = self.to_problem()
        arguments: dict[str, Any] = {"beta": simulation.beta}
        if simulation.K2:
            arguments.update(sigma=simulation.sigma, pi=simulation.pi if simulation.D else None)
        if simulation.H:
            arguments["rho"] = simulation.rho
        if simulation.K3:
            arguments["gamma"] = simulation.gamma
        return problem.solve(
            **arguments,
            delta=self.delta,
            method="1s",
            optimization=Optimization("return"),
            iteration=Iteration("squarem", {"atol": 1e-14}),
            check_optimality="gradient",
        )


def _delegate(name: str) -> Any:
    method = getattr(ProblemResults, name)

    @functools.wraps(method)
    def delegated(self: TruePostEstimation, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.true_results, name)(*args, **kwargs)

    summary = (method.__doc__ or "").strip().split("\n", 1)[0].rstrip(".")
    delegated.__doc__ = (
        f"{summary}, at the simulation's true parameters.\n\n"
        f"Takes the arguments of :meth:`ProblemResults.{name}` and returns what it returns, evaluated by\n"
        ":attr:`true_results`.\n"
    )
    delegated.__qualname__ = f"TruePostEstimation.{name}"
    return delegated


for _name in DELEGATED:
    setattr(TruePostEstimation, _name, _delegate(_name))
del _name
