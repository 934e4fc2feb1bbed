"""Post-estimation with agents other than the problem's: PyBLP's ``agent_data`` and ``integration`` arguments.

:func:`economy_with_agents` lays the same products out with other agents (``agent_data``, nodes built by an
``integration``, or the problem's demographics with an integration's nodes), and :func:`invert_shares` solves
:math:`s(\\delta; \\hat\\theta) = S` with them for :meth:`ProblemResults.compute_delta
<demandkit.blp.results.ProblemResults.compute_delta>`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..exceptions import ConvergenceWarning, SpecificationError
from .demand import DemandModel

FP_TYPES = ("safe_linear", "linear", "safe_nonlinear", "nonlinear")


def economy_with_agents(results: Any, agent_data: Any = None, integration: Any = None) -> tuple[Any, Any]:
    """The problem and demand model of ``results`` with other agents, ``(economy, model)``.

    Parameters
    ----------
    results : ProblemResults
        The estimates; their problem gives the products and formulations.
    agent_data : DataFrame or mapping, optional
        Other agents (``market_ids``, ``weights``, ``nodes0, ...`` and the demographics); the problem's by default.
    integration : Integration, optional
        Builds the nodes and weights instead (the demographics then come from ``agent_data``'s first rows in each
        market, the problem's by default).

    Returns
    -------
    tuple
        ``(results.problem, results.model)`` when neither is given or the model has no random coefficients (the
        logit and nested logit have no agents), else a new economy and its model, the nodes aligned with
        :math:`\\Sigma` as in estimation.
    """
    problem = results.problem
    if (agent_data is None and integration is None) or not problem.K2:
        return problem, results.model
    frame = agent_data if agent_data is not None else getattr(problem, "agent_frame", None)
    if frame is None and integration is None:
        raise SpecificationError("Other agents need agent_data with nodes or an integration.")
    economy = type(problem)(
        problem.product_formulations,
        problem.product_frame,
        problem.agent_formulation,
        frame,
        integration,
        rc_types=problem.rc_types,
        costs_type=problem.costs_type,
        add_exogenous=problem.add_exogenous,
        device=str(problem.device),
        dtype=problem.dtype,
    )
    return economy, DemandModel(economy).fix_nodes(results._space.sigma0)


def invert_shares(
    results: Any, model: Any, iteration: Iteration | None, fp_type: str, shares_bounds: Any = None
) -> Tensor:
    """Mean utilities ``[T, J]`` that reproduce the observed shares with ``model`` at the estimated parameters.

    The inversion starts at the estimated :math:`\\delta`; markets that do not converge raise a
    :class:`~demandkit.exceptions.ConvergenceWarning` naming them. ``fp_type`` and ``shares_bounds`` are PyBLP's:
    they choose how its contraction is written, which changes the path to the fixed point but not the fixed point;
    demandkit always iterates its log-space contraction :math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)`
    (damped by :math:`1 - \\rho` under nesting), which needs no bounds on simulated shares.

    Parameters
    ----------
    results : ProblemResults
        The estimates.
    model : DemandModel
        The demand model to invert (:func:`economy_with_agents`).
    iteration : Iteration or None
        The fixed-point configuration; ``Iteration('squarem', {'atol': 1e-14})`` by default.
    fp_type : {'safe_linear', 'linear', 'safe_nonlinear', 'nonlinear'}
        Accepted for PyBLP's signature (see above).
    shares_bounds : tuple, optional
        Accepted for PyBLP's signature (see above).

    Returns
    -------
    Tensor
        ``[T, J]`` mean utilities (zero in padded slots).
    """
    if fp_type not in FP_TYPES:
        raise SpecificationError(f"fp_type must be one of {', '.join(map(repr, FP_TYPES))}; received {fp_type!r}.")
    if shares_bounds is not None and (not isinstance(shares_bounds, tuple | list) or len(shares_bounds) != 2):
        raise SpecificationError(f"shares_bounds must be None or a tuple (lb, ub); received {shares_bounds!r}.")
    iteration = iteration or Iteration("squarem", {"atol": 1e-14})
    sigma, pi, rho, _, start = results._tensors()
    with torch.no_grad():
        inversion = model.invert(sigma, pi, rho, start, iteration.method, iteration.options)
    converged = inversion.result.converged
    if not bool(converged.all()):
        failed = [results.problem.layout.market_ids[t] for t in torch.nonzero(~converged).flatten().tolist()]
        warnings.warn(
            f"The inversion for delta did not converge in {len(failed)} market(s): {failed[:10]}; their delta is the "
            "last iterate. Pass a different iteration.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return torch.where(model.mask, inversion.delta.detach(), 0.0)
