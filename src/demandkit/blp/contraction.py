"""PyBLP's variants of the contraction for :math:`\\delta`: bounds on simulated shares and iteration on
:math:`e^\\delta`.

:class:`ShareClipping` clips simulated shares to ``(lb, ub)`` inside the linear contraction
:math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)` (PyBLP's ``shares_bounds``), in logs;
:func:`exponentiated` writes the contraction on :math:`e^\\delta` instead of :math:`\\delta` (PyBLP's nonlinear
``fp_type``: the same map, so the fixed point is the same, but an accelerator extrapolates :math:`e^\\delta` and the
tolerance applies to it); :func:`clipped_shares` reports which shares the bounds clip at a solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels.fixed_point import FixedPointResult


@dataclass(frozen=True)
class ShareClipping:
    """Simulated shares clipped to ``[exp(lower), exp(upper)]`` in the contraction (bounds in logs).

    A share that is not a number (a negative share's logarithm, with integration weights of either sign) is clipped
    to the lower bound when it is finite, as PyBLP clips negative shares.
    """

    lower: float  # log lb, -inf when unbounded below
    upper: float  # log ub, inf when unbounded above

    @classmethod
    def build(cls, bounds: tuple[float, float] | None) -> ShareClipping | None:
        """From ``(lb, ub)`` in shares (non-positive ``lb``: unbounded below); None when nothing is bounded."""
        if bounds is None:
            return None
        lower, upper = bounds
        log_lower = math.log(lower) if lower > 0 else -math.inf
        log_upper = math.log(upper) if math.isfinite(upper) else math.inf
        if math.isinf(log_lower) and math.isinf(log_upper):
            return None
        return cls(log_lower, log_upper)

    def log_shares(self, log_shares: Tensor) -> Tensor:
        """``log_shares`` clipped to the bounds."""
        if math.isfinite(self.lower):
            log_shares = torch.where(torch.isnan(log_shares), self.lower, log_shares)
        return log_shares.clamp(min=self.lower, max=self.upper)

    def gaps(self, target: Tensor, mask: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(log S - log lb, log S - log ub)`` on real products (infinite in padded slots), or None where
        unbounded, for :meth:`bound_update`."""
        above = None if math.isinf(self.lower) else torch.where(mask, target - self.lower, math.inf)
        below = None if math.isinf(self.upper) else torch.where(mask, target - self.upper, -math.inf)
        return above, below

    @staticmethod
    def bound_update(update: Tensor, x: Tensor, gaps: tuple[Tensor | None, Tensor | None]) -> Tensor:
        """The linear update :math:`x + \\log S - \\log s(x)` with :math:`\\log s` clipped, from the unclipped one.

        Clipping :math:`\\log s` below at :math:`\\log lb` caps the update at :math:`x + \\log S - \\log lb`, and above
        at :math:`\\log ub` floors it at :math:`x + \\log S - \\log ub` (two operations; an update that is not
        clipped is returned bit for bit).
        """
        above, below = gaps
        if above is not None:
            update = torch.minimum(update, x + above)
        if below is not None:
            update = torch.maximum(update, x + below)
        return update


def exponentiated(
    contraction: Callable[[Tensor], Tensor], start: Tensor, mask: Tensor
) -> tuple[Callable[[Tensor], Tensor], Tensor, Callable[[FixedPointResult], FixedPointResult]]:
    """The contraction on :math:`e^\\delta` instead of :math:`\\delta`: ``(contraction, start, back)``.

    The contraction is conjugated by the exponential (padded slots zero), the start exponentiated, and ``back``
    turns the solver's result into :math:`\\delta` again. An extrapolated :math:`e^\\delta` that is not positive
    gives a non-finite contraction, which the solvers reject.
    """

    def on_exponentials(x: Tensor) -> Tensor:
        return torch.where(mask, torch.exp(contraction(torch.log(torch.where(mask, x, 1.0)))), 0.0)

    def back(result: FixedPointResult) -> FixedPointResult:
        values = torch.where(mask, torch.log(torch.where(mask, result.values, 1.0)), 0.0)
        return FixedPointResult(values, result.converged, result.iterations, result.evaluations)

    return on_exponentials, torch.where(mask, torch.exp(start), 0.0), back


def clipped_shares(problem: Any, model: Any, space: Any, evaluation: Any, bounds: tuple[float, float] | None) -> Any:
    """PyBLP's ``clipped_shares``: ``N x 1`` flags of the simulated shares at the evaluation's :math:`\\delta` that
    lie outside ``bounds`` (all False without random coefficients, whose :math:`\\delta` is in closed form, or
    without bounds)."""
    clipping = ShareClipping.build(bounds)
    if clipping is None or not problem.K2:
        return np.zeros((problem.N, 1), dtype=bool)
    with torch.no_grad():
        theta = torch.as_tensor(evaluation.theta, dtype=problem.dtype, device=problem.device)
        sigma, pi, rho = space.unpack(theta)
        log_shares = model.log_shares(evaluation.delta, model.mu(sigma, pi), rho)
        outside = (torch.isnan(log_shares) & math.isfinite(clipping.lower)) | (log_shares < clipping.lower)
        outside = (outside | (log_shares > clipping.upper)) & model.mask
        flags = outside[problem.rows_market, problem.rows_slot]
    return flags.cpu().numpy().reshape(-1, 1)
