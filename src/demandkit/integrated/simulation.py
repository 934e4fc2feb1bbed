"""``IntegratedSimulation``: aggregate shares and a household panel drawn from one integrated model, known truth.

Each market has ``products`` products on sale in every period with an exogenous characteristic ``ads`` (uniform),
a cost shifter ``w`` (uniform) and a demand shock :math:`\\xi \\sim N(0, \\sigma_\\xi^2)`; prices are
:math:`p = 1 + w + \\rho_\\xi \\xi + N(0, 0.1^2)`, endogenous through :math:`\\xi`, with ``w`` and ``ads`` as
instruments. Mean utilities are :math:`\\delta = X_1\\beta + \\xi` with ``X1 = 1 + prices + ads``; random
coefficients fall on ``X2 = 1 + prices`` (or the columns of ``sigma``). The aggregate shares are the model's
shares for a population of ``population`` agents per market (the recursion over time from nobody holding a
product); ``households`` households per market are drawn from the same distribution and their choices simulated
period by period from their own last choice. Seeded: the same seed gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..exceptions import SpecificationError
from . import kernels


@dataclass(frozen=True)
class IntegratedSimulation:
    """Simulated aggregate and household data with known parameters.

    Attributes
    ----------
    product_data, micro_data, agent_data : DataFrame
        Inputs for :class:`~demandkit.integrated.IntegratedProblem`. ``agent_data`` is each market's population that
        made the aggregate shares: ``weights``, ``nodes0..`` (the random coefficients', then the state dependence's)
        and ``income``; passed to the problem, the macro step integrates over it exactly.
    beta, sigma, pi, gamma, sigma_gamma : the true parameters.
    """

    product_data: pd.DataFrame
    micro_data: pd.DataFrame
    agent_data: pd.DataFrame
    beta: np.ndarray
    sigma: np.ndarray
    pi: np.ndarray
    gamma: float
    sigma_gamma: float

    @classmethod
    def draw(
        cls,
        markets: int = 10,
        periods: int = 30,
        products: int = 4,
        households: int = 200,
        beta: Any = (-1.0, -2.0, 1.0),
        sigma: Any = ((0.5, 0.0), (0.0, 0.3)),
        pi: Any = None,
        gamma: float = 1.0,
        sigma_gamma: float = 0.0,
        population: int = 2000,
        xi_scale: float = 0.3,
        price_xi: float = 0.5,
        seed: int = 0,
        initial_state: str = "outside",
    ) -> IntegratedSimulation:
        """Draw the data (see the module docstring). ``pi`` is ``K2 x 1`` on a standard normal ``income``;
        ``initial_state`` is ``'outside'`` (nobody holds a product before the first week) or ``'stationary'`` (every
        agent's and household's last choice before the first week is drawn from its stationary distribution)."""
        if initial_state not in ("outside", "stationary"):
            raise SpecificationError(f"initial_state must be 'outside' or 'stationary'; received {initial_state!r}.")
        state = np.random.default_rng(seed)
        beta = np.asarray(beta, dtype=np.float64).reshape(-1)
        sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
        K2 = sigma.shape[0]
        if beta.size != 3 or sigma.shape != (K2, K2) or K2 > 2:
            raise SpecificationError("beta has 3 elements (1, prices, ads); sigma is 1 x 1 or 2 x 2 on (1, prices).")
        pi = np.zeros((K2, 1)) if pi is None else np.asarray(pi, dtype=np.float64).reshape(K2, 1)
        M, T, J = markets, periods, products
        shape = (M, T, J)
        ads = state.uniform(size=shape)
        w = state.uniform(size=shape)
        xi = xi_scale * state.normal(size=shape)
        prices = 1.0 + w + price_xi * xi + 0.1 * state.normal(size=shape)
        delta = beta[0] + beta[1] * prices + beta[2] * ads + xi
        X2 = np.stack([np.ones(shape), prices], -1) if K2 == 2 else prices[..., None]

        def tastes(nu: np.ndarray, income: np.ndarray) -> np.ndarray:
            return nu[..., :K2] @ sigma.T + income[..., None] * pi[:, 0]

        def agent_gamma(nu: np.ndarray) -> np.ndarray:
            return gamma + sigma_gamma * nu[..., K2]

        # the population: shares by the recursion over time
        nu = state.normal(size=(M, population, K2 + 1))
        income = state.normal(size=(M, population))
        weights = np.full((M, population), 1.0 / population)
        stationary = initial_state == "stationary"
        shares = _aggregate_shares(delta, X2, tastes(nu, income), agent_gamma(nu), weights, stationary)
        # the households: their own draws and choices
        nu_h = state.normal(size=(M, households, K2 + 1))
        income_h = state.normal(size=(M, households))
        uniform = state.uniform(size=(T + 1, M, households))
        choices = _household_choices(delta, X2, tastes(nu_h, income_h), agent_gamma(nu_h), uniform, stationary)

        m, t, j = (a.reshape(-1) for a in np.meshgrid(np.arange(M), np.arange(T), np.arange(J), indexing="ij"))
        product_data = pd.DataFrame(
            {
                "market_ids": m,
                "time_ids": t,
                "product_ids": j,
                "shares": shares.reshape(-1),
                "prices": prices.reshape(-1),
                "ads": ads.reshape(-1),
                "w": w.reshape(-1),
                "demand_instruments0": w.reshape(-1),
                "demand_instruments1": w.reshape(-1) ** 2,
                "clustering_ids": m * J + j,
            }
        )
        hm, hh, ht = (
            a.reshape(-1) for a in np.meshgrid(np.arange(M), np.arange(households), np.arange(T), indexing="ij")
        )
        chosen = choices.transpose(1, 2, 0).reshape(-1)  # [M, H, T]
        micro_data = pd.DataFrame(
            {
                "individual_ids": hm * households + hh,
                "market_ids": hm,
                "time_ids": ht,
                "choice_ids": np.where(chosen > 0, chosen - 1, np.nan),
                "income": income_h[hm, hh],
            }
        )
        agent_data = pd.DataFrame(
            {
                "market_ids": np.repeat(np.arange(M), population),
                "weights": weights.reshape(-1),
                **{f"nodes{k}": nu[..., k].reshape(-1) for k in range(K2 + 1)},
                "income": income.reshape(-1),
            }
        )
        return cls(product_data, micro_data, agent_data, beta, sigma, pi, float(gamma), float(sigma_gamma))


def _aggregate_shares(
    delta: np.ndarray, X2: np.ndarray, tastes: np.ndarray, gamma: np.ndarray, weights: np.ndarray, stationary: bool
) -> np.ndarray:
    """``[M, T, J]`` model shares by the recursion from the 'outside' state."""
    M, T, J = delta.shape
    t_ = torch.as_tensor
    available = torch.ones(M, J, dtype=torch.bool)
    state = torch.zeros(M, weights.shape[1], J + 1, dtype=torch.float64)
    state[..., 0] = 1
    g, w = t_(gamma).unsqueeze(-1), t_(weights)
    out = np.zeros((M, T, J))
    for t in range(T):
        mu = torch.einsum("mjk,mik->mij", t_(X2[:, t]), t_(tastes))
        if t == 0 and stationary:
            state = kernels.stationary_state(t_(delta[:, 0]), mu, g, available)
        p = kernels.period(t_(delta[:, t]), mu, g, state, available)
        out[:, t] = kernels.shares(p, w).numpy()
        state = kernels.next_state(p)
    return out


def _household_choices(
    delta: np.ndarray,
    X2: np.ndarray,
    tastes: np.ndarray,
    gamma: np.ndarray,
    uniform: np.ndarray,
    stationary: bool,
) -> np.ndarray:
    """``[T, M, H]`` choices (0 outside, ``j + 1`` product ``j``) simulated from each household's last choice; the
    choice before the first week is the outside good or a draw from the household's stationary distribution."""
    M, T, J = delta.shape
    H = tastes.shape[1]
    lag = np.zeros((M, H), dtype=np.int64)
    if stationary:
        mu = torch.einsum("mjk,mhk->mhj", torch.as_tensor(X2[:, 0]), torch.as_tensor(tastes))
        available = torch.ones(M, J, dtype=torch.bool)
        pi = kernels.stationary_state(torch.as_tensor(delta[:, 0]), mu, torch.as_tensor(gamma)[..., None], available)
        lag = (uniform[T][..., None] > np.cumsum(pi.numpy(), axis=-1)).sum(-1).clip(max=J)
    out = np.zeros((T, M, H), dtype=np.int64)
    for t in range(T):
        u = delta[:, t, None, :] + np.einsum("mjk,mhk->mhj", X2[:, t], tastes)
        u = u + (np.arange(1, J + 1) == lag[..., None]) * gamma[..., None]
        full = np.concatenate([np.zeros((M, H, 1)), u], axis=-1)
        probabilities = np.exp(full - full.max(-1, keepdims=True))
        cumulative = np.cumsum(probabilities / probabilities.sum(-1, keepdims=True), axis=-1)
        lag = (uniform[t][..., None] > cumulative).sum(-1).clip(max=J)
        out[t] = lag
    return out
