"""The integrated model's computations on tensors: the recursive inversion, its implicit derivative, the likelihood.

Macro step. Given :math:`\\theta_2`, :math:`\\delta_t` solves
:math:`\\log s_t(\\delta_t; \\pi_{t-1}, \\theta_2) = \\log S_t`
period by period, every market at once (SQUAREM on :math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)`),
and the state distribution of each population agent is carried forward, :math:`\\pi_t = q(\\delta_t, \\pi_{t-1})`.
The loop runs over periods only.

Implicit derivative. With :math:`F_t(\\delta_t, \\pi_{t-1}, \\theta_2) = \\log s_t - \\log S_t = 0`,
:math:`d\\delta_t = -J_t^{-1}(\\partial_\\pi F_t\\, d\\pi_{t-1} + \\partial_\\theta F_t\\, d\\theta)` with
:math:`J_t = \\partial F_t / \\partial \\delta_t` at the solution, and :math:`\\pi_{t-1}` depends on
:math:`\\delta_{<t}` and :math:`\\theta_2`. :meth:`Engine.implicit_delta` builds exactly this as a differentiable
function of :math:`\\theta_2` whose value is the solved :math:`\\delta^*`:
:math:`\\delta_t = \\delta_t^* - (c_t - \\text{stop}(c_t))` with
:math:`c_t = J_t^{-1} F_t(\\delta_t^*, \\pi_{t-1}(\\theta))`
and :math:`J_t` held fixed. Reverse mode gives the gradient of the likelihood through the whole recursion, forward
mode (:func:`torch.func.jvp`) the Jacobian :math:`\\partial\\delta/\\partial\\theta_2`; neither unrolls a contraction.

Micro step. Household :math:`h` with situations :math:`t \\in L_h` (past the burn-in, last choice observed) and
draws :math:`\\nu_{hr}` with weights :math:`w_r` contributes
:math:`\\log \\sum_r w_r \\prod_{t \\in L_h} P(y_{ht} \\mid y_{h,t-1}, \\nu_{hr}, \\delta_{m(h)t})`,
computed in chunks of households.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels.fixed_point import iterate_squarem
from . import kernels
from .data import Aggregate, Situations
from .parameters import Coefficients

CHUNK_ELEMENTS = 20_000_000  # situations x draws x products per chunk of households


@dataclass(frozen=True)
class MacroSolution:
    """The solved mean utilities and what the solver did, per market and period."""

    delta: Tensor  # [M, T, J]
    jacobians: list[Tensor]  # T of [M, J, J]: d log s / d delta at the solution
    converged: Tensor  # [M, T] bool (True on periods a market does not have)
    iterations: Tensor  # [M, T]
    evaluations: Tensor  # [M, T]


class Engine:
    """Tensors of one integrated problem on one device, and the computations on them."""

    def __init__(
        self,
        aggregate: Aggregate,
        situations: Situations,
        population: tuple[np.ndarray, np.ndarray, np.ndarray],
        households: tuple[np.ndarray, np.ndarray],
        device: torch.device,
        dtype: torch.dtype,
        iteration_options: dict[str, Any],
        chunk_size: int | None = None,
        initial_state: str = "outside",
    ) -> None:
        def tensor(values: np.ndarray, kind: torch.dtype | None = None) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(values), dtype=kind or dtype, device=device)

        self.device, self.dtype, self.options = device, dtype, iteration_options
        self.stationary = initial_state == "stationary"
        self.available = tensor(aggregate.available, torch.bool)
        self.log_shares = tensor(aggregate.log_shares)
        self.X2 = tensor(aggregate.X2)
        M, T, J = aggregate.shape
        self.active = tensor(np.arange(T)[None, :] < aggregate.periods[:, None], torch.bool)  # [M, T]
        outside = np.log1p(-np.where(aggregate.available, np.exp(aggregate.log_shares), 0.0).sum(-1, keepdims=True))
        self.logit_delta = tensor(np.where(aggregate.available, aggregate.log_shares - outside, 0.0))
        nodes, weights, demographics = population
        self.nodes, self.weights, self.demographics = tensor(nodes), tensor(weights), tensor(demographics)
        household_nodes, household_weights = households
        self.household_nodes = tensor(household_nodes)  # [H, R, d]
        self.household_log_weights = tensor(np.log(household_weights))  # [R]
        self.household_demographics = tensor(situations.demographics)
        self.household = tensor(situations.household, torch.int64)
        self.market = tensor(situations.market, torch.int64)
        self.period = tensor(situations.period, torch.int64)
        self.choice = tensor(situations.choice, torch.int64)
        self.lag = tensor(situations.lag, torch.int64)
        self.H = int(situations.household_ids.size)
        self.chunks = _chunks(situations.household, self.H, household_nodes.shape[1] * J, chunk_size)
        self.shape = (M, T, J)

    # ------------------------------------------------------------------ macro
    def _initial_state(self) -> Tensor:
        M, _, J = self.shape
        state = torch.zeros(M, self.weights.shape[1], J + 1, dtype=self.dtype, device=self.device)
        state[..., 0] = 1.0
        return state

    def _entering(
        self, state: Tensor, t: int, delta: Tensor, mu: Tensor | None, gamma: Tensor, available: Tensor
    ) -> Tensor:
        """The state entering period ``t``: the carried state, or at ``t = 0`` with ``initial_state='stationary'``
        each agent's stationary distribution at period 0's utilities (which then depends on ``delta``)."""
        if t == 0 and self.stationary:
            return kernels.stationary_state(delta, mu, gamma, available)
        return state

    def _period_inputs(self, c: Coefficients, t: int, X2: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        """Period ``t``'s agent utilities ``mu`` ``[M, I, J]`` (None without X2) and state dependence ``[M, I, 1]``;
        ``X2`` replaces the problem's characteristics (a counterfactual)."""
        X2 = self.X2 if X2 is None else X2
        mu = None
        if X2.shape[-1]:
            mu = torch.einsum("mjk,mik->mij", X2[:, t], c.tastes(self.nodes, self.demographics))
        return mu, c.state_dependence(self.nodes).unsqueeze(-1)

    def solve_macro(self, c: Coefficients) -> MacroSolution:
        """:math:`\\delta(\\theta_2)` period by period (no gradient), with the Jacobians for the implicit derivative."""
        M, T, J = self.shape
        with torch.no_grad():
            state = self._initial_state()
            deltas, jacobians, converged, iterations, evaluations = [], [], [], [], []
            previous = self.logit_delta[:, 0]
            for t in range(T):
                mu, gamma = self._period_inputs(c, t)
                available, target = self.available[:, t], self.log_shares[:, t]
                start = self.logit_delta[:, t]
                if t:
                    start = torch.where(self.available[:, t - 1] & available, previous, start)

                def log_shares(
                    delta: Tensor, t: int = t, mu: Tensor | None = mu, gamma: Tensor = gamma, entering: Tensor = state,
                    available: Tensor = available,
                ) -> Tensor:  # fmt: skip
                    entering = self._entering(entering, t, delta, mu, gamma, available)
                    shares = kernels.shares(kernels.period(delta, mu, gamma, entering, available), self.weights)
                    return torch.log(shares.clamp_min(torch.finfo(delta.dtype).tiny))

                def contraction(
                    delta: Tensor, target: Tensor = target, available: Tensor = available, log_shares: Any = log_shares
                ) -> Tensor:
                    return torch.where(available, delta + target - log_shares(delta), 0.0)

                result = iterate_squarem(contraction, start, available, self.options)
                delta = result.values
                state = self._entering(state, t, delta, mu, gamma, available)
                p = kernels.period(delta, mu, gamma, state, available)
                if t == 0 and self.stationary:  # the entering state moves with delta: differentiate through it
                    jacobians.append(_jacobian(log_shares, delta, available))
                else:
                    jacobians.append(kernels.log_share_jacobian(p, state, self.weights, available))
                state = torch.where(self.active[:, t, None, None], kernels.next_state(p), state)
                deltas.append(delta)
                converged.append(result.converged | ~self.active[:, t])
                iterations.append(result.iterations)
                evaluations.append(result.evaluations)
                previous = delta
        stack = torch.stack
        return MacroSolution(
            stack(deltas, 1), jacobians, stack(converged, 1), stack(iterations, 1), stack(evaluations, 1)
        )

    def implicit_delta(self, c: Coefficients, solution: MacroSolution) -> Tensor:
        """``[M, T, J]`` equal to ``solution.delta``, differentiable in ``c`` by the implicit function theorem."""
        state = self._initial_state()
        out = []
        for t in range(self.shape[1]):
            mu, gamma = self._period_inputs(c, t)
            available = self.available[:, t]
            fixed = solution.delta[:, t]
            entering = self._entering(state, t, fixed, mu, gamma, available)
            p = kernels.period(fixed, mu, gamma, entering, available)
            log_s = torch.log(kernels.shares(p, self.weights).clamp_min(torch.finfo(fixed.dtype).tiny))
            residual = torch.where(available, log_s - self.log_shares[:, t], 0.0)
            step = torch.linalg.solve(solution.jacobians[t], residual.unsqueeze(-1)).squeeze(-1)
            delta = fixed - (step - step.detach())
            state = self._entering(state, t, delta, mu, gamma, available)
            p = kernels.period(delta, mu, gamma, state, available)
            state = torch.where(self.active[:, t, None, None], kernels.next_state(p), state)
            out.append(delta)
        return torch.stack(out, 1)

    def shares_path(self, c: Coefficients, delta: Tensor, X2: Tensor | None = None) -> Tensor:
        """``[M, T, J]`` shares of the population when mean utilities are ``delta`` (and characteristics ``X2``),
        by the recursion over periods from the initial state: a counterfactual path."""
        with torch.no_grad():
            state, out = self._initial_state(), []
            for t in range(self.shape[1]):
                mu, gamma = self._period_inputs(c, t, X2)
                state = self._entering(state, t, delta[:, t], mu, gamma, self.available[:, t])
                p = kernels.period(delta[:, t], mu, gamma, state, self.available[:, t])
                out.append(torch.where(self.available[:, t], kernels.shares(p, self.weights), 0.0))
                state = torch.where(self.active[:, t, None, None], kernels.next_state(p), state)
        return torch.stack(out, 1)

    def price_jacobians(self, c: Coefficients, delta: Tensor, dX1_beta: Tensor, dX2: Tensor | None) -> Tensor:
        """``[M, T, J, J]``: :math:`\\partial s_{jt} / \\partial p_{kt}` along the fitted path, the population's
        distribution over last week's choices held as it is (short run). ``dX1_beta`` ``[M, T, J]`` is
        :math:`\\partial X_1/\\partial p \\cdot \\beta`; ``dX2`` ``[M, T, J, K2]`` the price derivatives of X2."""
        with torch.no_grad():
            state, out = self._initial_state(), []
            tastes = c.tastes(self.nodes, self.demographics) if self.X2.shape[-1] else None
            for t in range(self.shape[1]):
                mu, gamma = self._period_inputs(c, t)
                available = self.available[:, t]
                state = self._entering(state, t, delta[:, t], mu, gamma, available)
                p = kernels.period(delta[:, t], mu, gamma, state, available)
                alpha = dX1_beta[:, t].unsqueeze(1)  # [M, 1, J]
                if tastes is not None and dX2 is not None:
                    alpha = alpha + torch.einsum("mjk,mik->mij", dX2[:, t], tastes)
                alpha = alpha.expand_as(p.e)
                jacobian = kernels.share_jacobian(p, state, self.weights, alpha)
                both = available.unsqueeze(-1) & available.unsqueeze(-2)
                out.append(torch.where(both, jacobian, torch.nan))
                state = torch.where(self.active[:, t, None, None], kernels.next_state(p), state)
        return torch.stack(out, 1)

    # ------------------------------------------------------------------ micro
    def household_loglikelihood(
        self, c: Coefficients, delta: Tensor, chunk: tuple[int, int, int, int], fused: bool = True
    ) -> Tensor:
        """Log-likelihood of each household of ``chunk`` (``[H_chunk]``).

        ``fused`` uses :class:`kernels.HouseholdLikelihood` (closed-form backward, reverse mode only); otherwise the
        plain tensor expression, which forward mode (the scores) differentiates.
        """
        h0, h1, s0, s1 = chunk
        household = self.household[s0:s1] - h0
        market, period = self.market[s0:s1], self.period[s0:s1]
        nodes = self.household_nodes[h0:h1]
        gamma = c.state_dependence(nodes)  # [H_chunk, R]
        tastes = c.tastes(nodes, self.household_demographics[h0:h1].unsqueeze(1))  # [H_chunk, R, K2]
        available = self.available[market, period]
        situation_delta, X2 = delta[market, period], self.X2[market, period]
        lag, choice = self.lag[s0:s1], self.choice[s0:s1]
        if fused:
            masked = torch.where(available, situation_delta, -torch.inf)
            return kernels.HouseholdLikelihood.apply(
                masked, X2, tastes, gamma, household, lag, choice, self.household_log_weights
            )
        mu = torch.einsum("njk,nrk->nrj", X2, tastes[household])
        log_p = kernels.choice_log_probabilities(situation_delta, mu, gamma[household], lag, choice, available)
        per_draw = log_p.new_zeros(h1 - h0, log_p.shape[1]).index_add(0, household, log_p)
        return torch.logsumexp(per_draw + self.household_log_weights, dim=1)


