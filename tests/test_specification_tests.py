"""Specification tests on BLP results (issue 17): Hansen's J, Wald, Lagrange multiplier and distance statistics.

Against PyBLP 1.3.0 (``@pytest.mark.pyblp``), on the Nevo (2000) cereal data with its random coefficients and
demographics: PyBLP's statistics are computed at demandkit's estimates, by a one-step ``Optimization('return')``
solve at demandkit's parameters and final weighting matrix (so both libraries hold the same :math:`\\hat\\theta`,
:math:`W`, moments and covariances), and must agree to ``1e-8`` relative. Without PyBLP: a Wald test of a true and
of a false restriction, a distance test of a parameter fixed by bounds, the validation errors, and a small Monte
Carlo of the tests' size on simulated logit data.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from _synthetic import simulate
from scipy.stats import chi2

import demandkit as dk
from demandkit.exceptions import SpecificationError
from demandkit.interfaces.replications import NEVO_PI0, NEVO_SIGMA0

RTOL = 1e-8
NAN = np.nan


def relative_difference(actual: float, expected: float) -> float:
    return abs(actual - expected) / abs(expected)


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call PyBLP with its output and warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def pyblp_module() -> Any:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    return pyblp


# ------------------------------------------------------------------------------------------- Nevo against PyBLP


@cache
def nevo_problems() -> tuple[Any, Any]:
    """``(PyBLP, demandkit)`` problems of Nevo (2000): prices with product fixed effects, ``1 + prices + sugar +
    mushy`` with random coefficients, four demographics."""
    pyblp = pyblp_module()
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    problems = []
    for library in (pyblp, dk):
        formulations = (
            library.Formulation("0 + prices", absorb="C(product_ids)"),
            library.Formulation("1 + prices + sugar + mushy"),
        )
        demographics = library.Formulation("0 + income + income_squared + age + child")
        problems.append(quiet(library.Problem, formulations, products, demographics, agents))
    return problems[0], problems[1]


# sigma[prices, prices] fixed by equal bounds (NaN: unbounded, so that no other element sits at a bound)
RESTRICTED_SIGMA_BOUNDS = (np.diag([NAN, 2.0, NAN, NAN]), np.diag([NAN, 2.0, NAN, NAN]))


@cache
def nevo_estimates(restricted: bool) -> Any:
    """demandkit's two-step GMM estimates of Nevo's model from Nevo's starting values; ``restricted`` fixes
    ``sigma[prices, prices]`` at 2 with bounds (L-BFGS-B from the unrestricted estimates)."""
    problem = nevo_problems()[1]
    if not restricted:
        return problem.solve(
            NEVO_SIGMA0,
            NEVO_PI0,
            method="2s",
            optimization=dk.Optimization("bfgs", {"gtol": 1e-5}),
            check_optimality="gradient",
        )
    unrestricted = nevo_estimates(False)
    sigma = unrestricted.sigma.copy()
    sigma[1, 1] = 2.0
    return problem.solve(
        sigma,
        unrestricted.pi,
        method="2s",
        sigma_bounds=RESTRICTED_SIGMA_BOUNDS,
        optimization=dk.Optimization("l-bfgs-b", {"gtol": 1e-5}),
        check_optimality="gradient",
    )


def pyblp_at(results: Any, **arguments: Any) -> Any:
    """PyBLP's results at demandkit's parameters and final weighting matrix: one step at ``results.W`` with
    ``Optimization('return')``."""
    pyblp = pyblp_module()
    return quiet(
        nevo_problems()[0].solve,
        sigma=results.sigma,
        pi=results.pi,
        method="1s",
        W=results.W,
        optimization=pyblp.Optimization("return"),
        check_optimality="gradient",
        **arguments,
    )


def theta_index(results: Any, label: str) -> int:
    return results.theta_labels.index(label)


def nevo_restrictions(results: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two restrictions, one of them nonlinear, and their Jacobian (columns in parameter_covariances' order: theta,
    then the concentrated price coefficient): ``sigma[prices, prices] = 2`` and ``pi[prices, income] * beta = -60``."""
    P = results.parameter_covariances.shape[0]
    s, p = theta_index(results, "prices x prices"), theta_index(results, "prices x income")
    b = P - 1  # the concentrated price coefficient
    pi, beta = results.theta[p], results.beta[0, 0]
    restrictions = np.array([results.theta[s] - 2.0, pi * beta + 60.0])
    jacobian = np.zeros((2, P))
    jacobian[0, s] = 1.0
    jacobian[1, p], jacobian[1, b] = beta, pi
    return restrictions, jacobian


