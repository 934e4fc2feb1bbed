"""Bad input raises a clear ValueError naming the column, market or parameter at fault."""

import numpy as np
import pandas as pd
import pytest
from _synthetic import simulate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import demandkit as dk


@pytest.fixture(scope="module")
def data():
    products, agents = simulate(T=5, J=4, I=10, seed=8)
    return products.drop(columns="nesting_ids"), agents


def _rc(products, agents, **kwargs):
    return dk.Problem(
        (dk.Formulation("1 + prices + x"), dk.Formulation("1 + x")),
        products,
        dk.Formulation("0 + income"),
        agents,
        **kwargs,
    )


def _logit(products):
    return dk.Problem(dk.Formulation("1 + prices + x"), products)


@pytest.mark.parametrize("column", ["market_ids", "shares"])
def test_missing_required_column(data, column):
    with pytest.raises(ValueError, match=column):
        _logit(data[0].drop(columns=column))


def test_unknown_formula_column(data):
    with pytest.raises(ValueError, match="sugar"):
        dk.Problem(dk.Formulation("1 + prices + sugar"), data[0])


@pytest.mark.parametrize("column", ["prices", "x", "demand_instruments2"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(data, column, bad):
    products = data[0].copy()
    products.loc[3, column] = bad
    with pytest.raises(ValueError, match=column):
        _logit(products)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.integers(0, 19), value=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0)))
def test_shares_outside_unit_interval(data, row, value):
    products = data[0].copy()
    products.loc[row, "shares"] = value
    with pytest.raises(ValueError, match="shares"):
        _logit(products)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(market=st.integers(0, 4), total=st.floats(min_value=1.0, max_value=3.0))
def test_shares_summing_to_one_name_the_market(data, market, total):
    products = data[0].copy()
    rows = products.market_ids == market
    products.loc[rows, "shares"] = total / rows.sum()
    with pytest.raises(ValueError, match=f"market {market}"):
        _logit(products)


def test_agent_markets_must_match(data):
    products, agents = data
    with pytest.raises(ValueError, match="no products"):
        _rc(products, pd.concat([agents, agents.assign(market_ids=99)]))
    with pytest.raises(ValueError, match="no agents"):
        _rc(products, agents[agents.market_ids != 2])


@pytest.mark.parametrize("weight", [0.0, -0.1])
def test_non_positive_weights(data, weight):
    products, agents = data
    agents = agents.copy()
    agents.loc[5, "weights"] = weight
    with pytest.raises(ValueError, match="weights"):
        _rc(products, agents)


def test_collinear_regressors_and_instruments(data):
    products = data[0].assign(x2=lambda d: 2 * d.x)
    with pytest.raises(ValueError, match="x2"):
        dk.Problem(dk.Formulation("1 + prices + x + x2"), products)
    with pytest.raises(ValueError, match="demand_instruments5"):
        _logit(products.assign(demand_instruments5=lambda d: d.demand_instruments0 + d.demand_instruments1))


def test_under_identified(data):
    products = data[0][["market_ids", "shares", "prices", "x", "demand_instruments0"]]
    problem = dk.Problem((dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")), products, None, data[1])
    with pytest.raises(ValueError, match="under-identified"):
        problem.solve(sigma=[[1.0]])


def test_parameter_shapes_and_options(data):
    problem = _rc(*data)
    with pytest.raises(ValueError, match="sigma must be 2 by 2"):
        problem.solve(sigma=np.eye(3), pi=[[0], [1]])
    with pytest.raises(ValueError, match="method must be one of"):
        problem.solve(sigma=np.eye(2), pi=[[0], [1]], method="3s")
    with pytest.raises(ValueError, match="se_type"):
        problem.solve(sigma=np.eye(2), pi=[[0], [1]], se_type="hc3")
    with pytest.raises(ValueError, match="check_optimality must be one of 'gradient', 'both'"):
        problem.solve(sigma=np.eye(2), pi=[[0], [1]], check_optimality="hessian")
    with pytest.raises(ValueError, match="Iteration method"):
        dk.Iteration("anderson")
    with pytest.raises(ValueError, match="unknown keys"):
        dk.Iteration("squarem", {"tolerance": 1})
    with pytest.raises(ValueError, match="Optimization method"):
        dk.Optimization("adam")
    with pytest.raises(ValueError, match="rc_types"):
        _rc(*data, rc_types=("linear", "cubic"))


def test_clustered_needs_clustering_ids(data):
    problem = _logit(data[0].drop(columns="clustering_ids"))
    with pytest.raises(ValueError, match="clustering_ids"):
        problem.solve(se_type="clustered")


def test_too_few_demographic_rows_for_the_integration_name_the_market(data):
    products, agents = data
    market = agents.market_ids.unique()[2]
    short = agents[(agents.market_ids != market) | (agents.groupby("market_ids").cumcount() < 3)]
    message = f"too few rows of demographics in market {market.item()!r}"
    with pytest.raises(dk.exceptions.InvalidDataError, match=message):
        _rc(
            products,
            short.drop(columns=[c for c in short if c.startswith("nodes")]),
            integration=dk.Integration("halton", 8),
        )