def _jacobian(function: Any, delta: Tensor, available: Tensor) -> Tensor:
    """``[M, J, J]`` Jacobian of a market-by-market map ``[M, J] -> [M, J]``: one forward-mode pass per product slot,
    all markets at once (markets are independent), identity on unavailable slots."""
    J = delta.shape[1]
    basis = torch.eye(J, dtype=delta.dtype, device=delta.device).unsqueeze(1).expand(J, *delta.shape)
    columns = torch.func.vmap(lambda v: torch.func.jvp(function, (delta,), (v,))[1])(basis)  # [J(col), M, J(row)]
    jacobian = columns.permute(1, 2, 0)
    both = available.unsqueeze(-1) & available.unsqueeze(-2)
    return torch.where(both, jacobian, torch.diag_embed(torch.where(available, 0.0, 1.0).to(delta.dtype)))


def _chunks(
    household: np.ndarray, H: int, per_situation: int, chunk_size: int | None
) -> list[tuple[int, int, int, int]]:
    """Contiguous chunks of whole households: ``(h0, h1, s0, s1)`` with about ``CHUNK_ELEMENTS`` elements each."""
    starts = np.searchsorted(household, np.arange(H + 1))
    if chunk_size is None:
        per_household = np.diff(starts) * per_situation
        budget = max(CHUNK_ELEMENTS, int(per_household.max()))
        bounds, h = [0], 0
        cumulative = np.concatenate([[0], np.cumsum(per_household)])
        while h < H:
            h = int(np.searchsorted(cumulative, cumulative[h] + budget, side="right")) - 1
            h = max(h, bounds[-1] + 1)
            bounds.append(min(h, H))
            h = bounds[-1]
    else:
        bounds = list(range(0, H, int(chunk_size))) + [H]
    return [(a, b, int(starts[a]), int(starts[b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
