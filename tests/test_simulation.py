"""Simulation: equilibrium prices and shares, reproducible draws, conversion to a problem, and Monte Carlo.

PyBLP 1.3.0's ``Simulation(...).replace_endogenous()`` is the oracle given the same xi, omega and agent data (and,
for the draws, the same seed). Equilibria are also checked on their own terms: the Bertrand-Nash first-order
conditions hold to 1e-10.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit import montecarlo
from demandkit.construction.instruments import build_id_data
from demandkit.exceptions import SpecificationError
from demandkit.simulation import Simulation, SimulationError

RTOL = 1e-8
T, J, F, I = 6, 5, 3, 20


@dataclass(frozen=True)
class Design:
    """One simulated model, in both libraries' terms."""

    X1: str = "1 + prices + x"
    X2: str | None = None
    X3: str | None = "1 + w"
    beta: tuple = (1.0, -3.0, 1.0)
    sigma: tuple | None = None
    pi: tuple | None = None
    gamma: tuple | None = (0.5, 0.3)
    rho: Any = None
    costs_type: str = "linear"
    demographics: bool = False


DESIGNS = {
    "logit": Design(),
    "rc": Design(X2="0 + prices + x", sigma=((0.5, 0), (0.2, 0.8)), pi=((0.3,), (-0.4,)), demographics=True),
    "log costs": Design(X2="0 + prices + x", sigma=((0.5, 0), (0.2, 0.8)), costs_type="log"),
    "rcnl": Design(X2="0 + x", sigma=((0.8,),), rho=(0.3, 0.6)),
    "nonlinear prices": Design(
        X1="1 + prices + I(prices ** 2) + x", X2="0 + prices", sigma=((0.5,),), beta=(1, -3, 0.1, 1)
    ),
}


