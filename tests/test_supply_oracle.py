"""Oracle tests of the supply side: demandkit against PyBLP 1.3.0 on data simulated by PyBLP itself.

Each design is simulated once with ``pyblp.build_id_data`` + ``pyblp.Simulation`` + ``replace_endogenous`` (true
Bertrand-Nash prices and shares under known parameters), with some products dropped so that markets differ in size.
The same product and agent tables, starting values and options then go to both libraries.

Designs
    ``rc``     random-coefficients logit, prices in X1 and X2, linear costs ``X3 = 1 + x + z``;
    ``blp``    prices only in X2 with a price coefficient ``pi * inverse_income`` (the BLP 1995 specification),
               log costs, product rows shuffled;
    ``nested`` nested logit (two nests), linear costs.

Tolerances: estimates from two optimizer runs (``l-bfgs-b`` with ``gtol=1e-10``) agree to ``1e-6``; quantities
evaluated at identical parameters (``Optimization('return')``) agree to ``1e-8``. A comparison is relative to each
element with an absolute floor of ``rtol`` times the largest magnitude in PyBLP's array.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

ESTIMATE_RTOL = 1e-6
EXACT_RTOL = 1e-8
OPTIONS = {"gtol": 1e-10, "ftol": 0}  # the same scipy L-BFGS-B options in both libraries


# ------------------------------------------------------------------------------------------------ helpers


def assert_close(actual: Any, expected: Any, rtol: float, name: str) -> None:
    """``|a - e| <= rtol * |e| + rtol * max|e|`` elementwise (NaN must match NaN)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != PyBLP's {expected.shape}"
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=f"{name} differs from PyBLP")


