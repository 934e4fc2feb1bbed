"""PyBLP 1.3's documented attributes that demandkit lacked (issue 13, PyBLP parity), against PyBLP.

``ProblemResults``: ``parameter_sensitivity``, ``sigma_squared_se``, the ``*_bounds``, ``xi_fe``/``omega_fe``,
``micro_covariances``, ``simulation_covariances``, the ``*_by_theta_jacobian`` and ``last_results``
(:mod:`demandkit.blp.results_attributes`); ``Problem``: the ``unique_*_ids``, ``F``, ``MC``, ``ED`` and ``ES``
(:mod:`demandkit.blp.identifiers`).

Both libraries are evaluated at identical parameters (``Optimization('return')``) and compared to ``1e-8`` (relative,
with an absolute floor of ``1e-8`` times the largest magnitude). Measured agreement: Jacobians of :math:`\\xi` and
:math:`\\omega` 1e-13 or better, fixed effects 1e-12, sensitivities and :math:`\\Sigma\\Sigma'` standard errors 1e-9
(the moments' Jacobians and covariances they come from agree to that), micro blocks 1e-14, simulation covariances
1e-11. Bounds are compared exactly, after solves with a bounded and an unbounded optimizer (demandkit's
``Optimization('return')`` takes no bounds, PyBLP's does, so its default bounds differ there).
"""

from __future__ import annotations

import json
import pickle
import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

RTOL = 1e-8
NEVO_SIGMA = np.diag([0.5581, 3.3125, -0.0058, 0.0934])
NEVO_PI = np.array(
    [[2.2919, 0, 1.2842, 0], [588.3252, -30.1920, 0, 11.0546], [-0.3849, 0, 0.0522, 0], [0.7480, 0, -1.3537, 0]]
)
COMPUTED = (
    "parameter_sensitivity",
    "sigma_squared_se",
    "xi_fe",
    "omega_fe",
    "micro_covariances",
    "simulation_covariances",
    "xi_by_theta_jacobian",
    "omega_by_theta_jacobian",
    "micro_by_theta_jacobian",
)
BOUNDS = ("sigma_bounds", "pi_bounds", "rho_bounds", "beta_bounds", "gamma_bounds")