def data(nests: bool = False) -> tuple[dict, pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = build_id_data(T, J, F)
    N = T * J
    products = {
        "market_ids": ids.market_ids.ravel(),
        "firm_ids": ids.firm_ids.ravel(),
        "x": rng.uniform(size=N),
        "w": rng.uniform(size=N),
    }
    if nests:
        products["nesting_ids"] = np.arange(N) % 2
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


def simulations(design: Design, library: Any) -> Any:
    """The design as a ``library.Simulation`` (demandkit or PyBLP) on the same data and errors."""
    products, agents, xi, omega = data(nests=design.rho is not None)
    formulations = [library.Formulation(f) if f else None for f in (design.X1, design.X2, design.X3)]
    simulation = Simulation if library is dk else library.Simulation
    return simulation(
        formulations,
        products,
        beta=design.beta,
        sigma=design.sigma,
        pi=design.pi,
        gamma=design.gamma,
        rho=design.rho,
        agent_formulation=library.Formulation("0 + income") if design.demographics else None,
        agent_data=agents if design.X2 else None,
        xi=xi,
        omega=omega,
        costs_type=design.costs_type,
        seed=0,
    )


def assert_close(actual: Any, expected: Any, name: str, rtol: float = RTOL) -> None:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# ------------------------------------------------------------------------------------------ equilibria


@pytest.mark.pyblp
@pytest.mark.parametrize("name", list(DESIGNS))
def test_replace_endogenous_matches_pyblp(name: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    design = DESIGNS[name]
    ours = simulations(design, dk).replace_endogenous()
    theirs = quiet(lambda: quiet(simulations, design, pyblp).replace_endogenous())
    for column in ("prices", "shares"):
        assert_close(ours.product_data[column], theirs.product_data[column].ravel(), column)
    assert_close(ours.delta, theirs.delta, "delta")
    assert_close(ours.costs, theirs.costs, "costs")
    assert np.abs(ours.profit_gradients).max() < 1e-10
    assert ours.fp_converged.all() and ours.profit_gradient_norms.shape == (T, 1)


def test_equilibrium_satisfies_first_order_conditions() -> None:
    """At the returned prices, markups from the estimation engine's Bertrand formula equal prices minus costs."""
    design = DESIGNS["rc"]
    simulation = simulations(design, dk)
    results = simulation.replace_endogenous(iteration=dk.Iteration("squarem", {"atol": 1e-13}))
    assert np.abs(results.profit_gradients).max() < 1e-10
    problem = results.to_problem()
    solved = problem.solve(
        sigma=simulation.sigma, pi=simulation.pi, beta=[np.nan, -3.0, np.nan], optimization=dk.Optimization("return")
    )
    # at the true parameters the estimated delta recovers the true one, and the implied costs the true costs
    assert_close(solved.delta, results.delta - 0, "delta from the inversion", rtol=1e-9)
    assert_close(solved.compute_costs(), results.costs, "costs implied by the FOCs", rtol=1e-9)


def test_batched_equals_one_market_at_a_time() -> None:
    design = DESIGNS["rc"]
    together = simulations(design, dk).replace_endogenous()
    products, agents, xi, omega = data()
    for market in (0, 3):
        rows = np.flatnonzero(products["market_ids"] == market)
        alone = Simulation(
            [dk.Formulation(design.X1), dk.Formulation(design.X2), dk.Formulation(design.X3)],
            {key: value[rows] for key, value in products.items()},
            beta=design.beta,
            sigma=design.sigma,
            pi=design.pi,
            gamma=design.gamma,
            agent_formulation=dk.Formulation("0 + income"),
            agent_data=agents[agents.market_ids == market],
            xi=xi[rows],
            omega=omega[rows],
        ).replace_endogenous()
        assert_close(alone.product_data["prices"], together.product_data["prices"].to_numpy()[rows], "prices", 1e-10)


@pytest.mark.pyblp
def test_replace_exogenous_matches_pyblp() -> None:
    pyblp = pytest.importorskip("pyblp")
    design = Design(X2="0 + prices", sigma=((0.5,),), pi=((0.3,),), demographics=True)
    ours = simulations(design, dk).replace_exogenous("x", "w")
    theirs = quiet(lambda: quiet(simulations, design, pyblp).replace_exogenous("x", "w"))
    for column in ("x", "w"):
        assert_close(ours.product_data[column], theirs.product_data[column].ravel(), column)
    assert_close(ours.delta, theirs.delta, "delta")
    # and the replaced data are an equilibrium: solving again returns the data's prices
    products, agents, xi, omega = data()
    products.update(x=ours.product_data["x"].to_numpy(), w=ours.product_data["w"].to_numpy())
    prices = simulations(design, dk).product_data["prices"].to_numpy()
    products["prices"] = prices
    again = Simulation(
        [dk.Formulation(design.X1), dk.Formulation(design.X2), dk.Formulation(design.X3)],
        products,
        beta=design.beta,
        sigma=design.sigma,
        pi=design.pi,
        gamma=design.gamma,
        agent_formulation=dk.Formulation("0 + income"),
        agent_data=agents,
        xi=xi,
        omega=omega,
    ).replace_endogenous(prices=prices)
    assert_close(again.product_data["prices"], prices, "prices", 1e-9)


# ------------------------------------------------------------------------------------ draws and problems


@pytest.mark.pyblp
def test_same_seed_same_draws_as_pyblp() -> None:
    pyblp = pytest.importorskip("pyblp")
    ids = build_id_data(4, 3, 2)
    agents = {"market_ids": np.repeat(np.arange(4), 5), "weights": 0.2, "nodes0": np.linspace(-1, 1, 20)}

    def simulate(library: Any, cls: Any, seed: int) -> Any:
        return cls(
            [library.Formulation("1 + prices + x + y"), library.Formulation("0 + x"), library.Formulation("1 + w")],
            ids,
            beta=[1, -3, 1, 1],
            sigma=[[0.5]],
            pi=[[0.1, 0.2]],
            gamma=[1, 1],
            agent_formulation=library.Formulation("0 + income + age"),
            agent_data=agents,
            seed=seed,
        )

    ours, theirs = simulate(dk, Simulation, 7), quiet(simulate, pyblp, pyblp.Simulation, 7)
    for column in ("shares", "prices", "x", "y", "w"):
        assert np.array_equal(ours.product_data[column].to_numpy(), theirs.product_data[column].ravel()), column
    for column in ("income", "age"):
        assert np.array_equal(ours.agent_data[column].to_numpy(), theirs.agent_data[column].ravel()), column
    assert np.array_equal(ours.xi, theirs.xi) and np.array_equal(ours.omega, theirs.omega)
    again = simulate(dk, Simulation, 7)
    assert again.product_data.equals(ours.product_data) and np.array_equal(again.xi, ours.xi)
    assert not np.array_equal(simulate(dk, Simulation, 8).xi, ours.xi)
    # the default instruments of to_problem are PyBLP's
    problem = ours.replace_endogenous().to_problem()
    reference = quiet(lambda: quiet(theirs.replace_endogenous).to_problem())
    assert_close(problem.design.ZD, reference.products.ZD, "ZD")
    assert_close(problem.ZS, reference.products.ZS, "ZS")


def test_xi_is_drawn_without_a_supply_side() -> None:
    ids = build_id_data(3, 4, 2)
    simulation = Simulation(dk.Formulation("1 + prices + x"), ids, beta=[1, -2, 1], xi_variance=0.25, seed=1)
    assert simulation.xi.shape == (12, 1) and simulation.omega is None
    with pytest.raises(SpecificationError, match="costs"):
        simulation.replace_endogenous()
    results = simulation.replace_endogenous(costs=np.full(12, 0.5))
    assert np.abs(results.profit_gradients).max() < 1e-10


def test_errors_name_the_culprit() -> None:
    ids = build_id_data(3, 4, 2)
    formulations = [dk.Formulation("1 + prices + x"), None, dk.Formulation("1 + w")]
    with pytest.raises(SpecificationError, match="beta"):
        Simulation(formulations, ids, beta=[1, -2], gamma=[1, 1])
    with pytest.raises(SpecificationError, match="gamma"):
        Simulation(formulations, ids, beta=[1, -2, 1])
    with pytest.raises(SpecificationError, match="rho"):
        Simulation(formulations, ids, beta=[1, -2, 1], gamma=[1, 1], rho=0.5)
    with pytest.raises(SpecificationError, match="absorb"):
        Simulation([dk.Formulation("prices", absorb="C(x)")], ids, beta=[1])
    simulation = Simulation(formulations, ids, beta=[1, -2, 1], gamma=[1, 1], seed=0)
    with pytest.raises(SpecificationError, match="X1_name"):
        simulation.replace_exogenous("prices", "w")
    with pytest.raises(SpecificationError, match="error_behavior"):
        simulation.replace_endogenous(error_behavior="ignore")


def test_nonconvergence_raises_or_warns() -> None:
    simulation = simulations(DESIGNS["logit"], dk)
    iteration = dk.Iteration("simple", {"atol": 1e-14, "max_evaluations": 2})
    with pytest.raises(SimulationError, match="did not converge"):
        simulation.replace_endogenous(iteration=iteration)
    with pytest.warns(dk.exceptions.ConvergenceWarning):
        results = simulation.replace_endogenous(iteration=iteration, error_behavior="warn")
    assert not results.fp_converged.all()


# ------------------------------------------------------------------------------------------- Monte Carlo


def monte_carlo_design(seed: int) -> Simulation:
    """A small logit design with a supply side (module level, so that worker processes can unpickle it)."""
    ids = build_id_data(20, 4, 2)
    return Simulation(
        [dk.Formulation("1 + prices + x"), None, dk.Formulation("1 + w")],
        ids,
        beta=[1, -2, 1],
        gamma=[1, 1],
        xi_variance=0.2,
        omega_variance=0.2,
        correlation=0.5,
        seed=seed,
    )


def test_monte_carlo_summary() -> None:
    summary = montecarlo.run(
        monte_carlo_design, {"method": "1s", "beta": [np.nan, -1.0, np.nan]}, replications=3, seed=2, progress=False
    )
    expected = [("beta", "1"), ("beta", "prices"), ("beta", "x"), ("gamma", "1"), ("gamma", "w")]
    assert list(zip(summary["parameter"], summary["name"], strict=True)) == expected
    assert (summary["replications"] == 3).all() and not summary.attrs["failures"]
    replications = summary.attrs["replications"]
    prices = replications[(replications["parameter"] == "beta") & (replications["name"] == "prices")]
    error = prices["estimate"] - prices["truth"]
    row = summary.set_index(["parameter", "name"]).loc[("beta", "prices")]
    assert row["bias"] == pytest.approx(error.mean())
    assert row["rmse"] == pytest.approx(np.sqrt((error**2).mean()))
    assert row["coverage"] == pytest.approx((error.abs() <= 1.959963984540054 * prices["se"]).mean())
    again = montecarlo.run(
        monte_carlo_design, {"method": "1s", "beta": [np.nan, -1.0, np.nan]}, replications=3, seed=2, progress=False
    )
    pd.testing.assert_frame_equal(summary, again)


def test_monte_carlo_in_processes_equals_inline() -> None:
    inline = montecarlo.run(
        monte_carlo_design, {"method": "1s", "beta": [np.nan, -1.0, np.nan]}, replications=2, seed=5, progress=False
    )
    parallel = montecarlo.run(
        monte_carlo_design,
        {"method": "1s", "beta": [np.nan, -1.0, np.nan]},
        replications=2,
        seed=5,
        processes=2,
        progress=False,
    )
    pd.testing.assert_frame_equal(inline, parallel, check_exact=False, rtol=1e-10)


def test_monte_carlo_records_failures() -> None:
    def broken(seed: int) -> Simulation:
        raise ValueError(f"no design for seed {seed}")

    summary = montecarlo.run(broken, replications=2, progress=False)
    assert summary.empty and len(summary.attrs["failures"]) == 2
    with pytest.raises(SpecificationError, match="replications"):
        montecarlo.run(monte_carlo_design, replications=0)
