"""Parameter recovery on synthetic data with known true parameters."""

import numpy as np
from _synthetic import simulate

import demandkit as dk

TRUTH = {"beta": (-1.0, -2.0, 1.0), "sigma_x": 0.8, "pi_x": 0.5, "rho": 0.6}


def _within(estimate, se, truth, z=4.0):
    assert np.isfinite(se) and se > 0
    assert abs(estimate - truth) <= z * se, (estimate, se, truth)


def test_random_coefficients_with_demographics_recovered():
    products, agents = simulate(T=150, J=10, I=200, seed=11, sigma_x=TRUTH["sigma_x"], pi_x=TRUTH["pi_x"])
    problem = dk.Problem(
        (dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")),
        products.drop(columns="nesting_ids"),
        dk.Formulation("0 + income"),
        agents,
    )
    # gtol 1e-6: at the default 1e-8 whether L-BFGS-B ends converged or in a line-search stall at a gradient
    # of ~1e-8 turns on rounding in the last digits (the estimates agree to 1e-8 either way)
    results = problem.solve(sigma=[[0.3]], pi=[[0.2]], optimization=dk.Optimization("l-bfgs-b", {"gtol": 1e-6}))
    assert results.converged
    for k, truth in enumerate(TRUTH["beta"]):
        _within(results.beta[k, 0], results.beta_se[k, 0], truth)
    _within(results.sigma[0, 0], results.sigma_se[0, 0], TRUTH["sigma_x"])
    _within(results.pi[0, 0], results.pi_se[0, 0], TRUTH["pi_x"])


def test_nested_logit_recovered():
    products, _ = simulate(T=200, J=10, I=1, seed=12, sigma_x=0.0, rho=TRUTH["rho"])
    problem = dk.Problem(
        dk.Formulation("1 + prices + x"),
        products.assign(
            demand_instruments5=lambda d: d.groupby(["market_ids", "nesting_ids"]).x.transform("sum") - d.x
        ),
    )
    results = problem.solve(rho=0.3)
    _within(results.rho[0, 0], results.rho_se[0, 0], TRUTH["rho"])
    for k, truth in enumerate(TRUTH["beta"]):
        _within(results.beta[k, 0], results.beta_se[k, 0], truth)


def test_logit_first_stage_shows_instrument_strength():
    products, _ = simulate(T=100, J=8, I=1, seed=13, sigma_x=0.0)
    results = dk.Problem(dk.Formulation("1 + prices + x"), products.drop(columns="nesting_ids")).solve(method="1s")
    _within(results.beta[1, 0], results.beta_se[1, 0], TRUTH["beta"][1])
    strong = results.first_stage.set_index("column").loc["prices"]
    assert strong.F > 100 and strong.df_excluded == 5
    assert "First-Stage Diagnostics" in str(results)
    # Instruments unrelated to prices: the F statistic is small and the summary says so.
    noise = np.random.default_rng(0).normal(size=(len(products), 5))
    weak_products = products.drop(columns="nesting_ids").assign(
        **{f"demand_instruments{k}": noise[:, k] for k in range(5)}
    )
    weak = dk.Problem(dk.Formulation("1 + prices + x"), weak_products).solve(method="1s")
    assert weak.first_stage.F.iloc[0] < 10
    assert "weak: F < 10" in str(weak)
