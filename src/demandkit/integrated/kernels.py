"""Tensor math of the integrated model: one period of the macro recursion, its Jacobian, the micro likelihood.

Utilities of agent :math:`i` in market :math:`m` and period :math:`t` with last period's choice :math:`k`
(:math:`k = 0` for the outside good or no purchase) are

.. math::

    u_{ijmt} = \\delta_{jmt} + \\mu_{ijmt} + \\gamma_i 1\\{j = k\\}, \\qquad u_{i0mt} = 0,

so with :math:`e_{ij} = \\exp(\\delta_j + \\mu_{ij})`, :math:`g_i = e^{\\gamma_i} - 1`, :math:`D_i = 1 + \\sum_j e_{ij}`
and :math:`D_{ik} = D_i + e_{ik} g_i` (:math:`D_{i0} = D_i`) the logit probabilities are
:math:`P_i(j \\mid k) = e_{ij}(1 + g_i 1\\{j = k\\}) / D_{ik}`. Mixing over the state distribution
:math:`\\pi_i(k)` of the agent's last choice gives

.. math::

    q_{ij} = \\sum_k \\pi_i(k) P_i(j \\mid k) = e_{ij} A_i + \\pi_i(j) e_{ij} g_i / D_{ij}, \\qquad
    q_{i0} = A_i = \\frac{\\pi_i(0)}{D_i} + \\sum_{k \\geq 1} \\frac{\\pi_i(k)}{D_{ik}},

which is at once this period's choice probability and next period's state distribution, and the shares
:math:`s_j = \\sum_i w_i q_{ij}`. Everything is ``[markets, agents, products]``: the :math:`(J + 1)^2`
transition matrix is never formed. The Jacobian of the shares in :math:`\\delta` is

.. math::

    \\frac{\\partial s_j}{\\partial \\delta_l} = \\sum_i w_i \\big[1\\{j = l\\}(q_{ij} - d_{ij})
    - a_i e_{ij} e_{il} - e_{ij} b_{il} - b_{ij} e_{il}\\big],

with :math:`a_i = \\sum_k \\pi_i(k) / D_{ik}^2`, :math:`b_{il} = \\pi_i(l) e_{il} g_i / D_{il}^2` and
:math:`d_{ij} = \\pi_i(j) e_{ij}^2 g_i^2 / D_{ij}^2` (from :math:`\\sum_k \\pi_i(k) P_i(\\cdot|k) P_i(\\cdot|k)'`).
Utilities are shifted per agent by :math:`\\max(0, \\max_j u_{ij})` before exponentiating; every ratio above
is invariant to the shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Period:
    """One period's quantities for every market and agent (``[M, I, J]`` unless stated)."""

    e: Tensor  # shifted exp(delta + mu), zero on unavailable products
    one: Tensor  # [M, I, 1] the shifted outside exp(0)
    g: Tensor  # [M, I, 1] exp(gamma) - 1
    D: Tensor  # [M, I, 1]
    Dk: Tensor  # D + e g: the denominator when the last choice was product k
    A: Tensor  # [M, I, 1] probability of the outside good
    q: Tensor  # [M, I, J] choice probabilities of the products, mixed over the state


def period(delta: Tensor, mu: Tensor | None, gamma: Tensor, state: Tensor, available: Tensor) -> Period:
    """Choice probabilities of one period mixed over the agents' last choices.

    Parameters
    ----------
    delta : Tensor
        ``[M, J]`` mean utilities.
    mu : Tensor or None
        ``[M, I, J]`` agent-specific utilities (None for none).
    gamma : Tensor
        ``[M, I, 1]`` or broadcastable: the state dependence of each agent.
    state : Tensor
        ``[M, I, J + 1]``: :math:`\\pi_i(k)`, the outside good first.
    available : Tensor
        ``[M, J]`` booleans.
    """
    u = delta.unsqueeze(1) if mu is None else delta.unsqueeze(1) + mu
    mask = available.unsqueeze(1)
    u = torch.where(mask, u, torch.finfo(u.dtype).min)
    shift = u.amax(-1, keepdim=True).clamp(min=0.0)
    e = torch.where(mask, torch.exp(u - shift), 0.0)
    one = torch.exp(-shift)
    g = torch.expm1(gamma).expand_as(one)
    D = one + e.sum(-1, keepdim=True)
    Dk = D + e * g
    lagged = state[..., 1:]
    A = state[..., :1] / D + (lagged / Dk).sum(-1, keepdim=True)
    q = e * A + lagged * e * g / Dk
    return Period(e, one, g, D, Dk, one * A, q)


