"""The integrated macro-micro model: closed-form kernels against autograd, the recursive inversion, the gradient of
the concentrated likelihood against finite differences, recovery of known truth, validation, persistence."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk
from demandkit.exceptions import InvalidDataError, SpecificationError
from demandkit.integrated import kernels
from demandkit.integrated.engine import Engine
from demandkit.integrated.estimation import Likelihood
from demandkit.integrated.parameters import ParameterSpace


@functools.cache
def simulation(**kwargs) -> dk.IntegratedSimulation:
    settings = {"markets": 6, "periods": 20, "products": 3, "households": 150, "sigma": [[0.8]], "seed": 1}
    return dk.IntegratedSimulation.draw(**{**settings, **kwargs})


def problem_for(
    sim: dk.IntegratedSimulation, K2: int = 1, demographics: bool = False, **kwargs
) -> dk.IntegratedProblem:
    X2 = dk.Formulation("0 + prices" if K2 == 1 else "1 + prices")
    arguments = {"integration": dk.Integration("halton", 100, {"seed": 0}), "burn_in": 3, **kwargs}
    if demographics:
        arguments.update(agent_formulation=dk.Formulation("0 + income"), agent_data=sim.agent_data)
    return dk.IntegratedProblem((dk.Formulation("1 + prices + ads"), X2), sim.product_data, sim.micro_data, **arguments)


def likelihood_for(
    problem: dk.IntegratedProblem, sigma, pi=None, gamma=0.5, sigma_gamma=None, initial_state="outside"
) -> Likelihood:
    space = ParameterSpace.build(
        problem.K2, len(problem.demographics_labels), problem.X2_labels, problem.demographics_labels, sigma, pi, gamma,
        sigma_gamma, problem.has_gamma, problem.random_gamma,
    )  # fmt: skip
    options = dk.Iteration("squarem", {"atol": 1e-14}).options
    engine = Engine(
        problem.aggregate, problem.situations, problem.population, problem.household_draws, problem.device,
        problem.dtype, options, chunk_size=7, initial_state=initial_state,
    )  # fmt: skip
    return Likelihood(engine, space)


# ------------------------------------------------------------------------------------------------ kernels


def _period_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    M, I, J = 3, 5, 4

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    delta, mu, gamma = normal(M, J), normal(M, I, J), normal(M, I, 1).abs()
    state = torch.softmax(normal(M, I, J + 1), -1)
    available = torch.ones(M, J, dtype=torch.bool)
    available[1, 2] = False
    weights = torch.rand(M, I, generator=generator, dtype=torch.float64)
    return delta, mu, gamma, state, available, weights / weights.sum(1, keepdim=True)


def test_period_probabilities_equal_the_explicit_mixture():
    """q = sum_k pi(k) P(j | k), built here from the (J + 1) x (J + 1) transition matrix the kernel never forms."""
    delta, mu, gamma, state, available, _ = _period_inputs()
    p = kernels.period(delta, mu, gamma, state, available)
    J = delta.shape[1]
    u = torch.where(available.unsqueeze(1), delta.unsqueeze(1) + mu, -torch.inf)  # [M, I, J]
    lagged = u.unsqueeze(2) + torch.eye(J + 1, dtype=u.dtype)[:, 1:] * gamma.unsqueeze(-1)  # [M, I, k, J]
    full = torch.cat([torch.zeros_like(lagged[..., :1]), lagged], -1)
    transition = torch.softmax(full, -1)  # [M, I, k, j]
    expected = torch.einsum("mik,mikj->mij", state, transition)
    torch.testing.assert_close(kernels.next_state(p), expected, rtol=1e-12, atol=1e-14)


def test_stationary_state_is_the_chains_fixed_point():
    """The closed form equals the limit of the explicit (J + 1) x (J + 1) transition matrix's powers."""
    delta, mu, gamma, _, available, _ = _period_inputs(2)
    closed = kernels.stationary_state(delta, mu, gamma, available)
    state = torch.zeros_like(closed)
    state[..., 0] = 1
    for _ in range(2000):
        state = kernels.next_state(kernels.period(delta, mu, gamma, state, available))
    torch.testing.assert_close(closed, state, rtol=1e-10, atol=1e-12)
    assert torch.all(closed[1, :, 3] == 0)  # slot 2 of market 1 is not on sale


