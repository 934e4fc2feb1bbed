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

import torch
from torch import Tensor


def _identity_padded(matrix: Tensor, mask: Tensor) -> Tensor:
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    return torch.where(both, matrix, eye)


def bertrand_markups(jacobian: Tensor, ownership: Tensor, shares: Tensor, mask: Tensor) -> Tensor:
    """Markups :math:`\\eta = -(O \\odot D')^{-1}s`, ``[T, J]`` (zero in padded slots)."""
    matrix = _identity_padded(ownership * jacobian.transpose(-1, -2), mask)
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
