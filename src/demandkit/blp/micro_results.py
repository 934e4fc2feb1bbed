"""Micro moments after estimation: their values at the estimates (PyBLP's ``compute_micro_values``).

Choice probabilities are computed at the estimated :math:`\\hat\\delta` and :math:`\\hat\\theta` for every market at
once, and the micro parts and statistics follow :mod:`demandkit.blp.micro`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .micro import MicroMoments


def estimated_probabilities(results: Any) -> Tensor:
    """Choice probabilities ``[T, I, 1 + J]`` at the estimates, the outside option first."""
    problem, model = results.problem, results.model
    theta = torch.as_tensor(results.theta, dtype=problem.dtype, device=problem.device)
    with torch.no_grad():
        sigma, pi, rho = results._space.unpack(theta)
        mu = model.mu(sigma, pi) if problem.K2 else None
        inside = torch.exp(model.probabilities(results._delta_padded, mu, rho).log_probabilities)
        inside = torch.where(problem.product_mask.unsqueeze(-1), inside, 0.0).transpose(1, 2)
    outside = (1 - inside.sum(-1, keepdim=True)).clamp(min=0)
    return torch.cat([outside, inside], dim=-1)


def compute_micro_values(results: Any, micro_moments: Any) -> np.ndarray:
    """Micro moment values :math:`f_m(v(\\hat\\theta))` at the estimates.

    Parameters
    ----------
    results : ProblemResults
        Estimates of a problem.
    micro_moments : sequence of MicroMoment
        The micro moments; their observed ``value`` is ignored.

    Returns
    -------
    ndarray
        ``M_M`` values (a flat array, as PyBLP returns them; ``results.micro_values`` is ``M_M x 1``).
    """
    micro = MicroMoments(results.problem, micro_moments)
    with torch.no_grad():
        rho = torch.as_tensor(results.rho.reshape(-1), dtype=results.problem.dtype, device=results.problem.device)
        parts = micro.part_values(estimated_probabilities(results), results.model.weights, rho)
    values, _ = micro.statistics(parts)
    return values