class Comparisons:
    """Collects every mismatch of a test (so that one failing quantity does not hide the others) and fails once."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def close(self, actual: Any, expected: Any, rtol: float, name: str) -> None:
        try:
            assert_close(actual, expected, rtol, name)
        except AssertionError as error:
            self.failures.append(str(error).strip())

    def check(self) -> None:
        assert not self.failures, f"{len(self.failures)} mismatch(es):\n\n" + "\n\n".join(self.failures)


def free(matrix: Any, start: Any) -> np.ndarray:
    """Elements of ``matrix`` that are free parameters (nonzero starting values)."""
    return np.asarray(matrix)[np.asarray(start) != 0]


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call PyBLP with its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _openblas_thread_controls() -> list[tuple[Any, Any]]:
    """``(set, get)`` thread-count functions of every OpenBLAS loaded in this process (Linux), as threadpoolctl
    finds them; empty where none can be found."""
    controls = []
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
        for path in paths:
            library = ctypes.CDLL(path)
            for prefix in ("", "scipy_"):
                for suffix in ("", "64_"):
                    setter = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
                    getter = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        controls.append((setter, getter))
    except OSError:
        return []
    return controls


@pytest.fixture(scope="module", autouse=True)
def single_threaded() -> Iterator[None]:
    """Run this module's small problems on one thread (restored afterwards).

    PyBLP solves ``J x J`` systems market by market and demandkit runs many tiny batched kernels; on two shared cores
    the BLAS and torch thread pools' hand-offs cost milliseconds per call, which made this module 5 to 20 times slower.
    """
    threads = torch.get_num_threads()
    controls = [(setter, getter()) for setter, getter in _openblas_thread_controls()]
    torch.set_num_threads(1)
    for setter, _ in controls:
        setter(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for setter, previous in controls:
            setter(previous)


# --------------------------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Design:
    """A PyBLP simulation: formulations, true parameters and how data are laid out."""

    seed: int
    X1: str
    X2: str | None
    X3: str
    costs_type: str
    parameters: dict = field(hash=False, compare=False)
    agent_formulation: str | None = None
    nests: int = 0
    shuffle: bool = False


DESIGNS = {
    "rc": Design(
        seed=11,
        X1="1 + prices + x",
        X2="0 + prices + x",
        X3="1 + x + z",
        costs_type="linear",
        parameters={"beta": [2.0, -3.0, 1.0], "sigma": np.diag([0.4, 1.0]), "gamma": [1.0, 0.5, 1.0]},
    ),
    "blp": Design(
        seed=12,
        X1="1 + x",
        X2="0 + prices + x",
        X3="1 + x + z",
        costs_type="log",
        parameters={"beta": [3.0, 1.0], "sigma": np.diag([0.0, 1.0]), "pi": [[-3.0], [0.0]], "gamma": [0.3, 0.3, 0.6]},
        agent_formulation="0 + inverse_income",
        shuffle=True,
    ),
    "nested": Design(
        seed=13,
        X1="1 + prices + x",
        X2=None,
        X3="1 + x + z",
        costs_type="linear",
        parameters={"beta": [2.0, -3.0, 1.0], "rho": 0.5, "gamma": [1.0, 0.5, 1.0]},
        nests=2,
    ),
}
T, J, F, I = 15, 6, 3, 40  # markets, products (before dropping), firms, agents (I or I + 10 per market)


def _agents(rng: np.random.Generator, markets: np.ndarray, K2: int, demographics: bool) -> pd.DataFrame:
    sizes = I + 10 * (markets % 2)
    market_ids = np.repeat(markets, sizes)
    agents = pd.DataFrame({"market_ids": market_ids, "weights": np.repeat(1.0 / sizes, sizes)})
    nodes = rng.normal(size=(market_ids.size, K2))
    for k in range(K2):
        agents[f"nodes{k}"] = nodes[:, k]
    if demographics:
        agents["inverse_income"] = rng.uniform(0.5, 1.5, market_ids.size)
    return agents


@cache
def simulate(name: str) -> tuple[pd.DataFrame, pd.DataFrame | None, np.ndarray]:
    """Product data, agent data and true marginal costs of a design (cached: treat as read-only)."""
    design = DESIGNS[name]
    rng = np.random.default_rng(design.seed)
    ids = pyblp.build_id_data(T=T, J=J, F=F)
    products = pd.DataFrame(
        {"market_ids": ids.market_ids.ravel().astype(int), "firm_ids": ids.firm_ids.ravel().astype(int)}
    )
    slot = products.groupby("market_ids").cumcount().to_numpy()
    market = products["market_ids"].to_numpy()
    keep = ~((slot == J - 1) & (market % 3 == 0)) & ~((slot == 1) & (market % 4 == 1))
    products = products[keep].reset_index(drop=True)
    products["product_ids"] = products.groupby("market_ids").cumcount()
    products["clustering_ids"] = products["market_ids"] * F + products["firm_ids"]  # 45 clusters > 26 moments
    products["x"] = rng.uniform(0, 1, len(products))
    products["z"] = rng.uniform(0, 1, len(products))
    if design.nests:
        products["nesting_ids"] = products["product_ids"] % design.nests
    agents = None
    if design.X2 is not None:
        K2 = len(pyblp.Formulation(design.X2)._names)
        agents = _agents(rng, np.unique(market), K2, design.agent_formulation is not None)
    simulation = quiet(
        pyblp.Simulation,
        [
            pyblp.Formulation(design.X1),
            pyblp.Formulation(design.X2) if design.X2 else None,
            pyblp.Formulation(design.X3),
        ],
        products,
        agent_formulation=pyblp.Formulation(design.agent_formulation) if design.agent_formulation else None,
        agent_data=agents,
        xi_variance=0.2,
        omega_variance=0.1,
        correlation=0.7,
        costs_type=design.costs_type,
        seed=design.seed,
        **design.parameters,
    )
    simulated = quiet(simulation.replace_endogenous)
    products["prices"] = simulated.product_data.prices.ravel()
    products["shares"] = simulated.product_data.shares.ravel()
    costs = np.asarray(simulated.costs, dtype=np.float64).ravel()

    # BLP sums over own-firm and rival products, differentiation instruments, and the cost shifter for demand
    blp = pyblp.build_blp_instruments(pyblp.Formulation("1 + x + z"), products)
    blp = blp[:, (blp != blp[0]).any(axis=0)]
    differentiation = pyblp.build_differentiation_instruments(pyblp.Formulation("0 + x + z"), products)
    demand = [products["z"].to_numpy(), *blp.T, *differentiation.T]
    if design.nests:
        groups = products.groupby(["market_ids", "nesting_ids"])["x"]
        demand += [groups.transform("sum").to_numpy() - products["x"].to_numpy(), groups.transform("size").to_numpy()]
    for k, column in enumerate(demand):
        products[f"demand_instruments{k}"] = np.asarray(column, dtype=np.float64)
    for k, column in enumerate([*blp.T, *differentiation.T]):
        products[f"supply_instruments{k}"] = column
    if design.shuffle:
        order = rng.permutation(len(products))
        products, costs = products.iloc[order].reset_index(drop=True), costs[order]
        agents = agents.iloc[rng.permutation(len(agents))].reset_index(drop=True)
    return products, agents, costs


def build_problems(name: str, coarse_clusters: bool = False) -> tuple[Any, Any]:
    design = DESIGNS[name]
    products, agents, _ = simulate(name)
    if coarse_clusters:  # 5 clusters, fewer than the moments: the clustered S is singular
        products = products.assign(clustering_ids=products["market_ids"] // 3)
    problems = []
    for library in (pyblp, dk):
        formulations = [
            library.Formulation(design.X1),
            library.Formulation(design.X2) if design.X2 else None,
            library.Formulation(design.X3),
        ]
        agent_formulation = library.Formulation(design.agent_formulation) if design.agent_formulation else None
        arguments = (formulations, products, agent_formulation, agents if design.X2 else None)
        if library is pyblp:
            problems.append(quiet(pyblp.Problem, *arguments, costs_type=design.costs_type))
        else:
            problems.append(dk.Problem(*arguments, costs_type=design.costs_type))
    return problems[0], problems[1]


# ------------------------------------------------------------------------------------------ configurations


@dataclass(frozen=True)
class Config:
    """How a design is solved, identically in both libraries."""

    design: str
    method: str = "2s"
    W_type: str = "robust"
    se_type: str = "robust"
    initial_update: bool = False
    costs_bounds: tuple | None = None
    start: str = "start"  # 'start': starting values away from the truth; 'truth': the true parameters
    coarse_clusters: bool = False


STARTS = {
    "rc": {
        "start": {"sigma": np.diag([0.3, 0.8]), "beta": [np.nan, -2.5, np.nan]},
        "truth": {"sigma": np.diag([0.4, 1.0]), "beta": [np.nan, -3.0, np.nan]},
    },
    "blp": {
        "start": {"sigma": np.diag([0.0, 0.8]), "pi": [[-2.5], [0.0]]},
        "truth": {"sigma": np.diag([0.0, 1.0]), "pi": [[-3.0], [0.0]]},
    },
    "nested": {
        "start": {"rho": 0.4, "beta": [np.nan, -2.5, np.nan]},
        "truth": {"rho": 0.5, "beta": [np.nan, -3.0, np.nan]},
    },
}


def clipping_bounds() -> tuple[float, float]:
    """Bounds on marginal costs of the ``blp`` design that clip about a fifth of the true costs from below and a
    twentieth from above."""
    costs = simulate("blp")[2]
    return float(np.quantile(costs, 0.2)), float(np.quantile(costs, 0.95))


CONFIGS = {
    # 1: estimation
    "linear_2s_robust": Config("rc"),
    "linear_1s_clustered": Config("rc", method="1s", W_type="clustered", se_type="clustered"),
    "linear_2s_initial_update_clustered_se": Config("rc", se_type="clustered", initial_update=True),
    "log_2s_costs_bounds": Config("blp", se_type="clustered", costs_bounds=(0.001, None)),
    "nested_2s": Config("nested"),
    # 2-3: identical parameters (Optimization('return'))
    "linear_truth": Config("rc", method="1s", start="truth"),
    "linear_truth_2s_clustered": Config(
        "rc", W_type="clustered", se_type="clustered", initial_update=True, start="truth"
    ),
    "log_truth": Config("blp", method="1s", start="truth"),
    "log_truth_clipped": Config("blp", method="1s", start="truth", costs_bounds="clipping"),
    "nested_truth": Config("nested", start="truth"),
    "linear_truth_coarse_clusters": Config(
        "rc", method="1s", W_type="clustered", se_type="clustered", start="truth", coarse_clusters=True
    ),
}
ESTIMATION_CASES = [
    "linear_2s_robust",
    "linear_1s_clustered",
    "linear_2s_initial_update_clustered_se",
    "log_2s_costs_bounds",
]
RETURN_CASES = ["linear_truth", "linear_truth_2s_clustered", "log_truth", "log_truth_clipped", "nested_truth"]


def solve_demandkit(problem: Any, **arguments: Any) -> Any:
    """``problem.solve`` letting through only the optimizer's report that it stopped short of ``gtol`` (with
    ``ftol=0`` L-BFGS-B may end in a failed line search once the objective is flat to rounding, as PyBLP's does);
    any other warning is raised again and fails the test under ``filterwarnings=error``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = problem.solve(**arguments)
    results.singular_warnings = [str(w.message) for w in caught if "singular" in str(w.message)]
    for warning in caught:
        if issubclass(warning.category, (DeprecationWarning, FutureWarning)):
            continue
        if issubclass(warning.category, dk.exceptions.ConvergenceWarning) and "optimizer stopped" in str(
            warning.message
        ):
            continue
        if str(warning.message) in results.singular_warnings:
            continue  # checked by test_singular_clustered_moment_covariances
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return results