def assert_close(actual: Any, expected: Any, name: str) -> None:
    """Same shape, same NaN pattern, and ``|a - e| <= RTOL |e| + RTOL max|e|`` elsewhere."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != PyBLP's {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{name}: NaN pattern differs from PyBLP's")
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(
        actual[finite], expected[finite], rtol=RTOL, atol=RTOL * scale, err_msg=f"{name} differs from PyBLP"
    )


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call with warnings silenced (PyBLP's, and an optimizer stopped on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@cache
def nevo_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nevo's products (nests by ``mushy``, supply instruments) and agents (cached: treat as read-only)."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    products = products.assign(
        nesting_ids=np.where(products["mushy"] == 1, "mushy", "crunchy"),
        supply_instruments0=products["demand_instruments0"],
        supply_instruments1=products["demand_instruments1"],
    )
    return products, pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)


def nevo_problem(library: Any, products: pd.DataFrame | None = None, agents: pd.DataFrame | None = None) -> Any:
    """Nevo (2000): product fixed effects, four random coefficients and four demographics."""
    F = library.Formulation
    default_products, default_agents = nevo_data()
    products = default_products.drop(columns="nesting_ids") if products is None else products
    formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices + sugar + mushy"))
    demographics = F("0 + income + income_squared + age + child")
    return quiet(library.Problem, formulations, products, demographics, default_agents if agents is None else agents)


def nested_supply_problem(library: Any, absorb: str, costs_type: str = "linear") -> Any:
    """A nested logit with a supply side whose fixed effects are absorbed (``absorb``)."""
    F = library.Formulation
    formulations = (F("1 + prices + sugar"), None, F("0 + sugar + mushy", absorb=absorb))
    return quiet(library.Problem, formulations, nevo_data()[0], costs_type=costs_type)


def solve_nested_supply(library: Any, absorb: str, **options: Any) -> Any:
    """The nested supply problem at fixed :math:`\\rho`, a price coefficient and one :math:`\\gamma` in theta."""
    return quiet(
        nested_supply_problem(library, absorb, options.pop("costs_type", "linear")).solve,
        rho=[[0.5], [0.6]],
        beta=[np.nan, -10.0, np.nan],
        gamma=[np.nan, 0.01],
        method="1s",
        optimization=library.Optimization("return"),
        **options,
    )


@cache
def solved(design: str) -> tuple[Any, Any]:
    """``(pyblp_results, demandkit_results)`` of a design at fixed parameters (cached)."""
    if design == "nevo":
        return tuple(
            quiet(
                nevo_problem(library).solve,
                NEVO_SIGMA,
                NEVO_PI,
                optimization=library.Optimization("return"),
                method="1s",
                check_optimality="gradient",
            )
            for library in (pyblp, dk)
        )
    if design == "blp":
        return tuple(solve_blp(library) for library in (pyblp, dk))
    absorb = {"supply_fe": "C(firm_ids)", "supply_fe2": "C(firm_ids) + C(market_ids)"}[design]
    return tuple(solve_nested_supply(library, absorb) for library in (pyblp, dk))


BLP_MARKETS = [1971, 1981, 1990]


def solve_blp(library: Any) -> Any:
    """BLP (1995) automobiles in three markets with log costs that involve ``log(shares)``."""
    products = pd.read_csv(dk.data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.BLP_AGENTS_LOCATION)
    products = products.loc[products["market_ids"].isin(BLP_MARKETS)].reset_index(drop=True)
    agents = agents.loc[agents["market_ids"].isin(BLP_MARKETS)].reset_index(drop=True)
    x = products[[c for c in products.columns if "instruments" not in c]]
    demand = [x.hpwt**2, x.air * x.mpd, x.space**2, x.mpd**2, x.hpwt * x.space]
    supply = [np.log(x.hpwt) ** 2, x.air * np.log(x.mpg), np.log(x.space) ** 2, x.trend * np.log(x.hpwt)]
    columns = {f"demand_instruments{k}": c for k, c in enumerate(demand)}
    columns |= {f"supply_instruments{k}": c for k, c in enumerate(supply)}
    F = library.Formulation
    X3 = F("1 + log(hpwt) + air + log(mpg) + log(space) + trend + log(shares)")
    formulations = (F("1 + hpwt + air + mpd + space"), F("1 + prices + hpwt + air + mpd + space"), X3)
    problem = quiet(
        library.Problem, formulations, x.assign(**columns), F("0 + I(1 / income)"), agents, costs_type="log"
    )
    return quiet(
        problem.solve,
        np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056]),
        np.c_[[0, -43.501, 0, 0, 0, 0]],
        method="1s",
        optimization=library.Optimization("return"),
        check_optimality="gradient",
        costs_bounds=(0.001, None),
    )


# -------------------------------------------------------------------------------------------- ProblemResults


@pytest.mark.parametrize("design", ["nevo", "supply_fe", "supply_fe2", "blp"])
def test_computed_attributes_match_pyblp(design):
    """Sensitivity, :math:`\\Sigma\\Sigma'` standard errors, fixed effects, covariance blocks and the Jacobians of
    :math:`\\xi`, :math:`\\omega` and the micro moments, with PyBLP's shapes: Nevo (demand fixed effects, demographics),
    a nested logit with a supply side (a price coefficient and a :math:`\\gamma` in theta, one and two absorbed
    supply-side dimensions) and BLP's automobiles with log costs."""
    expected, actual = solved(design)
    for name in COMPUTED:
        assert_close(getattr(actual, name), getattr(expected, name), f"{design} {name}")
    N, P = actual.problem.N, actual.theta.size
    assert actual.xi_by_theta_jacobian.shape == actual.omega_by_theta_jacobian.shape == (N, P)
    assert actual.parameter_sensitivity.shape == actual.moments_jacobian.T.shape
    assert actual.sigma_squared_se.shape == actual.sigma.shape
    if design == "nevo":  # no supply side: an N x 0 omega, an all-NaN omega Jacobian
        assert actual.omega_fe.shape == (N, 0) and np.isnan(actual.omega_by_theta_jacobian).all()
        assert np.abs(actual.xi_fe).max() > 1  # the product fixed effects
    else:  # no demand-side fixed effects; supply-side ones in two designs
        assert not actual.xi_fe.any() and actual.omega_fe.shape == (N, 1)
        assert actual.omega_fe.any() == (design != "blp")


