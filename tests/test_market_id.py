"""PyBLP's ``market_id`` argument on every post-estimation method (issue 13).

On the Nevo (2000) data, with some products and agents dropped so that markets differ in ``J_t`` and ``I_t``, both
libraries are evaluated at the same fixed parameters (``Optimization('return')``). For each method, demandkit's
output for one market equals PyBLP's (same shape: ``J_t x 1``, ``J_t x J_t``, ``J_t x I_t`` or ``1 x 1``) to
``1e-8``, equals that market's part of demandkit's own all-markets output, and a market that does not exist raises
an :class:`~demandkit.exceptions.InvalidDataError` naming it.

Designs
    ``logit`` a plain logit with integer market ids (``1000 + code``) and no agents;
    ``rc``    random coefficients on the constant, prices and sugar, Nevo's own market ids (strings).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_supply_oracle import EXACT_RTOL, Comparisons, quiet

import demandkit as dk

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

DESIGNS = ["logit", "rc"]


@cache
def data(design: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Nevo's products (and agents) with the last 4 products of every third market and the last 5 agents of every
    second market dropped (cached: treat as read-only)."""
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    codes = products["market_ids"].astype("category").cat.codes.to_numpy()
    slots = products.groupby("market_ids").cumcount().to_numpy()
    keep = ~((codes % 3 == 0) & (slots >= 20))
    products = products[keep].reset_index(drop=True)
    if design == "logit":
        codes = products["market_ids"].astype("category").cat.codes.to_numpy()
        return products.assign(market_ids=1000 + codes.astype(np.int64)), None
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    agent_codes = agents["market_ids"].astype("category").cat.codes.to_numpy()
    agent_slots = agents.groupby("market_ids").cumcount().to_numpy()
    agents = agents[~((agent_codes % 2 == 0) & (agent_slots >= 15))].reset_index(drop=True)
    return products, agents


@cache
def solved(design: str) -> tuple[Any, Any]:
    """``(pyblp_results, demandkit_results)`` at the same fixed parameters (cached: solved once per session)."""
    products, agents = data(design)
    results = []
    for library in (pyblp, dk):
        if design == "logit":
            problem = quiet(library.Problem, library.Formulation("1 + prices + sugar"), products)
            arguments = {}
        else:
            formulations = (
                library.Formulation("0 + prices", absorb="C(product_ids)"),
                library.Formulation("1 + prices + sugar"),
            )
            problem = quiet(library.Problem, formulations, products, agent_data=agents)
            arguments = {"sigma": np.diag([0.3, 2.0, 0.05])}
        results.append(quiet(problem.solve, optimization=library.Optimization("return"), **arguments))
    return results[0], results[1]


def markets(design: str) -> list[Any]:
    """A market with 20 of 24 products (and all 20 agents), and one with all products and 15 agents; the first as a
    Python ``int`` or ``str``, the second as a NumPy scalar."""
    ids = np.unique(data(design)[0]["market_ids"])
    return [np.asarray(ids[3]).item(), ids[4]]


class Market:
    """One market's rows in the stacked outputs (computed here from the data, independently of demandkit)."""

    def __init__(self, design: str, market_id: Any) -> None:
        products, agents = data(design)
        self.id = market_id
        self.rows = np.flatnonzero(products["market_ids"].to_numpy() == market_id)
        self.J = self.rows.size
        self.I = None if agents is None else int((agents["market_ids"].to_numpy() == market_id).sum())
        self.index = int(np.flatnonzero(np.unique(products["market_ids"]) == market_id)[0])
        self.products = products.iloc[self.rows]
        # firms 1 and 2 merge; firm 3 joins them in the "all markets" input only outside this market
        self.merged = self.products["firm_ids"].replace(2, 1).to_numpy()
        self.merged_all = np.array(products["firm_ids"].replace({2: 1, 3: 1}))
        self.merged_all[self.rows] = self.merged

    def vector(self, stacked: Any) -> np.ndarray:
        return np.asarray(stacked)[self.rows]

    def matrices(self, stacked: Any) -> np.ndarray:
        return np.asarray(stacked)[self.rows][:, : self.J]

    def probabilities(self, stacked: Any) -> np.ndarray:
        block = np.asarray(stacked)[self.rows]
        return block if self.I is None else block[:, : self.I]

    def market(self, values: Any) -> np.ndarray:
        return np.asarray(values)[[self.index]]


def market_inputs(market: Market, pyblp_results: Any) -> dict[str, Any]:
    """Inputs for one market, as PyBLP takes them: ``J_t`` values and a ``J_t x J_t`` ownership matrix."""
    ownership = np.ones((market.J, market.J))
    ownership[0, 1:] = ownership[1:, 0] = 0.0  # the first product alone, one firm owning all the others
    return {
        "prices": 1.1 * market.products["prices"].to_numpy(),
        "shares": 0.9 * market.products["shares"].to_numpy(),
        "costs": 0.9 * quiet(pyblp_results.compute_costs, market_id=market.id).ravel(),
        "firm_ids": market.merged,
        "ownership": ownership,
    }


