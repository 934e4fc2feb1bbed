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

from ..kernels.markups import FirmCodes, LogitMarkups, bertrand_markups
from ..kernels.product_coefficients import ProductCoefficients
from ..kernels.shares import LogitProbabilities, heterogeneity, logit_share_jacobian, share_jacobian
from .demand import DemandModel, Inversion


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
        self.firms = firm_codes(self.ownership, self.mask) if self.ownership is not None else None
        self.uniform = _uniform_rows(self.dX1, self.mask) and (self.dX2 is None or _uniform_rows(self.dX2, self.mask))

    def price_derivatives(self, beta: Tensor, coefficients: Tensor | None) -> Tensor:
        """Utility derivatives :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial p_{jt}`, ``[T, J, I]``.

        :math:`\\alpha_{ijt} = x^{(1)\\prime}_{p,jt}\\beta + x^{(2)\\prime}_{p,jt} c_{it}`, from the designs' price
        derivatives.
        """
        derivatives = (self.dX1 @ beta).unsqueeze(-1)
        if coefficients is not None and self.dX2 is not None:
            derivatives = derivatives + heterogeneity(self.dX2, coefficients)
        return derivatives.expand(-1, -1, self.demand.weights.shape[1])

    def compact_price_derivatives(self, beta: Tensor, coefficients: Tensor) -> Tensor:
        """:math:`\\alpha_{it}`, ``[T, 1, I]``, when the designs' price derivatives are the same for every product
        (prices enter linearly), else :meth:`price_derivatives`."""
        if not self.uniform or isinstance(coefficients, ProductCoefficients):  # the latter vary by product
            return self.price_derivatives(beta, coefficients)
        first = self.dX1[:1, :1]  # [1, 1, K1], the same row for every product
        derivatives = (first @ beta).unsqueeze(-1)  # [1, 1, 1]
        if self.dX2 is not None:
            derivatives = derivatives + (coefficients @ self.dX2[0, 0]).unsqueeze(1)
        return derivatives.expand(coefficients.shape[0], 1, coefficients.shape[1])

    def markups(
        self,
        delta: Tensor,
        sigma: Tensor,
        pi: Tensor,
        rho: Tensor,
        beta: Tensor,
        ownership: Tensor | None = None,
        shares: Tensor | None = None,
        inversion: Inversion | None = None,
    ) -> Tensor:
        """Bertrand-Nash markups ``[T, J]`` under ``ownership`` (the data's by default).

        ``shares`` (``[T, J]``) are the shares in the first-order conditions; by default those implied by
        ``delta``. In estimation ``delta`` solves :math:`s(\\delta, \\theta) = S`, so passing the observed
        :math:`S` gives the same values and, since :math:`s(\\delta^*(\\theta), \\theta) \\equiv S`, the same
        derivatives, without differentiating the shares.

        With the ``inversion`` that produced ``delta`` (its agent utilities and choice probabilities), the
        data's ownership and given ``shares``, the random-coefficients logit takes :class:`LogitMarkups`, whose
        backward pass is in closed form (first derivatives only).
        """
        fast = (
            inversion is not None
            and inversion.probabilities is not None
            and ownership is None
            and shares is not None
            and self.demand.nesting is None
        )
        if fast:
            derivatives = self.compact_price_derivatives(beta, self.demand.coefficients(sigma, pi))
            return LogitMarkups.apply(
                delta,
                inversion.mu,
                derivatives,
                inversion.probabilities,
                inversion.weighted,
                self.demand.weights,
                self.ownership,
                shares,
                self.mask,
                self.firms,
            )
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


def _uniform_rows(values: Tensor, mask: Tensor) -> bool:
    """Whether every real product's row of ``values`` (``[T, J, K]``) is the same, up to the rounding of the
    numerical price derivatives."""
    rows = values[mask]
    return bool(torch.allclose(rows, rows[:1].expand_as(rows), rtol=1e-9, atol=1e-9)) if rows.shape[0] else False


def firm_codes(ownership: Tensor, mask: Tensor) -> FirmCodes | None:
    """The :class:`FirmCodes` of products when :math:`O_{jk} = 1\\{f_j = f_k\\}` on real products, or None if
    ``ownership`` is not of that kind (partial ownership, kappa)."""
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    owned = ownership != 0
    if bool((owned & ~both).any()) or not bool(((ownership == 0) | (ownership == 1)).all()):
        return None
    J = ownership.shape[-1]
    first = torch.where(owned, torch.arange(J, device=ownership.device), J)
    codes = first.amin(dim=-1)  # [T, J], the first product of each product's firm; J on padded slots
    if not bool((codes[mask] < J).all()):
        return None
    same = (codes.unsqueeze(-1) == codes.unsqueeze(-2)) & both
    if not bool((same == owned).all()):
        return None
    # a firm's first product has its own index as code; firms are numbered by their first product in a market
    leaders = (codes == torch.arange(J, device=codes.device)) & mask
    rank = torch.cumsum(leaders.long(), dim=-1) - 1  # [T, J], the firm number at each leader
    local = torch.where(mask, rank.gather(1, codes.clamp_max(J - 1)), 0)
    F = int(leaders.sum(-1).max())
    offsets = F * torch.arange(local.shape[0], device=local.device).unsqueeze(-1)
    return FirmCodes((local + offsets).reshape(-1), F)
