"""Demand as a function of prices, and the Bertrand-Nash equilibrium it implies, for every market at once.

:class:`PriceDemand` recomputes utilities, choice probabilities and their price derivatives at any ``[T, J]``
prices (for designs linear in prices by an update of the mean utilities, otherwise by rebuilding X1 and X2 from
the formulations), and gives the :math:`\\zeta` markups of Morrow and Skerlos (2011) that
:func:`demandkit.kernels.equilibrium.iterate_prices` iterates. Used by :class:`~demandkit.simulation.Simulation`
(equilibrium data) and by the optimal instruments (expected prices under counterfactual errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..kernels.equilibrium import iterate_prices
from ..kernels.fixed_point import FixedPointResult
from ..kernels.markups import equilibrium_zeta
from ..kernels.product_coefficients import ProductCoefficients
from ..kernels.shares import Probabilities, agent_utilities, compute_probabilities, heterogeneity, share_jacobian
from .demand import DemandModel
from .economy import Economy


@dataclass(frozen=True)
class PriceDemand:
    """Demand as a function of prices (Bertrand-Nash equilibria in simulations and optimal instruments).

    Utilities as functions of prices for every market: :math:`\\delta(p)`, :math:`X_2(p)` and
    :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial p_{jt}` (all ``[T, J, ...]`` tensors)."""

    problem: Economy
    model: DemandModel
    coefficients: Tensor | ProductCoefficients | None  # [T, I, K2] (by product with product-specific demographics)
    rho: Tensor
    beta: Tensor
    base_delta: Tensor  # delta at the problem's prices
    base_prices: Tensor
    linear: bool

    def state(self, prices: Tensor) -> tuple[Probabilities, Tensor, Tensor]:
        """Probabilities, price derivatives of utilities and mean utilities at ``prices`` (``[T, J]``)."""
        p, model = self.problem, self.model
        if self.linear:
            change = torch.where(model.mask, prices - self.base_prices, 0.0)
            delta = self.base_delta + (p.dX1_padded @ self.beta) * change
            X2 = None if self.coefficients is None else model.X2 + p.dX2_padded * change.unsqueeze(-1)
            dX1, dX2 = p.dX1_padded, p.dX2_padded
        else:
            frame = p.product_frame.assign(prices=p.layout.unpad(prices.detach().cpu().numpy()))
            X1 = p.product_formulations[0].build_matrix(frame)[0]
            change = (X1 - p.design.X1_raw) @ self.beta.cpu().numpy()
            delta = self.base_delta + p.padded(change)
            dX1 = p.padded(p.product_formulations[0].derivative_matrix(frame, "prices"))
            X2 = dX2 = None
            if self.coefficients is not None:
                X2 = p.padded(p.product_formulations[1].build_matrix(frame)[0])
                dX2 = p.padded(p.product_formulations[1].derivative_matrix(frame, "prices"))
        mu = None if X2 is None else model.heterogeneity(self.coefficients, X2)
        nested_rho = self.rho if model.nesting is not None else None
        probabilities = compute_probabilities(agent_utilities(delta, mu, model.mask), model.nesting, nested_rho)
        derivatives = (dX1 @ self.beta).unsqueeze(-1)
        if self.coefficients is not None:
            derivatives = derivatives + heterogeneity(dX2, self.coefficients)
        return probabilities, derivatives.expand(-1, -1, model.weights.shape[1]), delta

    def shares(self, probabilities: Probabilities) -> Tensor:
        return (torch.exp(probabilities.log_probabilities) * self.model.weights.unsqueeze(1)).sum(-1)

    def zeta(self, prices: Tensor, costs: Tensor, ownership: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\zeta(p)` and :math:`|\\Lambda|` at ``prices`` (zero in padded slots)."""
        model = self.model
        probabilities, derivatives, _ = self.state(prices)
        zeta, lam = equilibrium_zeta(
            probabilities, model.weights, derivatives, ownership, prices - costs, model.mask, model.nesting
        )
        return zeta, lam.abs()

    def profit_gradients(self, prices: Tensor, costs: Tensor, ownership: Tensor) -> Tensor:
        """First-order conditions :math:`s_j + \\sum_k O_{jk} \\partial s_k/\\partial p_j (p_k - c_k)`, ``[T, J]``."""
        probabilities, derivatives, _ = self.state(prices)
        model = self.model
        jacobian = share_jacobian(probabilities, model.weights, model.mask, model.nesting, derivatives)
        margins = torch.where(model.mask, prices - costs, 0.0)
        gradient = self.shares(probabilities) + torch.einsum("tjk,tkj,tk->tj", ownership, jacobian, margins)
        return torch.where(model.mask, gradient, 0.0)


def solve_equilibrium(
    demand: PriceDemand, costs: Tensor, start: Tensor, ownership: Tensor, iteration: Iteration
) -> FixedPointResult:
    """Bertrand-Nash prices of every market by iterating :math:`p \\leftarrow c + \\zeta(p)` from ``start``.

    ``iteration`` is ``'simple'``, ``'squarem'`` or ``'return'`` (keep ``start``); each market stops on its own.
    """

    def markups(prices: Tensor) -> Tensor:
        return demand.zeta(prices, costs, ownership)[0]

    return iterate_prices(markups, costs, start, demand.model.mask, iteration.method, iteration.options)


def linear_in_prices(problem: Economy) -> bool:
    """Whether X1 and X2 are linear in prices (their price derivatives do not move with prices)."""
    shifted = problem.product_frame.assign(prices=problem.product_frame["prices"] * 1.7 + 0.3)
    pairs = ((problem.product_formulations[0], problem.dX1), (problem.product_formulations[1], problem.dX2))
    return all(
        formulation is None
        or np.allclose(formulation.derivative_matrix(shifted, "prices"), derivative, rtol=1e-7, atol=1e-9)
        for formulation, derivative in pairs
    )
