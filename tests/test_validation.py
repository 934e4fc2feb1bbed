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
        dk.Iteration("gauss-seidel")
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


@pytest.mark.parametrize("column", ["shares", "prices", "x", "demand_instruments0"])
def test_numbers_stored_as_text_name_the_column(data, column):
    products = data[0].assign(**{column: data[0][column].astype(str)})
    with pytest.raises(
        dk.exceptions.InvalidDataError, match=rf"Column '{column}' of product_data holds text.*to_numeric"
    ):
        _logit(products)


@pytest.mark.parametrize("column", ["weights", "nodes0", "income"])
def test_agent_numbers_stored_as_text_name_the_column(data, column):
    products, agents = data
    with pytest.raises(dk.exceptions.InvalidDataError, match=rf"Column '{column}' of agent_data holds text"):
        _rc(products, agents.assign(**{column: agents[column].astype(str)}))


def test_formulations_refuse_text_outside_categorical_terms(data):
    products = data[0].assign(prices=lambda d: d.prices.map(str))
    with pytest.raises(dk.exceptions.InvalidDataError, match=r"Column 'prices', which the formula .* holds text"):
        dk.Formulation("1 + log(prices)").build_matrix(products)
    firms = data[0].assign(firm_ids=lambda d: "firm " + d.firm_ids.astype(str))  # text is fine inside C(...)
    assert dk.Formulation("1 + prices + x + C(firm_ids)").numeric_variables == {"prices", "x"}
    assert dk.Problem(dk.Formulation("1 + prices + x + C(firm_ids)"), firms).K1 > 3


def test_mixed_logit_numbers_stored_as_text_name_the_column():
    panel = dk.mixed_logit.simulate_panel(5, 2, 3, {"price": (None, -1.0, 0.0)}, seed=0).data
    columns = dict(
        choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative"
    )
    with pytest.raises(dk.exceptions.InvalidDataError, match="Column 'price'.*holds text.*to_numeric"):
        dk.MixedLogit(dk.Formulation("0 + price"), panel.assign(price=panel.price.astype(str)), **columns)


def test_empty_tables(data):
    products, agents = data
    with pytest.raises(dk.exceptions.InvalidDataError, match="product_data has no rows"):
        _logit(products.iloc[:0])
    with pytest.raises(dk.exceptions.InvalidDataError, match="agent_data has no rows"):
        _rc(products, agents.iloc[:0])


def test_extreme_price_scale_is_named(data):
    products, agents = data
    products = products.assign(prices=products.prices * 1e8)
    problem = dk.Problem(
        (dk.Formulation("1 + prices + x"), dk.Formulation("0 + prices + x")),
        products,
        dk.Formulation("0 + income"),
        agents,
    )
    with pytest.raises(dk.exceptions.InvalidDataError, match=r"not finite.*extreme scale: 'prices' \(X1, X2.*Rescale"):
        problem.solve(
            sigma=np.eye(2), pi=[[0], [1]], method="1s", iteration=dk.Iteration("squarem", {"max_evaluations": 100})
        )


def test_duplicated_products_warn_naming_the_market(data):
    products = data[0]
    repeated = pd.concat([products, products.iloc[[5]].assign(x=0.5)], ignore_index=True)
    with pytest.warns(UserWarning, match=r"'product_ids' of product_data repeats a product within market\(s\) 1 "):
        _logit(repeated)
    identical = pd.concat([products, products.iloc[[5, 13]]], ignore_index=True).drop(columns="product_ids")
    with pytest.warns(UserWarning, match=r"product_data has identical rows within market\(s\) 1, 3 \(4 rows"):
        _logit(identical)
    _logit(products.assign(product_ids=np.nan))  # missing ids are not compared: no warning


def test_read_only_columns_build_without_a_torch_warning():
    """pandas 3 hands out read-only arrays; torch warns on them (an error in this suite) unless they are copied."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    products["nesting_ids"] = 1
    products["demand_instruments20"] = products.groupby("market_ids")["shares"].transform(np.size)
    problem = dk.Problem(dk.Formulation("0 + prices"), products)
    assert problem.ZD_tensor.shape[0] == len(products)
