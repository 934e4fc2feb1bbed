"""PyBLP 1.3's configuration classes: every Iteration and Optimization method and the nested integration rules.

- ``Iteration``: the scipy root-finding methods (on the stacked system of all markets), a custom routine with PyBLP's
  callable contract and a callable norm each give the SQUAREM mean utilities on the Nevo data at fixed parameters.
- ``Optimization``: the scipy methods reach L-BFGS-B's optimum on a small problem, respect bounds, and a custom
  routine gets PyBLP's ``(initial, bounds, objective_function, iteration_callback)``.
- ``Integration``: ``'nested_product'`` and ``'nested_grid'`` equal PyBLP's nodes and weights (tests marked
  ``pyblp``).
"""

from __future__ import annotations

import math
import re
import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import torch

import demandkit as dk
from demandkit.configurations.nested_hermite import MAX_LEVEL, nested_hermite
from demandkit.configurations.optimization import ObjectiveProgress
from demandkit.exceptions import ConvergenceWarning, SpecificationError
from demandkit.interfaces.replications import NEVO_PI0, NEVO_SIGMA0, nevo_problem
from demandkit.kernels.fixed_point import market_norm

DELTA_TOLERANCE = 1e-10  # mean utilities of every method against SQUAREM's


def _pyblp() -> Any:
    return pytest.importorskip("pyblp")


