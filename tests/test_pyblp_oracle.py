"""Oracle tests: demandkit against PyBLP 1.3.0 on small synthetic problems.

Every problem is simulated here with plain NumPy from a known (random-coefficients, nested) logit model, with
prices correlated with the structural error and instruments that shift prices. The same data, starting values
and options go to both libraries and the estimates, standard errors, objective, structural errors and
post-estimation outputs are compared. Rows of the product and agent tables are shuffled and markets have
different numbers of products and agents, so row order, market order and padding are exercised too.

Tolerances: estimates from two optimizer runs agree to about ``1e-6`` relative; quantities evaluated at identical
parameters (``Optimization('return')``) agree to ``1e-8``.
A comparison uses ``rtol`` relative to each element with an absolute floor of ``rtol`` times the largest magnitude
in the expected array, so values near zero are judged on the scale of their array.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp

ESTIMATE_RTOL = 1e-6
EXACT_RTOL = 1e-8

# The same L-BFGS-B options go to both libraries. PyBLP's default for Problem.solve is {'ftol': 0, 'gtol': 1e-8}, but on
# problems this small a gradient of 1e-8 is below what rounding in the objective (about 1e-13 relative) lets a line
# search resolve: both optimizers then spend dozens of evaluations in failing line searches and stop with
# converged=False. With gtol=1e-6 both stop cleanly after the same iterations, and the estimates agree to about 1e-9.
OPTIMIZATION_OPTIONS = {"ftol": 0, "gtol": 1e-6}


@pytest.fixture(scope="module", autouse=True)
def quiet_and_single_threaded():
    """Silence PyBLP's progress output, and run torch on one thread: demandkit's tensors here are tiny, so intra-op
    threads only add synchronization (and make it many times slower when the machine is busy). Both settings are
    restored afterwards."""
    verbose, threads = pyblp.options.verbose, torch.get_num_threads()
    pyblp.options.verbose = False
    torch.set_num_threads(1)
    yield
    pyblp.options.verbose = verbose
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ helpers


def assert_close(actual: Any, expected: Any, rtol: float, name: str) -> None:
    """``|a - e| <= rtol * |e| + rtol * max|e|`` elementwise (NaN must match NaN)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != PyBLP's {expected.shape}"
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=f"{name} differs from PyBLP")


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call PyBLP with its output and warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# --------------------------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class DGP:
    """A data-generating process: the true parameters of the simulated model."""

    seed: int
    X2: tuple[str, ...] = ()  # product columns with random coefficients ('1' is the constant)
    sigma: tuple[tuple[float, ...], ...] = ()  # K2 x K2 (Cholesky root)
    pi: tuple[tuple[float, ...], ...] = ()  # K2 x D on (income, age)
    nests: int = 0
    rho: float = 0.0
    product_fe: bool = False
    market_fe: bool = False
    markets: int = 20


DGPS = {
    "logit": DGP(seed=1),
    "nested": DGP(seed=2, nests=2, rho=0.4),
    "rc": DGP(seed=3, X2=("prices", "x"), sigma=((0.5, 0.0), (0.0, 0.8))),
    "demographics": DGP(seed=4, X2=("prices", "x"), sigma=((0.5, 0.0), (0.3, 0.7)), pi=((-0.4, 0.0), (0.0, 0.4))),
    "fe": DGP(seed=5, X2=("prices", "x"), sigma=((0.5, 0.0), (0.0, 0.8)), product_fe=True, market_fe=True),
    "rcnl": DGP(seed=6, X2=("prices", "x"), sigma=((0.4, 0.0), (0.0, 0.8)), nests=2, rho=0.4),
}


