"""Mixing distributions: from fixed standard normal draws to coefficients, and their derivatives.

Each random coefficient :math:`k` of individual :math:`i` at draw :math:`r` is a function of its location
:math:`\\mu_k`, its spread :math:`s_k` and a *base draw* :math:`e_{irk}` made once from the standard normal
node :math:`z_{irk}` (so the draws stay fixed across iterations):

========================  ============================================  =====================================
distribution              base draw :math:`e`                           coefficient :math:`\\beta`
========================  ============================================  =====================================
``'normal'``              :math:`z`                                     :math:`\\mu + s e`
``'lognormal'``           :math:`z`                                     :math:`\\exp(\\mu + s e)`
``'triangular'``          :math:`\\sqrt{2u} - 1` if :math:`u \\le 1/2`,   :math:`\\mu + s e`
                          else :math:`1 - \\sqrt{2(1 - u)}`
``'uniform'``             :math:`2u - 1`                                :math:`\\mu + s e`
``'truncated_normal'``    :math:`u`                                     :math:`\\mu + |s| w`
========================  ============================================  =====================================

with :math:`u = \\Phi(z)`. The truncated normal is :math:`N(\\mu, s^2)` *truncated* (not censored) to
:math:`(0, \\infty)`, drawn by the inverse CDF in its numerically safe upper-tail form
:math:`w = -\\Phi^{-1}\\big((1 - u) \\Phi(b)\\big)`, :math:`b = \\mu / |s|`, whose derivatives are

.. math:: \\frac{\\partial \\beta}{\\partial \\mu} = 1 - (1 - u) \\rho, \\qquad
          \\frac{\\partial \\beta}{\\partial s} = \\operatorname{sign}(s) \\big(w + (1 - u) \\rho\\, b\\big), \\qquad
          \\rho = \\frac{\\phi(b)}{\\phi(w)} = e^{(w^2 - b^2) / 2}.

The triangular and uniform conventions (half-width spread) are xlogit's. Correlated normals are
:math:`\\beta = \\mu + L z` with :math:`L` lower triangular.

All functions are pure tensor functions; ``theta`` may be ``[P]`` or ``[n, P]`` (one row per individual,
which is how per-individual scores come out of one backward pass).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .specification import ParameterSpace


def base_draws(distributions: tuple[str, ...], normals: Tensor) -> Tensor:
    """Map standard normal nodes ``[n, D, R]`` to base draws, one distribution per row ``d``."""
    rows = []
    for d, distribution in enumerate(distributions):
        z = normals[:, d]
        if distribution in ("normal", "lognormal"):
            rows.append(z)
            continue
        u = torch.special.ndtr(z)
        if distribution == "triangular":
            rows.append(torch.where(u <= 0.5, torch.sqrt(2 * u) - 1, 1 - torch.sqrt(2 * (1 - u))))
        elif distribution == "uniform":
            rows.append(2 * u - 1)
        else:  # truncated_normal
            rows.append(u)
    if not rows:
        return normals.new_zeros((normals.shape[0], 0, normals.shape[-1]))
    return torch.stack(rows, dim=1)


def _truncated(mean: Tensor, spread: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated-normal coefficient, the upper-tail quantile ``w`` and ``b = mean / |spread|``."""
    scale = spread.abs()
    b = mean / scale
    w = -torch.special.ndtri((1 - u) * torch.special.ndtr(b))
    return mean + scale * w, w, b


def coefficients(theta: Tensor, space: ParameterSpace, base: Tensor) -> Tensor:
    """Coefficients ``[n, K, R]`` in the internal order (random first, then fixed).

    Parameters
    ----------
    theta : Tensor
        ``[P]`` or ``[n, P]`` parameters.
    space : ParameterSpace
        The parameter layout.
    base : Tensor
        ``[n, Kr, R]`` base draws of the random coefficients.
    """
    n, _, R = base.shape
    means = theta[..., torch.as_tensor(space.order, device=theta.device)]  # [..., K] internal order
    if theta.dim() == 1:
        means = means.expand(n, -1)
    Kr = space.n_random
    pieces = []
    if Kr:
        loc = means[:, :Kr, None]
        sd_index = torch.as_tensor(space.sd_index.clip(min=0), device=theta.device)
        spread = theta[..., sd_index]
        spread = (spread.expand(n, -1) if theta.dim() == 1 else spread)[:, :, None]
        rows = []
        for r, distribution in enumerate(space.random_distributions):
            e = base[:, r]
            if space.sd_index[r] < 0:  # in the correlated block: filled below
                rows.append(loc[:, r].expand(n, R))
            elif distribution == "lognormal":
                rows.append(torch.exp(loc[:, r] + spread[:, r] * e))
            elif distribution == "truncated_normal":
                rows.append(_truncated(loc[:, r], spread[:, r], e)[0])
            else:
                rows.append(loc[:, r] + spread[:, r] * e)
        random = torch.stack(rows, dim=1)
        if len(space.normal_block):
            random = random + _correlated_part(theta, space, base, n)
        pieces.append(random)
    if Kr < len(space.order):
        pieces.append(means[:, Kr:, None].expand(n, -1, R))
    return torch.cat(pieces, dim=1)