@cache
def solved(name: str) -> tuple[Any, Any]:
    """``(pyblp_results, demandkit_results)`` of a configuration, solved once per session."""
    config = CONFIGS[name]
    method = "return" if config.start == "truth" else "l-bfgs-b"
    options = None if method == "return" else OPTIONS
    arguments = dict(STARTS[config.design][config.start])
    arguments.update(method=config.method, W_type=config.W_type, se_type=config.se_type)
    arguments["initial_update"] = config.initial_update
    if config.costs_bounds is not None:
        arguments["costs_bounds"] = clipping_bounds() if config.costs_bounds == "clipping" else config.costs_bounds
    pyblp_problem, dk_problem = build_problems(config.design, config.coarse_clusters)
    pyblp_results = quiet(
        pyblp_problem.solve,
        optimization=pyblp.Optimization(method, options),
        check_optimality="gradient",
        **arguments,
    )
    dk_results = solve_demandkit(dk_problem, optimization=dk.Optimization(method, options), **arguments)
    return pyblp_results, dk_results


def compare_estimates(name: str, rtol: float, compare: Comparisons | None = None) -> None:
    """Objective, linear and nonlinear parameters, every standard error, structural errors and weighting matrices."""
    pyblp_results, dk_results = solved(name)
    config = CONFIGS[name]
    start = STARTS[config.design][config.start]
    assert np.all(dk_results.fp_converged)
    if rtol == ESTIMATE_RTOL:  # both stopped at a stationary point (up to a line search that failed at rounding)
        assert np.max(np.abs(pyblp_results.projected_gradient)) < 1e-5
        assert np.max(np.abs(dk_results.projected_gradient)) < 1e-5
    own = compare is None
    compare = Comparisons() if own else compare
    compare.close(dk_results.objective, float(np.squeeze(pyblp_results.objective)), rtol, "objective")
    pairs = [("beta", None), ("gamma", None), ("beta_se", None), ("gamma_se", None)]
    for parameter in ("sigma", "pi", "rho"):
        if parameter in start:
            fixed = None if parameter == "rho" else start[parameter]
            pairs += [(parameter, None), (f"{parameter}_se", fixed)]
    pairs += [("xi", None), ("omega", None), ("W", None), ("updated_W", None)]
    for attribute, fixed in pairs:
        actual, expected = getattr(dk_results, attribute), getattr(pyblp_results, attribute)
        if fixed is not None:  # PyBLP reports NaN standard errors for parameters fixed at zero, demandkit zero
            actual, expected = free(actual, fixed), free(expected, fixed)
        compare.close(actual, expected, rtol, attribute)
    if own:
        compare.check()