def test_log_share_jacobian_equals_autograd():
    delta, mu, gamma, state, available, weights = _period_inputs(1)

    def log_shares(d):
        s = kernels.shares(kernels.period(d, mu, gamma, state, available), weights)
        return torch.log(torch.where(available, s, 1.0))

    p = kernels.period(delta, mu, gamma, state, available)
    closed = kernels.log_share_jacobian(p, state, weights, available)
    full = torch.autograd.functional.jacobian(log_shares, delta)  # [M, J, M, J]
    expected = torch.einsum("mjml->mjl", full)
    both = available.unsqueeze(-1) & available.unsqueeze(-2)
    torch.testing.assert_close(closed[both], expected[both], rtol=1e-10, atol=1e-12)
    assert torch.equal(closed[1, 2], torch.eye(4, dtype=closed.dtype)[2])


# ------------------------------------------------------------------------------------------ macro and gradient


def test_inversion_reproduces_the_aggregate_shares():
    problem = problem_for(simulation())
    likelihood = likelihood_for(problem, [[0.8]], gamma=1.0)
    solution = likelihood.engine.solve_macro(
        likelihood.space.coefficients(torch.tensor([0.8, 1.0], dtype=torch.float64))
    )
    assert bool(solution.converged.all())
    engine = likelihood.engine
    c = likelihood.space.coefficients(torch.tensor([0.8, 1.0], dtype=torch.float64))
    state = engine._initial_state()
    for t in range(problem.aggregate.shape[1]):
        mu, gamma = engine._period_inputs(c, t)
        p = kernels.period(solution.delta[:, t], mu, gamma, state, engine.available[:, t])
        np.testing.assert_allclose(
            torch.log(kernels.shares(p, engine.weights)).numpy(), engine.log_shares[:, t].numpy(), rtol=0, atol=1e-11
        )
        state = kernels.next_state(p)