def _correlated_part(theta: Tensor, space: ParameterSpace, base: Tensor, n: int) -> Tensor:
    """``[n, Kr, R]`` with :math:`L z` in the rows of the correlated normals and zeros elsewhere."""
    block = torch.as_tensor(space.normal_block, device=theta.device)
    m = len(space.normal_block)
    values = theta[..., torch.as_tensor(space.cholesky_index, device=theta.device)]
    L = values.new_zeros(values.shape[:-1] + (m, m))
    L[..., torch.as_tensor(space.cholesky_rows), torch.as_tensor(space.cholesky_columns)] = values
    z = base[:, block]  # [n, m, R]
    Lz = torch.matmul(L, z) if theta.dim() == 2 else torch.matmul(L.expand(n, m, m), z)
    full = base.new_zeros((n, space.n_random, base.shape[-1]))
    return full.index_copy(1, block, Lz)


def chain_rule(gradient: Tensor, theta: Tensor, space: ParameterSpace, base: Tensor, random: Tensor) -> Tensor:
    """Per-individual scores ``[n, P]`` from gradients with respect to the coefficients.

    Parameters
    ----------
    gradient : Tensor
        ``[n, K, R]``, :math:`\\partial \\ell_i / \\partial \\beta_{irk}` (posterior weights included), internal
        coefficient order.
    theta : Tensor
        ``[P]`` parameters.
    space : ParameterSpace
        The parameter layout.
    base : Tensor
        ``[n, Kr, R]`` base draws.
    random : Tensor
        ``[n, Kr, R]`` current random coefficients.

    Returns
    -------
    Tensor
        :math:`s_{ip} = \\sum_r \\partial \\ell_i / \\partial \\beta_{i r k(p)} \\; \\partial \\beta_{i r k(p)} /
        \\partial \\theta_p`.
    """
    n = gradient.shape[0]
    device = gradient.device
    out = gradient.new_empty((n, space.size))
    out[:, torch.as_tensor(space.order, device=device)] = gradient.sum(-1)
    groups = _groups(space)
    if groups["linear"].size:
        r = torch.as_tensor(groups["linear"], device=device)
        sd = torch.as_tensor(space.sd_index[groups["linear"]], device=device)
        out[:, sd] = (gradient[:, r] * base[:, r]).sum(-1)
    if groups["lognormal"].size:
        r = torch.as_tensor(groups["lognormal"], device=device)
        weighted = gradient[:, r] * random[:, r]
        out[:, torch.as_tensor(space.order[groups["lognormal"]], device=device)] = weighted.sum(-1)
        out[:, torch.as_tensor(space.sd_index[groups["lognormal"]], device=device)] = (weighted * base[:, r]).sum(-1)
    if groups["truncated_normal"].size:
        r = torch.as_tensor(groups["truncated_normal"], device=device)
        location = torch.as_tensor(space.order[groups["truncated_normal"]], device=device)
        sd = torch.as_tensor(space.sd_index[groups["truncated_normal"]], device=device)
        mu, s, u = theta[location][:, None], theta[sd][:, None], base[:, r]
        _, w, b = _truncated(mu, s, u)
        rho = torch.exp((w * w - b * b) / 2) * (1 - u)
        g = gradient[:, r]
        out[:, location] = (g * (1 - rho)).sum(-1)
        out[:, sd] = (g * (torch.sign(s) * (w + rho * b))).sum(-1)
    if len(space.normal_block):
        block = torch.as_tensor(space.normal_block, device=device)
        products = torch.bmm(gradient[:, block], base[:, block].transpose(1, 2))  # [n, m, m]
        rows = torch.as_tensor(space.cholesky_rows, device=device)
        columns = torch.as_tensor(space.cholesky_columns, device=device)
        out[:, torch.as_tensor(space.cholesky_index, device=device)] = products[:, rows, columns]
    return out


def _groups(space: ParameterSpace) -> dict[str, np.ndarray]:
    """Independent random coefficients (internal indices) by how their spread enters."""
    independent = space.sd_index >= 0
    distributions = np.array(space.random_distributions, dtype=object)
    linear = independent & np.isin(distributions, ("normal", "triangular", "uniform"))
    return {
        "linear": np.flatnonzero(linear),
        "lognormal": np.flatnonzero(independent & (distributions == "lognormal")),
        "truncated_normal": np.flatnonzero(independent & (distributions == "truncated_normal")),
    }