# ---------------------------------------------------------------------------------- 1: estimation with supply


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ESTIMATION_CASES)
def test_estimation_with_supply(name):
    compare_estimates(name, ESTIMATE_RTOL)


@pytest.mark.pyblp
def test_nested_logit_with_supply():
    compare_estimates("nested_2s", ESTIMATE_RTOL)


# ------------------------------------------------------------------- 2: objective and gradient at fixed values


@pytest.mark.pyblp
@pytest.mark.parametrize("name", RETURN_CASES)
def test_objective_and_gradient_at_fixed_parameters(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    compare.close(dk_results.gradient, pyblp_results.gradient, EXACT_RTOL, "gradient")
    compare_estimates(name, EXACT_RTOL, compare)
    compare.check()


@pytest.mark.pyblp
def test_costs_bounds_clip_the_same_costs():
    pyblp_results, dk_results = solved("log_truth_clipped")
    clipped = int(np.sum(pyblp_results.clipped_costs))
    assert clipped >= 0.2 * len(dk_results.xi)  # the bounds bind
    np.testing.assert_array_equal(dk_results.clipped_costs, pyblp_results.clipped_costs)


@pytest.mark.pyblp
def test_singular_clustered_moment_covariances():
    """With fewer clusters (5) than moments the clustered :math:`S` is singular; PyBLP's weighting matrix is then its
    Moore-Penrose pseudo-inverse (``pyblp.options.pseudo_inverses`` is True by default, so PyBLP always uses pinv)."""
    pyblp_results, dk_results = solved("linear_truth_coarse_clusters")
    S = pyblp_results.moments_covariances
    assert np.linalg.matrix_rank(S) < S.shape[0]
    assert_close(dk_results.updated_W, pyblp_results.updated_W, EXACT_RTOL, "updated_W = pinv(S)")


# ------------------------------------------------------------------------- 3: post-estimation at fixed values

POST_ESTIMATION_CASES = ["linear_truth", "log_truth", "nested_truth"]


def kappa(f: Any, g: Any) -> float:
    return 1.0 if f == g else 0.25


def product_data(name: str) -> pd.DataFrame:
    return simulate(CONFIGS[name].design)[0]


def merged_firm_ids(name: str) -> np.ndarray:
    """Firm 1 merges into firm 0."""
    firm_ids = product_data(name)["firm_ids"].to_numpy()
    return np.where(firm_ids == 1, 0, firm_ids)


@cache
def merger_prices(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Post-merger equilibrium prices from ``(PyBLP, demandkit)``, each with its default iteration
    (``Iteration('simple', {'atol': 1e-12})``)."""
    pyblp_results, dk_results = solved(name)
    firm_ids = merged_firm_ids(name)
    return quiet(pyblp_results.compute_prices, firm_ids=firm_ids), dk_results.compute_prices(firm_ids=firm_ids)


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_costs_and_markups(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    costs = quiet(pyblp_results.compute_costs)
    compare.close(costs.ravel(), simulate(CONFIGS[name].design)[2], 1e-6, "PyBLP's costs against the simulation's")
    compare.close(dk_results.compute_costs(), costs, EXACT_RTOL, "costs")
    compare.close(dk_results.compute_markups(), quiet(pyblp_results.compute_markups), EXACT_RTOL, "markups")
    compare.close(
        dk_results.compute_markups(costs=0.9 * costs),
        quiet(pyblp_results.compute_markups, costs=0.9 * costs),
        EXACT_RTOL,
        "markups at given costs",
    )
    firm_ids = merged_firm_ids(name)
    compare.close(
        dk_results.compute_costs(firm_ids=firm_ids),
        quiet(pyblp_results.compute_costs, firm_ids=firm_ids),
        EXACT_RTOL,
        "costs under new firm ids",
    )
    ownership = pyblp.build_ownership(product_data(name), kappa)
    compare.close(
        dk_results.compute_costs(ownership=ownership),
        quiet(pyblp_results.compute_costs, ownership=ownership),
        EXACT_RTOL,
        "costs under kappa ownership",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_profits(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    costs = quiet(pyblp_results.compute_costs)
    new_prices = merger_prices(name)[0]
    new_shares = quiet(pyblp_results.compute_shares, new_prices)
    compare.close(dk_results.compute_profits(), quiet(pyblp_results.compute_profits), EXACT_RTOL, "profits")
    compare.close(
        dk_results.compute_profits(new_prices, new_shares, costs),
        quiet(pyblp_results.compute_profits, new_prices, new_shares, costs),
        EXACT_RTOL,
        "profits at given prices, shares and costs",
    )
    # PyBLP's default shares are the unchanged (observed) ones, whatever the prices
    compare.close(
        dk_results.compute_profits(prices=new_prices),
        quiet(pyblp_results.compute_profits, prices=new_prices),
        EXACT_RTOL,
        "profits at new prices with default shares",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_hhi(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    firm_ids = merged_firm_ids(name)
    compare.close(dk_results.compute_hhi(), quiet(pyblp_results.compute_hhi), EXACT_RTOL, "HHI")
    compare.close(
        dk_results.compute_hhi(firm_ids=firm_ids),
        quiet(pyblp_results.compute_hhi, firm_ids=firm_ids),
        EXACT_RTOL,
        "HHI with new firm ids",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_consumer_surpluses(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    compare.close(
        dk_results.compute_consumer_surpluses(),
        quiet(pyblp_results.compute_consumer_surpluses),
        EXACT_RTOL,
        "consumer surpluses",
    )
    new_prices = merger_prices(name)[0]
    compare.close(
        dk_results.compute_consumer_surpluses(new_prices),
        quiet(pyblp_results.compute_consumer_surpluses, new_prices),
        EXACT_RTOL,
        "consumer surpluses at post-merger prices",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_passthrough_and_approximate_prices(name):
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    firm_ids = merged_firm_ids(name)
    compare.close(dk_results.compute_passthrough(), quiet(pyblp_results.compute_passthrough), EXACT_RTOL, "passthrough")
    compare.close(
        dk_results.compute_passthrough(firm_ids=firm_ids),
        quiet(pyblp_results.compute_passthrough, firm_ids=firm_ids),
        EXACT_RTOL,
        "passthrough under new firm ids",
    )
    compare.close(
        dk_results.compute_approximate_prices(firm_ids=firm_ids),
        quiet(pyblp_results.compute_approximate_prices, firm_ids=firm_ids),
        EXACT_RTOL,
        "approximate prices",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["linear_truth", "log_truth"])
def test_long_run_diversion_ratios(name):
    pyblp_results, dk_results = solved(name)
    assert_close(
        dk_results.compute_long_run_diversion_ratios(),
        quiet(pyblp_results.compute_long_run_diversion_ratios),
        EXACT_RTOL,
        "long-run diversion ratios",
    )


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_equilibrium_prices(name):
    """Equilibrium prices after firms 0 and 1 merge, under partial common ownership and at lower costs, and shares
    and markups at the merger's prices."""
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    pyblp_prices, dk_prices = merger_prices(name)
    assert np.max(np.abs(pyblp_prices.ravel() - product_data(name)["prices"])) > 1e-3  # prices moved
    compare.close(dk_prices, pyblp_prices, EXACT_RTOL, "post-merger prices")
    costs = quiet(pyblp_results.compute_costs)
    compare.close(
        dk_results.compute_shares(pyblp_prices),
        quiet(pyblp_results.compute_shares, pyblp_prices),
        EXACT_RTOL,
        "shares at post-merger prices",
    )
    compare.close(
        dk_results.compute_markups(pyblp_prices, costs),
        quiet(pyblp_results.compute_markups, pyblp_prices, costs),
        EXACT_RTOL,
        "markups at post-merger prices",
    )
    ownership = pyblp.build_ownership(product_data(name), kappa)
    compare.close(
        dk_results.compute_prices(ownership=ownership),
        quiet(pyblp_results.compute_prices, ownership=ownership),
        EXACT_RTOL,
        "equilibrium prices under kappa ownership",
    )
    compare.close(
        dk_results.compute_prices(costs=0.9 * costs),
        quiet(pyblp_results.compute_prices, costs=0.9 * costs),
        EXACT_RTOL,
        "equilibrium prices at lower costs",
    )
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize("name", POST_ESTIMATION_CASES)
def test_compute_merger(name):
    """``compute_merger`` against the PyBLP calls it stands for."""
    pyblp_results, dk_results = solved(name)
    compare = Comparisons()
    firm_ids = merged_firm_ids(name)
    prices = merger_prices(name)[0]
    costs = quiet(pyblp_results.compute_costs)
    shares = quiet(pyblp_results.compute_shares, prices)
    merger = dk_results.compute_merger(firm_ids)
    expected_products = {
        "costs": costs,
        "merged_prices": prices,
        "merged_shares": shares,
        "profits": quiet(pyblp_results.compute_profits),
        "merged_profits": quiet(pyblp_results.compute_profits, prices, shares, costs),
    }
    for column, expected in expected_products.items():
        compare.close(merger.products[column].to_numpy(), expected.ravel(), EXACT_RTOL, f"products.{column}")
    expected_markets = {
        "hhi": quiet(pyblp_results.compute_hhi),
        "merged_hhi": quiet(pyblp_results.compute_hhi, firm_ids, shares),
        "consumer_surplus": quiet(pyblp_results.compute_consumer_surpluses),
        "merged_consumer_surplus": quiet(pyblp_results.compute_consumer_surpluses, prices),
    }
    for column, expected in expected_markets.items():
        compare.close(merger.markets[column].to_numpy(), expected.ravel(), EXACT_RTOL, f"markets.{column}")
    if not merger.markets["converged"].all():
        compare.failures.append("compute_merger: the equilibrium did not converge in every market")
    compare.check()


@pytest.mark.pyblp
@pytest.mark.parametrize(
    "kappa_specification", [None, kappa, "monopoly", "single"], ids=["firms", "kappa", "monopoly", "single"]
)
@pytest.mark.parametrize("design", ["rc", "blp"])
def test_build_ownership(design, kappa_specification):
    products = simulate(design)[0]
    assert_close(
        dk.build_ownership(products, kappa_specification),
        pyblp.build_ownership(products, kappa_specification),
        0.0,
        f"build_ownership({kappa_specification!r})",
    )