@pytest.mark.pyblp
def test_nevo_two_step_statistics_match_pyblp():
    """Nevo's model estimated by two-step GMM: J, Wald and LM equal PyBLP's at the same estimates."""
    results = nevo_estimates(False)
    assert results.converged and results.step == 2
    expected = pyblp_at(results)
    assert relative_difference(results.objective, float(expected.objective)) < RTOL  # the same point
    assert relative_difference(results.run_hansen_test(), expected.run_hansen_test()) < RTOL
    restrictions, jacobian = nevo_restrictions(results)
    wald = results.run_wald_test(restrictions, jacobian)
    assert relative_difference(wald, expected.run_wald_test(restrictions.reshape(-1, 1), jacobian)) < RTOL
    # at an interior minimum the score is zero to rounding, in both libraries
    J = results.run_hansen_test()
    assert abs(results.run_lm_test()) < RTOL * J and abs(expected.run_lm_test()) < RTOL * J


@pytest.mark.pyblp
def test_nevo_distance_and_restricted_statistics_match_pyblp():
    """sigma[prices, prices] fixed at 2 with equal bounds, as PyBLP restricts: the restricted results leave it out
    of their covariances (NaN standard error), and the distance statistic, the Wald statistic of the same
    restriction and the LM statistic at the restricted estimates equal PyBLP's."""
    unrestricted, restricted = nevo_estimates(False), nevo_estimates(True)
    assert restricted.sigma[1, 1] == 2.0 and np.isnan(restricted.sigma_se[1, 1])
    assert restricted.parameter_covariances.shape[0] == unrestricted.parameter_covariances.shape[0] - 1
    expected_unrestricted = pyblp_at(unrestricted)
    expected_restricted = pyblp_at(restricted, sigma_bounds=RESTRICTED_SIGMA_BOUNDS)
    assert relative_difference(restricted.objective, float(expected_restricted.objective)) < RTOL
    np.testing.assert_allclose(restricted.sigma_se, expected_restricted.sigma_se, rtol=RTOL)
    np.testing.assert_allclose(restricted.pi_se, expected_restricted.pi_se, rtol=RTOL)
    covariances = expected_restricted.parameter_covariances
    np.testing.assert_allclose(
        restricted.parameter_covariances, covariances, rtol=RTOL, atol=RTOL * np.abs(covariances).max()
    )

    distance = restricted.run_distance_test(unrestricted)
    assert relative_difference(distance, expected_restricted.run_distance_test(expected_unrestricted)) < RTOL
    assert distance == pytest.approx(restricted.objective - unrestricted.objective, rel=1e-12)

    s = theta_index(unrestricted, "prices x prices")
    R = np.eye(unrestricted.parameter_covariances.shape[0])[[s]]
    wald = unrestricted.run_wald_test([unrestricted.theta[s] - 2.0], R)
    assert relative_difference(wald, expected_unrestricted.run_wald_test([[unrestricted.theta[s] - 2.0]], R)) < RTOL

    # LM: the unrestricted model at the restricted estimates, weighted by the restricted W
    at_restricted = nevo_problems()[1].solve(
        restricted.sigma,
        restricted.pi,
        method="1s",
        W=restricted.W,
        optimization=dk.Optimization("return"),
        check_optimality="gradient",
    )
    lm = at_restricted.run_lm_test()
    assert relative_difference(lm, pyblp_at(restricted).run_lm_test()) < RTOL
    # the three statistics of one restriction are of the same order (each chi-squared with one degree of freedom)
    assert all(0.2 < statistic / distance < 5 for statistic in (wald, lm))


