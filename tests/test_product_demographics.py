"""Product-specific demographics :math:`d_{ijt}` (PyBLP's ``distance0, distance1, ...`` agent columns): on a small
simulated data set (20 markets of 3 to 7 products, 50 agents, a regular ``income`` and a product-specific
``distance`` that shifts the constant's and the price's coefficients), the objective, its gradient, delta, the SEs,
estimates after an optimization, the post-estimation methods, ``problem.agents``, micro moments, a supply side,
lognormal coefficients with interactions, integration-built agents and ``Simulation`` equal PyBLP's; the gradient
equals finite differences; bucketed markets give the same; bad inputs are named."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.blp.buckets import build_buckets
from demandkit.exceptions import InvalidDataError, SpecificationError

pyblp = pytest.importorskip("pyblp")
pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

SIGMA = np.diag([0.5, 0.2, 0.3])
PI = np.array([[0.0, -1.0], [0.2, 0.1], [0.0, 0.0]])  # columns: income (regular), distance (product-specific)
BETA = np.array([1.0, -1.5, 1.0])
T, I = 20, 50


def make_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products (shares from the model at SIGMA, PI, BETA) and agents with ``distance0..distance{J_max}``; in the
    even markets the columns past the market's products are NaN (ignored)."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 8, size=T)
    market = np.repeat(np.arange(T), sizes)
    slot = np.concatenate([np.arange(J) for J in sizes])
    N, J = len(market), int(sizes.max())
    z = rng.normal(size=(N, 8))
    x = rng.uniform(0, 2, N)
    xi = 0.3 * rng.normal(size=N)
    prices = 2 + 0.5 * z[:, 0] + 0.3 * z[:, 1] + 0.2 * x + 0.3 * xi
    products = pd.DataFrame({"market_ids": market, "firm_ids": slot % 3, "x": x, "prices": prices})
    instruments = np.column_stack([z, z[:, 0] * x, z[:, 1] ** 2])
    products = products.assign(**{f"demand_instruments{k}": instruments[:, k] for k in range(instruments.shape[1])})
    nodes, income = rng.normal(size=(T, I, 3)), rng.normal(size=(T, I))
    distance = rng.uniform(0, 2, size=(T, I, J + 1))  # one column more than needed: ignored
    agents = pd.DataFrame({"market_ids": np.repeat(np.arange(T), I), "weights": 1.0 / I, "income": income.ravel()})
    agents = agents.assign(**{f"nodes{k}": nodes[..., k].ravel() for k in range(3)})
    ignored = (np.arange(J + 1)[None, :] >= sizes[:, None]) & (np.arange(T) % 2 == 0)[:, None]  # [T, J + 1]
    given = np.where(ignored[:, None, :], np.nan, distance)
    agents = agents.assign(**{f"distance{j}": given[..., j].ravel() for j in range(J + 1)})
    # shares: mu_ijt = sum_k X2_jk (Sigma nu_i + Pi d_ij)_k on padded [T, J, I] arrays
    X = np.zeros((T, J, 3))
    X[market, slot] = np.column_stack([np.ones(N), prices, x])
    delta = np.where(np.arange(J)[None, :] < sizes[:, None], 0.0, -np.inf)
    delta[market, slot] += X[market, slot] @ BETA + xi
    d = np.stack([np.broadcast_to(income[:, None, :], (T, J, I)), distance[..., :J].transpose(0, 2, 1)], axis=-1)
    coefficients = np.einsum("kl,til->tik", SIGMA, nodes)[:, None] + np.einsum("kd,tjid->tjik", PI, d)
    exponentials = np.exp(delta[..., None] + np.einsum("tjk,tjik->tji", X, coefficients))
    products["shares"] = (exponentials / (1 + exponentials.sum(1, keepdims=True))).mean(-1)[market, slot]
    return products, agents


DATA = make_data()


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def problem(library: Any, demographics: str = "0 + income + distance", supply: bool = False, **kwargs: Any) -> Any:
    products, agents = DATA
    formulations = [library.Formulation("1 + prices + x"), library.Formulation("1 + prices + x")]
    if supply:
        products = products.assign(supply_instruments0=products["demand_instruments5"])
        formulations.append(library.Formulation("1 + x"))
    return quiet(library.Problem, formulations, products, library.Formulation(demographics), agents, **kwargs)


def evaluate(library: Any, sigma: Any = SIGMA, pi: Any = PI, build: dict | None = None, **options: Any) -> Any:
    """Results at the given parameters (one GMM step, no optimization)."""
    built = problem(library, **(build or {}))
    return quiet(built.solve, sigma, pi, method="1s", optimization=library.Optimization("return"), **options)


@pytest.fixture(scope="module")
def both() -> tuple[Any, Any]:
    return evaluate(pyblp), evaluate(dk)


def close(actual: Any, expected: Any, name: str, rtol: float = 1e-8) -> None:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.nanmax(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=name)


def test_estimation_quantities_match_pyblp(both):
    expected, actual = both
    close(actual.objective, np.squeeze(expected.objective), "objective")
    for name in ("gradient", "delta", "beta", "xi", "sigma_se", "pi_se", "beta_se"):
        close(getattr(actual, name), getattr(expected, name), name)


def test_post_estimation_matches_pyblp(both):
    expected, actual = both
    for method in ("compute_shares", "compute_elasticities", "compute_consumer_surpluses", "compute_markups"):
        close(getattr(actual, method)(), getattr(expected, method)(), method)
    close(actual.compute_elasticities("x"), expected.compute_elasticities("x"), "elasticities in x")
    close(actual.compute_demand_jacobians(), expected.compute_demand_jacobians(), "demand Jacobians")
    close(actual.compute_diversion_ratios(None), expected.compute_diversion_ratios(None), "diversion in delta")


def test_diversion_ratios_follow_pyblps_formula(both):
    """:math:`D_{jk} = -(\\partial s_k/\\partial p_j)/(\\partial s_j/\\partial p_j)` as PyBLP documents it. With
    price coefficients that vary by product the Jacobian is not symmetric, and PyBLP 1.3's code, which divides row
    :math:`j` of the Jacobian (:math:`\\partial s_j/\\partial p_k`), gives other numbers (docs/migration)."""
    expected, actual = both
    for t in (0, 7):
        jacobian = expected.compute_demand_jacobians(market_id=t)  # [j, k]: ds_j / dp_k
        own = np.diag(jacobian).copy()
        documented = -jacobian.T / own[:, None]
        np.fill_diagonal(documented, jacobian.sum(axis=0) / own)  # -ds_0/dp_j / ds_j/dp_j
        close(actual.compute_diversion_ratios(market_id=t), documented, f"diversion ratios in market {t}")
        assert not np.allclose(expected.compute_diversion_ratios(market_id=t), documented)


def test_problem_agents_are_pyblps_records():
    """``demographics`` is ``I x D x J``: regular columns repeated over products, the ignored NaN kept."""
    expected, actual = problem(pyblp).agents, problem(dk).agents
    assert actual.dtype.names == expected.dtype.names
    assert actual.demographics.shape == expected.demographics.shape == (T * I, 2, 7)
    assert np.isnan(actual.demographics).any()
    for name in ("weights", "nodes", "demographics"):
        close(actual[name], expected[name], name, rtol=1e-14)


def test_estimates_after_optimization_match_pyblp():
    sigma, pi = np.diag([0.5, 0.2, 0.0]), np.array([[0.0, -1.0], [0.2, 0.0], [0.0, 0.0]])
    results = {}
    for library in (pyblp, dk):
        optimization = library.Optimization("l-bfgs-b", {"gtol": 1e-12})
        results[library] = quiet(problem(library).solve, sigma, pi, method="1s", optimization=optimization)
    expected, actual = results[pyblp], results[dk]
    for name in ("sigma", "pi", "beta", "sigma_se", "pi_se", "beta_se"):
        close(getattr(actual, name), getattr(expected, name), name, rtol=1e-7)
    close(actual.objective, np.squeeze(expected.objective), "objective")


def test_gradient_matches_finite_differences(both):
    _, actual = both
    built, W = problem(dk), actual.W
    steps = [(SIGMA, (0, 0), 0), (PI, (0, 1), 3), (PI, (1, 1), 5)]  # theta: sigma's diagonal, then pi's nonzeros

    def objective(matrix: np.ndarray, where: tuple[int, int], value: float) -> float:
        changed = matrix.copy()
        changed[where] = value
        sigma, pi = (changed, PI) if matrix is SIGMA else (SIGMA, changed)
        options = {"W": W, "method": "1s", "optimization": dk.Optimization("return")}
        return float(np.squeeze(quiet(built.solve, sigma, pi, **options).objective))

    h = 1e-5
    for matrix, where, index in steps:
        value = matrix[where]
        difference = (objective(matrix, where, value + h) - objective(matrix, where, value - h)) / (2 * h)
        np.testing.assert_allclose(actual.gradient[index, 0], difference, rtol=1e-5, err_msg=str(where))


def test_interactions_and_lognormal_coefficients_match_pyblp():
    """``income:distance`` and ``I(distance**2)`` are product-specific too; a lognormal coefficient on ``x`` moves
    with distance."""
    pi = np.array([[0.0, -1.0, 0.1, 0.05], [0.2, 0.1, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0]])
    build = {"demographics": "0 + income + distance + income:distance + I(distance**2)", "rc_types": None}
    results = {}
    for library in (pyblp, dk):
        build["rc_types"] = ["linear", "linear", "log"]
        results[library] = evaluate(library, pi=pi, build=build)
    expected, actual = results[pyblp], results[dk]
    close(actual.objective, np.squeeze(expected.objective), "objective")
    for name in ("gradient", "delta", "pi_se"):
        close(getattr(actual, name), getattr(expected, name), name)
    close(actual.compute_elasticities(), expected.compute_elasticities(), "elasticities")


def test_supply_side_matches_pyblp():
    """Markups take the price derivatives of utility, whose coefficients vary with distance."""
    results = {}
    for library in (pyblp, dk):
        results[library] = evaluate(library, build={"supply": True}, beta=[None, -1.5, None])
    expected, actual = results[pyblp], results[dk]
    close(actual.objective, np.squeeze(expected.objective), "objective")
    for name in ("gradient", "gamma", "omega", "sigma_se"):
        close(getattr(actual, name), getattr(expected, name), name)


def test_integration_built_agents_match_pyblp():
    """An integration's agents take the first rows of agent_data's demographics in each market."""
    results = {}
    for library in (pyblp, dk):
        integration = library.Integration("monte_carlo", 30, {"seed": 0})
        results[library] = evaluate(library, build={"integration": integration})
    expected, actual = results[pyblp], results[dk]
    close(actual.objective, np.squeeze(expected.objective), "objective")
    close(actual.gradient, expected.gradient, "gradient")


def test_micro_moment_on_the_chosen_products_distance_matches_pyblp():
    """Micro callbacks get PyBLP's ``agents.demographics`` of the market, ``I_t x D x J_t``."""
    results = {}
    for library in (pyblp, dk):
        survey = library.MicroDataset("survey", 2000, lambda t, p, a: np.ones((a.size, p.size)))
        part = library.MicroPart("E[distance]", survey, lambda t, p, a: a.demographics[:, 1, :])
        moment = library.MicroMoment("E[distance | inside]", 0.9, part)
        results[library] = evaluate(library, micro_moments=[moment])
    expected, actual = results[pyblp], results[dk]
    close(actual.objective, np.squeeze(expected.objective), "objective")
    for name in ("gradient", "micro_values", "pi_se"):
        close(getattr(actual, name), getattr(expected, name), name)


