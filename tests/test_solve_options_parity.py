"""PyBLP parity of ``Problem.solve``'s arguments added for issue 13: the signature in PyBLP's order,
``scale_objective``, ``finite_differences``, ``error_behavior`` and ``error_punishment``, ``fp_type``,
``shares_bounds`` (and ``clipped_shares``) and ``delta_behavior='logit'``.

Designs
    ``nevo``   Nevo (2000): product fixed effects, four random coefficients, four demographics, at the starting values
               of PyBLP's tutorial (``Optimization('return')``): quantities compared to ``1e-8``.
    ``small``  Nevo's data with random coefficients on the constant and prices and an income interaction (four
               parameters), estimated by both libraries with L-BFGS-B: estimates compared to ``1e-8`` (the runs take
               the same steps), except with finite differences, whose gradients carry noise of about
               :math:`10^{-14}/\\sqrt{\\epsilon_{mach}}` relative, so that the optimizers stop at points that agree to
               about ``1e-5``.
"""

from __future__ import annotations

import inspect
import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk
from demandkit.blp import estimation
from demandkit.blp.failures import EstimationError

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

RTOL = 1e-8
FD_RTOL = 1e-4  # estimates with finite-difference gradients (see the module docstring)
NEVO_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI = np.array(
    [[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]
)
SMALL_SIGMA = np.diag([0.3, 2.0])
SMALL_PI = np.array([[1.0], [5.0]])


@pytest.fixture(scope="module", autouse=True)
def single_threaded():
    """One torch thread: demandkit's tensors here are small, and intra-op threads only add synchronization."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual: Any, expected: Any, name: str, rtol: float = RTOL) -> None:
    """Same shape and NaN pattern, and ``|a - e| <= rtol |e| + rtol max|e|`` elsewhere."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{name}: NaN pattern differs")
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=rtol * scale, err_msg=name)


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call with warnings silenced (PyBLP's, and demandkit's convergence warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@cache
def nevo_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION), pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)


@cache
def problem(library: Any, design: str) -> Any:
    """The design's problem in ``library`` (PyBLP or demandkit; cached)."""
    products, agents = nevo_data()
    F = library.Formulation
    if design == "nevo":
        formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices + sugar + mushy"))
        demographics = F("0 + income + income_squared + age + child")
    elif design == "nested":
        products = products.assign(nesting_ids=products["mushy"])
        formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices + sugar"))
        return quiet(library.Problem, formulations, products, agent_data=agents.drop(columns="nodes3"))
    else:
        assert design == "small"
        formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices"))
        demographics = F("0 + income")
    return quiet(library.Problem, formulations, products, demographics, agents)


def at_start(library: Any, **options: Any) -> Any:
    """Nevo's model evaluated at the tutorial's starting values."""
    arguments = {"method": "1s", "optimization": library.Optimization("return"), "check_optimality": "gradient"}
    return quiet(problem(library, "nevo").solve, NEVO_SIGMA, NEVO_PI, **(arguments | options))


def estimated(library: Any, method: str = "2s", **options: Any) -> Any:
    """The small design estimated with L-BFGS-B (PyBLP's default options)."""
    optimization = library.Optimization("l-bfgs-b", {"ftol": 0, "gtol": 1e-8})
    arguments = {"method": method, "optimization": optimization, "check_optimality": "gradient"}
    return quiet(problem(library, "small").solve, SMALL_SIGMA, SMALL_PI, **(arguments | options))


@cache
def both_at_start(**options: Any) -> tuple[Any, Any]:
    return at_start(pyblp, **options), at_start(dk, **options)


@cache
def both_estimated(method: str = "2s", **options: Any) -> tuple[Any, Any]:
    return estimated(pyblp, method, **options), estimated(dk, method, **options)


def assert_same_evaluation(actual: Any, expected: Any, rtol: float = RTOL) -> None:
    for name in ("objective", "gradient", "delta", "beta", "xi"):
        assert_close(getattr(actual, name), getattr(expected, name), name, rtol)


def assert_same_estimates(actual: Any, expected: Any, rtol: float = RTOL) -> None:
    for name in ("objective", "theta", "beta", "sigma_se", "pi_se", "beta_se", "delta"):
        assert_close(getattr(actual, name), getattr(expected, name), name, rtol)


# -------------------------------------------------------------------------------------------------- the signature


