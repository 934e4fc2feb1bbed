"""Long-run (second-choice) diversion ratios of the (random-coefficients) logit and nested logit, batched over markets.

Removing product :math:`j` from agent :math:`i`'s choice set changes the probabilities of the other choices in
closed form, so no share function is evaluated once per removed product. With :math:`P_{ij}` the choice probability,
:math:`P_{ij|g}` the probability within :math:`j`'s nest :math:`g` and :math:`P_{ig} = P_{ij}/P_{ij|g}` the nest's,
the nest's inclusive value falls by :math:`\\log(1 - P_{ij|g})`, and every choice outside the nest (the outside good
included) is scaled by

.. math::

    r_{ij} = \\frac{1}{1 - a_{ij}}, \\qquad a_{ij} = P_{ig}\\big(1 - (1 - P_{ij|g})^{1 - \\rho_g}\\big),

while the other products of the nest are scaled by :math:`r_{ij}(1 - P_{ij|g})^{-\\rho_g}`. The logit is the case
of one nest holding every product with :math:`\\rho = 0`: :math:`a_{ij} = P_{ij}`. The changes are written as
:math:`r f - 1 = r(f - 1 + a)` with ``expm1`` and ``log1p``, so that no share is recovered by subtracting two
nearly equal sums. Agents are summed by batched matrix products: nothing of shape ``[T, J, J, I]`` is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.shares import Nesting, Probabilities, nest_indicator


def long_run_diversion_ratios(
    probabilities: Probabilities, log_outside: Tensor, weights: Tensor, mask: Tensor, nesting: Nesting | None
) -> Tensor:
    """Long-run diversion ratios :math:`(s_{k(-j)} - s_k)/s_j`, ``[T, J, J]`` (row :math:`j` removed), with the
    outside good's :math:`(s_{0(-j)} - s_0)/s_j` on the diagonal.

    Parameters
    ----------
    probabilities : Probabilities
        Choice probabilities at the estimates (with the within-nest conditionals and :math:`\\rho_j` under nesting).
    log_outside : Tensor
        ``[T, I]`` log probabilities of the outside good.
    weights : Tensor
        ``[T, I]`` agent weights (zero on padded agents).
    mask : Tensor
        ``[T, J]`` booleans, true on real products.
    nesting : Nesting, optional
        Nest membership; None for the (random-coefficients) logit.

    Returns
    -------
    Tensor
        ``[T, J, J]`` ratios; entries of padded products are not meaningful (the caller masks them).
    """
    P = torch.exp(probabilities.log_probabilities) * mask.unsqueeze(-1)  # [T, J, I]
    w = weights.unsqueeze(1)  # [T, 1, I]
    if nesting is None or probabilities.rho is None:
        a = P
        same_nest = None
    else:
        rho = probabilities.rho.unsqueeze(-1)  # [T, J, 1]
        conditionals = torch.exp(probabilities.log_conditionals)
        remaining = torch.log1p(-conditionals.clamp_max(1.0))  # log(1 - P_{j|g}), -inf for a lone product
        nest = torch.exp(probabilities.log_probabilities - probabilities.log_conditionals)  # P_g
        a = nest * -torch.expm1((1 - rho) * remaining)
        # f - 1 for the other products of the nest; irrelevant (the diagonal) where j is alone in its nest
        same_nest = torch.where(torch.isfinite(remaining), torch.expm1(-rho * remaining), 0.0)
    a = torch.where(mask.unsqueeze(-1), a, 0.0)
    r = 1 / (1 - a)  # [T, J, I]
    other = w * a * r  # weighted r - 1, [T, J(removed), I]
    changes = torch.einsum("tji,tki->tjk", other, P)
    if same_nest is not None:
        within = torch.einsum("tji,tki->tjk", w * same_nest * r, P)
        changes = changes + nest_indicator(nesting, mask).to(P.dtype) * within
    outside = (other * torch.exp(log_outside).unsqueeze(1)).sum(-1)  # [T, J]
    shares = (P * w).sum(-1)
    safe = torch.where(mask, shares, torch.ones_like(shares))
    ratios = changes / safe.unsqueeze(-1)
    eye = torch.eye(ratios.shape[-1], dtype=torch.bool, device=ratios.device)
    return torch.where(eye, (outside / safe).unsqueeze(-1).expand_as(ratios), ratios)
