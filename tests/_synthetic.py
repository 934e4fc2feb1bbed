"""Synthetic random-coefficients logit data with known parameters, for recovery and invariance tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp


def simulate(
    T: int = 40,
    J: int = 8,
    I: int = 200,
    seed: int = 0,
    beta: tuple[float, float, float] = (-1.0, -2.0, 1.0),
    sigma_x: float = 0.8,
    sigma_0: float = 0.0,
    pi_x: float = 0.0,
    rho: float | None = None,
    vary_sizes: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products and agents from utility ``beta0 + beta_p p + beta_x x + xi + mu``.

    ``mu_ij = (sigma_0 nu_0 + 0) + x_j (sigma_x nu_1 + pi_x income)``. With ``rho`` the products form two
    nests and shares are nested logit. ``vary_sizes`` drops products to make markets of unequal size.
    """
    rng = np.random.default_rng(seed)
    market = np.repeat(np.arange(T), J)
    product = np.tile(np.arange(J), T)
    x = rng.uniform(0, 2, T * J)
    z = rng.normal(size=(T * J, 2))
    xi = 0.3 * rng.normal(size=T * J)
    prices = 2 + 0.6 * z[:, 0] + 0.3 * z[:, 1] + 0.5 * xi + 0.1 * rng.normal(size=T * J) + 0.3 * x
    keep = np.ones(T * J, bool)
    if vary_sizes:
        keep = ~((product >= J // 2) & (rng.uniform(size=T * J) < 0.5))
        keep[product == 0] = True
    delta = beta[0] + beta[1] * prices + beta[2] * x + xi
    nodes = rng.normal(size=(T, I, 2))
    income = rng.normal(size=(T, I))
    nests = (product % 2).astype(int)
    shares = np.zeros(T * J)
    for t in range(T):  # the reference simulator loops on purpose: it is the slow, obvious version
        rows = np.flatnonzero((market == t) & keep)
        u = (
            delta[rows, None]
            + sigma_0 * nodes[t, None, :, 0]
            + x[rows, None] * (sigma_x * nodes[t, None, :, 1] + pi_x * income[t, None, :])
        )
        if rho is None:
            log_p = u - logsumexp(np.vstack([np.zeros((1, I)), u]), axis=0)
        else:
            g = nests[rows]
            iv = np.vstack([logsumexp(u[g == h] / (1 - rho), axis=0) for h in (0, 1)])
            log_p_nest = (1 - rho) * iv - logsumexp(np.vstack([np.zeros((1, I)), (1 - rho) * iv]), axis=0)
            log_p = u / (1 - rho) - iv[g] + log_p_nest[g]
        shares[rows] = np.exp(log_p).mean(axis=1)
    own = x
    rival = np.bincount(market, weights=x)[market] - x
    products = pd.DataFrame(
        {
            "market_ids": market,
            "product_ids": product,
            "firm_ids": product % 3,
            "nesting_ids": nests,
            "clustering_ids": market % 10,
            "shares": shares,
            "prices": prices,
            "x": x,
            "demand_instruments0": z[:, 0],
            "demand_instruments1": z[:, 1],
            "demand_instruments2": z[:, 0] ** 2,
            "demand_instruments3": rival,
            "demand_instruments4": z[:, 1] * own,
        }
    )[keep].reset_index(drop=True)
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), I),
            "weights": 1 / I,
            "nodes0": nodes[:, :, 0].ravel(),
            "nodes1": nodes[:, :, 1].ravel(),
            "income": income.ravel(),
        }
    )
    return products, agents
