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

A :class:`CoefficientMap` holds the index tensors of a :class:`ParameterSpace` on one device and applies
these maps; its methods are pure tensor functions. ``theta`` may be ``[P]`` or ``[n, P]`` (one row per
individual, which is how per-individual scores come out of one backward pass).
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
    scale = torch.where(spread < 0, -spread, spread)  # |s| (abs's second derivative would load torch._dynamo)
    b = mean / scale
    w = -torch.special.ndtri((1 - u) * torch.special.ndtr(b))
    return mean + scale * w, w, b


class CoefficientMap:
    """The map :math:`\\theta \\mapsto \\beta_{irk}` of a :class:`ParameterSpace` on one device.

    Coefficients are in the internal order (random first, then fixed).
    """

    def __init__(self, space: ParameterSpace, device: torch.device) -> None:
        def index(values: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.int64), device=device)

        self.space = space
        Kr = space.n_random
        independent = space.sd_index >= 0
        distributions = np.array(space.random_distributions, dtype=object)
        linear = independent & np.isin(distributions, ("normal", "triangular", "uniform"))
        lognormal = independent & (distributions == "lognormal")
        truncated = independent & (distributions == "truncated_normal")
        self.n_random, self.n_coefficients, self.size = Kr, len(space.order), space.size
        self.location = index(space.order)  # theta index of each coefficient's location
        self.spread = index(space.sd_index.clip(min=0))
        self.spread_mask = torch.as_tensor(independent, device=device)
        self.all_linear = bool(linear.all()) and not len(space.normal_block)
        self.linear = index(np.flatnonzero(linear))
        self.linear_spread = index(space.sd_index[linear])
        self.lognormal = index(np.flatnonzero(lognormal))
        self.lognormal_location = index(space.order[:Kr][lognormal])
        self.lognormal_spread = index(space.sd_index[lognormal])
        self.truncated = index(np.flatnonzero(truncated))
        self.truncated_location = index(space.order[:Kr][truncated])
        self.truncated_spread = index(space.sd_index[truncated])
        self.block = index(space.normal_block)
        self.cholesky_rows = index(space.cholesky_rows)
        self.cholesky_columns = index(space.cholesky_columns)
        self.cholesky_index = index(space.cholesky_index)
        self.parameter_coefficient = index(space.parameter_coefficient)
        #: the parameters that move each coefficient (internal order)
        self.coefficient_parameters = [
            index(np.flatnonzero(space.parameter_coefficient == k)) for k in range(len(space.order))
        ]
        self.curved = bool(lognormal.any() or truncated.any())

    def coefficients(self, theta: Tensor, base: Tensor, one: bool = False) -> Tensor:
        """Coefficients ``[n, K, R]`` (``[n, K + 1, R]`` with a last row of ones when ``one``).

        Parameters
        ----------
        theta : Tensor
            ``[P]`` or ``[n, P]`` parameters.
        base : Tensor
            ``[n, Kr, R]`` base draws.
        one : bool
            Append a row of ones (the coefficient of the mask column of differenced covariates).
        """
        n, Kr, R = base.shape
        locations = theta[..., self.location]  # [(n,) K]
        if theta.dim() == 1:
            locations = locations.expand(n, -1)
        pieces = []
        if Kr:
            spreads = theta[..., self.spread]
            spreads = torch.where(self.spread_mask, spreads, spreads.new_zeros(()))
            if theta.dim() == 1:
                spreads = spreads.expand(n, -1)
            random = torch.addcmul(locations[:, :Kr, None], spreads[:, :, None], base)
            if self.lognormal.numel():
                random = random.index_copy(1, self.lognormal, random.index_select(1, self.lognormal).exp())
            if self.truncated.numel():
                values = _truncated(
                    locations[:, self.truncated, None], spreads[:, self.truncated, None], base[:, self.truncated]
                )[0]
                random = random.index_copy(1, self.truncated, values)
            if self.block.numel():
                random = random.index_add(1, self.block, self._cholesky_product(theta, base))
            pieces.append(random)
        if Kr < self.n_coefficients:
            pieces.append(locations[:, Kr:, None].expand(n, -1, R))
        if one:
            pieces.append(base.new_ones((n, 1, R)))
        return torch.cat(pieces, dim=1)

    def _cholesky_product(self, theta: Tensor, base: Tensor) -> Tensor:
        """:math:`L z` for the correlated normals, ``[n, m, R]``."""
        m = self.block.numel()
        values = theta[..., self.cholesky_index]
        L = values.new_zeros(values.shape[:-1] + (m, m))
        L[..., self.cholesky_rows, self.cholesky_columns] = values
        return torch.matmul(L, base.index_select(1, self.block))

    def chain_rule(self, gradient: Tensor, theta: Tensor, base: Tensor, random: Tensor) -> Tensor:
        """Per-individual scores ``[n, P]`` from gradients with respect to the coefficients.

        Parameters
        ----------
        gradient : Tensor
            ``[n, K, R]``, :math:`\\partial \\ell_i / \\partial \\beta_{irk}` (posterior weights included).
        theta : Tensor
            ``[P]`` parameters.
        base : Tensor
            ``[n, Kr, R]`` base draws.
        random : Tensor
            ``[n, Kr, R]`` current random coefficients.

        Returns
        -------
        Tensor
            :math:`s_{ip} = \\sum_r \\partial \\ell_i / \\partial \\beta_{i r k(p)} \\; \\partial \\beta_{i r k(p)}
            / \\partial \\theta_p`.
        """
        n, Kr = gradient.shape[0], self.n_random
        out = gradient.new_empty((n, self.size))
        out[:, self.location] = gradient.sum(-1)
        if self.all_linear and Kr:
            out[:, self.linear_spread] = (gradient[:, :Kr] * base).sum(-1)
            return out
        if self.linear.numel():
            out[:, self.linear_spread] = (gradient[:, self.linear] * base[:, self.linear]).sum(-1)
        if self.lognormal.numel():
            weighted = gradient[:, self.lognormal] * random[:, self.lognormal]
            out[:, self.lognormal_location] = weighted.sum(-1)
            out[:, self.lognormal_spread] = (weighted * base[:, self.lognormal]).sum(-1)
        if self.truncated.numel():
            location, spread = self._truncated_derivatives(theta, base)
            g = gradient[:, self.truncated]
            out[:, self.truncated_location] = (g * location).sum(-1)
            out[:, self.truncated_spread] = (g * spread).sum(-1)
        if self.block.numel():
            products = torch.bmm(gradient[:, self.block], base[:, self.block].transpose(1, 2))  # [n, m, m]
            out[:, self.cholesky_index] = products[:, self.cholesky_rows, self.cholesky_columns]
        return out

    def _truncated_derivatives(self, theta: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        """Per-draw derivatives of the truncated-normal coefficients with respect to their location and spread."""
        mu = theta[self.truncated_location][:, None]
        s = theta[self.truncated_spread][:, None]
        u = base[:, self.truncated]
        _, w, b = _truncated(mu, s, u)
        rho = torch.exp((w * w - b * b) / 2) * (1 - u)
        return 1 - rho, torch.sign(s) * (w + rho * b)

    def factors(self, theta: Tensor, base: Tensor, random: Tensor) -> Tensor:
        """Per-draw derivatives :math:`F_{irp} = \\partial \\beta_{i r k(p)} / \\partial \\theta_p`, ``[n, P, R]``.

        Each parameter moves one coefficient :math:`k(p)` (``parameter_coefficient``), so this is the whole
        Jacobian of the coefficients with respect to :math:`\\theta`.
        """
        n, _, R = base.shape
        out = base.new_ones((n, self.size, R))
        if self.linear.numel():
            out[:, self.linear_spread] = base[:, self.linear]
        if self.lognormal.numel():
            out[:, self.lognormal_location] = random[:, self.lognormal]
            out[:, self.lognormal_spread] = random[:, self.lognormal] * base[:, self.lognormal]
        if self.truncated.numel():
            out[:, self.truncated_location], out[:, self.truncated_spread] = self._truncated_derivatives(theta, base)
        if self.block.numel():
            out[:, self.cholesky_index] = base[:, self.block[self.cholesky_columns]]
        return out
