"""PyBLP parity of the post-estimation methods added for the PyBLP-parity issue.

Both libraries are evaluated at identical parameters (``Optimization('return')``) and compared to ``1e-8`` (relative,
with an absolute floor of ``1e-8`` times the largest magnitude), with and without ``market_id``:

- share Jacobians and Hessians, each product's profit Hessians, aggregate elasticities;
- elasticities and diversion ratios with respect to the mean utility (``name=None``);
- long-run diversion ratios, also with nests;
- shares and choice probabilities at given mean utilities and with other agents (``agent_data``, ``integration``);
- ``compute_delta`` with the problem's and with other agents;
- consumer surpluses of every agent (``keep_all``) and without some products (``eliminate_product_ids``);
- equilibrium prices with costs that move with shares (``constant_costs=False``).

Designs
    ``rc``            Nevo (2000): product fixed effects, four random coefficients, four demographics;
    ``rc_nested``     Nevo's products in two nests (``mushy``), three random coefficients on Nevo's nodes, one
                      :math:`\\rho` per nest;
    ``nested_logit``  Nevo's products in the same nests, no random coefficients;
    ``blp``           BLP (1995) automobiles in three markets with a supply side whose log costs involve
                      ``log(shares)`` (instruments rebuilt from the characteristics, which suffice at fixed
                      parameters).
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

RTOL = 1e-8
DEMAND_DESIGNS = ["rc", "rc_nested", "nested_logit"]
NEVO_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI = np.array(
    [[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]
)
MARKET = "C01Q2"  # a Nevo market for the market_id variants


def assert_close(actual: Any, expected: Any, name: str) -> None:
    """Same shape, same NaN pattern, and ``|a - e| <= RTOL |e| + RTOL max|e|`` elsewhere."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != PyBLP's {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{name}: NaN pattern differs from PyBLP's")
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(
        actual[finite], expected[finite], rtol=RTOL, atol=RTOL * scale, err_msg=f"{name} differs from PyBLP"
    )


def quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call PyBLP with its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# ------------------------------------------------------------------------------------------------------ data


@cache
def nevo_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nevo's products (with nests by ``mushy``) and agents (cached: treat as read-only)."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    return products.assign(nesting_ids=products["mushy"]), pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)


def other_agents(design: str) -> pd.DataFrame:
    """Different agents for the same markets: Nevo's agents with two node columns swapped and unequal weights."""
    agents = nevo_data()[1]
    raw = pd.Series(1.0 + agents.groupby("market_ids").cumcount().to_numpy() % 3)
    weights = raw / raw.groupby(agents["market_ids"]).transform("sum")
    swapped = agents.assign(nodes0=agents["nodes1"], nodes1=agents["nodes0"], weights=weights.to_numpy())
    return swapped if design == "rc" else swapped.drop(columns=["nodes3"])


def build(library: Any, design: str) -> Any:
    """The design's results at fixed parameters in ``library`` (PyBLP or demandkit)."""
    products, agents = nevo_data()
    F = library.Formulation
    optimization = library.Optimization("return")
    options = {"method": "1s", "optimization": optimization, "check_optimality": "gradient"}
    if design == "rc":
        formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices + sugar + mushy"))
        problem = library.Problem(
            formulations, products.drop(columns="nesting_ids"), F("0 + income + income_squared + age + child"), agents
        )
        return problem.solve(NEVO_SIGMA, NEVO_PI, **options)
    if design == "rc_nested":
        formulations = (F("0 + prices", absorb="C(product_ids)"), F("1 + prices + sugar"))
        problem = library.Problem(formulations, products, agent_data=agents.drop(columns="nodes3"))
        return problem.solve(np.diag([0.3, 1.5, 0.05]), rho=[[0.3], [0.5]], **options)
    assert design == "nested_logit"
    problem = library.Problem(F("1 + prices + sugar"), products)
    return problem.solve(rho=[[0.4], [0.6]], **options)


@cache
def solved(design: str) -> tuple[Any, Any]:
    """``(pyblp_results, demandkit_results)`` of a design (cached: solved once per session)."""
    if design == "blp":
        return tuple(build_blp(library) for library in (pyblp, dk))
    return quiet(build, pyblp, design), build(dk, design)


