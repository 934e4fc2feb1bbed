"""Multi-start estimation (issue 17): ``starts`` on ``Problem.solve`` and ``MixedLogit.fit`` on any executor.

Both designs have distinct local optima from which a single start does not escape: a lognormal mixed logit whose
simulated likelihood has four optima (one per sign of the two spreads; the Halton draws are not symmetric, so their
log-likelihoods differ by up to 0.9) and a small BLP problem whose GMM objective has an interior local minimum at
0.1526 besides the best, 0.1235, at the lower bound of sigma.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from _synthetic import simulate

import demandkit as dk
from demandkit import multistart
from demandkit.exceptions import ConvergenceWarning, DistinctOptimaWarning, SpecificationError
from demandkit.mixed_logit import MixedLogit, simulate_panel

COLUMNS = ["start", "converged", "gradient_norm", "iterations", "seconds", "best", "warnings", "error"]

#: the best optimum of the mixed logit below, found from 20 random starts (the default start reaches -1121.404)
ML_BEST = -1121.2359
#: the BLP problem's two optima under sigma >= 0: the best at the bound, an interior local minimum
BLP_BEST, BLP_LOCAL = 0.1235244, 0.1525674
BLP_FIXED = {"method": "1s", "check_optimality": "gradient"}


def lognormal_model(individuals: int, situations: int, draws: int, seed: int) -> MixedLogit:
    """A mixed logit with a lognormal price and a normal quality coefficient: several optima at these sizes."""
    coefficients = {"price": ("lognormal", 0.0, 1.0), "quality": ("normal", 1.0, 1.0)}
    sim = simulate_panel(individuals, situations, 3, coefficients, seed=seed)
    return MixedLogit(
        dk.Formulation("0 + price + quality"),
        sim.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={"price": "lognormal", "quality": "normal"},
        integration=dk.Integration("halton", draws, {"seed": 0}),
    )


@pytest.fixture(scope="module")
def model() -> MixedLogit:
    return lognormal_model(300, 5, 100, seed=0)


@pytest.fixture(scope="module")
def problem() -> dk.Problem:
    products, agents = simulate(T=20, J=6, I=100, pi_x=0.5)
    return dk.Problem(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")],
        products.drop(columns="nesting_ids"),
        dk.Formulation("0 + income"),
        agents,
    )


def test_mixed_logit_starts_find_the_best_optimum(model: MixedLogit) -> None:
    single = model.fit(progress=False)
    assert single.starts is None and single.loglikelihood == pytest.approx(-1121.404, abs=1e-3)
    with pytest.warns(DistinctOptimaWarning, match="converged starts ended at optima whose loglikelihood"):
        results = model.fit(starts=10, progress=False)
    assert results.loglikelihood == pytest.approx(ML_BEST, abs=1e-3)
    assert results.model is model and results.statistics["converged"]
    table = results.starts
    assert list(table.columns) == ["start", "loglikelihood", *COLUMNS[1:], "initial", "estimate"]
    assert list(table["start"]) == list(range(10)) and table["best"].sum() == 1
    best = table.loc[table["best"]].iloc[0]
    assert best["loglikelihood"] == results.loglikelihood == table.loc[table["converged"], "loglikelihood"].max()
    np.testing.assert_allclose(best["estimate"], results.theta, rtol=0, atol=0)
    assert table.loc[0, "loglikelihood"] == pytest.approx(single.loglikelihood, abs=1e-8)  # start 0 is the default
    assert table["error"].isna().all() and (table["seconds"] > 0).all() and (table["iterations"] > 0).all()


def test_blp_starts_find_the_best_optimum(problem: dk.Problem) -> None:
    single = problem.solve(sigma=[[2.0]], pi=[[0.3]], **BLP_FIXED)
    assert single.starts is None and single.objective == pytest.approx(BLP_LOCAL, rel=1e-5)
    with pytest.warns(DistinctOptimaWarning, match="objective differs"):
        results = problem.solve(sigma=[[2.0]], pi=[[0.3]], starts=10, **BLP_FIXED)
    assert results.objective == pytest.approx(BLP_BEST, rel=1e-5) and results.problem is problem
    table = results.starts
    assert list(table.columns) == ["start", "objective", *COLUMNS[1:], "final_objective", "initial", "estimate"]
    assert table.loc[0, "objective"] == pytest.approx(single.objective, rel=1e-12)
    assert table["initial"][0]["sigma"][0, 0] == 2.0 and all(start["sigma"][0, 0] > 0 for start in table["initial"])
    assert table.loc[table["best"], "objective"].iloc[0] == table["objective"].min() == results.objective


@pytest.mark.parametrize("estimator", ["blp", "mixed_logit"])
def test_threads_and_processes_agree(estimator: str, problem: dk.Problem, model: MixedLogit) -> None:
    def estimate(executor: ThreadPoolExecutor | None) -> tuple[np.ndarray, pd.DataFrame]:
        options = {"seed": 3, "rtol": 1.0}  # no distinct-optima warning here
        if estimator == "blp":
            results = problem.solve(
                sigma=[[0.5]], pi=[[0.1]], starts=3, starts_options=options, executor=executor, **BLP_FIXED
            )
        else:
            results = model.fit(starts=3, starts_options=options, executor=executor, progress=False)
        return results.theta, results.starts

    with ThreadPoolExecutor(max_workers=2) as executor:
        threads, thread_table = estimate(executor)
    processes, process_table = estimate(None)
    np.testing.assert_allclose(threads, processes, rtol=0, atol=1e-10)
    value = "objective" if estimator == "blp" else "loglikelihood"
    np.testing.assert_allclose(thread_table[value], process_table[value], rtol=1e-12)
    assert list(thread_table["best"]) == list(process_table["best"])


def test_failed_starts_are_recorded_and_only_the_best_warns(model: MixedLogit, problem: dk.Problem) -> None:
    bad = [-8.13, -5.67, -0.52, -1.27]  # BFGS stops at once, far from any optimum
    with pytest.warns(ConvergenceWarning):
        alone = model.fit(initial=bad, progress=False)
    assert alone.loglikelihood < -4000
    with ThreadPoolExecutor(max_workers=2) as threads:
        for executor in (None, threads):  # warnings caught in worker processes, and routed per thread here
            results = model.fit(starts=[bad, {"sd.quality": -1.0}], executor=executor, progress=False)  # no warning
            table = results.starts
            assert list(table["converged"]) == [False, True] and list(table["best"]) == [False, True]
            assert table.loc[0, "warnings"] >= 1 and table.loc[1, "warnings"] == 0 and results.loglikelihood > -1123
    with ThreadPoolExecutor(max_workers=2) as executor:  # a start that raises is recorded, the others go on
        solved = problem.solve(starts=[{"sigma": [[1.0, 2.0]]}, {"sigma": [[0.5]]}], pi=[[0.1]], executor=executor)
    assert solved.starts.loc[0, "error"].startswith("SpecificationError: sigma must be 1 by 1")
    assert np.isnan(solved.starts.loc[0, "objective"]) and solved.starts.loc[1, "best"]
    with pytest.raises(SpecificationError, match="sigma must be 1 by 1"):  # every start failed: the first's error
        problem.solve(starts=[{"sigma": [[1.0, 2.0]]}], pi=[[0.1]])


def test_one_start_runs_here_and_matches_a_single_solve(problem: dk.Problem) -> None:
    single = problem.solve(sigma=[[0.5]], pi=[[0.1]], **BLP_FIXED)
    results = problem.solve(sigma=[[0.5]], pi=[[0.1]], starts=1, **BLP_FIXED)
    assert len(results.starts) == 1 and results.starts.loc[0, "best"]
    np.testing.assert_array_equal(results.theta, single.theta)
    assert results.objective == single.objective and results.problem is problem
    assert pickle.loads(pickle.dumps(results)).starts.shape == results.starts.shape


def test_draws_keep_to_bounds_and_to_their_seed() -> None:
    base = np.array([0.5, -2.0, 0.3, 0.0])
    lower, upper = np.array([0.0, -np.inf, 0.0, -1.0]), np.array([np.inf, 0.0, 0.99, 1.0])
    options = multistart.StartsOptions(seed=1, scale=3.0)
    draws = multistart.draw(base, 200, options, 1.0, lower, upper)
    np.testing.assert_array_equal(draws[0], base)
    stacked = np.array(draws[1:])
    assert (stacked > lower).all() and (stacked < upper).all() and (stacked != 0).all()
    assert (stacked[:, 2] >= 0.00099).all() and (stacked[:, 2] <= 0.98901).all()
    again = multistart.draw(base, 200, options, 1.0, lower, upper)
    np.testing.assert_array_equal(stacked, np.array(again[1:]))
    assert np.abs(stacked[:, 1]).mean() > 2 and np.abs(stacked[:, 3]).max() < 1  # mirrored at 0; folded into (-1, 1)


def test_bad_arguments_name_the_culprit(problem: dk.Problem, model: MixedLogit) -> None:
    idle = ThreadPoolExecutor(max_workers=1)
    cases = [
        ({"starts": 0}, "starts must be at least 1"),
        ({"starts": -2}, "starts must be at least 1"),
        ({"starts": True}, "starts must be None, a number"),
        ({"starts": "3"}, "starts must be None, a number"),
        ({"starts": []}, "empty list"),
        ({"starts": 2, "executor": object()}, "executor must be a concurrent.futures.Executor"),
        ({"executor": idle}, "pass starts"),
        ({"starts_options": {"seed": 1}}, "pass starts"),
        ({"starts": 2, "starts_options": {"sed": 1}}, "unknown keys \\['sed'\\]"),
        ({"starts": 2, "starts_options": {"scale": 0}}, "'scale'\\] must be a positive number"),
        ({"starts": 2, "starts_options": {"rtol": -1}}, "'rtol'\\] must be a non-negative number"),
        ({"starts": 2, "starts_options": {"seed": 1.5}}, "'seed'\\] must be a non-negative int"),
    ]
    for arguments, message in cases:
        with pytest.raises(SpecificationError, match=message):
            problem.solve(sigma=[[0.5]], pi=[[0.1]], **arguments)
        with pytest.raises(SpecificationError, match=message):
            model.fit(progress=False, **arguments)
    idle.shutdown()
    with pytest.raises(SpecificationError, match="a start sets only"):
        problem.solve(sigma=[[0.5]], pi=[[0.1]], starts=[{"W": np.eye(3)}])
    with pytest.raises(SpecificationError, match="4 finite values"):
        model.fit(starts=[[1.0, 2.0]], progress=False)
    with pytest.raises(SpecificationError, match="unknown parameters \\['price_'\\]"):
        model.fit(starts=[{"price_": 1.0}], progress=False)


def _concave(beta: dict, x: dict) -> object:
    return beta["price"] * x["price"] + beta["quality"] * x["quality"]


def test_an_estimator_that_does_not_pickle_is_named(model: MixedLogit) -> None:
    custom = MixedLogit(
        dk.Formulation("0 + price + quality"),
        model.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={"quality": "normal"},
        utility=lambda beta, x: _concave(beta, x),
        integration=dk.Integration("halton", 20, {"seed": 0}),
    )
    with pytest.raises(SpecificationError, match="MixedLogit could not be pickled .* top level of a module"):
        with ThreadPoolExecutor(max_workers=1) as executor:
            custom.fit(starts=2, executor=executor, progress=False)