def test_signature_has_pyblps_positional_order():
    expected = list(inspect.signature(pyblp.Problem.solve).parameters)
    for function, first in ((dk.Problem.solve, "self"), (estimation.solve, "problem")):
        parameters = list(inspect.signature(function).parameters.values())
        assert [p.name for p in parameters[: len(expected)]] == [first, *expected[1:]]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[len(expected) :])
    extra = {p.name for p in list(inspect.signature(dk.Problem.solve).parameters.values())[len(expected) :]}
    assert extra == {"progress", "distributed", "starts", "starts_options", "executor"}


def test_positional_call_means_what_it_means_in_pyblp():
    """``solve(sigma, pi, rho, phi, beta, gamma, 6 x bounds, delta, method, initial_update, optimization,
    scale_objective, check_optimality)`` by position, in both libraries, equals demandkit's call by keyword."""

    def positional(library: Any) -> Any:
        optimization = library.Optimization("return")
        arguments = [NEVO_SIGMA, NEVO_PI] + [None] * 11 + ["1s", None, optimization, False, "gradient"]
        return quiet(problem(library, "nevo").solve, *arguments)

    by_position, by_keyword = positional(dk), at_start(dk, scale_objective=False)
    assert_same_evaluation(by_position, by_keyword, rtol=0)
    assert_same_evaluation(by_position, positional(pyblp))


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"scale_objective": "yes"}, "scale_objective must be True or False"),
        ({"finite_differences": 1}, "finite_differences must be True or False"),
        ({"error_behavior": "ignore"}, "error_behavior must be one of 'revert', 'punish', 'raise'"),
        ({"error_punishment": -1}, "error_punishment must be a non-negative float"),
        ({"fp_type": "exact"}, "fp_type must be one of 'safe_linear', 'linear', 'safe_nonlinear', 'nonlinear'"),
        ({"shares_bounds": (0.5, 0.1)}, "shares_bounds must have lb < ub"),
        ({"shares_bounds": 1e-300}, r"shares_bounds must be None or a tuple \(lb, ub\)"),
        ({"delta_behavior": "middle"}, "delta_behavior must be one of 'first', 'last', 'logit'"),
    ],
)
def test_bad_options_name_the_argument_and_the_allowed_values(arguments, match):
    with pytest.raises(dk.exceptions.SpecificationError, match=match):
        at_start(dk, **arguments)


# -------------------------------------------------------------------------------------------------- scale_objective


def test_unscaled_objective_and_gradient_at_start():
    expected, actual = both_at_start(scale_objective=False)
    assert_same_evaluation(actual, expected)
    scaled = both_at_start()[1]
    N = problem(dk, "nevo").N
    assert_close(actual.objective * N, scaled.objective, "objective x N", rtol=1e-13)
    assert_close(actual.gradient * N, scaled.gradient, "gradient x N", rtol=1e-12)


def test_unscaled_objective_estimates():
    expected, actual = both_estimated(scale_objective=False)
    assert_same_estimates(actual, expected)
    assert actual.converged and expected.converged
    # the J statistic is N times the unscaled objective, as in PyBLP
    assert_close(actual.run_hansen_test(), expected.run_hansen_test(), "J")
    assert_close(actual.run_hansen_test(), problem(dk, "small").N * actual.objective, "J = N q")


# -------------------------------------------------------------------------------------------------- finite_differences


def test_finite_difference_gradient_at_start():
    expected, actual = both_at_start(finite_differences=True)
    analytic = both_at_start()[1]
    assert_close(actual.gradient, analytic.gradient, "finite-difference gradient against autograd's", rtol=1e-5)
    assert_close(actual.gradient, expected.gradient, "finite-difference gradient against PyBLP's", rtol=1e-5)
    for name in ("objective", "delta", "beta"):
        assert_close(getattr(actual, name), getattr(expected, name), name)


def test_finite_difference_estimates():
    expected, actual = both_estimated("1s", finite_differences=True)
    assert_same_estimates(actual, expected, rtol=FD_RTOL)
    analytic = both_estimated("1s")[1]
    assert_same_estimates(actual, analytic, rtol=FD_RTOL)


# -------------------------------------------------------------------------------------------------- fp_type


@pytest.mark.parametrize("fp_type", ["linear", "safe_nonlinear", "nonlinear"])
def test_fp_types_solve_the_same_fixed_point(fp_type):
    expected, actual = both_at_start(fp_type=fp_type)
    assert_same_evaluation(actual, expected)
    assert_same_evaluation(actual, both_at_start()[1], rtol=1e-10)


