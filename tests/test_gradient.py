"""The autograd gradient (implicit function theorem through the inversion) against finite differences."""

import numpy as np
import pytest
from _synthetic import simulate

import demandkit as dk
from demandkit.blp.demand import DemandModel
from demandkit.blp.objective import EvaluationStats, GMMObjective
from demandkit.blp.parameters import ParameterSpace
from demandkit.kernels.gmm import invert


def assert_matches_finite_differences(objective, theta, gradient, labels):
    """Central differences of the objective agree with the autograd gradient to 1e-6 (relative)."""
    for p in range(theta.size):
        h = 1e-5 * max(1.0, abs(theta[p]))
        up, down = theta.copy(), theta.copy()
        up[p] += h
        down[p] -= h
        numeric = (objective(up)[0] - objective(down)[0]) / (2 * h)
        assert abs(gradient[p] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (labels[p], gradient[p], numeric)


CASES = {
    "rc_demographics": dict(nested=False, absorb=None, rc_types=None),
    "rcnl": dict(nested=True, absorb=None, rc_types=None),
    "absorbed_fe": dict(nested=False, absorb="C(product_ids)", rc_types=None),
    "lognormal": dict(nested=False, absorb=None, rc_types=("linear", "log")),
}


def _objective(spec):
    """A GMM objective on a simulated problem of the kind ``spec`` describes, its theta and parameter labels."""
    products, agents = simulate(T=12, J=6, I=40, seed=5, rho=0.5 if spec["nested"] else None)
    if not spec["nested"]:
        products = products.drop(columns="nesting_ids")
    X1 = dk.Formulation("0 + prices", absorb=spec["absorb"]) if spec["absorb"] else dk.Formulation("1 + prices + x")
    problem = dk.Problem(
        (X1, dk.Formulation("1 + x")), products, dk.Formulation("0 + income"), agents, rc_types=spec["rc_types"]
    )
    sigma = np.array([[0.4, 0.0], [0.2, 0.6]])
    pi = np.array([[0.0], [0.3]])
    rho = 0.5 if spec["nested"] else None
    space = ParameterSpace.for_problem(problem, sigma, pi, rho, bounded=False)
    return _gmm_objective(problem, space), space.theta0, space.labels


def _gmm_objective(problem, space):
    """The one-step GMM objective of ``problem`` with the 2SLS weighting matrix, as ``solve`` builds it."""
    W = invert(problem.ZD_tensor.T @ problem.ZD_tensor / problem.N)[0]
    return GMMObjective(
        problem,
        DemandModel(problem).fix_nodes(space.sigma0),
        space,
        dk.Iteration("squarem"),
        W,
        problem.logit_delta.clone(),
        "first",
        EvaluationStats(),
        (-np.inf, np.inf),
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    objective, theta, labels = _objective(CASES[case])
    value, gradient = objective(theta)
    assert np.isfinite(value) and gradient.shape == theta.shape
    assert_matches_finite_differences(objective, theta, gradient, labels)


@pytest.mark.parametrize("case", ["rc_demographics", "rcnl"])
def test_hessian_matches_second_differences_of_the_objective(case):
    """The Hessian from central differences of the analytic gradient against second differences of the objective
    values alone, :math:`(q(\\theta + h e_p + h e_r) - q(\\theta + h e_p - h e_r) - q(\\theta - h e_p + h e_r)
    + q(\\theta - h e_p - h e_r))/4h^2`."""
    from demandkit.blp.hessian import objective_hessian

    objective, theta, labels = _objective(CASES[case])
    objective(theta)
    hessian = objective_hessian(objective, theta)
    h = 1e-4
    for p in range(theta.size):
        for r in range(p, theta.size):
            values = []
            for a, b in [(1, 1), (1, -1), (-1, 1), (-1, -1)]:
                shifted = theta.copy()
                shifted[p] += a * h
                shifted[r] += b * h
                values.append(objective.evaluate(shifted, gradient=False).objective)
            numeric = (values[0] - values[1] - values[2] + values[3]) / (4 * h * h)
            scale = max(1.0, np.abs(hessian).max())
            assert abs(hessian[p, r] - numeric) <= 1e-4 * scale, (labels[p], labels[r], hessian[p, r], numeric)
    assert np.array_equal(hessian, hessian.T)


def test_objective_recalls_only_the_latest_thetas_bit_for_bit():
    from demandkit.blp.objective import RECALLED

    objective, theta, _ = _objective(CASES["rc_demographics"])
    value, gradient = objective(theta)
    again = objective(theta.copy())
    assert again[0] == value and np.array_equal(again[1], gradient)
    assert (objective.stats.evaluations, objective.stats.repeated) == (1, 1)
    nearby = theta.copy()
    nearby[0] = np.nextafter(nearby[0], np.inf)  # one unit in the last place away: computed
    objective(nearby)
    assert (objective.stats.evaluations, objective.stats.repeated) == (2, 1)
    for k in range(RECALLED):
        objective(theta * (1 + 1e-3 * (k + 1)))
    objective(theta)  # pushed out of memory by the later ones: computed again, to the inversion's tolerance
    assert (objective.stats.evaluations, objective.stats.repeated) == (3 + RECALLED, 1)
    assert objective.last.objective == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("method", ["squarem", "simple", "newton"])
def test_iteration_methods_agree(method):
    products, agents = simulate(T=6, J=5, I=30, seed=6)
    products = products.drop(columns="nesting_ids")
    problem = dk.Problem((dk.Formulation("1 + prices + x"), dk.Formulation("1 + x")), products, None, agents)
    sigma = np.diag([0.5, 0.8])
    reference = problem.solve(sigma, optimization=dk.Optimization("return"), method="1s")
    results = problem.solve(sigma, optimization=dk.Optimization("return"), method="1s", iteration=dk.Iteration(method))
    assert results.fp_converged.all()
    np.testing.assert_allclose(results.delta, reference.delta, rtol=1e-11, atol=1e-12)


def test_failed_inversion_is_reported_not_hidden():
    products, agents = simulate(T=6, J=5, I=30, seed=7)
    products = products.drop(columns="nesting_ids")
    problem = dk.Problem((dk.Formulation("1 + prices + x"), dk.Formulation("1 + x")), products, None, agents)
    with pytest.warns(dk.exceptions.ConvergenceWarning, match="did not converge"):
        results = problem.solve(
            np.diag([2.0, 3.0]),
            optimization=dk.Optimization("return"),
            method="1s",
            iteration=dk.Iteration("simple", {"max_evaluations": 3}),
        )
    assert not results.fp_converged.all()
    assert "did not converge" in str(results)
    assert not any(results.to_dict()["fp_converged"])


SUPPLY_DESIGNS = {
    "price_in_X1": ("1 + prices + x", "0 + x", [[0.6]]),
    "price_in_X2": ("1 + prices + x", "0 + x + prices", [[0.6, 0.0], [0.0, 0.3]]),
    "quadratic_price": ("1 + prices + I(prices ** 2) + x", "0 + x", [[0.6]]),  # alpha varies by product
}


@pytest.mark.parametrize("design", sorted(SUPPLY_DESIGNS))
@pytest.mark.parametrize("costs_type", ["linear", "log"])
def test_supply_gradient_matches_finite_differences(costs_type, design):
    """Demand and supply moments together: markups through the share Jacobian, alpha as a nonlinear parameter."""
    X1, X2, sigma = SUPPLY_DESIGNS[design]
    products, agents = simulate(T=10, J=6, I=40, seed=9)
    products = products.drop(columns="nesting_ids").assign(
        w=lambda d: np.random.default_rng(1).uniform(1, 2, len(d)),
        supply_instruments0=lambda d: d.demand_instruments0,
        supply_instruments1=lambda d: d.demand_instruments3,
        prices=lambda d: d.prices + 3.0,  # keep marginal costs positive for log costs
    )
    problem = dk.Problem(
        (dk.Formulation(X1), dk.Formulation(X2), dk.Formulation("1 + w")),
        products,
        None,
        agents,
        costs_type=costs_type,
    )
    beta = [np.nan, -1.5] + [np.nan] * (problem.K1 - 2)
    space = ParameterSpace.for_problem(problem, sigma, None, None, bounded=False, beta=beta)
    from demandkit.blp.estimation import _initial_W
    from demandkit.blp.objective import StackedSystem

    W = _initial_W(problem, StackedSystem.build(problem, space), None)
    objective = GMMObjective(
        problem,
        DemandModel(problem),
        space,
        dk.Iteration("squarem"),
        W,
        problem.logit_delta.clone(),
        "first",
        EvaluationStats(),
        (1e-3, np.inf),
    )
    theta = space.theta0
    value, gradient = objective(theta)
    assert np.isfinite(value) and space.labels[-1] == "beta[prices]"
    assert_matches_finite_differences(objective, theta, gradient, space.labels)


def test_supply_needs_price_coefficient_and_firms():
    products, agents = simulate(T=4, J=4, I=10, seed=10)
    products = products.drop(columns="nesting_ids").assign(supply_instruments0=lambda d: d.demand_instruments0)
    formulations = (dk.Formulation("1 + prices + x"), dk.Formulation("0 + x"), dk.Formulation("1 + x"))
    problem = dk.Problem(formulations, products, None, agents)
    with pytest.raises(ValueError, match="prices"):
        problem.solve(sigma=[[0.5]])
    with pytest.raises(ValueError, match="firm_ids"):
        dk.Problem(formulations, products.drop(columns="firm_ids"), None, agents)
    with pytest.raises(ValueError, match="costs_type"):
        dk.Problem(formulations, products, None, agents, costs_type="quadratic")


def test_nodes_stay_with_their_columns_when_a_sigma_reaches_zero():
    """With fewer node columns than X2 columns, nodes go to the columns of the starting Sigma's nonzero pattern
    (as PyBLP). An element that reaches zero in the optimization (its bound) must not hand its nodes to the next
    column: the objective equals that of the same problem with the nodes laid out column by column."""
    products, agents = simulate(T=10, J=6, I=40, seed=9)
    products = products.drop(columns="nesting_ids")
    laid_out = agents.assign(nodes2=agents["nodes1"], nodes1=0.0)  # nodes0 -> '1', nothing -> prices, nodes1 -> x
    formulations = (dk.Formulation("1 + prices + x"), dk.Formulation("1 + prices + x"))
    sigma0 = np.diag([0.5, 0.0, 0.8])
    objectives = []
    for agent_data in (agents, laid_out):
        problem = dk.Problem(formulations, products, None, agent_data)
        space = ParameterSpace.for_problem(problem, sigma0, None, None, bounded=True)
        objective = _gmm_objective(problem, space)
        at_zero = space.theta0.copy()
        at_zero[0] = 0.0  # sigma on the constant at its lower bound
        objectives.append([objective(space.theta0)[0], objective(at_zero)[0]])
    np.testing.assert_allclose(objectives[0], objectives[1], rtol=1e-10)
