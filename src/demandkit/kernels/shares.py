"""Choice probabilities, market shares and their Jacobians for (random-coefficients) nested logit.

Shapes: ``T`` markets, ``J`` product slots (padded), ``I`` agent slots (padded), ``H`` nests,
``K2`` random coefficients, ``D`` demographics. Utility of agent :math:`i` for product :math:`j` in
market :math:`t` is :math:`u_{ijt} = \\delta_{jt} + \\mu_{ijt}` with the outside good's utility zero, and

.. math::

    \\mu_{ijt} = \\sum_k x^{(2)}_{jtk} f_k\\big((\\Sigma \\nu_{it} + \\Pi d_{it})_k\\big),

where :math:`f_k` is the identity, ``exp`` (lognormal) or the logistic function (``rc_types``).
With nests :math:`g` and nesting parameters :math:`\\rho_g`,

.. math::

    P_{ijt} = \\frac{e^{u_{ijt}/(1-\\rho_g)}}{e^{IV_{igt}}}
              \\frac{e^{(1-\\rho_g) IV_{igt}}}{1 + \\sum_h e^{(1-\\rho_h) IV_{iht}}},\\qquad
    IV_{igt} = \\log\\sum_{k\\in g} e^{u_{ikt}/(1-\\rho_g)},

which is the logit when there are no nests. Everything is computed in logs. Padded products carry the
finite utility :data:`MASKED` so that their exponentials are exactly zero and no gradient is ever NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .product_coefficients import ProductCoefficients

MASKED = -1e30
"""Utility given to padded product slots and log weight given to padded agent slots."""


@dataclass(frozen=True, slots=True)
class Nesting:
    """Nest membership of each product slot: ``ids [T, J]`` in ``0..H-1`` and the number ``H``."""

    ids: Tensor
    count: int


@dataclass(frozen=True, slots=True)
class Probabilities:
    """Per-agent choice probabilities in logs (and, under nesting, within-nest conditionals)."""

    log_probabilities: Tensor  # [T, J, I]
    log_conditionals: Tensor | None  # [T, J, I], P_{j|g}
    rho: Tensor | None  # [T, J], rho of each product's nest


def random_coefficients(
    nodes: Tensor, demographics: Tensor | None, sigma: Tensor, pi: Tensor | None, rc_types: tuple[str, ...]
) -> Tensor:
    """Agent-specific taste deviations :math:`f_k((\\Sigma\\nu_i + \\Pi d_i)_k)`, shape ``[T, I, K2]``.

    ``sigma`` and ``pi`` may carry leading batch dimensions (``[B, 1, K2, K2]`` gives ``[B, T, I, K2]``: the
    parametric bootstrap's draws).
    """
    coefficients = nodes @ sigma.transpose(-1, -2)
    if pi is not None and demographics is not None and pi.numel() > 0:
        coefficients = coefficients + demographics @ pi.transpose(-1, -2)
    if any(kind != "linear" for kind in rc_types):
        columns = []
        for k, kind in enumerate(rc_types):  # a loop over characteristics, not markets or agents
            column = coefficients[..., k]
            if kind == "log":
                column = torch.exp(column)
            elif kind == "logit":
                column = torch.sigmoid(column)
            columns.append(column)
        coefficients = torch.stack(columns, dim=-1)
    return coefficients


def heterogeneity(X2: Tensor, coefficients: Tensor | ProductCoefficients) -> Tensor:
    """Agent-specific utility :math:`\\mu_{ijt} = \\sum_k x^{(2)}_{jtk} c_{itk}`, ``[T, J, I]``.

    With product-specific demographics the coefficients :math:`c_{ijtk}` vary by product
    (:class:`~demandkit.kernels.product_coefficients.ProductCoefficients`). Given derivatives of X2 instead of X2,
    this is the derivative of :math:`\\mu_{ijt}` with respect to a product variable.
    """
    if isinstance(coefficients, ProductCoefficients):
        return coefficients.weigh(X2)
    return torch.einsum("tjk,tik->tji", X2, coefficients)


def agent_utilities(delta: Tensor, mu: Tensor | None, product_mask: Tensor) -> Tensor:
    """Utilities :math:`u_{ijt} = \\delta_{jt} + \\mu_{ijt}`, ``[T, J, I]``, padded slots set to :data:`MASKED`."""
    utilities = delta.unsqueeze(-1) if mu is None else delta.unsqueeze(-1) + mu
    return torch.where(product_mask.unsqueeze(-1), utilities, torch.full_like(utilities, MASKED))


class LogitProbabilities(torch.autograd.Function):
    """Logit choice probabilities :math:`P_{ijt} = e^{u_{ijt}}/(1 + \\sum_k e^{u_{ikt}})` from ``delta`` and ``mu``.

    ``apply(delta [T, J], mu [T, J, I] or None, product_mask [T, J])`` returns ``P [T, J, I]`` (zero in padded
    slots), computed with the shift :math:`m_{it} = \\max(0, \\max_j u_{ijt})` so that no exponential
    overflows. The backward pass is the logit's closed form
    :math:`\\partial L/\\partial u_{ijt} = P_{ijt}(g_{ijt} - \\sum_k g_{ikt} P_{ikt})` for incoming gradient
    :math:`g`, written with differentiable operations on the saved output so that double backward works. It
    touches three ``[T, J, I]`` tensors where the log-space path of :func:`compute_probabilities` (used under
    nesting) touches about ten.
    """

    @staticmethod
    def forward(ctx: Any, delta: Tensor, mu: Tensor | None, product_mask: Tensor) -> Tensor:
        utilities = delta.unsqueeze(-1) if mu is None else delta.unsqueeze(-1) + mu
        utilities = torch.where(product_mask.unsqueeze(-1), utilities, torch.full_like(utilities, MASKED))
        peak = utilities.amax(dim=1, keepdim=True).clamp_min(0)
        exponentials = torch.exp(utilities - peak)
        probabilities = exponentials / (torch.exp(-peak) + exponentials.sum(dim=1, keepdim=True))
        ctx.save_for_backward(probabilities)
        ctx.has_mu = mu is not None
        return probabilities

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        (probabilities,) = ctx.saved_tensors
        utilities_grad = probabilities * (grad - (grad * probabilities).sum(dim=1, keepdim=True))
        delta_grad = utilities_grad.sum(dim=-1) if ctx.needs_input_grad[0] else None
        mu_grad = utilities_grad if ctx.has_mu and ctx.needs_input_grad[1] else None
        return delta_grad, mu_grad, None


def logit_share_jacobian(probabilities: Tensor, weights: Tensor, derivatives: Tensor | None = None) -> Tensor:
    """Logit share Jacobian :math:`\\partial s_{jt}/\\partial x_{kt}`, ``[T, J, J]``.

    :math:`\\partial s_{jt}/\\partial x_{kt} = \\sum_i w_{it} \\alpha_{ikt} P_{ijt}(1\\{j=k\\} - P_{ikt})`:
    the logit case of :func:`share_jacobian` from probabilities ``P [T, J, I]`` (zero in padded slots, e.g.
    from :class:`LogitProbabilities`); ``derivatives`` :math:`\\alpha` as there (ones when None).
    """
    weighted = probabilities * weights.unsqueeze(1)
    scaled = probabilities if derivatives is None else probabilities * derivatives
    diagonal = weighted.sum(-1) if derivatives is None else (weighted * derivatives).sum(-1)
    return torch.diag_embed(diagonal) - torch.einsum("tji,tki->tjk", weighted, scaled)


def identity_padded(matrix: Tensor, mask: Tensor) -> Tensor:
    """``matrix`` (``[T, J, J]``) on pairs of real products, the identity elsewhere, so that a batched solve
    leaves padded slots alone."""
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    return torch.where(both, matrix, eye)


def _group_logsumexp(values: Tensor, nesting: Nesting) -> Tensor:
    """:math:`\\log\\sum_{j\\in g} e^{v_{ji}}` for every nest, ``[T, H, I]`` (empty nests about MASKED)."""
    T, _, I = values.shape
    index = nesting.ids.unsqueeze(-1).expand_as(values)
    peak = torch.full((T, nesting.count, I), MASKED, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(1, index, values.detach(), reduce="amax", include_self=True)
    total = torch.zeros_like(peak).scatter_add(1, index, torch.exp(values - peak.gather(1, index)))
    return peak + torch.log(total.clamp_min(1e-300))


def compute_probabilities(utilities: Tensor, nesting: Nesting | None, rho: Tensor | None) -> Probabilities:
    """Log choice probabilities for every agent, product and market.

    Parameters
    ----------
    utilities : Tensor
        ``[T, J, I]`` from :func:`agent_utilities`.
    nesting : Nesting, optional
        Nest membership; None for the (random-coefficients) logit.
    rho : Tensor, optional
        ``[H]`` nesting parameters (or ``[1]``, one for all nests).
    """
    zeros = torch.zeros_like(utilities[:, :1, :])
    if nesting is None or rho is None:
        log_denominator = torch.logsumexp(torch.cat([zeros, utilities], dim=1), dim=1, keepdim=True)
        return Probabilities(utilities - log_denominator, None, None)
    rho_h = rho.expand(nesting.count) if rho.numel() == 1 else rho
    rho_j = rho_h[nesting.ids]  # [T, J]
    scaled = utilities / (1 - rho_j).unsqueeze(-1)
    inclusive = _group_logsumexp(scaled, nesting)  # [T, H, I]
    nest_values = (1 - rho_h).view(1, -1, 1) * inclusive  # V_{igt}
    log_denominator = torch.logsumexp(torch.cat([zeros, nest_values], dim=1), dim=1, keepdim=True)
    index = nesting.ids.unsqueeze(-1).expand_as(utilities)
    log_conditionals = scaled - inclusive.gather(1, index)
    log_nest = nest_values.gather(1, index) - log_denominator
    return Probabilities(log_conditionals + log_nest, log_conditionals, rho_j)


def log_shares(probabilities: Probabilities, log_weights: Tensor) -> Tensor:
    """Log market shares :math:`\\log s_{jt} = \\log \\sum_i w_{it} P_{ijt}`, ``[T, J]``."""
    return torch.logsumexp(probabilities.log_probabilities + log_weights.unsqueeze(1), dim=-1)


def share_jacobian(
    probabilities: Probabilities,
    weights: Tensor,
    product_mask: Tensor,
    nesting: Nesting | None = None,
    derivatives: Tensor | None = None,
) -> Tensor:
    """Jacobian of shares with respect to utilities, :math:`\\partial s_{jt} / \\partial x_{kt}`, ``[T, J, J]``.

    With ``derivatives`` :math:`\\alpha_{ikt} = \\partial u_{ikt}/\\partial x_{kt}` (``[T, J, I]``) this is
    the derivative with respect to a characteristic :math:`x`; without, with respect to :math:`\\delta`.
    Per agent, :math:`\\partial P_j/\\partial u_k = P_j [1\\{j=k\\}/(1-\\rho_j) - \\rho_j/(1-\\rho_j)
    1\\{g_j=g_k\\} P_{k|g} - P_k]`; the agent sums are einsums, never a ``[T, I, J, J]`` tensor.
    Padded rows and columns are zero.
    """
    P = torch.exp(probabilities.log_probabilities) * product_mask.unsqueeze(-1)
    wP = P * weights.unsqueeze(1)  # [T, J, I]
    alphaP = P if derivatives is None else P * derivatives
    jacobian = -torch.einsum("tji,tki->tjk", wP, alphaP)
    if probabilities.rho is None:
        diagonal = (wP * (1 if derivatives is None else derivatives)).sum(-1)
    else:
        rho = probabilities.rho
        diagonal = (wP * (1 if derivatives is None else derivatives)).sum(-1) / (1 - rho)
        conditionals = torch.exp(probabilities.log_conditionals) * product_mask.unsqueeze(-1)
        alphaC = conditionals if derivatives is None else conditionals * derivatives
        within = torch.einsum("tji,tki->tjk", wP, alphaC)
        same = nest_indicator(nesting, product_mask).to(P.dtype)
        jacobian = jacobian - (rho / (1 - rho)).unsqueeze(-1) * same * within
    return jacobian + torch.diag_embed(diagonal)


def nest_indicator(nesting: Nesting, product_mask: Tensor) -> Tensor:
    """``[T, J, J]`` boolean indicator :math:`1\\{g_j = g_k\\}` over real products."""
    same = nesting.ids.unsqueeze(-1) == nesting.ids.unsqueeze(-2)
    both = product_mask.unsqueeze(-1) & product_mask.unsqueeze(-2)
    return same & both


def log_inclusive_values(utilities: Tensor, nesting: Nesting | None, rho: Tensor | None) -> Tensor:
    """Log inclusive values :math:`\\log(1 + \\sum_g e^{(1-\\rho_g) IV_{ig}})`, ``[T, I]``.

    Without nests this is the logit's :math:`\\log(1+\\sum_j e^{u_{ij}})`.
    """
    zeros = torch.zeros_like(utilities[:, :1, :])
    if nesting is None or rho is None:
        return torch.logsumexp(torch.cat([zeros, utilities], dim=1), dim=1)
    rho_h = rho.expand(nesting.count) if rho.numel() == 1 else rho
    rho_j = rho_h[nesting.ids]
    inclusive = _group_logsumexp(utilities / (1 - rho_j).unsqueeze(-1), nesting)
    nest_values = (1 - rho_h).view(1, -1, 1) * inclusive
    return torch.logsumexp(torch.cat([zeros, nest_values], dim=1), dim=1)


@dataclass(frozen=True, slots=True)
class ExpUtilities:
    """Pre-exponentiated agent utilities for fast share evaluations at many :math:`\\delta` (logit only).

    With :math:`m_{it} = \\max(0, \\max_j \\mu_{ijt})`, :math:`E_{ijt} = e^{\\mu_{ijt} - m_{it}}` (zero in padded
    slots) and :math:`o_{it} = e^{-m_{it}}`, shares are

    .. math::

        s_{jt}(\\delta) = e^{\\delta_{jt}} \\sum_i E_{ijt} \\frac{w_{it}}{o_{it} + \\sum_k e^{\\delta_{kt}} E_{ikt}},

    two batched matrix-vector products per evaluation and no exponential of a ``[T, J, I]`` tensor. The
    shift keeps every exponential at most one, as PyBLP's "safe" formulation does; products whose share
    underflows are detected by the caller, which falls back to the log-space kernel.
    """

    E: Tensor  # [T, J, I]
    outside: Tensor  # [T, 1, I]
    weights: Tensor  # [T, 1, I]
    padding: Tensor  # [T, J, 1] ([T, 1, J] with E_t), one in padded product slots and zero in real ones
    E_t: Tensor | None = None  # [T, I, J], E's transpose, kept for small problems (see build)

    TRANSPOSED_LIMIT = (1 << 12, 1 << 20)
    """Largest market (``J x I`` elements) and largest ``E`` for which ``E``'s transpose is kept too. Where BLAS's
    fixed cost per market dominates, the second product of :meth:`log_share_kernel` is about twice as fast with the
    vector on the left of a contiguous ``[I, J]`` matrix (Nevo's ``[94, 24, 20]``: 7 instead of 15 microseconds on
    one core); for larger markets the gain falls under a fifth and the second copy of ``E`` is not made."""

    @classmethod
    def build(cls, mu: Tensor, product_mask: Tensor, weights: Tensor) -> ExpUtilities:
        mask = product_mask.unsqueeze(-1)
        E = torch.where(mask, mu, -torch.inf)  # a new tensor, updated in place below; exp(-inf) = 0 in padded slots
        peak = E.amax(dim=1, keepdim=True).clamp_min_(0)  # [T, 1, I]
        E.sub_(peak).exp_()
        padding = (~mask).to(mu.dtype)
        market, whole = cls.TRANSPOSED_LIMIT
        if E.shape[1] * E.shape[2] <= market and E.numel() <= whole and E.device.type == "cpu":
            return cls(
                E, torch.exp(-peak), weights.unsqueeze(1), padding.transpose(1, 2), E.transpose(1, 2).contiguous()
            )
        return cls(E, torch.exp(-peak), weights.unsqueeze(1), padding)

    def select(self, markets: Tensor) -> ExpUtilities:
        """The same for the markets ``markets`` (indices) alone."""
        values = (getattr(self, field.name) for field in fields(self))
        return ExpUtilities(*(None if value is None else value.index_select(0, markets) for value in values))

    def denominators(self, exponentials: Tensor) -> Tensor:
        """:math:`o_{it} + \\sum_k e^{\\delta_{kt}}E_{ikt}`, ``[T, 1, I]``, from :math:`e^{\\delta}`."""
        return torch.baddbmm(self.outside, exponentials.unsqueeze(1), self.E)

    def probabilities(self, delta: Tensor) -> Tensor | None:
        """Choice probabilities :math:`P_{ijt} = e^{\\delta_{jt}}E_{ijt}/(o_{it} + \\sum_k e^{\\delta_{kt}}E_{ikt})`,
        ``[T, J, I]`` (zero in padded slots), without an exponential of a ``[T, J, I]`` tensor; None when an
        exponential of ``delta`` overflows or a denominator underflows (with :math:`0 \\le E \\le 1`, every
        probability is finite otherwise), for the caller to take the log-space path."""
        exponentials = torch.exp(delta)
        scale = 1 / self.denominators(exponentials)
        if not bool(torch.isfinite(exponentials).all() & torch.isfinite(scale).all()):
            return None
        return (self.E * exponentials.unsqueeze(-1)).mul_(scale)

    def log_share_kernel(self, delta: Tensor) -> Tensor:
        """:math:`\\log \\sum_i E_{ijt} w_{it}/(o_{it} + \\sum_k e^{\\delta_{kt}}E_{ikt})`, so that
        :math:`\\log s_{jt} = \\delta_{jt} + ` this (zero in padded slots).

        Few tensor operations, since the contraction calls it dozens of times per inversion: the additions are
        fused into the batched products (``baddbmm``), and padded slots get :math:`\\log 1` instead of a mask.
        """
        # without E's transpose, the vector as a transposed [T, 1, I] view: bmm then takes BLAS's fast
        # matrix-vector path over the rows of E (a contiguous [T, I, 1] vector is about five times slower on CPU)
        weighted = torch.div(self.weights, self.denominators(torch.exp(delta)))
        if self.E_t is not None:  # padding is [T, 1, J] here
            return torch.log(torch.baddbmm(self.padding, weighted, self.E_t).squeeze(1))
        return torch.log(torch.baddbmm(self.padding, self.E, weighted.transpose(1, 2)).squeeze(-1))