def widened(market: Market, dk_results: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The same inputs for all products: other markets keep the data's prices, shares and estimated costs, firms
    merge differently there, and each of their products is its own firm under ``ownership``."""
    products = data_of(market)
    full: dict[str, Any] = {}
    for name, values in inputs.items():
        if name == "firm_ids":
            full[name] = market.merged_all
            continue
        if name == "ownership":
            N, width = len(products), int(products.groupby("market_ids").size().max())
            slots = products.groupby("market_ids").cumcount().to_numpy()
            matrix = np.zeros((N, width))
            matrix[np.arange(N), slots] = 1.0
            matrix[market.rows, : market.J] = values
            full[name] = matrix
            continue
        default = dk_results.compute_costs().ravel() if name == "costs" else products[name].to_numpy()
        full[name] = default.astype(np.float64)
        full[name][market.rows] = values
    return full


# (label, method, names of the market's inputs passed, how the market's part of the all-markets output is taken)
CASES = [
    ("compute_elasticities", {}, "matrices"),
    ("compute_elasticities", {"name": "sugar"}, "matrices"),
    ("compute_diversion_ratios", {}, "matrices"),
    ("compute_long_run_diversion_ratios", {}, "matrices"),
    ("compute_probabilities", {}, "probabilities"),
    ("compute_probabilities", {"prices"}, "probabilities"),
    ("compute_shares", {}, "vector"),
    ("compute_shares", {"prices"}, "vector"),
    ("compute_consumer_surpluses", {}, "market"),
    ("compute_consumer_surpluses", {"prices"}, "market"),
    ("compute_costs", {}, "vector"),
    ("compute_costs", {"firm_ids"}, "vector"),
    ("compute_costs", {"ownership"}, "vector"),
    ("compute_markups", {}, "vector"),
    ("compute_markups", {"prices", "costs"}, "vector"),
    ("compute_profits", {}, "vector"),
    ("compute_profits", {"prices", "shares", "costs"}, "vector"),
    ("compute_hhi", {}, "market"),
    ("compute_hhi", {"firm_ids", "shares"}, "market"),
    ("compute_passthrough", {}, "matrices"),
    ("compute_passthrough", {"firm_ids"}, "matrices"),
    ("compute_passthrough", {"ownership"}, "matrices"),
    ("compute_approximate_prices", {"firm_ids"}, "vector"),
    ("compute_approximate_prices", {"ownership", "costs"}, "vector"),
    ("compute_prices", {}, "vector"),
    ("compute_prices", {"firm_ids"}, "vector"),
    ("compute_prices", {"ownership", "costs", "prices"}, "vector"),
]
METHODS = sorted({method for method, _, _ in CASES} | {"extract_diagonals", "extract_diagonal_means", "compute_merger"})


def arguments(names: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    if isinstance(names, dict):
        return dict(names)
    return {name: inputs[name] for name in names}


@pytest.mark.parametrize("design", DESIGNS)
def test_every_method_matches_pyblp_in_one_market(design):
    """Each method with ``market_id`` equals PyBLP's with it and demandkit's own all-markets output there."""
    pyblp_results, dk_results = solved(design)
    compare = Comparisons()
    for market_id in markets(design):
        market = Market(design, market_id)
        inputs = market_inputs(market, pyblp_results)
        full = widened(market, dk_results, inputs)
        for method, names, kind in CASES:
            label = f"{design} {method}({', '.join(names)}) in market {market_id!r}"
            expected = quiet(getattr(pyblp_results, method), **arguments(names, inputs), market_id=market_id)
            actual = getattr(dk_results, method)(**arguments(names, inputs), market_id=market_id)
            compare.close(actual, expected, EXACT_RTOL, label)
            everywhere = getattr(dk_results, method)(**arguments(names, full))
            compare.close(actual, getattr(market, kind)(everywhere), 1e-12, f"{label} against all markets")
        for method, source in (("extract_diagonals", "vector"), ("extract_diagonal_means", "market")):
            label = f"{design} {method} in market {market_id!r}"
            expected = pyblp_results.compute_elasticities(market_id=market_id)
            expected = getattr(pyblp_results, method)(expected, market_id=market_id)
            actual = getattr(dk_results, method)(
                dk_results.compute_elasticities(market_id=market_id), market_id=market_id
            )
            compare.close(actual, expected, EXACT_RTOL, label)
            everywhere = getattr(dk_results, method)(dk_results.compute_elasticities())
            compare.close(actual, getattr(market, source)(everywhere), 1e-12, f"{label} against all markets")
            stacked = getattr(dk_results, method)(dk_results.compute_elasticities(), market_id=market_id)
            compare.close(stacked, actual, 1e-12, f"{label} of stacked matrices")
    compare.check()


@pytest.mark.parametrize("design", DESIGNS)
def test_merger_in_one_market(design):
    """``compute_merger(market_id=...)`` keeps that market's rows: PyBLP's prices, shares, HHI and consumer surplus
    after the merger, and the same rows as the merger of all markets."""
    pyblp_results, dk_results = solved(design)
    market = Market(design, markets(design)[0])
    m = market.id
    merger = dk_results.compute_merger(market.merged, market_id=m)
    prices = quiet(pyblp_results.compute_prices, firm_ids=market.merged, market_id=m)
    shares = quiet(pyblp_results.compute_shares, prices=prices, market_id=m)
    compare = Comparisons()
    assert list(merger.products["market_ids"].unique()) == [m] and len(merger.products) == market.J
    assert list(merger.markets["market_ids"]) == [m] and bool(merger.markets["converged"].all())
    np.testing.assert_array_equal(merger.products["merged_firm_ids"].to_numpy(), market.merged)
    compare.close(merger.products[["merged_prices"]].to_numpy(), prices, EXACT_RTOL, "merged prices")
    compare.close(merger.products[["merged_shares"]].to_numpy(), shares, EXACT_RTOL, "merged shares")
    hhi = quiet(pyblp_results.compute_hhi, firm_ids=market.merged, shares=shares, market_id=m)
    compare.close(merger.markets[["merged_hhi"]].to_numpy(), hhi, EXACT_RTOL, "merged HHI")
    surplus = quiet(pyblp_results.compute_consumer_surpluses, prices=prices, market_id=m)
    compare.close(merger.markets[["merged_consumer_surplus"]].to_numpy(), surplus, EXACT_RTOL, "merged surplus")
    everywhere = dk_results.compute_merger(market.merged_all)
    for table, rows in ((merger.products, everywhere.products), (merger.markets, everywhere.markets)):
        rows = rows[rows["market_ids"] == m].reset_index(drop=True)
        numeric = list(table.select_dtypes("float").columns)  # prices, shares, costs, profits, HHI, surplus
        compare.close(table[numeric].to_numpy(np.float64), rows[numeric].to_numpy(np.float64), 1e-12, "merger rows")
    compare.check()


@pytest.mark.parametrize("design", DESIGNS)
def test_frames_of_one_market(design):
    """``frame=True`` with ``market_id`` keeps that market's rows of the tidy tables."""
    _, dk_results = solved(design)
    m = markets(design)[0]
    for method in ("compute_elasticities", "compute_diversion_ratios", "compute_shares", "compute_consumer_surpluses"):
        table = getattr(dk_results, method)(market_id=m, frame=True)
        everywhere = getattr(dk_results, method)(frame=True)
        expected = everywhere[everywhere["market_ids"] == m].reset_index(drop=True)
        pd.testing.assert_frame_equal(table, expected)


@pytest.mark.parametrize("design", DESIGNS)
def test_unknown_market_is_named(design):
    """A ``market_id`` that is not a market raises an ``InvalidDataError`` naming it, in every method."""
    _, dk_results = solved(design)
    unknown = "C99Q9" if design == "rc" else 1984
    elasticities = dk_results.compute_elasticities()
    for method in METHODS:
        function = getattr(dk_results, method)
        if method.startswith("extract"):
            positional = (elasticities,)
        elif method == "compute_merger":
            positional = (data(design)[0]["firm_ids"],)
        else:
            positional = ()
        with pytest.raises(dk.exceptions.InvalidDataError, match=f"market_id {unknown!r} is not a market"):
            function(*positional, market_id=unknown)


def test_inputs_of_the_wrong_length_are_named():
    """Inputs for one market must have ``J_t`` values (or ``N``); anything else names the argument."""
    _, dk_results = solved("rc")
    m = markets("rc")[0]
    with pytest.raises(dk.exceptions.InvalidDataError, match="costs must hold 20 values"):
        dk_results.compute_markups(costs=np.ones(7), market_id=m)
    with pytest.raises(dk.exceptions.InvalidDataError, match="ownership must be 20 x 20"):
        dk_results.compute_costs(ownership=np.ones((24, 24)), market_id=m)
    with pytest.raises(dk.exceptions.InvalidDataError, match="matrices must be 20 x 20"):
        dk_results.extract_diagonals(np.ones((3, 3)), market_id=m)


def data_of(market: Market) -> pd.DataFrame:
    """The product data of the design a market was taken from."""
    return data("logit" if isinstance(market.id, (int, np.integer)) else "rc")[0]
