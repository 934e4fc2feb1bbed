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


def stationary_state(delta: Tensor, mu: Tensor | None, gamma: Tensor, available: Tensor) -> Tensor:
    """``[M, I, J + 1]``: each agent's stationary distribution over last choices at utilities ``delta + mu``.

    From :math:`\\pi(j) = \\sum_k \\pi(k) P(j \\mid k) = e_j A + \\pi(j) e_j g / D_j` and :math:`D_j - e_j g = D`,
    :math:`\\pi(j) = A e_j D_j / D` and :math:`\\pi(0) = A`: the chain's stationary distribution is
    :math:`\\pi(j) \\propto e_j (1 + e_j g / D)`, :math:`\\pi(0) \\propto 1`, with no iteration.
    """
    u = delta.unsqueeze(1) if mu is None else delta.unsqueeze(1) + mu
    mask = available.unsqueeze(1)
    u = torch.where(mask, u, torch.finfo(u.dtype).min)
    shift = u.amax(-1, keepdim=True).clamp(min=0.0)
    e = torch.where(mask, torch.exp(u - shift), 0.0)
    one = torch.exp(-shift)
    D = one + e.sum(-1, keepdim=True)
    unnormalized = torch.cat([one, e * (1 + e * torch.expm1(gamma) / D)], dim=-1)
    return unnormalized / unnormalized.sum(-1, keepdim=True)


def next_state(p: Period) -> Tensor:
    """``[M, I, J + 1]``: the distribution of this period's choice, next period's state."""
    return torch.cat([p.A, p.q], dim=-1)


def shares(p: Period, weights: Tensor) -> Tensor:
    """``[M, J]`` market shares :math:`s_j = \\sum_i w_i q_{ij}` (``weights`` ``[M, I]``)."""
    return torch.einsum("mi,mij->mj", weights, p.q)


def share_jacobian(p: Period, state: Tensor, weights: Tensor, alpha: Tensor | None = None) -> Tensor:
    """``[M, J, J]``: :math:`\\partial s_j / \\partial x_l` where :math:`x_l` moves agent :math:`i`'s utility of
    product :math:`l` by :math:`\\alpha_{il}` (``[M, I, J]``; ones for :math:`x = \\delta`, the price derivatives of
    utility for prices):

    .. math::

        \\frac{\\partial s_j}{\\partial x_l} = \\sum_i w_i \\alpha_{il} \\big[1\\{j = l\\}(q_{ij} - d_{ij})
        - a_i e_{ij} e_{il} - e_{ij} b_{il} - b_{ij} e_{il}\\big].
    """
    lagged = state[..., 1:]
    a = state[..., :1] / p.D**2 + (lagged / p.Dk**2).sum(-1, keepdim=True)  # [M, I, 1]
    b = lagged * p.e * p.g / p.Dk**2  # [M, I, J]
    d = b * p.e * p.g  # pi(j) e_j^2 g^2 / D_j^2
    w = weights.unsqueeze(-1)
    scaled = p.e if alpha is None else p.e * alpha
    E = p.e * w
    jacobian = -(
        torch.einsum("mij,mil->mjl", E * a, scaled) + torch.einsum("mij,mil->mjl", E, b if alpha is None else b * alpha)
    )
    jacobian = jacobian - torch.einsum("mij,mil->mjl", b * w, scaled)
    diagonal = (p.q - d) * w if alpha is None else (p.q - d) * w * alpha
    return jacobian + torch.diag_embed(diagonal.sum(1))


def log_share_jacobian(p: Period, state: Tensor, weights: Tensor, available: Tensor) -> Tensor:
    """``[M, J, J]``: :math:`\\partial \\log s_j / \\partial \\delta_l`, identity on unavailable slots."""
    jacobian = share_jacobian(p, state, weights)
    safe = torch.where(available, (p.q * weights.unsqueeze(-1)).sum(1), 1.0)
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


