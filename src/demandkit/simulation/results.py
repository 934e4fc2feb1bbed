"""``SimulationResults``: the solved simulation's data (PyBLP's ``SimulationResults``), its default instruments
and its conversion to a :class:`~demandkit.Problem` ready to estimate."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..blp.problem import Problem
from ..configurations.formulation import Formulation
from ..configurations.integration import Integration
from ..construction.instruments import build_blp_instruments
from ..kernels.fixed_point import FixedPointResult
from ..layout.validation import numbered_columns
from ..persistence import Persistent
from .postestimation import TruePostEstimation


class SimulationResults(TruePostEstimation, Persistent):
    """A solved simulation (PyBLP's ``SimulationResults``).

    PyBLP's post-estimation methods (``compute_elasticities``, ``compute_costs``, ``compute_prices``, ...) are
    evaluated at the simulation's true parameters by :attr:`true_results` (see
    :mod:`demandkit.simulation.postestimation`); ``to_pickle`` and ``from_pickle`` save and load the results.

    Attributes
    ----------
    simulation : Simulation
        The simulation that was solved.
    product_data : DataFrame
        :attr:`Simulation.product_data` with prices and shares (or the exogenous characteristics) replaced.
    delta, costs : ndarray
        ``N x 1`` mean utilities and marginal costs at the solution.
    fp_converged, fp_iterations, contraction_evaluations : ndarray
        Per market (sorted market order): convergence, iterations and evaluations of the fixed point.
    profit_gradients : ndarray or None
        ``N x 1`` first-order conditions :math:`\\partial \\pi_f/\\partial p_j` at the equilibrium (zero at an
        exact equilibrium), from :meth:`Simulation.replace_endogenous`.
    profit_gradient_norms : ndarray or None
        ``T x 1`` infinity norms of the profit gradients in each market.
    computation_time : float
        Seconds spent solving.
    """

    def __init__(
        self,
        simulation: Any,  # the Simulation that produced these results (held, not imported: it sits above)
        override: dict[str, np.ndarray],
        delta: np.ndarray,
        costs: np.ndarray | None,
        result: FixedPointResult,
        seconds: float,
        profit_gradients: np.ndarray | None = None,
        profit_gradient_norms: np.ndarray | None = None,
    ) -> None:
        self.simulation = simulation
        self.product_data = simulation.product_data.assign(**override)
        self.delta = delta
        self.costs = costs
        self.computation_time = seconds
        self.fp_converged = result.converged.cpu().numpy().astype(bool)
        self.fp_iterations = result.iterations.cpu().numpy().astype(np.int64)
        self.contraction_evaluations = result.evaluations.cpu().numpy().astype(np.int64)
        self.profit_gradients = profit_gradients
        self.profit_gradient_norms = profit_gradient_norms

    def __str__(self) -> str:
        lines = [
            "Simulation Results:",
            f"  computation time: {self.computation_time:.3f} s, "
            f"fixed point failures: {int((~self.fp_converged).sum())}, "
            f"iterations: {int(self.fp_iterations.sum())}, evaluations: {int(self.contraction_evaluations.sum())}",
        ]
        if self.profit_gradient_norms is not None:
            lines.append(f"  max norm of profit gradients: {float(np.max(self.profit_gradient_norms)):.3e}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The results by name as JSON-compatible values: ``product_data`` as a mapping from columns to lists,
        arrays as nested lists (None where absent)."""
        names = ("delta", "costs", "fp_converged", "fp_iterations")
        names += ("contraction_evaluations", "profit_gradients", "profit_gradient_norms")
        values: dict[str, Any] = {"product_data": self.product_data.to_dict(orient="list")}
        values["computation_time"] = float(self.computation_time)
        values.update({name: None if getattr(self, name) is None else getattr(self, name).tolist() for name in names})
        return values

    def default_instruments(self) -> tuple[np.ndarray, np.ndarray]:
        """PyBLP's default excluded instruments: BLP sums of the exogenous X1 (X3) variables, plus a constant when
        the number of products varies across markets, with constant columns dropped, and supply (demand) shifters.
        """
        simulation = self.simulation
        data = simulation.product_data
        X1_names = simulation.product_formulations[0].variables - {"prices"}
        X3_formulation = simulation.product_formulations[2]
        X3_names = X3_formulation.variables - {"shares"} if X3_formulation is not None else set()
        sizes = simulation.problem.layout.sizes
        intercept = "1" if bool((sizes < sizes.max()).any()) else "0"
        N = simulation.N
        demand, supply = np.zeros((N, 0)), np.zeros((N, 0))
        if X1_names or intercept == "1":
            demand = build_blp_instruments(Formulation(" + ".join([intercept, *sorted(X1_names)])), data)
            demand = demand[:, (demand != demand[0]).any(axis=0)]
        if simulation.K3 and (X3_names or intercept == "1"):
            supply = build_blp_instruments(Formulation(" + ".join([intercept, *sorted(X3_names)])), data)
            supply = supply[:, (supply != supply[0]).any(axis=0)]
        if X3_names - X1_names:
            shifters = Formulation(" + ".join(["0", *sorted(X3_names - X1_names)])).build_matrix(data)[0]
            demand = np.column_stack([demand, shifters])
        if simulation.K3 and X1_names - X3_names:
            shifters = Formulation(" + ".join(["0", *sorted(X1_names - X3_names)])).build_matrix(data)[0]
            supply = np.column_stack([supply, shifters])
        return demand, supply

    def to_problem(
        self,
        product_formulations: Any = None,
        product_data: Any = None,
        agent_formulation: Formulation | None = None,
        agent_data: Any = None,
        integration: Integration | None = None,
        rc_types: Any = None,
        costs_type: str | None = None,
        add_exogenous: bool = True,
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Problem:
        """The solved simulation as a :class:`~demandkit.blp.problem.Problem` ready to solve.

        Arguments default to the simulation's; ``product_data`` defaults to :attr:`product_data` with
        :meth:`default_instruments` as ``demand_instruments0..`` and ``supply_instruments0..``.
        """
        simulation = self.simulation
        if product_data is None:
            demand, supply = self.default_instruments()
            frame = self.product_data.drop(
                columns=numbered_columns(self.product_data, "demand_instruments")
                + numbered_columns(self.product_data, "supply_instruments")
            )
            columns = {f"demand_instruments{k}": demand[:, k] for k in range(demand.shape[1])}
            columns.update({f"supply_instruments{k}": supply[:, k] for k in range(supply.shape[1])})
            product_data = frame.assign(**columns)
        formulations = simulation.product_formulations if product_formulations is None else product_formulations
        return Problem(
            formulations,
            product_data,
            simulation.agent_formulation if agent_formulation is None else agent_formulation,
            simulation.agent_data if agent_data is None and integration is None else agent_data,
            integration,
            rc_types=simulation.rc_types if rc_types is None else rc_types,
            costs_type=simulation.costs_type if costs_type is None else costs_type,
            add_exogenous=add_exogenous,
            device=str(simulation.problem.device) if device is None else device,
            dtype=simulation.problem.dtype if dtype is None else dtype,
        )
