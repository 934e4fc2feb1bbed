"""FRAC (Salanie and Wolak 2022): the expansion's exactness to second order, recovery of the truth on large
synthetic data, and its use as starting values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

import demandkit as dk
from demandkit import frac
from demandkit.construction.instruments import build_differentiation_instruments, build_id_data
from demandkit.exceptions import ConvergenceWarning, SpecificationError
from demandkit.simulation import Simulation


def noiseless_problem(sigma: float, T: int = 60, J: int = 6, seed: int = 0) -> dk.Problem:
    """Shares without structural errors and with agents at nu = -1, +1 (mean 0, variance 1): the expansion's
    error is then O(sigma^4) and exogenous regressors identify everything."""
    rng = np.random.default_rng(seed)
    market_ids = np.repeat(np.arange(T), J)
    N = T * J
    x, prices = rng.uniform(0, 2, N), rng.uniform(1, 3, N)
    delta = 1 - 2 * prices + x
    nodes = np.array([-1.0, 1.0])
    utilities = (delta + 0 * nodes[:, None]).reshape(2, T, J) + sigma * (x * nodes[:, None]).reshape(2, T, J)
    log_outside = logsumexp(np.concatenate([np.zeros((2, T, 1)), utilities], axis=2), axis=2, keepdims=True)
    shares = np.exp(utilities - log_outside).mean(axis=0).reshape(-1)
    e = np.bincount(market_ids, weights=shares * x)[market_ids]
    products = pd.DataFrame(
        {
            "market_ids": market_ids,
            "shares": shares,
            "prices": prices,
            "x": x,
            "demand_instruments0": prices,
            "demand_instruments1": x * (x / 2 - e),
        }
    )
    agents = pd.DataFrame({"market_ids": np.repeat(np.arange(T), 2), "weights": 0.5, "nodes0": np.tile(nodes, T)})
    return dk.Problem([dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")], products, agent_data=agents)


@pytest.mark.parametrize("sigma", [0.05, 0.2, 0.5])
def test_expansion_is_second_order(sigma: float) -> None:
    """The relative error of the estimated variance is of order sigma^2 (here about sigma^2 / 16)."""
    results = frac.estimate(noiseless_problem(sigma))
    error = results.sigma_squared[0, 0] / sigma**2 - 1
    assert abs(error) < sigma**2 / 8
    np.testing.assert_allclose(results.beta[:, 0], [1, -2, 1], atol=sigma**4)


def synthetic_problem(T: int = 200, J: int = 8, I: int = 50, seed: int = 0) -> dk.Problem:
    """Endogenous prices from a Bertrand-Nash equilibrium, a random coefficient on x (sigma = 0.5) and an
    interaction of x with income (pi = 0.5), whose mean moves across markets."""
    rng = np.random.default_rng(seed)
    ids = build_id_data(T, J, 4)
    N = T * J
    products = pd.DataFrame(
        {
            "market_ids": ids.market_ids.ravel().astype(int),
            "firm_ids": ids.firm_ids.ravel().astype(int),
            "x": rng.uniform(0, 2, N),
            "w": rng.uniform(0, 1, N),
        }
    )
    means = rng.uniform(-1, 1, T)
    agent_markets = np.repeat(np.arange(T), I)
    agents = pd.DataFrame(
        {
            "market_ids": agent_markets,
            "weights": 1 / I,
            "nodes0": rng.normal(size=T * I),
            "income": means[agent_markets] + 0.5 * rng.normal(size=T * I),
        }
    )
    simulation = Simulation(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x"), dk.Formulation("1 + w")],
        products,
        beta=[-1, -2, 1],
        sigma=[[0.5]],
        pi=[[0.5]],
        gamma=[1, 1],
        agent_formulation=dk.Formulation("0 + income"),
        agent_data=agents,
        xi_variance=0.1,
        omega_variance=0.1,
        correlation=0.7,
        seed=seed,
    )
    frame = simulation.replace_endogenous().product_data
    differences = build_differentiation_instruments(dk.Formulation("0 + x + w"), frame, "quadratic", interact=True)
    columns = {f"demand_instruments{k}": differences[:, k] for k in range(differences.shape[1])}
    M = differences.shape[1]
    columns.update({f"demand_instruments{M}": frame["w"], f"demand_instruments{M + 1}": frame["w"] ** 2})
    columns[f"demand_instruments{M + 2}"] = frame["x"] * means[frame["market_ids"]]
    return dk.Problem(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")],
        frame.assign(**columns),
        dk.Formulation("0 + income"),
        agents,
    )


@pytest.fixture(scope="module")
def synthetic() -> dk.Problem:
    return synthetic_problem()


def test_frac_recovers_the_truth(synthetic: dk.Problem) -> None:
    """On 1,600 products the estimates lie within sampling error plus the expansion's error (sigma^2 = 0.25 is
    estimated with a relative bias of order sigma^2 / 16) of the truth."""
    results = frac.estimate(synthetic)
    assert results.iterations > 1  # the dispersion of income within markets was accounted for
    assert (np.abs(results.beta[:, 0] - [-1, -2, 1]) < 4 * results.beta_se[:, 0] + 0.02).all()
    assert abs(results.pi[0, 0] - 0.5) < 4 * results.pi_se[0, 0] + 0.02
    assert abs(results.sigma_squared[0, 0] - 0.25) < 4 * results.sigma_squared_se[0, 0] + 0.25**2 / 8
    assert results.sigma[0, 0] == pytest.approx(np.sqrt(results.sigma_squared[0, 0]))
    assert list(results.table["parameter"]) == ["beta", "beta", "beta", "sigma_squared", "pi"]


def test_frac_starting_values_reach_the_same_optimum() -> None:
    problem = synthetic_problem(T=40, J=6, I=20, seed=1)
    start = frac.estimate(problem).starting_values()
    assert start["sigma"].shape == (1, 1) and start["pi"].shape == (1, 1) and (start["sigma"] > 0).all()
    from_frac = problem.solve(**start, method="1s")
    from_elsewhere = problem.solve(sigma=[[1.5]], pi=[[1.5]], method="1s")
    assert from_frac.converged and from_elsewhere.converged
    np.testing.assert_allclose(from_frac.theta, from_elsewhere.theta, rtol=1e-4)


def test_negative_variance_starts_at_the_floor() -> None:
    results = frac.estimate(noiseless_problem(0.2))
    negative = frac.FRACResults(**{**results.__dict__, "sigma": np.zeros((1, 1))})
    assert negative.starting_values(floor=0.3)["sigma"][0, 0] == 0.3


def test_unsettled_demographics_warn_and_fall_back(synthetic: dk.Problem) -> None:
    with pytest.warns(ConvergenceWarning, match="demographics"):
        results = frac.estimate(synthetic, max_iterations=1)
    first = frac.estimate(synthetic, max_iterations=1000)
    assert results.iterations == 1 and first.iterations > 1
    assert np.isfinite(results.pi).all() and results.pi[0, 0] != first.pi[0, 0]


def test_errors_name_the_culprit() -> None:
    problem = noiseless_problem(0.2)
    with pytest.raises(SpecificationError, match="sigma"):
        frac.estimate(problem, sigma=np.ones((2, 2)))
    products = problem.product_frame.drop(columns=["demand_instruments1"])
    agents = pd.DataFrame({"market_ids": np.repeat(np.arange(60), 2), "weights": 0.5, "nodes0": np.tile([-1, 1], 60)})
    few = dk.Problem([dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")], products, agent_data=agents)
    with pytest.raises(SpecificationError, match="instruments"):
        frac.estimate(few)
    logit = dk.Problem(dk.Formulation("1 + prices + x"), products)
    with pytest.raises(SpecificationError, match="random coefficients"):
        frac.estimate(logit)
    nested = dk.Problem(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")],
        problem.product_frame.assign(nesting_ids=np.arange(360) % 2),
        agent_data=agents,
    )
    with pytest.raises(SpecificationError, match="nested"):
        frac.estimate(nested)