@pytest.mark.pyblp
@pytest.mark.parametrize("method", ["1s", "2s"])
def test_nevo_statistics_at_fixed_parameters_match_pyblp(method):
    """Both libraries run the whole one- or two-step procedure at Nevo's starting values (away from the minimum, so
    the LM statistic is far from zero): the four statistics agree to 1e-8."""
    pyblp = pyblp_module()
    expected_problem, problem = nevo_problems()
    arguments = {"method": method, "check_optimality": "gradient"}
    results = problem.solve(NEVO_SIGMA0, NEVO_PI0, optimization=dk.Optimization("return"), **arguments)
    expected = quiet(
        expected_problem.solve, NEVO_SIGMA0, NEVO_PI0, optimization=pyblp.Optimization("return"), **arguments
    )
    np.testing.assert_allclose(results.moments, expected.moments, rtol=RTOL, atol=RTOL * np.abs(expected.moments).max())
    J = results.run_hansen_test()
    assert relative_difference(J, expected.run_hansen_test()) < RTOL
    lm = results.run_lm_test()
    assert lm > 1 and relative_difference(lm, expected.run_lm_test()) < RTOL
    restrictions, jacobian = nevo_restrictions(results)
    expected_wald = expected.run_wald_test(restrictions.reshape(-1, 1), jacobian)
    assert relative_difference(results.run_wald_test(restrictions, jacobian), expected_wald) < RTOL
    # distance: sigma[prices, prices] fixed by bounds at its starting value (the same point, so the same objective
    # under one step; under two steps the weighting matrices are the same too)
    bounds = (np.diag([NAN, 2.4526, NAN, NAN]), np.diag([NAN, 2.4526, NAN, NAN]))
    restricted = problem.solve(
        NEVO_SIGMA0, NEVO_PI0, sigma_bounds=bounds, optimization=dk.Optimization("return"), **arguments
    )
    expected_restricted = quiet(
        expected_problem.solve,
        NEVO_SIGMA0,
        NEVO_PI0,
        sigma_bounds=bounds,
        optimization=pyblp.Optimization("return"),
        **arguments,
    )
    distance = restricted.run_distance_test(results)
    assert abs(distance - expected_restricted.run_distance_test(expected)) <= RTOL * J
    if method == "1s":
        # PyBLP's J after one step: the objective under the initial W = (Z'Z/N)^-1, not under updated_W = S^-1
        g, N = results.moments, problem.N
        assert J == pytest.approx(results.objective, rel=1e-12)
        assert J == pytest.approx(N * (g.T @ results.W @ g).item(), rel=1e-12)
        assert relative_difference(J, N * (g.T @ results.updated_W @ g).item()) > 1e-3


# ------------------------------------------------------------------------------------- synthetic, demandkit only


@cache
def synthetic_problem(seed: int = 0) -> Any:
    """A random-coefficients logit with known truth: beta = (-1, -2, 1) on (1, prices, x), sigma_x = 0.8."""
    products, agents = simulate(T=40, J=8, I=100, seed=seed)
    formulations = (dk.Formulation("1 + prices + x"), dk.Formulation("0 + x"))
    return dk.Problem(formulations, products.drop(columns="nesting_ids"), agent_data=agents)


SYNTHETIC_OPTIMIZATION = {"optimization": dk.Optimization("l-bfgs-b", {"gtol": 1e-8}), "check_optimality": "gradient"}


@cache
def synthetic_results(method: str = "2s", sigma_x: float | None = None) -> Any:
    """Unrestricted estimates, or with ``sigma_x`` fixed by equal bounds."""
    if sigma_x is None:
        return synthetic_problem().solve([[1.0]], method=method, **SYNTHETIC_OPTIMIZATION)
    return synthetic_problem().solve(
        [[sigma_x]], method=method, sigma_bounds=([[sigma_x]], [[sigma_x]]), **SYNTHETIC_OPTIMIZATION
    )