def test_buckets_give_the_same(both):
    _, whole = both
    assert len(build_buckets(problem(dk, buckets=3)).buckets) > 1
    bucketed = evaluate(dk, build={"buckets": 3})
    for name in ("objective", "gradient", "delta", "pi_se"):
        close(getattr(bucketed, name), getattr(whole, name), name, rtol=1e-10)


def test_simulation_matches_pyblp():
    """``Simulation`` reads ``distance0..`` (no draws for them) and solves the same equilibrium as PyBLP's."""
    products, agents = DATA
    simulated = {}
    for library in (pyblp, dk):
        formulations = [library.Formulation(f) for f in ("1 + prices + x", "1 + prices + x", "1 + x")]
        simulation = quiet(
            library.Simulation,
            formulations,
            products[["market_ids", "firm_ids", "x"]],
            beta=BETA,
            sigma=SIGMA,
            pi=PI,
            gamma=[1.0, 0.5],
            agent_formulation=library.Formulation("0 + income + distance"),
            agent_data=agents,
            xi_variance=0.2,
            omega_variance=0.2,
            seed=3,
        )
        simulated[library] = quiet(simulation.replace_endogenous)
    expected, actual = simulated[pyblp], simulated[dk]
    for column in ("prices", "shares"):
        close(actual.product_data[column], expected.product_data[column].ravel(), column)
    assert actual.to_problem().agents.demographics.shape == (T * I, 2, 7)


def test_bad_inputs_name_the_column():
    products, agents = DATA
    formulations = (dk.Formulation("1 + prices + x"), dk.Formulation("1 + prices + x"))
    demographics = dk.Formulation("0 + income + distance")
    with pytest.raises(InvalidDataError, match=r"'distance'.*distance0\.\.distance6 are needed"):
        dk.Problem(
            formulations, products, demographics, agents[[c for c in agents if c not in ("distance6", "distance7")]]
        )
    broken = agents.copy()
    broken.loc[3, "distance1"] = np.inf  # every market has at least three products: distance1 is used
    with pytest.raises(InvalidDataError, match="'distance1'.*first at row 3"):
        dk.Problem(formulations, products, demographics, broken)
    with pytest.raises(InvalidDataError, match="'distance2'"):
        dk.Problem(formulations, products, demographics, agents.assign(distance2="far"))
    with pytest.raises(InvalidDataError, match="'income'"):
        dk.Problem(formulations, products, demographics, agents.drop(columns="income"))
    with pytest.raises(SpecificationError, match="product-specific"):
        dk.frac.estimate(quiet(dk.Problem, formulations, products, demographics, agents))
