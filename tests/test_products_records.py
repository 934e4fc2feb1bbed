"""``Problem.products`` and ``Simulation.products`` are PyBLP's record arrays, field for field.

PyBLP's ``products`` has one row per product and two-dimensional fields: the identifiers, ``ownership``,
``shares``, the instruments ``ZD``, ``ZS``, ``ZC``, the designs ``X1``, ``X2``, ``X3`` (after absorbing fixed
effects) and the variables the formulations read. Each case below compares the field names and their order, the
dtypes, the column counts, the ids (equal) and the values (to 1e-10) with PyBLP 1.3's: Nevo with absorbed product
fixed effects, BLP (1995) with a supply side and given ownership, a nested logit, absorbed interactions with a
categorical design column, and a simulation. The user's DataFrame is ``product_frame``; micro moments' callbacks get
a market's rows of ``products``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

ATOL = 1e-10


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` with warnings (PyBLP's weights and collinearity notes) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_same_records(actual: np.recarray, expected: np.recarray, ordered: bool = True) -> None:
    """Field names (in order, unless ``ordered`` is False), dtypes, shapes, title lengths and values."""
    names, reference = actual.dtype.names, expected.dtype.names
    assert (names if ordered else sorted(names)) == (reference if ordered else sorted(reference))
    assert actual.shape == expected.shape
    for name in reference:
        a, b = actual[name], expected[name]
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} against {b.dtype}"
        assert a.shape == b.shape, f"{name}: shape {a.shape} against {b.shape}"
        if b.dtype == object:
            assert (a == b).all(), f"{name}: ids differ"
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=name)
    for design in ("X1", "X2", "X3"):  # titles: one label per column (PyBLP's are its column formulations)
        assert len(actual.dtype.fields[design][2]) == len(expected.dtype.fields[design][2]) == actual[design].shape[1]


def both(build: Any) -> tuple[np.recarray, np.recarray]:
    """``build(library).products`` for demandkit and PyBLP."""
    return quiet(build, dk).products, quiet(build, pyblp).products


def nevo() -> pd.DataFrame:
    return pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)


def blp() -> pd.DataFrame:
    return pd.read_csv(dk.data.BLP_PRODUCTS_LOCATION)


def test_nevo_with_absorbed_product_fixed_effects() -> None:
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)

    def build(lib: Any) -> Any:
        formulations = (
            lib.Formulation("0 + prices", absorb="C(product_ids)"),
            lib.Formulation("1 + prices + sugar + mushy"),
        )
        return lib.Problem(formulations, nevo(), lib.Formulation("0 + income + income_squared + age + child"), agents)

    actual, expected = both(build)
    assert_same_records(actual, expected)
    assert actual.dtype.names[-3:] == ("prices", "sugar", "mushy")
    assert actual.demand_ids.shape == (2256, 1) and actual.ZD.shape == (2256, 20) and actual.supply_ids.shape[1] == 0
    raw = nevo()["prices"].to_numpy()
    assert np.abs(actual.X1[:, 0] - raw).max() > 1e-3  # X1 is residualised on the product fixed effects
    assert actual.dtype.fields["X2"][2] == ("1", "prices", "sugar", "mushy")


def test_blp_with_supply_and_ownership() -> None:
    products = blp()
    ownership = pyblp.build_ownership(products)
    columns = pd.DataFrame(ownership, columns=[f"ownership{k}" for k in range(ownership.shape[1])])
    products = pd.concat([products, columns], axis=1)
    agents = pd.read_csv(dk.data.BLP_AGENTS_LOCATION)

    def build(lib: Any) -> Any:
        formulations = (
            lib.Formulation("1 + hpwt + air + mpd + space"),
            lib.Formulation("1 + prices + hpwt + air + mpd + space"),
            lib.Formulation("1 + log(hpwt) + air + log(mpg) + log(space) + trend"),
        )
        return lib.Problem(formulations, products, lib.Formulation("0 + I(1 / income)"), agents, costs_type="log")

    actual, expected = both(build)
    assert_same_records(actual, expected)
    assert actual.X3.shape == (2217, 6) and actual.ZS.shape == (2217, 18) and actual.ownership.shape == (2217, 150)
    assert actual.dtype.names[16:] == ("hpwt", "air", "mpd", "space", "prices", "mpg", "trend")


def test_nested_logit() -> None:
    products = nevo().assign(nesting_ids=nevo()["mushy"])
    actual, expected = both(lambda lib: lib.Problem(lib.Formulation("0 + prices", absorb="C(product_ids)"), products))
    assert_same_records(actual, expected)
    assert actual.nesting_ids.shape == (2256, 1) and actual.X2.shape == (2256, 0)


def test_absorbed_interactions_categorical_columns_and_covariance_instruments() -> None:
    """Interacted fixed effects give tuples of ids; a categorical design column gives PyBLP's indicator fields; a
    supply-side fixed effect fills ``supply_ids``; covariance instruments fill ``ZC``."""
    actual, expected = both(
        lambda lib: lib.Problem(
            lib.Formulation("0 + prices + sugar", absorb="C(firm_ids):C(city_ids) + C(quarter)"), nevo()
        )
    )
    assert_same_records(actual, expected)
    assert isinstance(actual.demand_ids[0, 0], tuple) and actual.demand_ids.shape[1] == 2

    products = blp().assign(
        brand=lambda frame: np.where(frame["air"] > 0, "a", "b"), covariance_instruments0=lambda f: f["hpwt"]
    )

    def build(lib: Any) -> Any:
        formulations = (
            lib.Formulation("1 + hpwt + C(brand) + hpwt:mpd + I(air * space)"),
            lib.Formulation("1 + prices"),
            lib.Formulation("0 + log(hpwt) + mpd:trend", absorb="C(firm_ids)"),
        )
        return lib.Problem(formulations, products, None, pd.read_csv(dk.data.BLP_AGENTS_LOCATION))

    actual, expected = both(build)
    # the variables of one column (air and space of I(air * space)) come in PyBLP in the order of a set
    assert_same_records(actual, expected, ordered=False)
    assert "brand['b']" in actual.dtype.names and actual.ZC.shape[1] == 1 and actual.supply_ids.shape[1] == 1


def test_simulation_products() -> None:
    id_data = pyblp.build_id_data(T=5, J=6, F=3)
    frame = pd.DataFrame({name: id_data[name].ravel() for name in id_data.dtype.names})

    def build(lib: Any) -> Any:
        formulations = (lib.Formulation("1 + prices + x"), lib.Formulation("0 + x"), lib.Formulation("1 + x + z"))
        return lib.Simulation(
            formulations, frame, beta=[1, -2, 2], sigma=1, gamma=[1, 4, 2], integration=lib.Integration("product", 3),
            xi_variance=0.001, omega_variance=0.001, correlation=0.7, seed=0,
        )  # fmt: skip

    actual, expected = both(build)
    assert_same_records(actual, expected)
    assert actual.ZD.shape[1] == actual.ZS.shape[1] == 0  # PyBLP's simulations carry no instruments


def test_product_frame_is_the_data_and_records_follow_replaced_instruments() -> None:
    data = nevo()
    problem = quiet(dk.Problem, dk.Formulation("0 + prices", absorb="C(product_ids)"), data)
    assert isinstance(problem.product_frame, pd.DataFrame)
    pd.testing.assert_frame_equal(problem.product_frame, data)
    assert isinstance(problem.products, np.recarray) and problem.products is problem.products  # built once
    results = quiet(problem.solve, method="1s")
    updated = quiet(results.compute_optimal_instruments().to_problem)
    assert updated.products is not problem.products
    np.testing.assert_array_equal(updated.products.ZD, updated.design.ZD)
    assert not np.allclose(updated.products.ZD[:, 0], problem.products.ZD[:, 0])
    np.testing.assert_array_equal(problem.products.ZD, problem.design.ZD)


def test_micro_callbacks_receive_the_markets_rows_of_products() -> None:
    products = nevo()
    markets = products["market_ids"].unique()[:4]
    products = products[products["market_ids"].isin(markets)].reset_index(drop=True)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    agents = agents[agents["market_ids"].isin(markets)].reset_index(drop=True)
    problem = quiet(
        dk.Problem,
        (dk.Formulation("0 + prices", absorb="C(product_ids)"), dk.Formulation("1 + prices + sugar")),
        products,
        dk.Formulation("0 + income"),
        agents,
    )
    seen: dict[Any, Any] = {}

    def weights(t: Any, records: Any, agent_records: Any) -> np.ndarray:
        seen[t] = records
        return np.ones((agent_records.size, 1 + records.size))

    dataset = dk.MicroDataset("survey", 100, weights)
    part = dk.MicroPart(
        "E[income 1{j>0}]", dataset, lambda t, p, a: np.outer(a.demographics[:, 0], np.r_[0, np.ones(p.size)])
    )
    quiet(problem.solve, sigma=np.eye(3) * 0.5, pi=np.ones((3, 1)), micro_moments=[dk.MicroMoment("m", 0.5, part)],
          optimization=dk.Optimization("return"), method="1s")  # fmt: skip
    assert sorted(seen) == sorted(markets)
    for market, records in seen.items():
        rows = np.flatnonzero(products["market_ids"].to_numpy() == market)
        assert isinstance(records, np.recarray) and records.dtype == problem.products.dtype
        assert records.size == len(records) == len(rows)
        for name in ("X1", "X2", "ZD", "prices", "shares", "market_ids", "product_ids"):
            np.testing.assert_array_equal(records[name], problem.products[name][rows])
        assert records.X2.shape == (len(rows), 3) and records.prices.shape == (len(rows), 1)
        np.testing.assert_array_equal(
            records["brand_ids"], products["brand_ids"].to_numpy()[rows]
        )  # a column of the data


def test_integrated_problem_keeps_its_product_table() -> None:
    assert dk.Problem.products.__doc__ and "record array" in dk.Problem.products.__doc__
    from demandkit.integrated.problem import IntegratedProblem

    assert IntegratedProblem.products.__doc__ and "DataFrame" in IntegratedProblem.products.__doc__
    fake = IntegratedProblem.__new__(IntegratedProblem)
    fake.product_frame = nevo()
    assert fake.products is fake.product_frame