def numbered(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Columns whose names start with ``prefix``."""
    return [c for c in frame.columns if c.startswith(prefix)]


_SIMULATED: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}


def simulate(name: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Product and agent data for one DGP (rows shuffled; cached, treat as read-only)."""
    if name in _SIMULATED:
        return _SIMULATED[name]
    dgp = DGPS[name]
    rng = np.random.default_rng(dgp.seed)
    T = dgp.markets
    sizes = rng.integers(4, 9, T)
    market_ids = np.repeat(np.arange(T), sizes)
    product_ids = np.concatenate([np.arange(J) for J in sizes])
    N = market_ids.size
    x = rng.uniform(0, 2, N)
    w = rng.uniform(0, 1, N)
    xi = rng.normal(0, 0.3, N)
    prices = 1 + 0.8 * w + 0.3 * x + 0.5 * xi + 0.2 * rng.uniform(0, 1, N)
    products = pd.DataFrame({"market_ids": market_ids, "product_ids": product_ids, "prices": prices, "x": x, "w": w})
    products["clustering_ids"] = market_ids  # more clusters than moments, so S is nonsingular
    # differentiation instruments (sums of squared distances to rivals) stay full rank after absorbing market effects
    differences = [
        np.array([np.sum((values[i] - values[market_ids == market_ids[i]]) ** 2) for i in range(N)])
        for values in (x, w)
    ]
    instruments = [w, w**2, w**3, x**2, x**3, x * w, *differences]
    if dgp.nests:
        products["nesting_ids"] = product_ids % dgp.nests
        keys = [products["market_ids"], products["nesting_ids"]]
        instruments.append(products.groupby(keys)["x"].transform("sum").to_numpy() - x)
        instruments.append(products.groupby(keys)["x"].transform("size").to_numpy() - 1.0)
    for k, column in enumerate(instruments):
        products[f"demand_instruments{k}"] = np.asarray(column, dtype=np.float64)

    delta = -1.0 - 2.0 * prices + 1.0 * x + xi
    if dgp.product_fe:
        delta += rng.normal(0, 0.5, sizes.max())[product_ids]
    if dgp.market_fe:
        delta += rng.normal(0, 0.5, T)[market_ids]

    agents = None
    K2 = len(dgp.X2)
    if K2:
        agent_sizes = 30 + 5 * (np.arange(T) % 3)
        agent_market_ids = np.repeat(np.arange(T), agent_sizes)
        agents = pd.DataFrame({"market_ids": agent_market_ids, "weights": 1.0 / agent_sizes[agent_market_ids]})
        nodes = rng.normal(size=(agent_market_ids.size, K2))
        for k in range(K2):
            agents[f"nodes{k}"] = nodes[:, k]
        # demographics whose distribution moves across markets (which identifies pi)
        income_means, age_means = rng.uniform(-1, 1, T), rng.uniform(-1, 1, T)
        agents["income"] = income_means[agent_market_ids] + rng.normal(0, 0.5, agent_market_ids.size)
        agents["age"] = age_means[agent_market_ids] + rng.normal(0, 0.5, agent_market_ids.size)
        if dgp.pi:
            instruments = [income_means[market_ids] * x, income_means[market_ids] * w, age_means[market_ids] * x]
            for k, column in enumerate(instruments, start=len(numbered(products, "demand_instruments"))):
                products[f"demand_instruments{k}"] = column

    shares = np.empty(N)
    for t in range(T):
        rows = market_ids == t
        utilities = delta[rows][:, None]
        if K2:
            where = agents["market_ids"].to_numpy() == t
            coefficients = agents.loc[where, [f"nodes{k}" for k in range(K2)]].to_numpy() @ np.array(dgp.sigma).T
            if dgp.pi:
                coefficients += agents.loc[where, ["income", "age"]].to_numpy() @ np.array(dgp.pi).T
            X2 = np.column_stack([np.ones(rows.sum()) if c == "1" else products.loc[rows, c] for c in dgp.X2])
            utilities = utilities + X2 @ coefficients.T
            weights = agents.loc[where, "weights"].to_numpy()
        else:
            weights = np.ones(1)
        if dgp.nests:
            nests = products.loc[rows, "nesting_ids"].to_numpy()
            scaled = np.exp(utilities / (1 - dgp.rho))
            inclusive = {h: scaled[nests == h].sum(axis=0) for h in np.unique(nests)}
            denominator = 1 + sum(value ** (1 - dgp.rho) for value in inclusive.values())
            probabilities = np.empty_like(utilities)
            for h, value in inclusive.items():
                probabilities[nests == h] = scaled[nests == h] / value * value ** (1 - dgp.rho) / denominator
        else:
            exponentiated = np.exp(utilities)
            probabilities = exponentiated / (1 + exponentiated.sum(axis=0))
        shares[rows] = probabilities @ weights
    products["shares"] = shares

    products = products.iloc[rng.permutation(N)].reset_index(drop=True)
    if agents is not None:
        agents = agents.iloc[rng.permutation(len(agents))].reset_index(drop=True)
    _SIMULATED[name] = (products, agents)
    return products, agents


# ------------------------------------------------------------------------------------------ configurations


@dataclass(frozen=True)
class Config:
    """One estimation problem and how it is solved, shared by both libraries."""

    data: str
    X1: str = "1 + prices + x"
    X2: str | None = None
    absorb: str | None = None
    agent_formulation: str | None = None
    sigma: Any = None
    pi: Any = None
    rho: Any = None
    method: str = "2s"
    W_type: str = "robust"
    se_type: str = "robust"
    optimization: str = "l-bfgs-b"
    options: dict = field(default_factory=lambda: dict(OPTIMIZATION_OPTIONS), hash=False, compare=False)
    integration: tuple | None = None  # ('product', 3): given to both problems
    agents_from: tuple | None = None  # ('halton', 50, seed): demandkit's draws given as agent_data to both


DEMOGRAPHICS_PI = [[-0.4, 0.0], [0.0, 0.4]]  # zeros are fixed
CONFIGS = {
    "logit_1s": Config("logit", method="1s"),
    "logit_2s": Config("logit"),
    "nested": Config("nested", rho=0.5),
    "nested_per_nest": Config("nested", rho=[[0.5], [0.3]]),
    "rc_1s": Config("rc", X2="0 + prices + x", sigma=np.diag([0.9, 0.9]), method="1s"),
    "rc_2s": Config("rc", X2="0 + prices + x", sigma=np.diag([0.9, 0.9])),
    "demographics": Config(
        "demographics",
        X2="0 + prices + x",
        agent_formulation="0 + income + age",
        sigma=np.diag([0.8, 0.8]),
        pi=DEMOGRAPHICS_PI,
        method="1s",
    ),
    "demographics_offdiagonal": Config(
        "demographics",
        X2="0 + prices + x",
        agent_formulation="0 + income + age",
        sigma=[[0.7, 0.0], [0.2, 0.7]],
        pi=DEMOGRAPHICS_PI,
        method="1s",
    ),
    "fe_product": Config(
        "fe", X1="0 + prices + x", X2="0 + prices + x", absorb="C(product_ids)", sigma=np.diag([0.3, 0.7]), method="1s"
    ),
    "fe_market": Config(
        "fe", X1="0 + prices + x", X2="0 + prices + x", absorb="C(market_ids)", sigma=np.diag([0.3, 0.7]), method="1s"
    ),
    "fe_two_way": Config(
        "fe",
        X1="0 + prices + x",
        X2="0 + prices + x",
        absorb="C(market_ids) + C(product_ids)",
        sigma=np.diag([0.3, 0.7]),
        method="1s",
    ),
    "rcnl": Config("rcnl", X2="0 + prices + x", sigma=np.diag([0.6, 0.6]), rho=0.5, method="1s"),
}


def agent_draws(rule: str, size: int, seed: int, markets: np.ndarray, K2: int) -> pd.DataFrame:
    """Agent data built by demandkit's ``Integration.build_many`` (given to both libraries)."""
    ids, nodes, weights = dk.Integration(rule, size, {"seed": seed}).build_many(K2, markets)
    agents = pd.DataFrame({"market_ids": ids, "weights": weights})
    for k in range(K2):
        agents[f"nodes{k}"] = nodes[:, k]
    return agents


def problem_inputs(config: Config) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    products, agents = simulate(config.data)
    if config.X2 is None:
        return products, None
    if config.integration is not None:
        return products, agents if config.agent_formulation else None
    if config.agents_from is not None:
        rule, size, seed = config.agents_from
        K2 = len(DGPS[config.data].X2)
        return products, agent_draws(rule, size, seed, np.unique(products["market_ids"]), K2)
    return products, agents


def build_problems(config: Config) -> tuple[Any, Any]:
    products, agents = problem_inputs(config)
    formulations = {
        library: [library.Formulation(config.X1, absorb=config.absorb)]
        + ([library.Formulation(config.X2)] if config.X2 else [])
        for library in (pyblp, dk)
    }
    kwargs = {
        library: {
            "agent_formulation": library.Formulation(config.agent_formulation) if config.agent_formulation else None,
            "agent_data": agents,
            "integration": library.Integration(*config.integration) if config.integration else None,
        }
        for library in (pyblp, dk)
    }
    pyblp_problem = quiet(pyblp.Problem, formulations[pyblp], products, **kwargs[pyblp])
    dk_problem = dk.Problem(formulations[dk], products, **kwargs[dk])
    return pyblp_problem, dk_problem


def solve_demandkit(problem: Any, **arguments: Any) -> Any:
    """``problem.solve`` letting through only the optimizer's report that it stopped short of ``gtol``.

    With ``ftol=0`` and ``gtol=1e-8`` L-BFGS-B often ends in a failed line search once the objective is flat to
    rounding (PyBLP then reports ``converged=False`` too); :func:`compare_estimates` checks the projected gradient
    instead. Any other warning from demandkit is raised again (and fails the test under ``filterwarnings=error``).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = problem.solve(**arguments)
    for warning in caught:
        if issubclass(warning.category, (DeprecationWarning, FutureWarning)):
            continue
        if issubclass(warning.category, dk.exceptions.ConvergenceWarning) and "optimizer stopped" in str(
            warning.message
        ):
            continue
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return results


def solve_both(config: Config, optimization: str | None = None, **overrides: Any) -> tuple[Any, Any]:
    """Solve ``config`` in both libraries with identical arguments; returns ``(pyblp_results, dk_results)``."""
    method = optimization or config.optimization
    options = {} if method == "return" else config.options
    arguments = {
        "sigma": config.sigma,
        "pi": config.pi,
        "rho": config.rho,
        "method": config.method,
        "W_type": config.W_type,
        "se_type": config.se_type,
    }
    arguments = {key: value for key, value in arguments.items() if value is not None}
    arguments.update(overrides)
    pyblp_problem, dk_problem = build_problems(config)
    pyblp_results = quiet(
        pyblp_problem.solve,
        optimization=pyblp.Optimization(method, options or None),
        check_optimality="gradient",
        **arguments,
    )
    dk_results = solve_demandkit(dk_problem, optimization=dk.Optimization(method, options or None), **arguments)
    return pyblp_results, dk_results


_SOLVED: dict[Any, tuple[Any, Any]] = {}


def solved(name: str, optimization: str | None = None) -> tuple[Any, Any]:
    """Results of a named configuration, solved once per session."""
    key = (name, optimization)
    if key not in _SOLVED:
        _SOLVED[key] = solve_both(CONFIGS[name], optimization)
    return _SOLVED[key]


def compare_estimates(
    pyblp_results: Any, dk_results: Any, config: Config, rtol: float = ESTIMATE_RTOL, optimized: bool = True
) -> None:
    """Estimates, standard errors, objective, structural errors and weighting matrices."""
    assert np.all(dk_results.fp_converged)
    if optimized:
        # both stopped at a stationary point (the gradient starts at O(10))
        assert np.max(np.abs(dk_results.projected_gradient), initial=0) < 1e-5
        assert np.max(np.abs(pyblp_results.projected_gradient), initial=0) < 1e-5
    assert_close(dk_results.beta, pyblp_results.beta, rtol, "beta")
    assert_close(dk_results.beta_se, pyblp_results.beta_se, rtol, "beta_se")
    # full matrices: elements fixed at zero have NaN standard errors in both
    for name in ("sigma", "sigma_se", "pi", "pi_se", "rho", "rho_se"):
        assert_close(getattr(dk_results, name), getattr(pyblp_results, name), rtol, name)
    theta, expected_theta = (np.asarray(results.theta).reshape(-1) for results in (dk_results, pyblp_results))
    assert_close(theta, expected_theta, rtol, "theta")
    assert_close(dk_results.objective, float(np.squeeze(pyblp_results.objective)), rtol, "objective")
    assert_close(dk_results.xi, pyblp_results.xi, rtol, "xi")
    assert_close(dk_results.W, pyblp_results.W, rtol, "W")
    assert_close(dk_results.updated_W, pyblp_results.updated_W, rtol, "updated_W")
    if config.absorb is None:
        assert_close(dk_results.delta, pyblp_results.delta, rtol, "delta")


# ------------------------------------------------------------------------------- 1-2: logit and nested logit


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["logit_1s", "logit_2s"])
def test_logit(name):
    pyblp_results, dk_results = solved(name)
    compare_estimates(pyblp_results, dk_results, CONFIGS[name])


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["nested", "nested_per_nest"])
def test_nested_logit(name):
    pyblp_results, dk_results = solved(name)
    compare_estimates(pyblp_results, dk_results, CONFIGS[name])


# ----------------------------------------------------------------------- 3-4: random coefficients (+ demographics)


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["rc_1s", "rc_2s"])
def test_random_coefficients(name):
    pyblp_results, dk_results = solved(name)
    compare_estimates(pyblp_results, dk_results, CONFIGS[name])


@pytest.mark.pyblp
def test_random_coefficients_unbounded_bfgs():
    """BFGS ignores bounds, so sigma may take either sign; both libraries follow the same path."""
    config = replace(CONFIGS["rc_1s"], optimization="bfgs", options={"gtol": 1e-6})
    compare_estimates(*solve_both(config), config)


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["demographics", "demographics_offdiagonal"])
def test_demographics(name):
    pyblp_results, dk_results = solved(name)
    compare_estimates(pyblp_results, dk_results, CONFIGS[name])
    assert dk_results.pi[0, 1] == dk_results.pi[1, 0] == 0  # fixed at zero


# ---------------------------------------------------------------------------------------- 5: fixed effects


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["fe_product", "fe_market", "fe_two_way"])
def test_absorbed_fixed_effects(name):
    pyblp_results, dk_results = solved(name)
    compare_estimates(pyblp_results, dk_results, CONFIGS[name])


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["fe_product", "fe_market"])
def test_absorbed_fixed_effects_delta(name):
    """``results.delta`` is the mean utility :math:`\\delta(\\hat\\theta)` that reproduces the observed shares, as
    in PyBLP (``xi`` is the one that is absorbed)."""
    pyblp_results, dk_results = solved(name)
    assert_close(dk_results.delta, pyblp_results.delta, ESTIMATE_RTOL, "delta with absorbed fixed effects")


# ------------------------------------------------------------------------------------ 6: covariance types

COVARIANCE_TYPES = ["robust", "clustered", "unadjusted"]


@pytest.mark.pyblp
@pytest.mark.parametrize("W_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("se_type", COVARIANCE_TYPES)
def test_covariance_types_logit(W_type, se_type):
    config = replace(CONFIGS["logit_2s"], W_type=W_type, se_type=se_type)
    compare_estimates(*solve_both(config), config, rtol=EXACT_RTOL)


@pytest.mark.pyblp
@pytest.mark.parametrize("covariance_type", ["clustered", "unadjusted"])
def test_covariance_types_random_coefficients(covariance_type):
    config = replace(CONFIGS["rc_2s"], W_type=covariance_type, se_type=covariance_type)
    compare_estimates(*solve_both(config), config)


@pytest.mark.pyblp
@pytest.mark.parametrize("se_type", COVARIANCE_TYPES)
def test_covariance_types_one_step_random_coefficients(se_type):
    config = replace(CONFIGS["rc_1s"], se_type=se_type)
    compare_estimates(*solve_both(config, "return"), config, rtol=EXACT_RTOL, optimized=False)


# ------------------------------------------------------------------------------------------------- 7: RCNL


@pytest.mark.pyblp
def test_random_coefficients_nested_logit():
    pyblp_results, dk_results = solved("rcnl")
    compare_estimates(pyblp_results, dk_results, CONFIGS["rcnl"])


# ------------------------------------------------------------------------------------ 8: integration rules


@pytest.mark.pyblp
@pytest.mark.parametrize("rule", ["product", "grid"])
def test_quadrature_integration(rule):
    """The same ``Integration(rule, 3)`` given to both problems (sparse-grid weights include negative ones)."""
    config = replace(CONFIGS["rc_1s"], integration=(rule, 3))
    compare_estimates(*solve_both(config), config)


@pytest.mark.pyblp
@pytest.mark.parametrize("rule", ["monte_carlo", "halton", "sobol", "lhs", "mlhs"])
def test_simulated_integration(rule):
    config = replace(CONFIGS["rc_1s"], agents_from=(rule, 40, 7))
    compare_estimates(*solve_both(config), config)


# -------------------------------------------------------------------------- 9: evaluation at fixed parameters

RETURN_CASES = [
    "logit_2s",
    "nested",
    "nested_per_nest",
    "rc_1s",
    "rc_2s",
    "demographics_offdiagonal",
    "fe_product",
    "fe_two_way",
    "rcnl",
]


@pytest.mark.pyblp
@pytest.mark.parametrize("name", RETURN_CASES)
def test_evaluation_at_fixed_parameters(name):
    pyblp_results, dk_results = solved(name, "return")
    config = CONFIGS[name]
    assert_close(dk_results.objective, float(np.squeeze(pyblp_results.objective)), EXACT_RTOL, "objective")
    assert_close(dk_results.gradient, pyblp_results.gradient, EXACT_RTOL, "gradient")
    assert_close(dk_results.beta, pyblp_results.beta, EXACT_RTOL, "beta")
    assert_close(dk_results.xi, pyblp_results.xi, EXACT_RTOL, "xi")
    if config.absorb is None:
        assert_close(dk_results.delta, pyblp_results.delta, EXACT_RTOL, "delta")
    compare_estimates(pyblp_results, dk_results, config, rtol=EXACT_RTOL, optimized=False)


# ------------------------------------------------------------------------------------- 10: post-estimation

POST_ESTIMATION_CASES = ["logit_2s", "nested", "rc_2s", "demographics_offdiagonal", "fe_product", "rcnl"]


def compare_post_estimation(pyblp_results: Any, dk_results: Any, rtol: float) -> None:
    elasticities = dk_results.compute_elasticities()
    expected_elasticities = quiet(pyblp_results.compute_elasticities)
    assert_close(elasticities, expected_elasticities, rtol, "elasticities (prices)")
    assert_close(
        dk_results.compute_elasticities("x"), quiet(pyblp_results.compute_elasticities, "x"), rtol, "elasticities (x)"
    )
    diversion = dk_results.compute_diversion_ratios()
    expected_diversion = quiet(pyblp_results.compute_diversion_ratios)
    assert_close(diversion, expected_diversion, rtol, "diversion ratios")
    assert_close(
        dk_results.extract_diagonals(elasticities),
        quiet(pyblp_results.extract_diagonals, expected_elasticities),
        rtol,
        "own elasticities",
    )
    assert_close(
        dk_results.extract_diagonal_means(elasticities),
        quiet(pyblp_results.extract_diagonal_means, expected_elasticities),
        rtol,
        "mean own elasticities",
    )
    assert_close(
        dk_results.extract_diagonals(diversion),
        quiet(pyblp_results.extract_diagonals, expected_diversion),
        rtol,
        "diversion to the outside good",
    )
    assert_close(
        dk_results.compute_consumer_surpluses(),
        quiet(pyblp_results.compute_consumer_surpluses),
        rtol,
        "consumer surpluses",
    )
    assert_close(dk_results.compute_probabilities(), quiet(pyblp_results.compute_probabilities), rtol, "probabilities")
    assert_close(dk_results.compute_shares(), quiet(pyblp_results.compute_shares), rtol, "shares")
    prices = dk_results.problem.product_frame["prices"].to_numpy()
    new_prices = prices * 1.1 + 0.05
    assert_close(
        dk_results.compute_shares(new_prices),
        quiet(pyblp_results.compute_shares, new_prices),
        rtol,
        "shares at new prices",
    )
    assert_close(
        dk_results.compute_probabilities(new_prices),
        quiet(pyblp_results.compute_probabilities, new_prices),
        rtol,
        "probabilities at new prices",
    )
    assert_close(
        dk_results.compute_consumer_surpluses(new_prices),
        quiet(pyblp_results.compute_consumer_surpluses, new_prices),
        rtol,
        "consumer surpluses at new prices",
    )


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_post_estimation_at_estimates(name):
    compare_post_estimation(*solved(name), ESTIMATE_RTOL)


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_post_estimation_at_fixed_parameters(name):
    compare_post_estimation(*solved(name, "return"), EXACT_RTOL)


# ------------------------------------------------------------------------------------------- PyBLP defaults


@pytest.mark.pyblp
def test_default_optimization_matches_pyblp():
    """With no ``optimization`` argument both libraries use PyBLP's default, ``Optimization('l-bfgs-b', {'ftol': 0,
    'gtol': 1e-8})``, so both run until the gradient is small and reach the same estimates. (Without ``ftol=0``,
    SciPy's default ``ftol`` of about 2.2e-9 stops L-BFGS-B once the objective falls by less than that fraction, and
    ``converged`` is True at a gradient far above ``gtol``.)"""
    config = replace(CONFIGS["demographics"], sigma=np.diag([0.6, 0.9]), pi=[[-0.2, 0.0], [0.0, 0.3]])
    pyblp_problem, dk_problem = build_problems(config)
    arguments = {"sigma": config.sigma, "pi": config.pi, "method": config.method}
    pyblp_results = quiet(pyblp_problem.solve, check_optimality="gradient", **arguments)
    dk_results = solve_demandkit(dk_problem, **arguments)
    # Where each library's L-BFGS-B stops below 1e-5 depends on the last bits of its line searches (PyBLP's own
    # gradient ends at 4e-7 or 1.1e-6 depending on the numpy/scipy versions), so the test asks for what must hold
    # of both: a stationary point (compare_estimates: projected gradients below 1e-5, where SciPy's default ftol
    # stops far above), the same objective and the same estimates.
    gradient = np.max(np.abs(dk_results.projected_gradient))
    expected_gradient = np.max(np.abs(pyblp_results.projected_gradient))
    assert gradient < 1e-5, (
        f"demandkit's default optimizer stopped (converged={dk_results.converged}) at a projected gradient of "
        f"{gradient:.1e}; PyBLP's default went on to {expected_gradient:.1e}"
    )
    compare_estimates(pyblp_results, dk_results, config)


# ------------------------------------------------------------------------------- 11: second-order conditions


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["rc_2s", "demographics_offdiagonal", "rcnl"])
def test_hessian_at_fixed_parameters(name):
    """``check_optimality='both'``: the Hessian by differences of the analytic gradient, its reduced form and
    eigenvalues agree with PyBLP's at identical parameters. Both are finite differences with different steps:
    PyBLP's entries move by up to 3e-4 (relative) from ours, which are stable to 1e-8 from steps of 1e-3 to 1e-7
    (and are checked against second differences of the objective in ``test_gradient.py``)."""
    config = CONFIGS[name]
    pyblp_problem, dk_problem = build_problems(config)
    arguments = {"sigma": config.sigma, "pi": config.pi, "rho": config.rho, "method": config.method}
    arguments = {key: value for key, value in arguments.items() if value is not None}
    pyblp_results = quiet(pyblp_problem.solve, optimization=pyblp.Optimization("return"), **arguments)
    dk_results = solve_demandkit(dk_problem, optimization=dk.Optimization("return"), **arguments)
    assert np.isfinite(dk_results.hessian).all()
    assert_close(dk_results.hessian, pyblp_results.hessian, 1e-3, "hessian")
    assert_close(dk_results.reduced_hessian, pyblp_results.reduced_hessian, 1e-3, "reduced hessian")
    assert_close(
        dk_results.reduced_hessian_eigenvalues,
        pyblp_results.reduced_hessian_eigenvalues,
        1e-3,
        "reduced hessian eigenvalues",
    )
    skipped = solve_demandkit(
        dk_problem, optimization=dk.Optimization("return"), check_optimality="gradient", **arguments
    )
    assert np.isnan(skipped.hessian).all() and np.isnan(skipped.reduced_hessian_eigenvalues).all()