def _quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return function(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- Iteration


@cache
def _nevo() -> dk.Problem:
    return nevo_problem()


@cache
def _nevo_subset(markets: int = 6, nested: bool = False) -> dk.Problem:
    """Nevo's problem on its first ``markets`` markets (for the methods that factor a dense N x N Jacobian)."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    keep = products["market_ids"].unique()[:markets]
    products, agents = products[products["market_ids"].isin(keep)], agents[agents["market_ids"].isin(keep)]
    if nested:
        products = products.assign(nesting_ids=products["mushy"])
    formulations = (
        dk.Formulation("0 + prices", absorb="C(product_ids)"),
        dk.Formulation("1 + prices + sugar + mushy"),
    )
    return dk.Problem(formulations, products, dk.Formulation("0 + income + income_squared + age + child"), agents)


def _delta(problem: dk.Problem, iteration: dk.Iteration, rho: float | None = None) -> Any:
    """The results at Nevo's starting parameters, held fixed."""
    return _quiet(
        problem.solve,
        NEVO_SIGMA0,
        NEVO_PI0,
        rho=rho,
        method="1s",
        optimization=dk.Optimization("return"),
        iteration=iteration,
        check_optimality="gradient",
    )


@cache
def _reference(problem: dk.Problem, rho: float | None = None) -> np.ndarray:
    return _delta(problem, dk.Iteration("squarem"), rho).delta


def _assert_same_delta(results: Any, reference: np.ndarray) -> None:
    assert results.fp_converged.all()
    np.testing.assert_allclose(results.delta, reference, rtol=0, atol=DELTA_TOLERANCE)


@pytest.mark.parametrize("method", ["broyden1", "broyden2", "anderson", "krylov", "diagbroyden", "df-sane"])
def test_scipy_root_methods_give_squarems_delta_on_nevo(method):
    options = {"fatol": 1e-13, "ftol": 0} if method == "df-sane" else {"fatol": 1e-13}
    results = _delta(_nevo(), dk.Iteration(method, options))
    _assert_same_delta(results, _reference(_nevo()))
    # one stacked solve: every market reports the same counts
    assert len(set(results.contraction_evaluations.ravel())) == 1 and results.contraction_evaluations[0, 0] > 0


@pytest.mark.parametrize("method", ["hybr", "lm"])
@pytest.mark.parametrize("compute_jacobian", [False, True])
def test_minpack_methods_give_squarems_delta(method, compute_jacobian):
    problem = _nevo_subset()
    options = {"xtol": 1e-12} if method == "hybr" else {"xtol": 1e-14, "ftol": 1e-14}
    results = _delta(problem, dk.Iteration(method, options, compute_jacobian=compute_jacobian))
    _assert_same_delta(results, _reference(problem))


@pytest.mark.parametrize("method", ["broyden1", "hybr"])
def test_root_methods_under_nesting(method):
    """The nested logit's contraction is damped by 1 - rho; so is its Jacobian."""
    problem = _nevo_subset(nested=True)
    options = {"fatol": 1e-13} if method == "broyden1" else {"xtol": 1e-12}
    results = _delta(problem, dk.Iteration(method, options, compute_jacobian=True), rho=0.5)
    _assert_same_delta(results, _reference(problem, 0.5))


def test_default_root_options_follow_pyblp():
    assert dk.Iteration("broyden1").options == {"tol_norm": "infinity", "compute_jacobian": False}
    assert dk.Iteration("df-sane").options == {"fnorm": "infinity", "compute_jacobian": False}
    assert dk.Iteration("lm", compute_jacobian=True).options == {"compute_jacobian": True}
    assert "Broyden's good method" in str(dk.Iteration("broyden1"))
    with pytest.raises(ValueError, match="compute_jacobian"):
        dk.Iteration("hybr", compute_jacobian=1)  # type: ignore[arg-type]


def _simple_routine(
    initial: np.ndarray, contraction: Any, callback: Any, tol: float = 1e-14, max_iterations: int = 5000
) -> tuple[np.ndarray, bool]:
    x = initial
    for _ in range(max_iterations):
        new, weights, jacobian = contraction(x)
        assert weights is None and jacobian is None
        callback()
        if np.max(np.abs(new - x)) <= tol:
            return new, True
        x = new
    return x, False


def _newton_routine(initial: np.ndarray, contraction: Any, callback: Any) -> tuple[np.ndarray, bool]:
    """Newton's method on x - G(x) = 0 with the contraction's Jacobian."""
    x = initial
    for _ in range(50):
        value, _, jacobian = contraction(x)
        assert jacobian.shape == (x.size, x.size)
        step = np.linalg.solve(np.eye(x.size) - jacobian, value - x)
        x = x + step
        callback()
        if np.max(np.abs(step)) < 1e-13:
            return x, True
    return x, False


def test_custom_iteration_routine_follows_pyblps_contract():
    problem = _nevo()
    results = _delta(problem, dk.Iteration(_simple_routine, {"tol": 1e-14}))
    _assert_same_delta(results, _reference(problem))
    iterations = results.fp_iterations.ravel()
    assert (iterations == iterations[0]).all() and iterations[0] > 10
    assert (results.contraction_evaluations.ravel() == iterations[0]).all()  # one evaluation per iteration here
    assert "a custom method" in str(dk.Iteration(_simple_routine))


def test_custom_iteration_routine_gets_the_contractions_jacobian():
    problem = _nevo()
    results = _delta(problem, dk.Iteration(_newton_routine, compute_jacobian=True))
    _assert_same_delta(results, _reference(problem))
    assert results.fp_iterations[0, 0] < 20


def test_custom_iteration_routine_failures():
    def bad_shape(initial: np.ndarray, contraction: Any, callback: Any) -> tuple[np.ndarray, bool]:
        return initial[:-1], True

    with pytest.raises(ValueError, match="returned"):
        _delta(_nevo_subset(), dk.Iteration(bad_shape))

    def diverges(initial: np.ndarray, contraction: Any, callback: Any) -> tuple[np.ndarray, bool]:
        contraction(initial)
        return np.full_like(initial, np.nan), True

    start = _delta(_nevo_subset(), dk.Iteration("return"))
    results = _delta(_nevo_subset(), dk.Iteration(diverges))
    assert not results.fp_converged.any()  # non-finite values: the last finite point, unconverged
    np.testing.assert_array_equal(results.delta, start.delta)


@pytest.mark.parametrize(
    "norm",
    [
        pytest.param(lambda x: x.abs().max(), id="torch"),
        pytest.param(lambda x: np.max(np.abs(x)), id="numpy"),
    ],
)
@pytest.mark.parametrize("method", ["squarem", "simple"])
def test_callable_norm_gives_squarems_delta(norm, method):
    problem = _nevo()
    results = _delta(problem, dk.Iteration(method, {"norm": norm, "atol": 1e-13}))
    _assert_same_delta(results, _reference(problem))


def test_callable_norm_sees_each_markets_real_products():
    """Markets of different sizes: the norm gets each market's own vector, batched (torch) or one by one (NumPy)."""
    rng = np.random.default_rng(0)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]] * 2)
    x = torch.where(mask, torch.as_tensor(rng.normal(size=mask.shape)), 0.0)
    seen = []

    def numpy_mean(vector: np.ndarray) -> float:
        if isinstance(vector, np.ndarray):  # it is first tried (and fails) under torch.vmap
            seen.append(vector.size)
        return float(np.mean(np.abs(vector)))

    expected = torch.tensor([x[t][mask[t]].abs().mean().item() for t in range(mask.shape[0])], dtype=x.dtype)
    torch.testing.assert_close(market_norm(x, lambda v: v.abs().mean(), mask), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(market_norm(x, numpy_mean, mask), expected, rtol=0, atol=1e-15)
    assert sorted(seen) == sorted(mask.sum(-1).tolist())
    padded = torch.where(mask, x, 0.0)
    torch.testing.assert_close(market_norm(padded, "infinity", mask), padded.abs().amax(-1))


def test_iteration_validation():
    with pytest.raises(ValueError, match="Iteration method"):
        dk.Iteration("linearmixing")  # scipy has it; PyBLP 1.3 does not offer it
    with pytest.raises(ValueError, match="Iteration norm"):
        dk.Iteration("squarem", {"norm": "l1"})
    assert "custom" in str(dk.Iteration("simple", {"norm": lambda x: x.abs().max()}))


@pytest.mark.pyblp
def test_iteration_methods_are_pyblps():
    """Every routine PyBLP 1.3's Iteration documents is accepted."""
    pyblp = _pyblp()
    documented = set(re.findall(r"- ``'([\w-]+)'``", pyblp.Iteration.__doc__))
    assert {"squarem", "broyden1", "hybr", "lm", "return"} <= documented
    for method in documented:
        dk.Iteration(method)


@pytest.mark.pyblp
def test_custom_routine_sees_pyblps_contraction():
    """At the starting values, the first market's block of the stacked contraction and of its Jacobian equal what
    PyBLP hands its custom routine for that market."""
    pyblp = _pyblp()
    pyblp.options.verbose = False
    captured: dict[str, Any] = {}

    def capture_pyblp(initial: np.ndarray, contraction: Any, callback: Any) -> tuple[np.ndarray, bool]:
        if "pyblp" not in captured:
            captured["pyblp"] = (initial.copy(), *contraction(initial))
        return initial, True

    def capture_ours(initial: np.ndarray, contraction: Any, callback: Any) -> tuple[np.ndarray, bool]:
        captured["ours"] = (initial.copy(), *contraction(initial))
        return initial, True

    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    formulations = (
        pyblp.Formulation("0 + prices", absorb="C(product_ids)"),
        pyblp.Formulation("1 + prices + sugar + mushy"),
    )
    problem = _quiet(
        pyblp.Problem, formulations, products, pyblp.Formulation("0 + income + income_squared + age + child"), agents
    )
    _quiet(
        problem.solve,
        NEVO_SIGMA0,
        NEVO_PI0,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration(capture_pyblp, compute_jacobian=True),
    )
    _delta(_nevo(), dk.Iteration(capture_ours, compute_jacobian=True))
    initial, value, weights, jacobian = captured["pyblp"]
    ours_initial, ours_value, ours_weights, ours_jacobian = captured["ours"]
    J = initial.size
    assert weights is None and ours_weights is None
    np.testing.assert_allclose(ours_initial[:J], initial, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours_value[:J], value, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours_jacobian[:J, :J], jacobian, rtol=0, atol=1e-10)
    assert not ours_jacobian[:J, J:].any()  # markets do not interact


# ---------------------------------------------------------------------------------------------- Optimization

OPTIMUM_TOLERANCE = 1e-4  # theta, relative to max(1, |theta|): the objective is flat near the optimum
SIGMA0 = np.diag([0.5, 2.0])
PI0 = np.array([[1.0], [1.0]])


@cache
def _small_problem() -> dk.Problem:
    """Random coefficients on the constant and prices with income interactions: four parameters, interior optimum."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    formulations = (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("1 + prices"))
    return dk.Problem(formulations, products, dk.Formulation("0 + income"), agents)


def _estimate(optimization: dk.Optimization, sigma0: np.ndarray = SIGMA0, pi0: np.ndarray = PI0, **kwargs: Any) -> Any:
    problem = _small_problem()
    return _quiet(
        problem.solve, sigma0, pi0, method="1s", optimization=optimization, check_optimality="gradient", **kwargs
    )


@cache
def _optimum() -> Any:
    return _estimate(dk.Optimization("l-bfgs-b", {"ftol": 0, "gtol": 1e-8}))


def _assert_same_optimum(results: Any, reference: Any) -> None:
    theta, expected = results.theta.ravel(), reference.theta.ravel()
    np.testing.assert_allclose(theta, expected, rtol=0, atol=OPTIMUM_TOLERANCE * max(1.0, np.abs(expected).max()))
    assert results.objective <= reference.objective + 1e-8 * abs(reference.objective)


METHODS = {
    "slsqp": {"ftol": 1e-14},
    "tnc": {},
    "trust-constr": {"xtol": 1e-12},
    "cg": {},
    "newton-cg": {"xtol": 1e-10},
    "nelder-mead": {"xatol": 1e-10, "fatol": 1e-14, "maxiter": 5000},
    "powell": {"xtol": 1e-10, "ftol": 1e-14},
}


@pytest.mark.parametrize("method", METHODS)
def test_scipy_methods_reach_lbfgsbs_optimum(method):
    reference = _optimum()
    assert reference.converged and np.abs(reference.gradient).max() < 1e-6
    results = _estimate(dk.Optimization(method, METHODS[method]))
    _assert_same_optimum(results, reference)
    assert np.abs(results.gradient).max() < 1e-4


@pytest.mark.parametrize("method", ["slsqp", "trust-constr", "nelder-mead"])
def test_bounded_methods_respect_bounds(method):
    """From the unconstrained optimum with the price coefficient's sigma held below it by an upper bound, the
    gradient methods reach L-BFGS-B's bounded optimum; Nelder-Mead (a few evaluations) stays in bounds. (Powell, also
    bounded, brackets its line searches far out, where each inversion is slow.)"""
    upper = 1.2
    start = _optimum()
    sigma0 = start.sigma.copy()
    sigma0[1, 1] = upper
    bounds = (np.zeros((2, 2)), np.diag([np.inf, upper]))
    options = METHODS[method] if method in ("slsqp", "trust-constr") else {"maxfev": 60}
    results = _estimate(dk.Optimization(method, options), sigma0=sigma0, pi0=start.pi, sigma_bounds=bounds)
    assert results.sigma[1, 1] <= upper
    if method in ("slsqp", "trust-constr"):
        reference = _estimate(
            dk.Optimization("l-bfgs-b", {"ftol": 0, "gtol": 1e-8}), sigma0=sigma0, pi0=start.pi, sigma_bounds=bounds
        )
        assert reference.sigma[1, 1] == upper
        _assert_same_optimum(results, reference)


def test_method_properties_follow_pyblp():
    assert dk.Optimization("tnc").supports_bounds and dk.Optimization("slsqp").supports_bounds
    assert not dk.Optimization("cg").supports_bounds and not dk.Optimization("newton-cg").supports_bounds
    assert not dk.Optimization("powell").compute_gradient and dk.Optimization("cg").compute_gradient
    assert dk.Optimization("tnc").options == {"gtol": 1e-8} and dk.Optimization("slsqp").options == {}
    with pytest.raises(SpecificationError, match="newton-cg"):
        dk.Optimization("newton-cg", compute_gradient=False)
    assert "TNC with analytic gradients" in str(dk.Optimization("tnc"))


def test_knitro_without_knitro_is_a_clear_error():
    pytest.importorskip("scipy")
    try:
        import knitro  # noqa: F401
    except ImportError:
        with pytest.raises(SpecificationError, match="Knitro.*not installed"):
            dk.Optimization("knitro")
    else:  # pragma: no cover - a machine with Knitro
        pytest.skip("Knitro is installed")


@pytest.mark.parametrize("compute_gradient", [True, False])
def test_custom_optimization_routine_follows_pyblps_contract(compute_gradient):
    calls: dict[str, Any] = {"progress": []}

    def routine(
        initial: np.ndarray, bounds: list, objective_function: Any, iteration_callback: Any, **options: Any
    ) -> tuple[np.ndarray, bool]:
        calls["bounds"], calls["options"] = bounds, options

        def function(theta: np.ndarray) -> Any:
            value, gradient, progress = objective_function(theta)
            calls["progress"].append(progress)
            assert (gradient is None) != compute_gradient
            return (value, gradient) if compute_gradient else value

        result = scipy.optimize.minimize(
            function,
            initial,
            jac=compute_gradient or None,
            method="L-BFGS-B" if compute_gradient else "Nelder-Mead",
            bounds=bounds,
            callback=lambda *_: iteration_callback(),
            options={"gtol": 1e-8} if compute_gradient else {"xatol": 1e-10, "fatol": 1e-14, "maxiter": 5000},
        )
        return result.x, result.success

    optimization = dk.Optimization(routine, {"label": "mine"}, compute_gradient=compute_gradient)
    assert optimization.supports_bounds
    results = _estimate(optimization)
    _assert_same_optimum(results, _optimum())
    assert calls["options"] == {"label": "mine"}
    assert len(calls["bounds"]) == 4 and all(len(pair) == 2 for pair in calls["bounds"])
    progress = calls["progress"][-1]
    assert isinstance(progress, ObjectiveProgress) and progress.evaluations == len(calls["progress"])
    assert results.optimization_iterations > 0
    assert "a custom method" in str(optimization)


@pytest.mark.pyblp
def test_optimization_methods_are_pyblps():
    """Every routine PyBLP 1.3's Optimization documents is known (Knitro needs its package)."""
    pyblp = _pyblp()
    documented = set(re.findall(r"- ``'([\w-]+)'``", pyblp.Optimization.__doc__))
    assert {"l-bfgs-b", "slsqp", "tnc", "powell", "knitro", "return"} <= documented
    for method in documented - {"knitro"}:
        dk.Optimization(method, compute_gradient=method not in ("nelder-mead", "powell"))


