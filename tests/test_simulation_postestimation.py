"""Post-estimation on ``SimulationResults`` at the simulation's true parameters.

PyBLP 1.3.0's ``SimulationResults.compute_*`` methods are the oracle: both libraries simulate the same random
coefficients logit with a supply side from the same product data, agent nodes, :math:`\\xi` and :math:`\\omega`,
and the post-estimation quantities after ``replace_endogenous()`` agree to ``1e-8``.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.construction.instruments import build_id_data
from demandkit.simulation import Simulation, SimulationResults

RTOL = 1e-8
T, J, F, I = 10, 5, 3, 15


def assert_close(actual: Any, expected: Any, name: str) -> None:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.nanmax(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@cache
def inputs() -> tuple[dict, pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = build_id_data(T, J, F)
    N = T * J
    products = {
        "market_ids": ids.market_ids.ravel(),
        "firm_ids": ids.firm_ids.ravel(),
        "x": rng.uniform(size=N),
        "w": rng.uniform(size=N),
    }
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), I),
            "weights": 1 / I,
            "nodes0": rng.normal(size=T * I),
            "nodes1": rng.normal(size=T * I),
            "income": rng.normal(size=T * I),
        }
    )
    return products, agents, 0.3 * rng.normal(size=N), 0.2 * rng.normal(size=N)


def simulate(library: Any) -> Any:
    products, agents, xi, omega = inputs()
    formulations = [library.Formulation(f) for f in ("1 + prices + x", "0 + prices + x", "1 + w")]
    simulation = Simulation if library is dk else library.Simulation
    return simulation(
        formulations,
        products,
        beta=(1.0, -3.0, 1.0),
        sigma=((0.5, 0.0), (0.2, 0.8)),
        pi=((0.3,), (-0.4,)),
        gamma=(0.5, 0.3),
        agent_formulation=library.Formulation("0 + income"),
        agent_data=agents,
        xi=xi,
        omega=omega,
        seed=0,
    ).replace_endogenous()


@cache
def ours() -> SimulationResults:
    return simulate(dk)


@cache
def theirs() -> Any:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    return quiet(lambda: quiet(simulate, pyblp))


def merger_firm_ids() -> np.ndarray:
    firm_ids = np.asarray(inputs()[0]["firm_ids"]).copy()
    firm_ids[firm_ids == 1] = 0
    return firm_ids


def test_true_results_reproduce_the_simulation() -> None:
    """The cached ProblemResults sits at the true parameters with the simulation's delta, xi and omega."""
    results = ours()
    true = results.true_results
    assert true is results.true_results
    simulation = results.simulation
    np.testing.assert_allclose(true.beta.ravel(), simulation.beta, rtol=0, atol=1e-14)
    np.testing.assert_allclose(true.gamma.ravel(), simulation.gamma, rtol=0, atol=1e-14)
    np.testing.assert_allclose(true.sigma, simulation.sigma, rtol=0, atol=1e-14)
    np.testing.assert_allclose(true.pi, simulation.pi, rtol=0, atol=1e-14)
    np.testing.assert_allclose(true.delta, results.delta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(true.xi, simulation.xi, rtol=0, atol=1e-10)
    np.testing.assert_allclose(true.omega, simulation.omega, rtol=0, atol=1e-8)
    np.testing.assert_allclose(results.compute_costs(), results.costs, rtol=0, atol=1e-8)


@pytest.mark.pyblp
@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("compute_elasticities", {}),
        ("compute_diversion_ratios", {}),
        ("compute_costs", {}),
        ("compute_markups", {}),
        ("compute_consumer_surpluses", {}),
        ("compute_shares", {}),
        ("compute_hhi", {}),
        ("compute_profits", {}),
        ("compute_aggregate_elasticities", {}),
        ("compute_delta", {}),
        ("compute_passthrough", {}),
        ("compute_probabilities", {}),
        ("compute_demand_jacobians", {}),
        ("compute_demand_hessians", {}),
        ("compute_profit_hessians", {}),
        ("compute_long_run_diversion_ratios", {}),
        ("compute_prices", {"merger": True}),
        ("compute_approximate_prices", {"merger": True}),
    ],
)
def test_matches_pyblp(method: str, kwargs: dict) -> None:
    kwargs = dict(kwargs)
    if kwargs.pop("merger", False):
        kwargs["firm_ids"] = merger_firm_ids()
        if method == "compute_prices":
            kwargs["iteration"] = dk.Iteration("simple", {"atol": 1e-14})
    expected_kwargs = dict(kwargs)
    if "iteration" in kwargs:
        import pyblp

        expected_kwargs["iteration"] = pyblp.Iteration("simple", {"atol": 1e-14})
    expected = quiet(getattr(theirs(), method), **expected_kwargs)
    actual = getattr(ours(), method)(**kwargs)
    assert_close(actual, expected, method)


@pytest.mark.pyblp
def test_extract_diagonals_and_micro_values_match_pyblp() -> None:
    pyblp = pytest.importorskip("pyblp")
    elasticities = ours().compute_elasticities()
    expected = theirs().compute_elasticities()
    assert_close(ours().extract_diagonals(elasticities), theirs().extract_diagonals(expected), "extract_diagonals")
    assert_close(
        ours().extract_diagonal_means(elasticities), theirs().extract_diagonal_means(expected), "diagonal means"
    )

    def moment(library: Any) -> Any:
        dataset = library.MicroDataset(
            name="all", observations=100, compute_weights=lambda t, p, a: np.ones((a.size, p.size))
        )
        part = library.MicroPart(
            name="income x prices",
            dataset=dataset,
            compute_values=lambda t, p, a: np.outer(a.demographics[:, 0], p.X2[:, 0]),
        )
        return library.MicroMoment(name="income x prices", value=0, parts=part)

    actual = ours().compute_micro_values([moment(dk)])
    assert actual.shape == (1,)  # flat, as PyBLP
    assert_close(actual, quiet(theirs().compute_micro_values, [moment(pyblp)]), "compute_micro_values")


def test_pickle_round_trip(tmp_path: Any) -> None:
    results = ours()
    path = tmp_path / "simulation.pkl"
    results.to_pickle(path)
    loaded = SimulationResults.from_pickle(path)
    np.testing.assert_array_equal(loaded.delta, results.delta)
    np.testing.assert_array_equal(loaded.compute_elasticities(), results.compute_elasticities())
    assert '"product_data"' in results.to_json()


def test_optimal_instrument_results_pickle_round_trip(tmp_path: Any) -> None:
    instruments = ours().true_results.compute_optimal_instruments()
    path = tmp_path / "instruments.pkl"
    instruments.to_pickle(path)
    loaded = type(instruments).from_pickle(path)
    np.testing.assert_array_equal(loaded.demand_instruments, instruments.demand_instruments)
    assert '"supply_instruments"' in instruments.to_json()
