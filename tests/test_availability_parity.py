"""Agent-specific availability (PyBLP's ``availability0..`` agent columns, issue 13): the objective, its gradient,
delta, the estimates' SEs and the post-estimation methods (shares, elasticities, diversion, consumer surplus, costs and
equilibrium prices) equal PyBLP's at the same parameters, with zero and fractional availability; bucketed markets
give the same; the inputs are checked."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.exceptions import InvalidDataError, SpecificationError

pyblp = pytest.importorskip("pyblp")
pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])


def data():
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    J = int(products.groupby("market_ids").size().max())
    rng = np.random.default_rng(0)
    availability = (rng.uniform(size=(len(agents), J)) > 0.2).astype(float)
    availability[:, 0] = 0.5  # fractional availability of each market's first product
    return products, agents.assign(**{f"availability{j}": availability[:, j] for j in range(J)})


def solve(library, **kwargs):
    products, agents = data()
    formulations = (
        library.Formulation("0 + prices", absorb="C(product_ids)"),
        library.Formulation("1 + prices + sugar + mushy"),
    )
    demographics = library.Formulation("0 + income + income_squared + age + child")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = library.Problem(formulations, products, demographics, agents, **kwargs)
        return problem.solve(SIGMA, PI, method="1s", optimization=library.Optimization("return"))


@pytest.fixture(scope="module")
def both():
    return solve(pyblp), solve(dk)


def close(actual, expected, name, rtol=1e-8):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, name
    scale = float(np.nanmax(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=name)


def test_estimation_quantities_match_pyblp(both):
    expected, actual = both
    close(actual.objective, np.squeeze(expected.objective), "objective")
    for name in ("gradient", "delta", "beta", "xi", "pi_se", "beta_se"):
        close(getattr(actual, name), getattr(expected, name), name)


def test_post_estimation_matches_pyblp(both):
    expected, actual = both
    for method in ("compute_shares", "compute_elasticities", "compute_diversion_ratios", "compute_consumer_surpluses"):
        close(getattr(actual, method)(), getattr(expected, method)(), method)
    costs = expected.compute_costs()
    close(actual.compute_costs(), costs, "compute_costs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        close(actual.compute_prices(costs=1.1 * costs), expected.compute_prices(costs=1.1 * costs), "compute_prices")


def test_buckets_give_the_same(both):
    _, whole = both
    bucketed = solve(dk, buckets=4)
    for name in ("objective", "gradient", "delta"):
        close(getattr(bucketed, name), getattr(whole, name), name, rtol=1e-10)


def test_availability_inputs_are_checked():
    products, agents = data()
    formulations = (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("1 + prices"))
    with pytest.raises(InvalidDataError, match="availability0..availability"):
        dk.Problem(formulations, products, None, agents.drop(columns="availability23"))
    with pytest.raises(InvalidDataError, match="non-negative"):
        dk.Problem(formulations, products, None, agents.assign(availability3=-1.0))
    with pytest.raises(SpecificationError, match="random coefficients"):
        dk.Problem(formulations[0], products, None, agents)


def test_problem_agents_are_pyblps_records():
    """``problem.agents``: PyBLP's record array (market ids, agent ids, weights, nodes, demographics, availability),
    field for field."""
    products, agents = data()
    problems = []
    for library in (pyblp, dk):
        formulations = (library.Formulation("0 + prices", absorb="C(product_ids)"), library.Formulation("1 + prices"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problems.append(library.Problem(formulations, products, library.Formulation("0 + income"), agents))
    expected, actual = (problem.agents for problem in problems)
    assert actual.dtype.names == expected.dtype.names
    for name in expected.dtype.names:
        assert actual[name].shape == expected[name].shape, name
        if expected[name].dtype == object:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
        else:
            close(actual[name], expected[name], name, rtol=1e-14)
