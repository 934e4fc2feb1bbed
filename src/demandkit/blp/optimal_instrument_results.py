"""``OptimalInstrumentResults``: estimated Chamberlain (1987) instruments (PyBLP's class of that name) and the
problem that uses them (``to_problem``), a copy of the original that shares every array but the instruments."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..configurations.formulation import Formulation, absorb
from ..exceptions import SpecificationError
from ..layout.validation import as_frame, check_full_rank, numbered_columns
from ..persistence import Persistent


@dataclasses.dataclass(frozen=True, eq=False)
class OptimalInstrumentResults(Persistent):
    """Estimated optimal instruments (PyBLP's ``OptimalInstrumentResults``).

    Attributes
    ----------
    problem_results : ProblemResults
        The results they were computed from.
    demand_instruments, supply_instruments : ndarray
        ``N x P`` estimated optimal instruments for :math:`\\theta` (``N x 0`` supply instruments without a
        supply side).
    inverse_covariance_matrix : ndarray
        :math:`\\Sigma_{\\xi\\omega}^{-1}` (``1 x 1`` without a supply side).
    expected_xi_by_theta_jacobian, expected_omega_by_theta_jacobian : ndarray
        ``N x P`` averaged Jacobians.
    expected_prices, expected_shares : ndarray
        ``N x 1`` prices and shares averaged over the realizations.
    fp_converged, fp_iterations, contraction_evaluations : ndarray
        ``T x draws`` diagnostics of the equilibrium price iterations.
    """

    problem_results: Any
    demand_instruments: np.ndarray
    supply_instruments: np.ndarray
    inverse_covariance_matrix: np.ndarray
    expected_xi_by_theta_jacobian: np.ndarray
    expected_omega_by_theta_jacobian: np.ndarray
    expected_prices: np.ndarray
    expected_shares: np.ndarray
    computation_time: float
    draws: int
    fp_converged: np.ndarray
    fp_iterations: np.ndarray
    contraction_evaluations: np.ndarray

    def __str__(self) -> str:
        return (
            f"Optimal Instrument Results: {self.draws} draw(s), {self.computation_time:.3f} s, "
            f"{int(self.fp_iterations.sum())} fixed-point iterations, "
            f"{self.demand_instruments.shape[1]} demand and {self.supply_instruments.shape[1]} supply instruments"
        )

    def to_dict(self) -> dict[str, Any]:
        """The results by name (everything but ``problem_results``), arrays as nested lists for JSON."""
        return {
            f.name: value.tolist() if isinstance(value := getattr(self, f.name), np.ndarray) else value
            for f in dataclasses.fields(self)
            if f.name != "problem_results"
        }

    @property
    def supply_shifters(self) -> list[str]:
        """X3 columns not involving shares (nor the intercept) that are not in X1: added to the demand instruments."""
        p = self.problem_results.problem
        if not p.K3:
            return []
        demand, supply = self._shifter_sets()
        return sorted(supply - demand)

    @property
    def demand_shifters(self) -> list[str]:
        """X1 columns not involving prices (nor the intercept) that are not in X3: added to the supply instruments."""
        p = self.problem_results.problem
        if not p.K3:
            return []
        demand, supply = self._shifter_sets()
        return sorted(demand - supply)

    def _shifter_sets(self) -> tuple[set[str], set[str]]:
        p = self.problem_results.problem
        demand = {label for label in p.design.X1_labels if label not in p.design.endogenous and label != "1"}
        supply = {label for label in p.X3_labels if "shares" not in label and label != "1"}
        return demand, supply

    def to_problem(
        self,
        supply_shifter_formulation: Formulation | None = None,
        demand_shifter_formulation: Formulation | None = None,
        product_data: Any = None,
        drop_indices: Any = None,
    ) -> Any:
        """The same problem with the optimal excluded instruments (PyBLP's ``OptimalInstrumentProblem``).

        Demand instruments are :math:`Z^{opt}_D` without the columns of parameters on exogenous linear
        characteristics (or those in ``drop_indices``), the endogenous X1 columns at the expected prices for
        concentrated-out coefficients on them, and the supply shifters; then the exogenous X1 columns. Supply
        instruments are built the same way with X3, expected shares and demand shifters. Fixed effects are
        absorbed as in the original problem.
        """
        results = self.problem_results
        p = results.problem
        space = results._space
        data = p.product_frame if product_data is None else as_frame(product_data, "product_data")
        if not p.K3 and (supply_shifter_formulation is not None or demand_shifter_formulation is not None):
            raise SpecificationError("Without a supply side, shifter formulations must be None.")
        dropped = np.zeros(space.P, dtype=bool)
        if drop_indices is not None:
            dropped[np.asarray(list(drop_indices), dtype=np.int64)] = True
        else:
            offset = space.P_demand
            for k in space.beta_index:
                dropped[offset] = p.design.X1_labels[k] not in p.design.endogenous
                offset += 1
            for k in space.gamma_index:
                dropped[offset] = "shares" not in p.X3_labels[k]
                offset += 1
        frame = p.product_frame.assign(prices=self.expected_prices[:, 0], shares=self.expected_shares[:, 0])
        demand = [self.demand_instruments[:, ~dropped]]
        alpha = [k for k in space.eliminated_beta if p.design.X1_labels[k] in p.design.endogenous]
        if alpha:
            demand.append(p.product_formulations[0].build_matrix(frame)[0][:, alpha])
        supply = [self.supply_instruments[:, ~dropped]] if p.K3 else [self.supply_instruments]
        if p.K3:
            endogenous = [k for k in space.eliminated_gamma if "shares" in p.X3_labels[k]]
            if endogenous:
                supply.append(p.product_formulations[2].build_matrix(frame)[0][:, endogenous])
            shifters = _shifters(supply_shifter_formulation, self.supply_shifters, data)
            if shifters is not None:
                demand.append(shifters)
            shifters = _shifters(demand_shifter_formulation, self.demand_shifters, data)
            if shifters is not None:
                supply.append(shifters)
        return with_instruments(p, np.column_stack(demand), np.column_stack(supply))


def _shifters(formulation: Formulation | None, default: list[str], data: pd.DataFrame) -> np.ndarray | None:
    if formulation is None:
        if not default:
            return None
        formulation = Formulation("0 + " + " + ".join(default))
    elif not isinstance(formulation, Formulation):
        raise SpecificationError(f"Shifter formulations must be Formulations; received {formulation!r}.")
    matrix, labels = formulation.build_matrix(data)
    keep = [k for k, label in enumerate(labels) if label != "1"]
    return matrix[:, keep] if keep else None


def with_instruments(problem: Any, demand: np.ndarray, supply: np.ndarray) -> Any:
    """A copy of ``problem`` whose excluded instruments are ``demand`` (and ``supply``), supplemented by the
    exogenous X1 (X3) columns and absorbed like the original's.

    The copy shares every other array with ``problem`` (designs, agents, layout), so nothing is rebuilt.
    """
    p = problem
    updated = copy.copy(p)
    design = p.design
    exogenous = [k for k, label in enumerate(design.X1_labels) if label not in design.endogenous]
    labels = [f"demand_instruments{k}" for k in range(demand.shape[1])] + [design.X1_labels[k] for k in exogenous]
    ZD = absorb(
        np.column_stack([demand, design.X1_raw[:, exogenous]]),
        design.absorb_ids,
        p.product_formulations[0].absorb_method,
    )
    check_full_rank(ZD, labels, "The optimal demand instruments")
    updated.design = dataclasses.replace(design, ZD=ZD, ZD_labels=labels)
    updated.MD = ZD.shape[1]
    updated.ZD_tensor = torch.as_tensor(np.ascontiguousarray(ZD), dtype=torch.float64, device=p.device)
    columns = {label: demand[:, k] for k, label in enumerate(labels[: demand.shape[1]])}
    if p.K3:
        exogenous = [k for k, label in enumerate(p.X3_labels) if "shares" not in label]
        supply_labels = [f"supply_instruments{k}" for k in range(supply.shape[1])]
        supply_labels += [p.X3_labels[k] for k in exogenous]
        ZS = absorb(
            np.column_stack([supply, p.X3_raw[:, exogenous]]),
            p.supply_absorb_ids,
            p.product_formulations[2].absorb_method,
        )
        check_full_rank(ZS, supply_labels, "The optimal supply instruments")
        updated.ZS, updated.ZS_labels, updated.MS = ZS, supply_labels, ZS.shape[1]
        updated.ZS_tensor = torch.as_tensor(np.ascontiguousarray(ZS), dtype=torch.float64, device=p.device)
        columns.update({label: supply[:, k] for k, label in enumerate(supply_labels[: supply.shape[1]])})
    frame = p.product_frame
    old = numbered_columns(frame, "demand_instruments") + numbered_columns(frame, "supply_instruments")
    updated.product_frame = p.product_frame.drop(columns=old).assign(**columns)
    updated.add_exogenous = True
    return updated
