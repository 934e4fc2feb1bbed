"""Simulation error in the moments' covariance: the moments re-evaluated with resampled agents.

Integration over agents is itself an approximation. With :math:`r = 1, \\dots, R` independent sets of agents
(``resample_agent_data(r - 1)``, until it returns None), the averaged moments :math:`\\bar g_r` at the current
:math:`\\theta` (shares inverted again for each set, the linear parameters concentrated out with the same
weighting matrix, micro moments computed on the new agents) give the simulation covariance

.. math::

    S_{\\text{sim}} = \\frac{1}{R - 1} \\sum_{r=1}^{R} (\\bar g_r - \\bar{\\bar g})(\\bar g_r - \\bar{\\bar g})',

added to :math:`S` for the weighting matrix and the standard errors: PyBLP's documented definition for
``resample_agent_data``, reproduced to its digits. Note its scale: :math:`S` estimates the covariance of
:math:`\\sqrt N \\bar g`, while :math:`S_{\\text{sim}}` is the simulation covariance of :math:`\\bar g` itself;
``simulation_covariance(..., scale=N)`` gives the term on the scale of :math:`S`. One problem per set is built
and evaluated: a loop over resamples, each vectorized over markets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..exceptions import SpecificationError
from .demand import DemandModel
from .micro import MicroMoments
from .objective import Evaluation, EvaluationStats, GMMObjective


def resampled_moments(
    problem: Any,
    resample_agent_data: Callable[[int], Mapping | None],
    evaluate: Callable[[Any], Tensor],
    limit: int = 10_000,
) -> list[Tensor]:
    """The averaged moments :math:`\\bar g_r` for each resampled set of agents.

    Parameters
    ----------
    problem : Economy
        The problem whose ``agent_data`` is resampled; the resampled problems keep its products and options.
    resample_agent_data : callable
        ``resample_agent_data(index) -> agent_data or None`` for ``index = 0, 1, ...``.
    evaluate : callable
        Takes a resampled problem and returns its averaged moments ``[M]`` at the current parameters.
    limit : int
        Safety cap on the number of resamples.
    """
    if not callable(resample_agent_data):
        raise SpecificationError("resample_agent_data must be a function of the resample index.")
    moments: list[Tensor] = []
    for index in range(limit):  # a loop over resampled sets of agents
        agent_data = resample_agent_data(index)
        if agent_data is None:
            break
        try:
            resampled = type(problem)(
                problem.product_formulations,
                problem.product_frame,
                problem.agent_formulation,
                agent_data,
                rc_types=problem.rc_types,
                costs_type=problem.costs_type,
                add_exogenous=problem.add_exogenous,
                device=str(problem.device),
                dtype=problem.dtype,
            )
        except Exception as error:
            raise SpecificationError(
                f"resample_agent_data({index}) returned agent data that do not build the problem ({error})."
            ) from error
        moments.append(evaluate(resampled).detach())
    if len(moments) < 2:
        raise SpecificationError(
            f"resample_agent_data gave {len(moments)} set(s) of agents; a simulation covariance needs at least 2."
        )
    return moments


def simulation_covariance(moments: list[Tensor], scale: float = 1.0) -> Tensor:
    """:math:`S_{\\text{sim}}` from the resampled averaged moments, times ``scale`` (see the module's docstring)."""
    stacked = torch.stack(moments)
    centered = stacked - stacked.mean(dim=0, keepdim=True)
    covariance = scale * centered.T @ centered / (len(moments) - 1)
    return (covariance + covariance.T) / 2


def check_finite(covariance: Tensor) -> Tensor:
    """``covariance``, or a clear error if a resampled evaluation broke down."""
    if not bool(torch.isfinite(covariance).all()):
        raise SpecificationError(
            "The moments evaluated with resampled agents are not finite (an inversion failed): see the agent data "
            "that resample_agent_data returns."
        )
    return covariance


def simulation_at(
    objective: GMMObjective, evaluation: Evaluation, resample_agent_data: Callable[[int], Any] | None
) -> Tensor | None:
    """The simulation covariance at an evaluation's parameters, or None without ``resample_agent_data``."""
    if resample_agent_data is None:
        return None
    theta = evaluation.theta

    def evaluate(resampled: Any) -> Tensor:
        model = DemandModel(resampled).fix_nodes(objective.space.sigma0)
        micro = None if objective.micro is None else MicroMoments(resampled, objective.micro.moments)
        if micro is not None and objective.micro.sample_covariances is not None:
            micro.sample_covariances = objective.micro.sample_covariances
        start = torch.where(resampled.product_mask, evaluation.delta, 0.0)
        other = GMMObjective(
            resampled,
            model,
            objective.space,
            objective.iteration,
            objective.W,
            start,
            objective.delta_behavior,
            EvaluationStats(),
            objective.costs_bounds,
            micro,
        )
        resampled_evaluation = other.evaluate(theta, gradient=False)
        residuals = torch.cat(
            [resampled_evaluation.xi] + ([resampled_evaluation.omega] if resampled_evaluation.omega is not None else [])
        )
        values = None
        if micro is not None:
            values = torch.as_tensor(resampled_evaluation.micro_values, dtype=residuals.dtype, device=residuals.device)
        return other.moments(residuals, values)

    moments = resampled_moments(objective.problem, resample_agent_data, evaluate)
    return check_finite(simulation_covariance(moments))