def test_wald_test_of_a_true_and_a_false_restriction():
    """V is ordered (sigma_x, beta); the true coefficients pass, a price coefficient of zero is rejected."""
    results = synthetic_results()
    estimates = np.r_[results.theta, results.beta[:, 0]]
    truth = np.array([0.8, -1.0, -2.0, 1.0])
    true_value = results.run_wald_test(estimates - truth, np.eye(4))
    assert true_value < chi2.ppf(0.95, 4)
    R = np.eye(4)[[2]]
    false_value = results.run_wald_test([estimates[2]], R)
    assert false_value > chi2.ppf(0.999, 1)
    # with one restriction the statistic is the squared t statistic
    assert false_value == pytest.approx((results.beta[1, 0] / results.beta_se[1, 0]) ** 2, rel=1e-10)
    # a column vector and a 1-D Jacobian of one restriction are read the same way
    assert results.run_wald_test([[estimates[2]]], R[0]) == pytest.approx(false_value, rel=1e-14)


def test_distance_test_of_a_parameter_fixed_by_bounds():
    unrestricted = synthetic_results()
    true_restriction, false_restriction = synthetic_results(sigma_x=0.8), synthetic_results(sigma_x=3.0)
    for restricted in (true_restriction, false_restriction):
        assert restricted.theta[0] == restricted.sigma[0, 0] and np.isnan(restricted.sigma_se[0, 0])
        assert restricted.parameter_covariances.shape == (3, 3)
    assert 0 <= true_restriction.run_distance_test(unrestricted) < chi2.ppf(0.95, 1)
    assert false_restriction.run_distance_test(unrestricted) > chi2.ppf(0.99, 1)  # 7.4 (sigma_x: 1.04, se 0.27)
    assert false_restriction.run_distance_test(unrestricted) == pytest.approx(
        false_restriction.run_hansen_test() - unrestricted.run_hansen_test(), rel=1e-12
    )


def test_hansen_test_is_the_objective_and_lm_vanishes_at_the_minimum():
    for method in ("1s", "2s"):
        results = synthetic_results(method)
        assert results.run_hansen_test() == pytest.approx(results.objective, rel=1e-12)
        assert results.moments.shape == (results.problem.MD, 1)
        assert abs(results.run_lm_test()) < 1e-10
    # df = M - P: 7 moments, 4 parameters
    assert synthetic_results().run_hansen_test() < chi2.ppf(0.999, 3)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("restrictions", "jacobian", "message"),
    [
        (np.zeros((2, 2)), np.zeros((2, 4)), r"restrictions must be a non-empty vector \(Q or Q x 1\).*\(2, 2\)"),
        ([], np.zeros((0, 4)), r"restrictions must be a non-empty vector.*\(0,\)"),
        ([0.1], np.zeros((2, 4)), r"restrictions_jacobian must be a 1 by 4 matrix.*received shape \(2, 4\)"),
        ([0.1, 0.2], np.zeros((2, 3)), r"restrictions_jacobian must be a 2 by 4 matrix.*received shape \(2, 3\)"),
        ([0.1, 0.2], np.zeros(4), r"restrictions_jacobian must be a 2 by 4 matrix.*received shape \(4,\)"),
        ([NAN], np.eye(4)[[0]], "restrictions has NaN or infinite values"),
        ([0.1], np.full((1, 4), np.inf), "restrictions_jacobian has NaN or infinite values"),
        (["a"], np.eye(4)[[0]], "restrictions must hold numbers"),
        ([0.1, 0.2], np.eye(4)[[1, 1]], r"R V R' is singular"),
    ],
)
def test_wald_test_validation(restrictions, jacobian, message):
    results = synthetic_results()
    with pytest.raises(SpecificationError, match=message) as raised:
        results.run_wald_test(restrictions, jacobian)
    assert isinstance(raised.value, ValueError)