def test_sensitivity_and_sigma_squared_se_follow_their_definitions():
    """:math:`\\Lambda = -(\\bar G'W\\bar G)^{-1}\\bar G'W` and the delta method for :math:`\\Sigma\\Sigma'` (checked
    against a central finite difference of :math:`\\Sigma\\Sigma'` in the free elements of :math:`\\Sigma`)."""
    _, actual = solved("nevo")
    G, W = actual.moments_jacobian, actual.W
    np.testing.assert_allclose(actual.parameter_sensitivity, -np.linalg.solve(G.T @ W @ G, G.T @ W), rtol=1e-6)
    sigma = actual.sigma
    rows, columns = actual._space.sigma_index
    J = np.zeros((sigma.size, rows.size))
    for p, (r, c) in enumerate(zip(rows, columns, strict=True)):
        step = np.zeros_like(sigma)
        step[r, c] = 1e-6
        J[:, p] = (((sigma + step) @ (sigma + step).T - (sigma - step) @ (sigma - step).T) / 2e-6).ravel()
    V = actual.parameter_covariances[: rows.size, : rows.size]
    expected = np.sqrt(np.diag(J @ V @ J.T) / actual.problem.N).reshape(sigma.shape)
    np.testing.assert_allclose(actual.sigma_squared_se, expected, rtol=1e-6)


@pytest.mark.parametrize("costs_type", ["linear", "log"])
def test_jacobians_with_clipped_costs(costs_type):
    """Costs clipped by ``costs_bounds`` do not move with theta. PyBLP zeroes their whole rows of the omega
    Jacobian; demandkit keeps :math:`-X_3` in the columns of elements of :math:`\\gamma` in theta (the derivative of
    :math:`\\omega = \\tilde c - X_3\\gamma`, as its moments' Jacobian has it), and agrees elsewhere."""
    expected, actual = (
        solve_nested_supply(library, "C(firm_ids)", costs_type=costs_type, costs_bounds=(0.05, None))
        for library in (pyblp, dk)
    )
    clipped = expected.clipped_costs[:, 0]
    assert 0 < clipped.sum() < clipped.size
    np.testing.assert_array_equal(actual.clipped_costs[:, 0], clipped)
    gamma_column = actual.theta.size - 1  # gamma's elements come last in theta
    assert actual.theta_labels[gamma_column] == "mushy"
    assert_close(actual.xi_by_theta_jacobian, expected.xi_by_theta_jacobian, "xi_by_theta_jacobian")
    actual_omega, expected_omega = actual.omega_by_theta_jacobian, expected.omega_by_theta_jacobian
    assert_close(actual_omega[~clipped], expected_omega[~clipped], "unclipped rows of omega_by_theta_jacobian")
    others = np.arange(actual_omega.shape[1]) != gamma_column
    assert_close(actual_omega[np.ix_(clipped, others)], expected_omega[np.ix_(clipped, others)], "clipped rows")
    np.testing.assert_array_equal(actual_omega[clipped, gamma_column], -nevo_data()[0]["mushy"].to_numpy()[clipped])


