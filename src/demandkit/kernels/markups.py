"""Bertrand-Nash markups and the zeta-markup equation for equilibrium prices, batched over markets.

With :math:`D_{jk} = \\partial s_j/\\partial p_k` and the ownership matrix :math:`O` (:math:`O_{jk}` the
share of product :math:`k`'s profits that :math:`j`'s owner gets; ones for common ownership), the
multiproduct first-order conditions :math:`s + (O \\odot D')(p - c) = 0` give markups

.. math::  \\eta = p - c = -(O \\odot D')^{-1} s.

For equilibrium prices at new ownership or costs, Morrow and Skerlos (2011) split
:math:`D = \\Lambda - \\Gamma` with :math:`\\Lambda = \\mathrm{diag}(\\sum_i w_i \\alpha_{ij} P_{ij})` and
:math:`\\Gamma_{jk} = \\sum_i w_i P_{ij} \\alpha_{ik} P_{ik}` (logit kernel), and iterate
:math:`p \\leftarrow c + \\zeta(p)`, :math:`\\zeta = \\Lambda^{-1}(O \\odot \\Gamma)'(p - c) - \\Lambda^{-1}s`,
which converges where iterating :math:`p \\leftarrow c + \\eta(p)` need not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .linalg import lu_factor_transposed
from .shares import Nesting, Probabilities, identity_padded, share_jacobian


def bertrand_markups(jacobian: Tensor, ownership: Tensor, shares: Tensor, mask: Tensor) -> Tensor:
    """Markups :math:`\\eta = -(O \\odot D')^{-1}s`, ``[T, J]`` (zero in padded slots)."""
    matrix = identity_padded(ownership * jacobian.transpose(-1, -2), mask)
    rhs = torch.where(mask, shares, torch.zeros_like(shares))
    return -torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)


def zeta_markups(
    probabilities: Tensor, weights: Tensor, derivatives: Tensor, ownership: Tensor, margins: Tensor, mask: Tensor
) -> Tensor:
    """:math:`\\zeta(p) = \\Lambda^{-1}(O\\odot\\Gamma)'(p - c) - \\Lambda^{-1} s` for the logit kernel, ``[T, J]``.

    ``probabilities`` are ``P_{ijt}`` (``[T, J, I]``), ``derivatives`` :math:`\\alpha_{ijt} =
    \\partial u_{ijt}/\\partial p_{jt}` (``[T, J, I]``) and ``margins`` :math:`p - c`.
    """
    P = probabilities * mask.unsqueeze(-1)
    wP = P * weights.unsqueeze(1)
    shares = wP.sum(-1)
    lam = (wP * derivatives).sum(-1)
    gamma = torch.einsum("tji,tki->tjk", wP, derivatives * P)
    transfer = torch.einsum("tkj,tk->tj", ownership * gamma, margins)  # ((O * Gamma)' (p - c))_j
    safe = torch.where(mask, lam, torch.ones_like(lam))
    return torch.where(mask, (transfer - shares) / safe, torch.zeros_like(lam))


def equilibrium_zeta(
    probabilities: Probabilities,
    weights: Tensor,
    derivatives: Tensor,
    ownership: Tensor,
    margins: Tensor,
    mask: Tensor,
    nesting: Nesting | None,
) -> tuple[Tensor, Tensor]:
    """The :math:`\\zeta` markups of Morrow and Skerlos (2011) and the diagonal of :math:`\\Lambda`, for the logit
    and the nested logit kernels, ``[T, J]`` each (zero in padded slots).

    Parameters
    ----------
    probabilities : Probabilities
        Choice probabilities at the current prices (with the nests' :math:`\\rho_j` under nesting).
    weights : Tensor
        ``[T, I]`` agent weights.
    derivatives : Tensor
        :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial p_{jt}`, ``[T, J, I]``.
    ownership : Tensor
        ``[T, J, J]`` ownership matrices.
    margins : Tensor
        :math:`p - c`, ``[T, J]``.
    mask : Tensor
        ``[T, J]`` booleans, true on real products.
    nesting : Nesting, optional
        Nest membership; None for the (random-coefficients) logit.

    Returns
    -------
    tuple of Tensor
        :math:`\\zeta(p)` and :math:`\\Lambda_{jj}`.

    Notes
    -----
    Without nests :math:`\\Lambda_{jj} = \\sum_i w_i P_{ij}\\alpha_{ij}` (:func:`zeta_markups`). With nests the
    own-price derivative of agent :math:`i`'s probability has the leading term :math:`P_{ij}\\alpha_{ij}/(1-\\rho_j)`,
    so :math:`\\Lambda_{jj} = \\sum_i w_i P_{ij}\\alpha_{ij}/(1 - \\rho_j)` and :math:`\\Gamma = \\Lambda - D` with
    :math:`D` the share Jacobian in prices; :math:`\\zeta = \\Lambda^{-1}[(O\\odot\\Gamma)'(p - c) - s]` in both
    cases. Iterating :math:`p \\leftarrow c + \\eta(p)` instead need not converge (it does not in several Nevo
    markets after a merger).
    """
    P = torch.exp(probabilities.log_probabilities) * mask.unsqueeze(-1)
    wP = P * weights.unsqueeze(1)
    lam = (wP * derivatives).sum(-1)
    if nesting is None:
        return zeta_markups(P, weights, derivatives, ownership, margins, mask), lam
    lam = lam / (1 - probabilities.rho)
    gamma = torch.diag_embed(lam) - share_jacobian(probabilities, weights, mask, nesting, derivatives)
    transfer = torch.einsum("tkj,tk->tj", ownership * gamma, margins)  # ((O * Gamma)' (p - c))_j
    safe = torch.where(mask & (lam != 0), lam, torch.full_like(lam, 1e-300))
    return torch.where(mask, (transfer - wP.sum(-1)) / safe, 0.0), lam


@dataclass(frozen=True)
class FirmCodes:
    """Which firm makes each product, for sums within firms without ``[T, J, J]`` or one-hot products.

    ``flat`` (``[T J]``) numbers the firms of all markets together, :math:`t F + f_{jt}` (padded slots take any
    firm of their market: what they carry is zero), and ``count`` is :math:`F`, the most firms in a market.
    """

    flat: Tensor
    count: int

    def sum(self, values: Tensor, scale: Tensor) -> Tensor:
        """:math:`\\sum_{j: f_j = f} c_j v_{ji}` for every firm, ``[T F, I]``, from ``values`` :math:`v`
        (``[T, J, I]``) and ``scale`` :math:`c` (``[T, J]``): rows added into place, no matrix product."""
        T, J, I = values.shape
        rows = (values * scale.unsqueeze(-1)).view(T * J, I)
        return values.new_zeros(T * self.count, I).index_add_(0, self.flat, rows)

    def spread(self, sums: Tensor, scale: Tensor) -> Tensor:
        """:math:`c_j S_{f_j i}`, ``[T, J, I]``: each product's firm row of ``sums`` (``[T F, I]``) times ``scale``."""
        T, J = scale.shape
        return sums.index_select(0, self.flat).view(T, J, -1).mul_(scale.unsqueeze(-1))


class LogitMarkups(torch.autograd.Function):
    """Bertrand-Nash markups :math:`\\eta = -(O\\odot D')^{-1}S` of the random-coefficients logit with a
    closed-form backward pass, for estimation (shares :math:`S` fixed at the data).

    ``apply(delta [T, J], mu [T, J, I], alpha, probabilities, weighted, weights [T, I], ownership [T, J, J],
    shares [T, J], mask [T, J], firms)``: ``alpha`` is :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial p_{jt}`,
    ``[T, J, I]`` or ``[T, 1, I]`` when it does not vary by product; ``probabilities`` are :math:`P_{ijt}` at
    :math:`\\delta + \\mu` (zero in padded slots), already computed by the inversion, and ``weighted`` are
    :math:`w_{it} P_{ijt}`; ``firms`` is ``None`` or the :class:`FirmCodes` of the products when
    :math:`O_{jk} = 1\\{f_j = f_k\\}`. Gradients flow to ``delta``, ``mu`` and ``alpha``.

    With :math:`D = \\Lambda - \\Gamma`, :math:`\\Lambda = \\mathrm{diag}(\\sum_i w_i\\alpha_{ij}P_{ij})`,
    :math:`\\Gamma = (wP)(\\alpha P)'` and :math:`M = O\\odot D'`, the markups solve :math:`N\\eta = S` with
    :math:`N = -M`, built as :math:`N'` so that its LU factorization needs no copy (see :mod:`.linalg`).

    The adjoint :math:`u = M^{-T}\\bar\\eta` gives :math:`\\bar\\Gamma_{jk} = O_{kj}u_k\\eta_j` and
    :math:`\\bar\\Lambda_{jj} = -O_{jj}u_j\\eta_j`; the products :math:`\\bar\\Gamma(\\alpha P)` and
    :math:`\\bar\\Gamma'(wP)` are sums within firms (rows added into ``[T F, I]`` and read back by product) when
    ownership is by firm, and the logit's
    :math:`\\partial P/\\partial u` finishes the pass. The factors of :math:`N` are reused, so the backward costs
    one triangular solve, a few passes over ``[T, J, I]`` tensors and two small batched products; autograd through
    :func:`bertrand_markups` would form and multiply ``[T, J, J]`` adjoints with ``[T, J, I]`` tensors twice more.
    First derivatives only (no double backward).
    """

    @staticmethod
    def forward(
        ctx: Any,
        delta: Tensor,
        mu: Tensor,
        alpha: Tensor,
        probabilities: Tensor,
        weighted: Tensor,
        weights: Tensor,
        ownership: Tensor,
        shares: Tensor,
        mask: Tensor,
        firms: FirmCodes | None,
    ) -> Tensor:
        P, wP = probabilities, weighted
        aP = P * alpha
        if alpha.shape[1] == 1:  # lambda_j = sum_i wP_ij alpha_i, a matrix-vector product
            lam = torch.bmm(wP, alpha.transpose(1, 2)).squeeze(-1)
        else:
            lam = (wP * alpha).sum(-1)
        # N' = O' * Gamma - diag(O_jj lambda_j), with ones on the diagonal of padded slots (Gamma is zero there)
        transposed = torch.bmm(wP, aP.transpose(1, 2)).mul_(ownership if firms is not None else ownership.mT)
        own = torch.diagonal(ownership, dim1=-2, dim2=-1)
        transposed.diagonal(dim1=-2, dim2=-1).sub_(torch.where(mask, own * lam, -1.0))
        rhs = torch.where(mask, shares, torch.zeros_like(shares)).unsqueeze(-1)
        factors, pivots = lu_factor_transposed(transposed)
        markups = torch.linalg.lu_solve(factors, pivots, rhs).squeeze(-1)
        ctx.save_for_backward(P, wP, aP, alpha, weights, factors, pivots, markups, ownership, mask)
        ctx.firms = firms
        return markups

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple:
        P, wP, aP, alpha, weights, factors, pivots, markups, ownership, mask = ctx.saved_tensors
        firms = ctx.firms
        adjoint = -torch.linalg.lu_solve(factors, pivots, grad.unsqueeze(-1), adjoint=True).squeeze(-1)  # -N^{-T}
        adjoint = torch.where(mask, adjoint, torch.zeros_like(adjoint))
        lam_grad = -torch.diagonal(ownership, dim1=-2, dim2=-1) * adjoint * markups  # [T, J]
        if firms is not None:  # Gamma_bar_jk = eta_j 1{f_j = f_k} u_k: sums within firms
            wP_grad = firms.spread(firms.sum(aP, adjoint), markups)
            aP_grad = firms.spread(firms.sum(wP, markups), adjoint)
        else:
            gamma_grad = markups.unsqueeze(-1) * adjoint.unsqueeze(-2) * ownership.transpose(-1, -2)
            wP_grad = torch.bmm(gamma_grad, aP)
            aP_grad = torch.bmm(gamma_grad.transpose(1, 2), wP)
        wP_grad.addcmul_(lam_grad.unsqueeze(-1), alpha)
        if alpha.shape[1] == 1:  # sum over products of lam_grad_j wP_ij + aP_grad_ij P_ij
            alpha_grad = torch.bmm(lam_grad.unsqueeze(1), wP) + (aP_grad * P).sum(dim=1, keepdim=True)
        else:
            alpha_grad = torch.addcmul(aP_grad * P, lam_grad.unsqueeze(-1), wP)
        P_grad = wP_grad.mul_(weights.unsqueeze(1)).addcmul_(aP_grad, alpha)
        utilities_grad = P_grad.sub_((P_grad * P).sum(dim=1, keepdim=True)).mul_(P)
        return utilities_grad.sum(-1), utilities_grad, alpha_grad, None, None, None, None, None, None, None
