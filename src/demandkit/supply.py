"""The supply side: marginal costs implied by Bertrand-Nash pricing, for estimation and counterfactuals.

Given demand at :math:`\\theta` (mean utilities, random coefficients, nesting), :class:`SupplyModel`
computes the utility derivatives with respect to prices :math:`\\alpha_{ijt}`, the share Jacobian
:math:`D`, markups :math:`\\eta` and marginal costs :math:`c = p - \\eta`, all as differentiable tensors
so that the supply moments' gradient comes from autograd through the share Jacobian and its inverse.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .demand import DemandModel
from .kernels.markups import bertrand_markups
from .kernels.shares import LogitProbabilities, logit_share_jacobian, share_jacobian


class SupplyModel:
    """Markups and costs for every market of a problem at once."""

    def __init__(self, problem: Any, demand: DemandModel) -> None:
        self.demand = demand
        self.mask = problem.product_mask
        self.prices = problem.prices_padded
        self.ownership = problem.ownership_padded
        self.dX1 = problem.dX1_padded
        self.dX2 = problem.dX2_padded
        self.costs_type = problem.costs_type

    def price_derivatives(self, beta: Tensor, coefficients: Tensor | None) -> Tensor:
        """Utility derivatives :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial p_{jt}`, ``[T, J, I]``.

        :math:`\\alpha_{ijt} = x^{(1)\\prime}_{p,jt}\\beta + x^{(2)\\prime}_{p,jt} c_{it}`, from the designs' price
        derivatives.
        """
        derivatives = (self.dX1 @ beta).unsqueeze(-1)
        if coefficients is not None and self.dX2 is not None:
            derivatives = derivatives + torch.einsum("tjk,tik->tji", self.dX2, coefficients)
        return derivatives.expand(-1, -1, self.demand.weights.shape[1])

    def markups(
        self,
        delta: Tensor,
        sigma: Tensor,
        pi: Tensor,
        rho: Tensor,
        beta: Tensor,
        ownership: Tensor | None = None,
        shares: Tensor | None = None,
    ) -> Tensor:
        """Bertrand-Nash markups ``[T, J]`` under ``ownership`` (the data's by default).

        ``shares`` (``[T, J]``) are the shares in the first-order conditions; by default those implied by
        ``delta``. In estimation ``delta`` solves :math:`s(\\delta, \\theta) = S`, so passing the observed
        :math:`S` gives the same values and, since :math:`s(\\delta^*(\\theta), \\theta) \\equiv S`, the same
        derivatives, without differentiating the shares.
        """
        coefficients = self.demand.coefficients(sigma, pi)
        mu = None if coefficients is None else self.demand.heterogeneity(coefficients)
        derivatives = self.price_derivatives(beta, coefficients)
        weights = self.demand.weights
        if self.demand.nesting is None:
            P = LogitProbabilities.apply(delta, mu, self.mask)
            jacobian = logit_share_jacobian(P, weights, derivatives)
            if shares is None:
                shares = (P * weights.unsqueeze(1)).sum(-1)
        else:
            probabilities = self.demand.probabilities(delta, mu, rho)
            jacobian = share_jacobian(probabilities, weights, self.mask, self.demand.nesting, derivatives)
            if shares is None:
                shares = (torch.exp(probabilities.log_probabilities) * weights.unsqueeze(1)).sum(-1)
        return bertrand_markups(jacobian, self.ownership if ownership is None else ownership, shares, self.mask)