BLP_MARKETS = [1971, 1981, 1990]
BLP_X3 = "1 + log(hpwt) + air + log(mpg) + log(space) + trend + log(shares)"


@cache
def blp_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three BLP markets with instruments built from the characteristics (cached: treat as read-only)."""
    products = pd.read_csv(dk.data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.BLP_AGENTS_LOCATION)
    products = products.loc[products["market_ids"].isin(BLP_MARKETS)].reset_index(drop=True)
    agents = agents.loc[agents["market_ids"].isin(BLP_MARKETS)].reset_index(drop=True)
    products = products[[c for c in products.columns if "instruments" not in c]]
    x = products
    demand = [x.hpwt**2, x.air * x.mpd, x.space**2, x.mpd**2, x.hpwt * x.space]
    supply = [np.log(x.hpwt) ** 2, x.air * np.log(x.mpg), np.log(x.space) ** 2, x.trend * np.log(x.hpwt)]
    columns = {f"demand_instruments{k}": c for k, c in enumerate(demand)}
    columns |= {f"supply_instruments{k}": c for k, c in enumerate(supply)}
    return products.assign(**columns), agents


def build_blp(library: Any) -> Any:
    products, agents = blp_data()
    F = library.Formulation
    formulations = (F("1 + hpwt + air + mpd + space"), F("1 + prices + hpwt + air + mpd + space"), F(BLP_X3))
    problem = quiet(library.Problem, formulations, products, F("0 + I(1 / income)"), agents, costs_type="log")
    return quiet(
        problem.solve,
        np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056]),
        np.c_[[0, -43.501, 0, 0, 0, 0]],
        method="1s",
        optimization=library.Optimization("return"),
        check_optimality="gradient",
        costs_bounds=(0.001, None),
    )


def rows_of(design: str, market_id: Any) -> np.ndarray:
    products = blp_data()[0] if design == "blp" else nevo_data()[0]
    return (products["market_ids"] == market_id).to_numpy()


def compare(design: str, method: str, name: str | None = None, **arguments: Any) -> None:
    """``method(**arguments)`` in both libraries, for all markets and for one, equal to PyBLP's."""
    pyblp_results, dk_results = solved(design)
    market_id = BLP_MARKETS[1] if design == "blp" else MARKET
    for scope in ({}, {"market_id": market_id}):
        expected = quiet(getattr(pyblp_results, method), **arguments, **scope)
        actual = getattr(dk_results, method)(**arguments, **scope)
        assert_close(actual, expected, f"{design} {name or method} {arguments} {scope}")


# ----------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("design", DEMAND_DESIGNS)
def test_demand_jacobians_and_hessians(design):
    """:math:`\\partial s/\\partial x` and :math:`\\partial^2 s/\\partial x\\partial x` for prices and a
    characteristic (``N x J_max`` and ``N x J_max x J_max``, or one market's blocks)."""
    for name in ("prices", "sugar"):
        compare(design, "compute_demand_jacobians", name=name)
        compare(design, "compute_demand_hessians", name=name)


def test_hessians_where_prices_enter_nonlinearly():
    """With ``log(prices)`` the utilities' own second derivatives enter the Hessians' diagonals (as in PyBLP)."""
    products = nevo_data()[0].drop(columns="nesting_ids")
    results = []
    for library in (pyblp, dk):
        problem = quiet(library.Problem, library.Formulation("1 + log(prices) + sugar"), products)
        results.append(quiet(problem.solve, method="1s", optimization=library.Optimization("return")))
    for method in ("compute_demand_jacobians", "compute_demand_hessians"):
        for scope in ({}, {"market_id": MARKET}):
            expected = quiet(getattr(results[0], method), **scope)
            assert_close(getattr(results[1], method)(**scope), expected, f"log(prices) {method} {scope}")


@pytest.mark.parametrize("design", [*DEMAND_DESIGNS, "blp"])
def test_profit_hessians(design):
    """Hessians of each product's profits at the data's and at other prices and costs."""
    compare(design, "compute_profit_hessians")
    pyblp_results, dk_results = solved(design)
    market_id = BLP_MARKETS[1] if design == "blp" else MARKET
    rows = rows_of(design, market_id)
    prices = 1.05 * dk_results.problem.product_frame["prices"].to_numpy()
    costs = 0.9 * dk_results.compute_costs()[:, 0]
    for scope, p, c in (({}, prices, costs), ({"market_id": market_id}, prices[rows], costs[rows])):
        expected = quiet(pyblp_results.compute_profit_hessians, prices=p, costs=c, **scope)
        assert_close(dk_results.compute_profit_hessians(prices=p, costs=c, **scope), expected, f"{design} {scope}")