# ---------------------------------------------------------------------------------------------- Integration


def _sorted(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(nodes[:, ::-1].T)
    return nodes[order], weights[order]


NESTED_CASES = [
    *(("nested_product", 1, size) for size in range(1, MAX_LEVEL + 1)),
    ("nested_product", 2, 4),
    ("nested_product", 2, 9),
    ("nested_product", 3, 5),
    ("nested_product", 4, 3),
    *(("nested_grid", 1, size) for size in (1, 4, 9, 17)),
    ("nested_grid", 2, 3),
    ("nested_grid", 2, 9),
    ("nested_grid", 3, 4),
    ("nested_grid", 3, 7),
    ("nested_grid", 4, 5),
    ("nested_grid", 5, 4),
    ("nested_grid", 6, 3),
]


@pytest.mark.pyblp
@pytest.mark.parametrize(("specification", "dimensions", "size"), NESTED_CASES)
def test_nested_rules_match_pyblp(specification, dimensions, size):
    pyblp = _pyblp()
    nodes, weights = _sorted(*dk.Integration(specification, size).build(dimensions))
    theirs = pyblp.build_integration(pyblp.Integration(specification, size), dimensions)
    expected_nodes, expected_weights = _sorted(theirs.nodes, theirs.weights.ravel())
    assert nodes.shape == expected_nodes.shape
    np.testing.assert_allclose(nodes, expected_nodes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", range(1, MAX_LEVEL + 1))
def test_nested_rule_is_exact_to_degree_2l_minus_1(level):
    nodes, weights = nested_hermite(level)
    assert nodes[len(nodes) // 2] == 0 and np.array_equal(nodes, -nodes[::-1])
    for power in range(0, 2 * level, 2):
        expected = math.prod(range(power - 1, 0, -2)) if power else 1  # (power - 1)!!
        assert math.isclose(weights @ nodes**power, expected, rel_tol=1e-11), power


def test_nested_rules_are_nested_and_grids_smaller():
    for level in range(1, MAX_LEVEL):
        assert set(nested_hermite(level)[0]) <= set(nested_hermite(level + 1)[0])
    grid, nested = dk.Integration("grid", 5).build(3)[0], dk.Integration("nested_grid", 5).build(3)[0]
    assert nested.shape[0] < grid.shape[0]
    with pytest.raises(ValueError, match="at most 25"):
        dk.Integration("nested_grid", 26)
    assert "nested Gauss-Hermite" in str(dk.Integration("nested_product", 3))


def test_nested_grid_integrates_in_a_problem():
    """A problem built with a nested sparse grid (negative weights) solves."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    formulations = (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("0 + prices + sugar"))
    problem = dk.Problem(formulations, products, integration=dk.Integration("nested_grid", 4))
    results = _quiet(problem.solve, np.diag([1.0, 0.1]), method="1s", optimization=dk.Optimization("return"))
    assert np.isfinite(results.objective) and results.fp_converged.all()
