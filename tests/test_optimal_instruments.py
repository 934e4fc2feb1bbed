"""Optimal instruments against PyBLP 1.3.0's ``ProblemResults.compute_optimal_instruments``.

Both libraries evaluate the same problem at the same parameters (``Optimization('return')``), so the expected
Jacobians, the instruments and the re-created problems' instrument matrices must agree to 1e-8 (relative to each
array's scale). Data come from :class:`demandkit.simulation.Simulation` with differentiation instruments.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.blp.optimal_instruments import compute_optimal_instruments
from demandkit.construction.instruments import build_differentiation_instruments, build_id_data
from demandkit.exceptions import SpecificationError
from demandkit.simulation import Simulation

RTOL = 1e-8
T, J, F, I = 6, 5, 3, 15

CASES = {
    # X2, supply side, costs type, nests
    "demand": ("0 + prices + x", False, "linear", False),
    "supply": ("0 + prices + x", True, "linear", False),
    "nested log costs": (None, True, "log", True),
}


def problem_data(case: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    X2, supply, costs_type, nests = CASES[case]
    rng = np.random.default_rng(1)
    ids = build_id_data(T, J, F)
    N = T * J
    products = {
        "market_ids": ids.market_ids.ravel().astype(int),
        "firm_ids": ids.firm_ids.ravel().astype(int),
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
    formulations = [dk.Formulation("1 + prices + x"), dk.Formulation(X2) if X2 else None, dk.Formulation("1 + w")]
    simulation = Simulation(
        formulations,
        products,
        beta=[1, -3, 1],
        sigma=[[0.5, 0], [0.2, 0.8]] if X2 else None,
        pi=[[0.3], [-0.4]] if X2 else None,
        rho=0.5 if nests else None,
        gamma=[0.5, 0.3],
        agent_formulation=dk.Formulation("0 + income") if X2 else None,
        agent_data=agents if X2 else None,
        xi_variance=0.09,
        omega_variance=0.04,
        costs_type=costs_type,
        seed=2,
    )
    frame = simulation.replace_endogenous().product_data
    demand = build_differentiation_instruments(dk.Formulation("0 + x + w"), frame, "quadratic", interact=True)
    columns = {f"demand_instruments{k}": demand[:, k] for k in range(demand.shape[1])}
    columns[f"demand_instruments{demand.shape[1]}"] = frame["w"] ** 2
    if supply:
        columns.update(supply_instruments0=frame["x"] ** 2, supply_instruments1=frame["x"] ** 3)
        diff = build_differentiation_instruments(dk.Formulation("0 + x"), frame, "quadratic")
        columns.update({f"supply_instruments{k + 2}": diff[:, k] for k in range(diff.shape[1])})
    return frame.assign(**columns), agents if X2 else None


@functools.cache
def solve(case: str, library: Any) -> Any:
    """The case's problem in ``library``, evaluated (not optimized) at fixed parameters (cached: read only)."""
    X2, supply, costs_type, nests = CASES[case]
    frame, agents = problem_data(case)
    formulations = [library.Formulation("1 + prices + x"), library.Formulation(X2) if X2 else None]
    if supply:
        formulations.append(library.Formulation("1 + w"))
    problem = library.Problem(
        formulations,
        frame,
        library.Formulation("0 + income") if X2 else None,
        agents,
        costs_type=costs_type,
    )
    arguments = {"optimization": library.Optimization("return"), "method": "1s"}
    if X2:
        arguments.update(sigma=[[0.6, 0], [0.1, 0.7]], pi=[[0.2], [-0.3]])
    if nests:
        arguments["rho"] = 0.4
    if supply:
        arguments["beta"] = [np.nan, -2.9, np.nan]
    return problem.solve(**arguments)


