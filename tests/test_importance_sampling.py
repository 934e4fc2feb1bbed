"""Importance sampling of agents (BLP 1995's accept-reject, PyBLP's ``importance_sampling``).

With weights :math:`w_{it} = (1 - s_{0t})/(I_t (1 - s_{i0t}))` the sampled agents reproduce the market's inside
share exactly, and the product shares they integrate are unbiased for those of the candidate agents: with a large
candidate pool the sampled agents' shares are close to the candidates' (a fixed seed, so the check is exact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.exceptions import SpecificationError

SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])
FORMULATIONS = (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("1 + prices + sugar + mushy"))
AGENTS = dk.Formulation("0 + income + income_squared + age + child")


@pytest.fixture(scope="module")
def setting():
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    keep = products["market_ids"].unique()[:8]
    products = products[products["market_ids"].isin(keep)].reset_index(drop=True)
    agents = agents[agents["market_ids"].isin(keep)].reset_index(drop=True)
    candidates = agents.loc[agents.index.repeat(150)].reset_index(drop=True)  # 3,000 candidates per market
    rng = np.random.default_rng(0)
    for k in range(4):
        candidates[f"nodes{k}"] = rng.standard_normal(len(candidates))
    problem = dk.Problem(FORMULATIONS, products, AGENTS, candidates.assign(weights=1 / 3000))
    results = problem.solve(SIGMA, PI, method="1s", optimization=dk.Optimization("return"))
    return products, candidates, results


def shares_with(products, agents, delta):
    """Shares integrated with ``agents`` at the given ``delta`` (no inversion)."""
    problem = dk.Problem(FORMULATIONS, products, AGENTS, agents)
    options = {"optimization": dk.Optimization("return"), "iteration": dk.Iteration("return"), "delta": delta}
    return problem.solve(SIGMA, PI, method="1s", **options).compute_shares()[:, 0]


def test_sampled_agents_reproduce_inside_shares_and_approximate_product_shares(setting):
    products, candidates, results = setting
    sampled = results.importance_sampling(400, seed=1)
    assert (sampled.sampled_agents.groupby("market_ids").size() == 400).all()
    assert sampled.to_problem().I == 400 * results.problem.T  # agents over all markets, as PyBLP counts them
    shares = shares_with(products, sampled.sampled_agents, results.delta)
    observed = products["shares"].to_numpy()  # the candidates' shares at delta
    markets = products["market_ids"].to_numpy()
    inside = pd.Series(shares).groupby(markets).sum().to_numpy()
    np.testing.assert_allclose(inside, pd.Series(observed).groupby(markets).sum().to_numpy(), rtol=1e-10)
    error = np.abs(shares / observed - 1).mean()
    assert error < 0.1
    # a plain subsample of as many candidates, equally weighted, integrates the product shares less precisely
    rng = np.random.default_rng(1)
    rows = [rng.choice(np.flatnonzero(candidates["market_ids"] == m), 400, False) for m in np.unique(markets)]
    plain = candidates.iloc[np.concatenate(rows)]
    plain_error = np.abs(shares_with(products, plain.assign(weights=1 / 400), results.delta) / observed - 1).mean()
    assert error < plain_error
    # Owen's diagnostics: effective sample sizes between 1 and the draws; weight sums near one on average
    assert sampled.effective_draws.shape == (8, 1)
    assert np.all((sampled.effective_draws >= 1) & (sampled.effective_draws <= 400))
    assert abs(np.median(sampled.weight_sums) - 1) < 0.2


def test_importance_sampling_validates(setting):
    _, _, results = setting
    with pytest.raises(SpecificationError, match="fewer than draws"):
        results.importance_sampling(2999, seed=0)
    with pytest.raises(SpecificationError, match="ar_constant"):
        results.importance_sampling(10, ar_constant=0.5)
    with pytest.raises(SpecificationError, match="draws must be a positive integer"):
        results.importance_sampling(0)