class HouseholdLikelihood(torch.autograd.Function):
    """Household log-likelihoods with a closed-form backward pass,
    :math:`\\ell_h = \\log \\sum_r w_r \\prod_{t} P(y_{ht} \\mid y_{h,t-1}, \\nu_{hr})`.

    Utilities are one batched product, :math:`u = \\delta + \\tau X_2'` per situation; the state dependence is added
    at the lagged product only. With posterior draw weights
    :math:`\\omega_{hr} = w_r \\prod_t P_{htr} / \\sum_s w_s \\prod_t P_{hts}`, the derivative of :math:`\\ell_h` in
    :math:`u_{ntrj}` is :math:`\\omega_{h(n)r}(1\\{j = y_n\\} - P_{nrj})`, which the backward pass contracts with
    :math:`X_2` for the tastes and picks at the lag for :math:`\\gamma`. Reverse mode only: forward mode (the scores)
    uses :func:`choice_log_probabilities`, and the tests check that both agree.

    Inputs: ``delta`` ``[n, J]`` (minus infinity on unavailable products), ``X2`` ``[n, J, K2]``, ``tastes``
    ``[H, R, K2]``, ``gamma`` ``[H, R]``, ``household`` ``[n]`` (0..H-1), ``lag`` and ``choice`` ``[n]`` (0 outside,
    ``j + 1`` slot ``j``), ``log_weights`` ``[R]``. Output ``[H]``.
    """

    @staticmethod
    def forward(ctx, delta, X2, tastes, gamma, household, lag, choice, log_weights):  # noqa: ANN001, ANN205
        n, J = delta.shape
        H, R = gamma.shape
        tastes_n, gamma_n = tastes[household], gamma[household]  # [n, R, K2], [n, R]
        u = torch.baddbmm(delta.unsqueeze(1), tastes_n, X2.transpose(1, 2)) if X2.shape[-1] else delta.unsqueeze(1)
        u = u.expand(n, R, J).contiguous()
        lagged = (lag - 1).clamp(min=0).view(n, 1, 1).expand(n, R, 1)
        u.scatter_add_(-1, lagged, (gamma_n * (lag > 0).unsqueeze(-1)).unsqueeze(-1))
        inside = (choice > 0).unsqueeze(-1)
        chosen_slot = (choice - 1).clamp(min=0).view(n, 1, 1).expand(n, R, 1)
        chosen = torch.where(inside, torch.gather(u, -1, chosen_slot).squeeze(-1), 0.0)
        shift = u.amax(-1).clamp(min=0.0)  # [n, R]
        e = u.sub_(shift.unsqueeze(-1)).exp_()  # u is consumed: e = exp(u - shift)
        denominator = e.sum(-1) + torch.exp(-shift)
        log_p = chosen - shift - torch.log(denominator)
        per_draw = log_p.new_zeros(H, R).index_add_(0, household, log_p) + log_weights
        out = torch.logsumexp(per_draw, dim=1)
        ctx.save_for_backward(X2, e, denominator, per_draw, out, household, lagged, chosen_slot, inside, lag)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        X2, e, denominator, per_draw, out, household, lagged, chosen_slot, inside, lag = ctx.saved_tensors
        posterior = torch.exp(per_draw - out.unsqueeze(-1)) * grad.unsqueeze(-1)  # [H, R]
        weight = posterior[household]  # [n, R]
        G = e.mul_(-(weight / denominator).unsqueeze(-1))  # -omega P, in place of e
        G.scatter_add_(-1, chosen_slot, (weight * inside).unsqueeze(-1))
        grad_delta = G.sum(1)
        H, R = per_draw.shape
        grad_tastes = None
        if X2.shape[-1] and ctx.needs_input_grad[2]:
            per_situation = torch.bmm(G, X2)  # [n, R, K2]
            grad_tastes = per_situation.new_zeros(H, R, X2.shape[-1]).index_add_(0, household, per_situation)
        at_lag = torch.gather(G, -1, lagged).squeeze(-1) * (lag > 0).unsqueeze(-1)
        grad_gamma = at_lag.new_zeros(H, R).index_add_(0, household, at_lag)
        return grad_delta, None, grad_tastes, grad_gamma, None, None, None, None
