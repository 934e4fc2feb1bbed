"""Micro moments over panels of repeated choices (:class:`demandkit.PanelMicroDataset`, beyond PyBLP).

PyBLP has no oracle here, so the part values are checked against choice probabilities computed independently in
NumPy from the estimated mean utilities and the random coefficients (the joint probability of a pair of choices is
the product of the two markets' probabilities for the same individual type), the objective's gradient against
central finite differences, and the checks on how agents are linked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.exceptions import SpecificationError

SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])
PAIRS = 6


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str]]]:
    """Twelve Nevo markets; the agents of market k + 6 are those of market k (the same households later)."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    markets = products["market_ids"].unique()[: 2 * PAIRS]
    products = products[products["market_ids"].isin(markets)].reset_index(drop=True)
    pairs = [(markets[k], markets[k + PAIRS]) for k in range(PAIRS)]
    frames = []
    for first, second in pairs:
        households = agents[agents["market_ids"] == first]
        frames += [households, households.assign(market_ids=second)]
    return products, pd.concat(frames, ignore_index=True), pairs


def brand_matrix(pair, products, agents):
    """1 where the brand bought in the second market is the one bought in the first (inside goods only)."""
    first, second = products
    same = (first["product_ids"].ravel()[:, None] == second["product_ids"].ravel()[None, :]).astype(float)
    return np.broadcast_to(same, (agents.size, first.size, second.size))


def build(data, value=0.3):
    products, agents, pairs = data
    problem = dk.Problem(
        (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("1 + prices + sugar + mushy")),
        products,
        dk.Formulation("0 + income + income_squared + age + child"),
        agents,
    )
    panel = dk.PanelMicroDataset(
        "panel", 3000, pairs, lambda pair, products, agents: np.ones((agents.size, products[0].size, products[1].size))
    )
    again = dk.MicroPart("same brand again", panel, brand_matrix)
    income = dk.MicroPart(
        "income",
        panel,
        lambda pair, products, agents: (
            agents.demographics[:, 0][:, None, None] * np.ones((1, products[0].size, products[1].size))
        ),
    )
    moments = [
        dk.MicroMoment("P(same brand again | buys twice)", value, again),
        dk.MicroMoment("E[income | buys twice]", 0.1, income),
    ]
    return problem, moments


def probabilities(results, problem):
    """Choice probabilities ``[T, I, J]`` (inside goods) from the estimates, in plain NumPy."""
    layout, agents = problem.layout, problem.agent_layout
    delta = layout.pad(results.delta[:, 0])
    X2 = layout.pad(problem.design.X2)
    nodes, demographics = agents.pad(problem.nodes), agents.pad(problem.demographics)
    coefficients = nodes @ results.sigma.T + demographics @ results.pi.T  # [T, I, K2]
    utilities = delta[:, None, :] + np.einsum("tik,tjk->tij", coefficients, X2)
    exponentials = np.where(layout.mask[:, None, :], np.exp(utilities), 0.0)
    return exponentials / (1 + exponentials.sum(-1, keepdims=True)), agents.pad(problem.weights)


def solve(problem, moments, sigma=SIGMA, **options):
    return problem.solve(
        sigma=sigma,
        pi=PI,
        method="1s",
        optimization=dk.Optimization("return"),
        iteration=dk.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=moments,
        **options,
    )


def test_panel_part_values_are_the_products_of_the_two_markets_probabilities(data):
    problem, moments = build(data)
    results = solve(problem, moments)
    s, weights = probabilities(results, problem)
    products, _, pairs = data
    market_index = {market: t for t, market in enumerate(problem.layout.market_ids)}
    brands = problem.layout.pad(products["product_ids"].to_numpy(), "")
    numerator = denominator = income = 0.0
    for first, second in pairs:  # the reference: explicit sums over the pairs
        a, b = market_index[first], market_index[second]
        joint = weights[a][:, None, None] * s[a][:, :, None] * s[b][:, None, :]  # [I, J, J]
        same = (brands[a][:, None] == brands[b][None, :]) & problem.layout.mask[a][:, None]
        numerator += (joint * same).sum()
        denominator += joint.sum()
        income += (joint.sum((1, 2)) * problem.agent_layout.pad(problem.demographics)[a][:, 0]).sum()
    np.testing.assert_allclose(results.micro_values[:, 0], [numerator / denominator, income / denominator], rtol=1e-10)
    assert "2 pairs" not in str(results) and f"{PAIRS} pairs" in str(results)


def test_panel_gradient_matches_finite_differences(data):
    problem, moments = build(data)
    W = solve(problem, moments).W
    base = np.diag(SIGMA).copy()
    gradient = solve(problem, moments, W=W).gradient[:, 0]
    step = 1e-5
    for k in (0, 1, 3):
        up, down = base.copy(), base.copy()
        up[k] += step
        down[k] -= step
        numeric = (
            solve(problem, moments, sigma=np.diag(up), W=W).objective
            - solve(problem, moments, sigma=np.diag(down), W=W).objective
        ) / (2 * step)
        np.testing.assert_allclose(gradient[k], numeric, rtol=1e-5, atol=1e-6)


def test_unlinked_agents_and_bad_pairs_are_errors(data):
    products, agents, pairs = data
    shuffled = agents.copy()
    second = shuffled["market_ids"] == pairs[0][1]
    shuffled.loc[second, "nodes0"] = shuffled.loc[second, "nodes0"].to_numpy()[::-1]
    problem, moments = build((products, shuffled, pairs))
    with pytest.raises(SpecificationError, match="nodes differ"):
        solve(problem, moments)
    with pytest.raises(SpecificationError, match="links a market with itself"):
        dk.PanelMicroDataset("p", 10, [(pairs[0][0], pairs[0][0])], lambda *args: None)
    unknown = dk.PanelMicroDataset("p", 10, [(pairs[0][0], "nowhere")], lambda *args: None)
    problem, _ = build(data)
    with pytest.raises(SpecificationError, match="not in the problem"):
        solve(problem, [dk.MicroMoment("m", 0.1, dk.MicroPart("x", unknown, lambda *args: None))])
    wrong = dk.PanelMicroDataset("wrong", 10, pairs, lambda pair, p, a: np.ones((a.size, p[0].size)))
    with pytest.raises(SpecificationError, match="'wrong'.*shape"):
        solve(problem, [dk.MicroMoment("m", 0.1, dk.MicroPart("x", wrong, lambda *args: None))])