@pytest.mark.parametrize("design", [*DEMAND_DESIGNS, "blp"])
def test_aggregate_elasticities(design):
    """Aggregate elasticities in prices (default factor), a characteristic and the mean utility."""
    compare(design, "compute_aggregate_elasticities")
    compare(design, "compute_aggregate_elasticities", factor=0.05, name=None)
    compare(design, "compute_aggregate_elasticities", factor=-0.2, name="hpwt" if design == "blp" else "sugar")


@pytest.mark.parametrize("design", DEMAND_DESIGNS)
def test_mean_utility_elasticities_and_diversion(design):
    """``name=None``: elasticities and diversion ratios with respect to the mean utility."""
    compare(design, "compute_elasticities", name=None)
    compare(design, "compute_diversion_ratios", name=None)


@pytest.mark.parametrize("design", [*DEMAND_DESIGNS, "blp"])
def test_long_run_diversion_ratios(design):
    """Long-run diversion ratios, with nests too."""
    compare(design, "compute_long_run_diversion_ratios")


@pytest.mark.parametrize("design", DEMAND_DESIGNS)
def test_shares_and_probabilities_at_given_delta(design):
    """``delta`` is used as given; ``prices`` then move only the agent-specific utilities (PyBLP's convention)."""
    pyblp_results, dk_results = solved(design)
    rows = rows_of(design, MARKET)
    delta = pyblp_results.delta[:, 0] + 0.1 * np.sin(np.arange(rows.size))
    prices = 1.1 * dk_results.problem.product_frame["prices"].to_numpy()
    for method in ("compute_shares", "compute_probabilities"):
        for arguments in ({"delta": delta}, {"delta": delta, "prices": prices}):
            expected = quiet(getattr(pyblp_results, method), **arguments)
            assert_close(getattr(dk_results, method)(**arguments), expected, f"{design} {method} {list(arguments)}")
            one = {key: value[rows] for key, value in arguments.items()}
            expected = quiet(getattr(pyblp_results, method), **one, market_id=MARKET)
            actual = getattr(dk_results, method)(**one, market_id=MARKET)
            assert_close(actual, expected, f"{design} {method} {list(arguments)} market")


def agent_arguments(design: str) -> list[dict[str, Any]]:
    """Other agents: PyBLP needs ``agent_data`` where there are demographics; an integration otherwise."""
    if design == "rc":
        return [{"agent_data": other_agents(design)}]
    if design == "rc_nested":
        return [{"agent_data": other_agents(design)}, {"integration": dk.Integration("product", 3)}]
    return []


def pyblp_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    if "integration" in arguments:
        integration = arguments["integration"]
        return {"integration": pyblp.Integration(integration.specification, integration.size)}
    return arguments


@pytest.mark.parametrize("design", DEMAND_DESIGNS)
def test_compute_delta(design):
    """Mean utilities re-inverted at the estimates: with the problem's agents (the estimated delta, and another
    iteration), with other agents, and with those agents' shares and probabilities."""
    pyblp_results, dk_results = solved(design)
    compare(design, "compute_delta")
    iteration = {"iteration": dk.Iteration("simple", {"atol": 1e-13})}
    assert_close(dk_results.compute_delta(**iteration), quiet(pyblp_results.compute_delta), f"{design} simple")
    for arguments in agent_arguments(design):
        theirs = pyblp_arguments(arguments)
        expected_delta = quiet(pyblp_results.compute_delta, **theirs)
        delta = dk_results.compute_delta(**arguments)
        assert_close(delta, expected_delta, f"{design} delta {list(arguments)}")
        rows = rows_of(design, MARKET)
        expected_one = quiet(pyblp_results.compute_delta, **theirs, market_id=MARKET)
        assert_close(dk_results.compute_delta(**arguments, market_id=MARKET), expected_one, f"{design} market")
        for method in ("compute_shares", "compute_probabilities"):
            expected = quiet(getattr(pyblp_results, method), delta=expected_delta, **theirs)
            actual = getattr(dk_results, method)(delta=delta, **arguments)
            assert_close(actual, expected, f"{design} {method} {list(arguments)}")
            expected = quiet(getattr(pyblp_results, method), delta=expected_one, **theirs, market_id=MARKET)
            actual = getattr(dk_results, method)(delta=delta[rows], **arguments, market_id=MARKET)
            assert_close(actual, expected, f"{design} {method} {list(arguments)} market")