def next_state(p: Period) -> Tensor:
    """``[M, I, J + 1]``: the distribution of this period's choice, next period's state."""
    return torch.cat([p.A, p.q], dim=-1)


def shares(p: Period, weights: Tensor) -> Tensor:
    """``[M, J]`` market shares :math:`s_j = \\sum_i w_i q_{ij}` (``weights`` ``[M, I]``)."""
    return torch.einsum("mi,mij->mj", weights, p.q)


def log_share_jacobian(p: Period, state: Tensor, weights: Tensor, available: Tensor) -> Tensor:
    """``[M, J, J]``: :math:`\\partial \\log s_j / \\partial \\delta_l`, identity on unavailable slots."""
    lagged = state[..., 1:]
    a = state[..., :1] / p.D**2 + (lagged / p.Dk**2).sum(-1, keepdim=True)  # [M, I, 1]
    b = lagged * p.e * p.g / p.Dk**2  # [M, I, J]
    d = b * p.e * p.g  # pi(j) e_j^2 g^2 / D_j^2
    w = weights.unsqueeze(-1)
    E = p.e * w  # weighted
    jacobian = -(torch.einsum("mij,mil->mjl", E * a, p.e) + torch.einsum("mij,mil->mjl", E, b))
    jacobian = jacobian - torch.einsum("mij,mil->mjl", b * w, p.e)
    s = (p.q * w).sum(1)
    jacobian = jacobian + torch.diag_embed(s - (d * w).sum(1))
    safe = torch.where(available, s, 1.0)
    jacobian = jacobian / safe.unsqueeze(-1)
    both = available.unsqueeze(-1) & available.unsqueeze(-2)
    return torch.where(both, jacobian, torch.diag_embed(torch.where(available, 0.0, 1.0).to(jacobian.dtype)))


def choice_log_probabilities(
    delta: Tensor, mu: Tensor, gamma: Tensor, lag: Tensor, choice: Tensor, available: Tensor
) -> Tensor:
    """Log probabilities of observed choices given observed last choices, per situation and draw.

    Parameters
    ----------
    delta : Tensor
        ``[n, J]`` mean utilities of each situation's market and period.
    mu : Tensor
        ``[n, R, J]`` utilities of each draw.
    gamma : Tensor
        ``[n, R]`` state dependence of each draw.
    lag, choice : Tensor
        ``[n]`` last and current choices: 0 for the outside good, ``j + 1`` for product slot ``j``.
    available : Tensor
        ``[n, J]`` booleans.

    Returns
    -------
    Tensor
        ``[n, R]`` :math:`\\log P(y_t \\mid y_{t-1}, \\nu_r, \\delta)`.
    """
    J = delta.shape[-1]
    slots = torch.arange(1, J + 1, device=delta.device)
    boost = (slots == lag.unsqueeze(-1)).to(delta.dtype)  # [n, J], all zero when the lag is the outside good
    u = delta.unsqueeze(1) + mu + boost.unsqueeze(1) * gamma.unsqueeze(-1)
    u = torch.where(available.unsqueeze(1), u, -torch.inf)
    outside = torch.zeros_like(u[..., :1])
    full = torch.cat([outside, u], dim=-1)  # [n, R, J + 1]
    chosen = torch.gather(full, -1, choice.view(-1, 1, 1).expand(-1, full.shape[1], 1)).squeeze(-1)
    return chosen - torch.logsumexp(full, dim=-1)