def assert_close(actual: Any, expected: Any, name: str) -> None:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.mark.pyblp
@pytest.mark.parametrize("case", list(CASES))
def test_approximate_optimal_instruments_match_pyblp(case: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    ours = solve(case, dk)
    theirs = quiet(solve, case, pyblp)
    assert_close(ours.theta.reshape(-1), theirs.theta.reshape(-1), "theta")
    optimal = compute_optimal_instruments(ours)
    reference = quiet(theirs.compute_optimal_instruments)
    assert_close(optimal.expected_prices, reference.expected_prices, "expected prices")
    assert_close(optimal.expected_shares, reference.expected_shares, "expected shares")
    assert_close(optimal.expected_xi_by_theta_jacobian, reference.expected_xi_by_theta_jacobian, "xi Jacobian")
    assert_close(optimal.demand_instruments, reference.demand_instruments, "demand instruments")
    assert_close(optimal.inverse_covariance_matrix, reference.inverse_covariance_matrix, "inverse covariance")
    if CASES[case][1]:
        assert_close(
            optimal.expected_omega_by_theta_jacobian, reference.expected_omega_by_theta_jacobian, "omega Jacobian"
        )
        assert_close(optimal.supply_instruments, reference.supply_instruments, "supply instruments")
    assert optimal.supply_instruments.shape == reference.supply_instruments.shape

    updated = optimal.to_problem()
    reference_problem = quiet(reference.to_problem)
    assert_close(updated.design.ZD, reference_problem.products.ZD, "ZD of the updated problem")
    if CASES[case][1]:
        assert_close(updated.ZS, reference_problem.products.ZS, "ZS of the updated problem")
    # the updated problem is ready to solve, and leaves the original untouched
    assert ours.problem.design.ZD.shape[1] != updated.design.ZD.shape[1] or ours.problem.MD == updated.MD
    again = updated.solve(
        sigma=ours.sigma, pi=ours.pi, rho=ours.rho, beta=ours._space.beta0, optimization=dk.Optimization("return")
    )
    assert np.isfinite(again.objective)


@pytest.mark.pyblp
def test_absorbed_fixed_effects_match_pyblp() -> None:
    """With product fixed effects, expected prices add back the absorbed part of prices and the updated problem
    absorbs the optimal instruments."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    frame, agents = problem_data("demand")
    frame = frame.assign(product_ids=np.tile(np.arange(J), T))

    def evaluate(library: Any) -> Any:
        X1 = library.Formulation("0 + prices + x", absorb="C(product_ids)")
        problem = library.Problem(
            [X1, library.Formulation("0 + prices + x")], frame, library.Formulation("0 + income"), agents
        )
        return problem.solve(
            sigma=[[0.6, 0], [0.1, 0.7]], pi=[[0.2], [-0.3]], optimization=library.Optimization("return"), method="1s"
        )

    optimal = compute_optimal_instruments(evaluate(dk))
    reference = quiet(lambda: quiet(evaluate, pyblp).compute_optimal_instruments())
    assert_close(optimal.expected_prices, reference.expected_prices, "expected prices")
    assert_close(optimal.demand_instruments, reference.demand_instruments, "demand instruments")
    assert_close(optimal.to_problem().design.ZD, quiet(reference.to_problem).products.ZD, "ZD")


@pytest.mark.pyblp
@pytest.mark.parametrize("method", ["normal", "empirical"])
def test_drawn_optimal_instruments_match_pyblp(method: str) -> None:
    """The same seed gives PyBLP's draws of the errors, so the averages over draws agree too."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    ours = solve("supply", dk)
    theirs = quiet(solve, "supply", pyblp)
    optimal = compute_optimal_instruments(ours, method=method, draws=2, seed=3)
    reference = quiet(theirs.compute_optimal_instruments, method=method, draws=2, seed=3)
    assert_close(optimal.expected_prices, reference.expected_prices, "expected prices")
    assert_close(optimal.demand_instruments, reference.demand_instruments, "demand instruments")
    assert_close(optimal.supply_instruments, reference.supply_instruments, "supply instruments")
    assert optimal.fp_converged.shape == (T, 2) and optimal.fp_converged.all()


def test_jacobian_matches_finite_differences() -> None:
    """The forward-mode implicit Jacobian of xi equals central finite differences of the Berry inversion at the
    realization's shares (xi = 0 at the data's prices)."""
    results = solve("demand", dk)
    prices = results.problem.product_frame["prices"].to_numpy()
    optimal = compute_optimal_instruments(results, expected_prices=prices)
    frame, agents = problem_data("demand")
    realized = dk.Problem(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + prices + x")],
        frame.assign(shares=optimal.expected_shares[:, 0]),
        dk.Formulation("0 + income"),
        agents,
    )
    space, theta, h = results._space, results.theta.reshape(-1), 1e-6
    columns = []
    checked = [0, len(space.sigma_index[0])]  # a sigma and a pi element
    for k in checked:
        deltas = []
        for step in (h, -h):
            point = theta.copy()
            point[k] += step
            sigma, pi = np.zeros_like(space.sigma0), np.zeros_like(space.pi0)
            sigma[space.sigma_index] = point[: len(space.sigma_index[0])]
            pi[space.pi_index] = point[len(space.sigma_index[0]) :]
            solved = realized.solve(sigma=sigma, pi=pi, optimization=dk.Optimization("return"), method="1s")
            deltas.append(solved.delta[:, 0])
        columns.append((deltas[0] - deltas[1]) / (2 * h))
    jacobian = optimal.expected_xi_by_theta_jacobian[:, checked]
    np.testing.assert_allclose(jacobian, np.column_stack(columns), rtol=1e-5, atol=1e-7)


def test_errors_name_the_culprit() -> None:
    results = solve("demand", dk)
    with pytest.raises(SpecificationError, match="method"):
        compute_optimal_instruments(results, method="exact")
    with pytest.raises(SpecificationError, match="draws"):
        compute_optimal_instruments(results, method="normal", draws=0)
    with pytest.raises(dk.exceptions.InvalidDataError, match="expected_prices"):
        compute_optimal_instruments(results, expected_prices=[1.0, 2.0])
    optimal = compute_optimal_instruments(results)
    with pytest.raises(SpecificationError, match="shifter"):
        optimal.to_problem(supply_shifter_formulation=dk.Formulation("0 + w"))