@pytest.mark.parametrize("design", [*DEMAND_DESIGNS, "blp"])
def test_consumer_surpluses(design):
    """Every agent's surplus (``keep_all``) and surpluses without some products, at the data's and other prices."""
    compare(design, "compute_consumer_surpluses", keep_all=True)
    ids = ["F1B04", "F2B05", "F4B10"]
    if design != "blp":  # the BLP data have no product_ids
        compare(design, "compute_consumer_surpluses", eliminate_product_ids=ids)
    pyblp_results, dk_results = solved(design)
    prices = 1.1 * dk_results.problem.product_frame["prices"].to_numpy()
    for keep_all in (False, True):
        arguments = {"prices": prices, "keep_all": keep_all}
        if design != "blp":
            arguments["eliminate_product_ids"] = ids
        expected = quiet(pyblp_results.compute_consumer_surpluses, **arguments)
        assert_close(dk_results.compute_consumer_surpluses(**arguments), expected, f"{design} {keep_all}")


def test_prices_with_costs_that_move_with_shares():
    """``constant_costs=False`` with ``log(shares)`` in the log costs: the estimated and given costs, and one
    market. PyBLP's default iteration stops on a change weighted by :math:`|\\Lambda|` (about ``1e-9`` relative
    here), so its prices are computed with ``atol=1e-14``; demandkit's default stops on the change in prices. The
    simple iteration is slow here (about 1,200 steps), so the variants take SQUAREM in both libraries (in 1971 it
    finds another equilibrium than the simple iteration, in both libraries alike)."""
    pyblp_results, dk_results = solved("blp")
    products = blp_data()[0]
    merged = products["firm_ids"].replace(19, 18).to_numpy()
    tight = pyblp.Iteration("simple", {"atol": 1e-14, "max_evaluations": 100_000})
    tight_squarem = pyblp.Iteration("squarem", {"atol": 1e-14, "max_evaluations": 100_000})
    fast = dk.Iteration("squarem", {"atol": 1e-13})
    costs = 1.05 * dk_results.compute_costs()[:, 0]
    constant = dk_results.compute_prices(firm_ids=merged)
    expected = quiet(pyblp_results.compute_prices, firm_ids=merged, iteration=tight)
    assert_close(constant, expected, "prices with constant costs")
    moving = dk_results.compute_prices(firm_ids=merged, constant_costs=False)
    expected = quiet(pyblp_results.compute_prices, firm_ids=merged, iteration=tight, constant_costs=False)
    assert_close(moving, expected, "prices with moving costs")
    assert not np.allclose(moving, constant, rtol=1e-4)
    actual = dk_results.compute_prices(firm_ids=merged, costs=costs, constant_costs=False, iteration=fast)
    expected = quiet(
        pyblp_results.compute_prices, firm_ids=merged, costs=costs, iteration=tight_squarem, constant_costs=False
    )
    assert_close(actual, expected, "prices with moving costs from given costs")
    market_id = BLP_MARKETS[1]
    rows = rows_of("blp", market_id)
    one = {"firm_ids": merged[rows], "costs": costs[rows], "constant_costs": False, "market_id": market_id}
    expected = quiet(pyblp_results.compute_prices, **one, iteration=tight_squarem)
    assert_close(dk_results.compute_prices(**one, iteration=fast), expected, "prices with moving costs, one market")


def test_argument_errors():
    """Unknown product ids columns and contraction types are named."""
    _, dk_results = solved("nested_logit")
    with pytest.raises(dk.exceptions.InvalidDataError, match="product_ids1"):
        dk_results.compute_consumer_surpluses(eliminate_product_ids=["F1B04"], product_ids_index=1)
    with pytest.raises(dk.exceptions.SpecificationError, match="fp_type"):
        dk_results.compute_delta(fp_type="exact")