def test_distance_test_validation():
    unrestricted, restricted = synthetic_results(), synthetic_results(sigma_x=0.8)
    with pytest.raises(TypeError, match="unrestricted must be ProblemResults; received float"):
        restricted.run_distance_test(unrestricted.objective)
    with pytest.raises(SpecificationError, match="must estimate more.*swapped"):
        unrestricted.run_distance_test(restricted)
    # another problem: one instrument fewer, or other data of the same dimensions
    products, agents = simulate(T=40, J=8, I=100, seed=0)
    formulations = (dk.Formulation("1 + prices + x"), dk.Formulation("0 + x"))
    fewer = dk.Problem(formulations, products.drop(columns=["nesting_ids", "demand_instruments4"]), agent_data=agents)
    with pytest.raises(SpecificationError, match="another problem: MD is 6 there and 7 here"):
        restricted.run_distance_test(fewer.solve([[1.0]], **SYNTHETIC_OPTIMIZATION))
    other_products, other_agents = simulate(T=40, J=8, I=100, seed=1)
    other = dk.Problem(formulations, other_products.drop(columns="nesting_ids"), agent_data=other_agents)
    with pytest.raises(SpecificationError, match="another problem: its demand instruments differ"):
        restricted.run_distance_test(other.solve([[1.0]], **SYNTHETIC_OPTIMIZATION))
    # under the same weighting matrix (one step from the same initial W), an unrestricted objective above the
    # restricted minimum means the unrestricted estimation stopped short of its minimum
    restricted_1s = synthetic_results("1s", sigma_x=0.8)
    not_minimized = synthetic_problem().solve(
        [[3.0]], method="1s", optimization=dk.Optimization("return"), check_optimality="gradient"
    )
    with pytest.raises(SpecificationError, match="unrestricted objective .* exceeds the restricted one"):
        restricted_1s.run_distance_test(not_minimized)
    assert restricted_1s.run_distance_test(synthetic_results("1s")) >= 0


# ------------------------------------------------------------------------------------------------ Monte Carlo


def test_size_of_the_tests_in_a_monte_carlo():
    """200 simulated logit samples (25 markets of 6 products, 7 moments, 3 parameters), the price coefficient at its
    true value -2: J (4 degrees of freedom), and the Wald, distance and LM tests of beta_prices = -2 (one degree of
    freedom) reject at 5% in 3-9% of samples (measured: 6.0, 6.5, 4.0 and 4.0%), and their means are within 25% of
    their degrees of freedom (measured: 4.27, 1.15, 0.96, 1.00). The distance statistic is negative in some samples
    (9%): each two-step estimation weights by its own first step's S^-1, as in PyBLP, and that is not an error."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        statistics = []
        for seed in range(200):
            products = simulate(T=25, J=6, I=1, seed=1000 + seed, sigma_x=0.0)[0].drop(columns="nesting_ids")
            problem = dk.Problem(dk.Formulation("1 + prices + x"), products)
            fixed = {"beta": [NAN, -2.0, NAN], "beta_bounds": ([NAN, -2.0, NAN], [NAN, -2.0, NAN])}
            unrestricted = problem.solve(check_optimality="gradient")
            restricted = problem.solve(check_optimality="gradient", **fixed)
            at_restricted = problem.solve(
                beta=[NAN, -2.0, NAN],
                method="1s",
                W=restricted.W,
                optimization=dk.Optimization("return"),
                check_optimality="gradient",
            )
            statistics.append(
                (
                    unrestricted.run_hansen_test(),
                    unrestricted.run_wald_test([unrestricted.beta[1, 0] + 2.0], np.eye(3)[[1]]),
                    restricted.run_distance_test(unrestricted),
                    at_restricted.run_lm_test(),
                )
            )
    finally:
        torch.set_num_threads(threads)
    critical = np.array([chi2.ppf(0.95, 4), chi2.ppf(0.95, 1), chi2.ppf(0.95, 1), chi2.ppf(0.95, 1)])
    statistics = np.array(statistics)
    rejections = (statistics > critical).mean(axis=0)
    assert np.all((rejections >= 0.03) & (rejections <= 0.09)), rejections
    ratios = statistics.mean(axis=0) / np.array([4, 1, 1, 1])
    assert np.all((ratios > 0.8) & (ratios < 1.25)), ratios
    assert (statistics[:, 2] < 0).any()
