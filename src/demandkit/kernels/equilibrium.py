"""Bertrand-Nash prices of every market at once: the fixed point :math:`p = c + \\eta(p)`.

Morrow and Skerlos (2011) write the first-order conditions :math:`s + (O \\odot \\partial s/\\partial p')(p - c) = 0`
with :math:`\\partial s/\\partial p' = \\Lambda - \\Gamma` (:math:`\\Lambda` diagonal) as the fixed point

.. math::

    p \\leftarrow c + \\zeta(p), \\qquad
    \\zeta(p) = \\Lambda(p)^{-1}\\big[(O \\odot \\Gamma(p))'(p - c) - s(p)\\big],

which, unlike :math:`p \\leftarrow c + \\eta(p)`, is a contraction in practice. The markup function is passed in
(the estimators know the demand model); this module only iterates it, batched over markets with each market
stopping on its own criterion. It is shared by :class:`~demandkit.simulation.Simulation`, the counterfactuals of
:class:`~demandkit.blp.results.ProblemResults` and the optimal instruments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..exceptions import SpecificationError
from .fixed_point import FixedPointResult, iterate_simple, iterate_squarem

PRICE_ITERATIONS = ("simple", "squarem", "return")


def iterate_prices(
    markups: Callable[[Tensor], Tensor],
    costs: Tensor,
    start: Tensor,
    mask: Tensor,
    method: str,
    options: dict[str, Any],
) -> FixedPointResult:
    """Iterate :math:`p \\leftarrow c + \\text{markups}(p)` in every market from ``start`` (``[T, J]`` tensors).

    Parameters
    ----------
    markups : callable
        ``[T, J]`` prices to ``[T, J]`` markups (:math:`\\zeta(p)` for the Morrow-Skerlos iteration).
    costs, start : Tensor
        Marginal costs and starting prices, ``[T, J]``; padded slots are ignored.
    mask : Tensor
        ``[T, J]`` booleans, true on real products.
    method : {'simple', 'squarem', 'return'}
        The accelerator; ``'return'`` keeps ``start`` (zero iterations, every market converged).
    options : dict
        Options of the fixed-point kernel (``atol``, ``rtol``, ``max_evaluations``, ...).
    """
    if method not in PRICE_ITERATIONS:
        raise SpecificationError(
            f"Equilibrium prices iterate with {', '.join(map(repr, PRICE_ITERATIONS))}; received {method!r}."
        )
    start = torch.where(mask, start, 0.0)
    if method == "return":
        ones = torch.ones(mask.shape[0], dtype=torch.int64, device=start.device)
        return FixedPointResult(start, ones.bool(), 0 * ones, 0 * ones)

    def update(current: Tensor) -> Tensor:
        return torch.where(mask, costs + markups(current), 0.0)

    solver = iterate_squarem if method == "squarem" else iterate_simple
    return solver(update, start, mask, options)