@cache
def micro_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Twenty Nevo markets."""
    products, agents = nevo_data()
    keep = products["market_ids"].unique()[:20]
    products = products.loc[products["market_ids"].isin(keep)].drop(columns="nesting_ids").reset_index(drop=True)
    return products, agents.loc[agents["market_ids"].isin(keep)].reset_index(drop=True)


def resample(index: int) -> pd.DataFrame | None:
    """Four sets of agents with other nodes."""
    if index >= 4:
        return None
    agents = micro_data()[1].copy()
    columns = [c for c in agents.columns if c.startswith("nodes")]
    agents[columns] = np.random.default_rng(index).standard_normal((len(agents), len(columns)))
    return agents


def solve_micro(library: Any, **options: Any) -> Any:
    """Nevo on twenty markets with two micro moments of a survey (a mean and a conditional mean)."""
    products, agents = micro_data()
    problem = nevo_problem(library, products, agents)
    survey = library.MicroDataset("survey", 5000, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    inside = library.MicroPart(
        "E[1{j>0}]", survey, lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)])
    )
    income = library.MicroPart(
        "E[income 1{j>0}]", survey, lambda t, p, a: np.outer(a.demographics[:, 0], np.r_[0, np.ones(p.size)])
    )
    moments = [
        library.MicroMoment("E[inside]", 0.45, inside),
        library.MicroMoment(
            "E[income | inside]", 0.5, [income, inside], lambda v: v[0] / v[1], lambda v: [1 / v[1], -v[0] / v[1] ** 2]
        ),
    ]
    return quiet(
        problem.solve,
        NEVO_SIGMA,
        NEVO_PI,
        method="1s",
        optimization=library.Optimization("return"),
        check_optimality="gradient",
        micro_moments=moments,
        **options,
    )


@pytest.mark.parametrize("resampled", [False, True], ids=["micro", "micro-and-simulation"])
def test_micro_and_simulation_covariances_match_pyblp(resampled):
    """With micro moments (and agents resampled for the simulation error), the micro block :math:`S_M/N`, the
    simulation covariances added to :math:`S` and the micro moments' Jacobian equal PyBLP's."""
    options = {"resample_agent_data": resample} if resampled else {}
    expected, actual = (solve_micro(library, **options) for library in (pyblp, dk))
    for name in COMPUTED:
        assert_close(getattr(actual, name), getattr(expected, name), f"{name} (resampled={resampled})")
    assert actual.micro_covariances.shape == (2, 2) and actual.micro_by_theta_jacobian.shape == (2, 13)
    assert np.abs(actual.simulation_covariances).max() > 0 if resampled else not actual.simulation_covariances.any()


@pytest.mark.parametrize("method", ["l-bfgs-b", "bfgs", "return"])
def test_bounds_match_pyblp(method):
    """``(lower, upper)`` matrices as the optimizer used them: default bounds (:math:`\\rho`) with a bounded
    optimizer, given bounds, a bound that fixes an element, ``(0, 0)`` for elements fixed at zero, and only fixing
    bounds with an optimizer that takes none (two iterations: the bounds do not depend on them)."""
    optimization = None if method == "return" else {"maxiter": 2}  # 'return' takes bounds too, as in PyBLP
    sigma_bounds = (np.full((4, 4), -5.0), np.full((4, 4), 10.0))
    sigma_bounds[0][1, 1] = sigma_bounds[1][1, 1] = NEVO_SIGMA[1, 1]  # fixed by its bounds
    pi_bounds = (np.full((4, 4), -1000.0), np.full((4, 4), np.nan))
    results = [
        quiet(
            nevo_problem(library, *micro_data()).solve,
            NEVO_SIGMA,
            NEVO_PI,
            sigma_bounds=sigma_bounds,
            pi_bounds=pi_bounds,
            method="1s",
            optimization=library.Optimization(method, optimization),
            check_optimality="gradient",
        )
        for library in (pyblp, dk)
    ]
    results += [
        quiet(
            nested_supply_problem(library, "C(firm_ids)").solve,
            rho=[[0.5], [0.6]],
            beta=[np.nan, -10.0, np.nan],
            gamma=[np.nan, 0.01],
            beta_bounds=([np.nan, -20.0, np.nan], [np.nan, -1.0, np.nan]),
            method="1s",
            optimization=library.Optimization(method, optimization),
        )
        for library in (pyblp, dk)
    ]
    for expected, actual in (results[:2], results[2:]):
        for name in BOUNDS:
            pairs = zip(getattr(actual, name), getattr(expected, name), strict=True)
            for side, (actual_bound, expected_bound) in zip(("lower", "upper"), pairs, strict=True):
                np.testing.assert_array_equal(actual_bound, expected_bound, err_msg=f"{method} {name} {side}")
    # the Jacobians' columns are the estimated elements of theta (moments_jacobian's): under L-BFGS-B sigma[1, 1] is
    # held by its bounds and left out, as in PyBLP; an unbounded optimizer lets demandkit move (and estimate) it
    assert results[1].xi_by_theta_jacobian.shape[1] == (13 if method == "bfgs" else 12)
    assert results[0].xi_by_theta_jacobian.shape[1] == 12


def test_last_results_are_the_first_steps():
    """After two-step GMM, ``last_results`` are the first step's results: those of a one-step solve (but the
    Hessian, not computed for it), whose ``updated_W`` weights the second step, with no earlier results; PyBLP's
    agree to the precision of two optimizer runs."""
    products = nevo_data()[0]
    results = {}
    for library in (pyblp, dk):
        problem = quiet(library.Problem, library.Formulation("0 + prices", absorb="C(product_ids)"), products)
        results[library] = tuple(quiet(problem.solve, rho=[[0.1], [0.9]], method=method) for method in ("2s", "1s"))
    (expected, _), (two_step, one_step) = results[pyblp], results[dk]
    first = two_step.last_results
    assert first.step == 1 and two_step.step == 2 and first.last_results is None and one_step.last_results is None
    np.testing.assert_array_equal(two_step.W, first.updated_W)
    for name in ("theta", "beta", "beta_se", "rho_se", "W", "updated_W", "parameter_covariances", "xi"):
        np.testing.assert_array_equal(getattr(first, name), getattr(one_step, name), err_msg=name)
    assert np.isnan(first.hessian).all() and np.isfinite(one_step.hessian).all()
    for name in ("theta", "beta", "rho_se", "xi"):
        np.testing.assert_allclose(
            np.ravel(getattr(first, name)), np.ravel(getattr(expected.last_results, name)), rtol=1e-6, err_msg=name
        )


def test_new_attributes_in_to_dict_json_and_pickle(tmp_path):
    """The new attributes are among ``to_dict``'s defaults (not ``last_results``, as in PyBLP), survive JSON and a
    pickle round trip, and the Jacobians can be computed after loading."""
    _, actual = solved("supply_fe")
    default = actual.to_dict()
    for name in (*COMPUTED, *BOUNDS):
        assert name in default, name
    assert "last_results" not in default
    assert json.loads(actual.to_json())["sigma_squared_se"] == []
    path = tmp_path / "results.pkl"
    fresh = pickle.loads(pickle.dumps(solve_nested_supply(dk, "C(firm_ids)")))  # Jacobians not yet computed
    fresh.to_pickle(path)
    loaded = dk.ProblemResults.from_pickle(path)
    np.testing.assert_array_equal(loaded.omega_by_theta_jacobian, actual.omega_by_theta_jacobian)
    np.testing.assert_array_equal(loaded.gamma_bounds[0], actual.gamma_bounds[0])


# --------------------------------------------------------------------------------------------------- Problem

IDENTIFIERS = ("unique_market_ids", "unique_firm_ids", "unique_nesting_ids", "unique_product_ids", "unique_agent_ids")


def identifier_problems(library: Any) -> list[Any]:
    """Nevo with agent ids; a nested logit with a supply side absorbing two dimensions; a logit absorbing two
    dimensions without firms; a logit with two columns of product ids."""
    products, agents = nevo_data()
    F = library.Formulation
    plain = products[["market_ids", "city_ids", "shares", "prices", "demand_instruments0"]]
    return [
        nevo_problem(library, agents=agents.assign(agent_ids=np.arange(len(agents)) % 7)),
        nested_supply_problem(library, "C(firm_ids) + C(market_ids)"),
        quiet(
            library.Problem,
            F("0 + prices", absorb="C(product_ids) + C(city_ids)"),
            plain.assign(product_ids=products["product_ids"]),
        ),
        quiet(
            library.Problem,
            F("0 + prices"),
            plain.assign(product_ids0=products["product_ids"], product_ids1="firm" + products["firm_ids"].astype(str)),
        ),
    ]


def test_problem_identifiers_and_dimensions_match_pyblp():
    """Sorted distinct ids as 1-D object arrays (empty when absent), :math:`F`, :math:`M_C = 0`, :math:`E_D` and
    :math:`E_S`, as PyBLP's."""
    seen = []
    for expected, actual in zip(identifier_problems(pyblp), identifier_problems(dk), strict=True):
        for name in IDENTIFIERS:
            value, oracle = getattr(actual, name), getattr(expected, name)
            assert value.dtype == oracle.dtype == object and value.shape == oracle.shape, name
            np.testing.assert_array_equal(value, oracle, err_msg=name)
        for name in ("F", "MC", "ED", "ES"):
            assert getattr(actual, name) == getattr(expected, name), name
        seen.append((actual.F, actual.ED, actual.ES, actual.unique_agent_ids.size, actual.unique_nesting_ids.size))
    assert seen == [(5, 1, 0, 7, 0), (5, 0, 2, 0, 2), (0, 2, 0, 0, 0), (0, 0, 0, 0, 0)]