def test_nonlinear_fixed_point_estimates():
    """The tolerance of the nonlinear contraction applies to :math:`e^\\delta` (PyBLP's documented meaning), so the
    objective carries other rounding than with the linear contraction and the optimizers stop about ``1e-7`` apart
    near the flat optimum. (PyBLP 1.3 itself iterates the linear contraction for every ``fp_type``: its test for the
    linear types, ``'linear' in fp_type``, also matches ``'nonlinear'``.)"""
    expected, actual = both_estimated(fp_type="nonlinear")
    assert_same_estimates(actual, expected, rtol=1e-6)
    assert_same_estimates(actual, both_estimated()[1], rtol=1e-6)


# -------------------------------------------------------------------------------------------------- delta_behavior


def test_logit_starting_delta_estimates():
    expected, actual = both_estimated(delta_behavior="logit")
    assert_same_estimates(actual, expected)


def test_logit_starting_delta_with_nests():
    """Under nesting the start is the nested logit's closed form at each evaluation's rho."""
    options = {"method": "1s", "check_optimality": "gradient", "delta_behavior": "logit"}
    sigma, rho = np.diag([0.3, 1.5, 0.05]), [[0.3], [0.5]]
    results = [
        quiet(problem(library, "nested").solve, sigma, rho=rho, optimization=library.Optimization("return"), **options)
        for library in (pyblp, dk)
    ]
    assert_same_evaluation(results[1], results[0])


# -------------------------------------------------------------------------------------------------- shares_bounds


def test_default_shares_bounds_clip_nothing():
    expected, actual = both_at_start()
    assert actual.clipped_shares.shape == expected.clipped_shares.shape == (problem(dk, "nevo").N, 1)
    assert actual.clipped_shares.dtype == bool and not actual.clipped_shares.any() and not expected.clipped_shares.any()


@pytest.mark.parametrize("bounds", [(1e-3, None), (None, 0.05), (1e-3, 0.05)])
def test_binding_shares_bounds(bounds):
    """Thirty plain iterations of the clipped contraction: the same iterates, and the same clipped shares."""
    results = [
        at_start(library, shares_bounds=bounds, iteration=library.Iteration("simple", {"max_evaluations": 30}))
        for library in (pyblp, dk)
    ]
    for name in ("objective", "delta", "beta"):
        assert_close(getattr(results[1], name), getattr(results[0], name), name)
    np.testing.assert_array_equal(results[1].clipped_shares, results[0].clipped_shares)
    assert results[1].clipped_shares.any()


# -------------------------------------------------------------------------------------------------- error_behavior


def failing_at_start(library: Any, **options: Any) -> Any:
    """Nevo at the start with two plain iterations of the contraction: every market's inversion fails."""
    return at_start(library, iteration=library.Iteration("simple", {"max_evaluations": 2}), **options)


@pytest.mark.parametrize("behavior, punishment", [("revert", 1), ("revert", 3), ("punish", 7)])
def test_failed_inversion_is_punished_as_in_pyblp(behavior, punishment):
    expected = failing_at_start(pyblp, error_behavior=behavior, error_punishment=punishment)
    actual = failing_at_start(dk, error_behavior=behavior, error_punishment=punishment)
    assert not actual.fp_converged.any() and not expected.fp_converged.any()
    for name in ("objective", "delta", "beta"):
        assert_close(getattr(actual, name), getattr(expected, name), name)
    if behavior == "punish":
        assert float(actual.objective) == punishment and not actual.gradient.any()
    else:
        assert_close(actual.objective, punishment * failing_at_start(dk).objective, "punished objective")


def test_raise_on_a_failed_inversion():
    with pytest.raises(pyblp.exceptions.MultipleErrors):
        failing_at_start(pyblp, error_behavior="raise")
    with pytest.raises(EstimationError, match="error_behavior='raise'.*inversion for delta failed.*94 of 94 markets"):
        failing_at_start(dk, error_behavior="raise")
    with pytest.raises(EstimationError, match="inversion for delta failed"):  # inside the optimizer
        estimated(dk, "1s", iteration=dk.Iteration("squarem", {"max_evaluations": 1}), error_behavior="raise")


def test_punished_evaluations_stop_the_optimizer_at_the_start():
    """Every evaluation fails: 'punish' returns a constant objective and a zero gradient, so L-BFGS-B stops at the
    starting values in both libraries."""
    iteration = {"max_evaluations": 1}
    results = [
        estimated(library, "1s", iteration=library.Iteration("simple", iteration), error_behavior="punish")
        for library in (pyblp, dk)
    ]
    for result in results:
        assert_close(result.theta.ravel(), [0.3, 2.0, 1.0, 5.0], "theta")
        assert float(result.objective) == 1