@pytest.mark.parametrize(
    "case",
    [
        {"K2": 1, "sigma": [[0.7]], "gamma": 0.8},
        {"K2": 2, "sigma": [[0.5, 0.0], [0.2, 0.6]], "pi": [[0.3], [-0.2]], "demographics": True, "gamma": 0.6},
        {"K2": 1, "sigma": [[0.7]], "gamma": 0.8, "sigma_gamma": 0.4, "state_dependence": {"random": True}},
        {"K2": 2, "sigma": [[0.5, 0.0], [0.0, 0.6]], "gamma": 0.8, "initial_state": "stationary"},
    ],
    ids=["sigma-gamma", "correlated-sigma-pi", "random-gamma", "stationary-start"],
)
def test_gradient_equals_finite_differences(case):
    """The implicit derivative through the whole recursion: reverse mode, forward mode (summed scores) and central
    differences of the log-likelihood agree."""
    case = dict(case)
    sim = simulation(
        markets=3, periods=8, households=30, sigma=((0.6,),) if case["K2"] == 1 else ((0.5, 0.0), (0.0, 0.6))
    )
    problem = problem_for(
        sim,
        K2=case.pop("K2"),
        demographics=case.pop("demographics", False),
        integration=dk.Integration("halton", 15, {"seed": 1}),
        state_dependence=case.pop("state_dependence", True),
        burn_in=2,
    )
    likelihood = likelihood_for(problem, **case)
    theta = likelihood.space.start
    evaluation = likelihood.evaluate(theta)
    numeric = np.zeros_like(theta)
    for p in range(theta.size):
        h = 1e-5
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        numeric[p] = (
            likelihood.evaluate(up, gradient=False).loglikelihood
            - likelihood.evaluate(down, gradient=False).loglikelihood
        ) / (2 * h)
    np.testing.assert_allclose(evaluation.gradient, numeric, rtol=1e-6, atol=1e-6 * np.abs(numeric).max())
    jacobian = likelihood.delta_jacobian(theta, evaluation.solution)
    scores = likelihood.scores(theta, evaluation.solution, jacobian)
    np.testing.assert_allclose(scores.sum(0), evaluation.gradient, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------- recovery


@pytest.fixture(scope="module")
def solved():
    sim = simulation()
    return sim, problem_for(sim).solve(sigma=[[0.5]], gamma=0.5)


def test_recovers_the_truth(solved):
    sim, results = solved
    assert results.converged
    assert bool(results.fp_converged.all()) and results.failed_inversions.empty
    assert np.max(np.abs(results.gradient)) < 1e-2
    truth = np.array([sim.sigma[0, 0], sim.gamma, *sim.beta])
    estimates = np.array([results.sigma[0, 0], results.gamma, *results.beta])
    errors = np.array([results.sigma_se[0, 0], results.gamma_se, *results.beta_se])
    assert np.all(errors > 0)
    assert np.all(np.abs(estimates - truth) < 4 * errors), (estimates, truth, errors)


def test_beta_standard_errors_include_the_first_step(solved):
    """Murphy-Topel: the corrected covariance exceeds the IV covariance that treats delta as data."""
    _, results = solved
    assert np.all(np.linalg.eigvalsh(results.beta_covariance) > 0)
    first_step = results.beta_covariance - np.diag(results.beta_se**2)
    assert np.allclose(np.diag(first_step), 0)


def test_results_tables_and_persistence(solved, tmp_path):
    _, results = solved
    frame = results.to_frame()
    assert list(frame["parameter"]) == ["sigma[prices, prices]", "gamma", "beta[1]", "beta[prices]", "beta[ads]"]
    text = str(results)
    assert "gamma" in text and "(SE)" in text and "log-likelihood" in text
    assert '"gamma"' in results.to_json()
    path = tmp_path / "integrated.pkl"
    results.to_pickle(path)
    loaded = dk.IntegratedResults.from_pickle(path)
    assert loaded.loglikelihood == results.loglikelihood
    np.testing.assert_array_equal(loaded.delta, results.delta)


# ----------------------------------------------------------------------------------------------- validation


def _small():
    sim = simulation(markets=2, periods=6, households=10)
    return sim.product_data.copy(), sim.micro_data.copy()


def _build(products, micro, **kwargs):
    arguments = {"integration": dk.Integration("halton", 5, {"seed": 0}), "burn_in": 1, **kwargs}
    formulations = (dk.Formulation("1 + prices + ads"), dk.Formulation("0 + prices"))
    return dk.IntegratedProblem(formulations, products, micro, **arguments)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, m: (p[p["time_ids"] != 3], m[m["time_ids"] != 3]), "gaps"),
        (lambda p, m: (p, m.assign(market_ids=np.where(m.index == 0, 99, m["market_ids"]))), "market 99"),
        (lambda p, m: (p, m.assign(choice_ids=np.where(m.index == 0, 7, m["choice_ids"]))), "chose 7"),
        (lambda p, m: (p.assign(shares=p["shares"] * 30), m), "shares"),
        (lambda p, m: (p.assign(shares=np.where(p.index == 0, -0.1, p["shares"])), m), "(0, 1)"),
        (lambda p, m: (pd.concat([p, p.iloc[:1]]), m), "more than once"),
        (lambda p, m: (p, m.assign(time_ids=np.where(m.index == 0, 50, m["time_ids"]))), "at time 50"),
        (lambda p, m: (p.assign(time_ids=p["time_ids"].astype(float) + 0.5), m), "integers"),
        (lambda p, m: (p, pd.concat([m, m.iloc[:1]])), "more than one row"),
        (lambda p, m: (p.drop(columns="product_ids"), m), "product_ids"),
    ],
    ids=["time-gap", "unknown-market", "not-a-product", "shares-sum", "share-range", "duplicate-product",
         "unknown-week", "fractional-time", "duplicate-household-week", "missing-column"],
)  # fmt: skip
def test_bad_data_is_named(change, message):
    products, micro = change(*_small())
    with pytest.raises(InvalidDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _build(products.reset_index(drop=True), micro.reset_index(drop=True))


def test_burn_in_longer_than_the_panel_is_named():
    with pytest.raises(InvalidDataError, match="burn_in=6"):
        _build(*_small(), burn_in=6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_state": "steady"}, "initial_state"),
        ({"state_dependence": {"randomly": True}}, "state_dependence"),
        ({"burn_in": -1}, "burn_in"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(SpecificationError, match=message):
        _build(*_small(), **kwargs)


def test_bad_starting_values_are_named():
    problem = _build(*_small())
    with pytest.raises(SpecificationError, match="sigma must be 1 x 1"):
        problem.solve(sigma=np.eye(2))
    with pytest.raises(SpecificationError, match="se_type"):
        problem.solve(sigma=[[0.5]], se_type="hac")


def test_stationary_start_recovers_the_truth():
    sim = simulation(initial_state="stationary", seed=3)
    problem = problem_for(sim, initial_state="stationary")
    likelihood = likelihood_for(problem, [[0.8]], gamma=1.0, initial_state="stationary")
    assert bool(
        likelihood.engine.solve_macro(
            likelihood.space.coefficients(torch.tensor([0.8, 1.0], dtype=torch.float64))
        ).converged.all()
    )
    results = problem.solve(sigma=[[0.5]], gamma=0.5)
    truth = np.array([sim.sigma[0, 0], sim.gamma, *sim.beta])
    estimates = np.array([results.sigma[0, 0], results.gamma, *results.beta])
    errors = np.array([results.sigma_se[0, 0], results.gamma_se, *results.beta_se])
    assert np.all(np.abs(estimates - truth) < 4 * errors), (estimates, truth, errors)


def test_products_may_enter_and_exit_and_households_skip_weeks():
    """A product missing from some weeks keeps its slot; a week without a record breaks the lag."""
    products, micro = _small()
    products = products[~((products["product_ids"] == 2) & (products["time_ids"] == 4))].reset_index(drop=True)
    bought = (micro["choice_ids"] == 2) & (micro["time_ids"] == 4)
    micro = micro[~bought].reset_index(drop=True)
    problem = _build(products, micro)
    assert not problem.aggregate.available[:, 4, 2].any() and problem.aggregate.available[:, 3, 2].all()
    lags_known = len(problem.situations.household)
    skipped = micro[~((micro["individual_ids"] == 0) & (micro["time_ids"] == 3))].reset_index(drop=True)
    assert len(_build(products, skipped).situations.household) == lags_known - 2  # week 3 and week 4 of household 0


def test_counterfactual_path(solved):
    """Unchanged data reproduce the observed shares; without advertising (beta_ads > 0) the inside goods lose share
    in every market and week."""
    sim, results = solved
    baseline = results.simulate()
    np.testing.assert_allclose(baseline["counterfactual_shares"], sim.product_data["shares"], rtol=1e-9)
    np.testing.assert_allclose(baseline["shares"], sim.product_data["shares"], rtol=1e-9)
    no_ads = results.simulate(sim.product_data.assign(ads=0.0))
    totals = no_ads.groupby(["market_ids", "time_ids"])[["shares", "counterfactual_shares"]].sum()
    assert np.all(totals["counterfactual_shares"] < totals["shares"])
    with pytest.raises(InvalidDataError, match="same order"):
        results.simulate(sim.product_data.iloc[::-1])


def test_elasticities_equal_autograd_of_the_shares(solved):
    """The closed-form price Jacobian along the fitted path equals autograd of the period's shares in prices."""
    sim, results = solved
    elasticities = results.compute_elasticities()
    problem, engine = results.problem, results.engine
    a = problem.aggregate
    assert elasticities.shape == (len(sim.product_data), a.shape[2])
    own = elasticities[np.arange(len(elasticities)), a.row_slot]
    assert np.all(own < 0) and np.all(
        np.delete(elasticities.reshape(-1), a.row_slot + a.shape[2] * np.arange(len(own))) > 0
    )
    c = results.space.coefficients(torch.as_tensor(results.theta))
    delta = torch.as_tensor(a.pad(results.delta[:, 0]))
    beta_price = results.beta[results.beta_labels.index("prices")]
    state = engine._initial_state()
    t = 5
    for period in range(t):  # the fitted state before week t
        mu, gamma = engine._period_inputs(c, period)
        state = kernels.next_state(kernels.period(delta[:, period], mu, gamma, state, engine.available[:, period]))
    prices = torch.as_tensor(a.pad(sim.product_data["prices"].to_numpy()))[:, t]
    tastes = c.tastes(engine.nodes, engine.demographics)

    def shares(p):
        mu = torch.einsum("mj,mik->mij", p, tastes)
        d = delta[:, t] + beta_price * (p - prices)
        return kernels.shares(
            kernels.period(d, mu, c.state_dependence(engine.nodes).unsqueeze(-1), state, engine.available[:, t]),
            engine.weights,
        )

    full = torch.autograd.functional.jacobian(shares, prices)
    expected = torch.einsum("mjml->mjl", full).numpy() * prices.numpy()[:, None, :] / shares(prices).numpy()[..., None]
    rows = a.row_period == t
    np.testing.assert_allclose(elasticities[rows], expected[a.row_market[rows], a.row_slot[rows]], rtol=1e-8)
