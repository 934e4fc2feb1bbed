"""A merger simulation in one call: equilibrium prices under new firm ids and everything that changes with them.

:meth:`ProblemResults.compute_merger <demandkit.blp.results.ProblemResults.compute_merger>` wraps the two tables
built here in a :class:`~demandkit.blp.counterfactuals.MergerResults`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..configurations.iteration import Iteration
from ..exceptions import InvalidDataError
from .markets import MarketSelection


def simulate_merger(
    results: Any, firm_ids: Any, costs: Any, iteration: Iteration | None, market: MarketSelection | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables of :meth:`ProblemResults.compute_merger <demandkit.blp.results.ProblemResults.compute_merger>`.

    Parameters
    ----------
    results : ProblemResults
        Estimated results with a supply side's data (prices and firm ids).
    firm_ids : array-like
        Firm ids after the merger (``N``, or ``J_t`` with ``market``).
    costs : array-like or None
        Marginal costs (``N``, or ``J_t`` with ``market``); ``None`` for the estimated costs.
    iteration : Iteration or None
        How to iterate the new equilibrium.
    market : MarketSelection or None
        One market whose rows alone are returned (``None``: all markets).

    Returns
    -------
    products, markets : DataFrame
        One row per product and one per market (the tables of a ``MergerResults``).
    """
    p = results.problem
    shown_ids = np.asarray(firm_ids).reshape(-1) if market is None else market.restrict(firm_ids, "firm_ids")
    if market is not None:
        firm_ids = market.expand_ids(firm_ids, results._firm_ids(), "firm_ids")
        costs = results._widen_costs(market, costs)
    new_ids = np.asarray(firm_ids).reshape(-1)
    if new_ids.shape[0] != p.N:
        raise InvalidDataError(f"firm_ids must have one entry per product ({p.N}); received {new_ids.shape[0]}.")
    costs_rows = results.compute_costs() if costs is None else np.asarray(costs, dtype=np.float64).reshape(-1, 1)
    prices_padded, converged = results._equilibrium(new_ids, None, costs_rows, None, iteration, market)
    new_prices = results._rows(prices_padded)
    old_prices = p.product_frame["prices"].to_numpy(dtype=np.float64).reshape(-1, 1)
    new_shares = results.compute_shares(prices=new_prices)
    old_shares = p.shares.reshape(-1, 1)
    products = pd.DataFrame({"market_ids": p.market_ids_of_rows})
    if "product_ids" in p.product_frame.columns:
        products["product_ids"] = p.product_frame["product_ids"].to_numpy()
    products["firm_ids"] = p.product_frame["firm_ids"].to_numpy()
    products["merged_firm_ids"] = new_ids
    products["costs"] = costs_rows[:, 0]
    products["prices"], products["merged_prices"] = old_prices[:, 0], new_prices[:, 0]
    products["price_change_percent"] = 100 * (new_prices[:, 0] / old_prices[:, 0] - 1)
    products["shares"], products["merged_shares"] = old_shares[:, 0], new_shares[:, 0]
    products["profits"] = ((old_prices - costs_rows) * old_shares)[:, 0]
    products["merged_profits"] = ((new_prices - costs_rows) * new_shares)[:, 0]
    old_cs = results.compute_consumer_surpluses()[:, 0]
    new_cs = results.compute_consumer_surpluses(prices=new_prices)[:, 0]
    old_hhi = results.compute_hhi()[:, 0]
    new_hhi = results.compute_hhi(firm_ids=new_ids, shares=new_shares)[:, 0]
    markets = pd.DataFrame(
        {
            "market_ids": p.layout.market_ids,
            "hhi": old_hhi,
            "merged_hhi": new_hhi,
            "hhi_change": new_hhi - old_hhi,
            "consumer_surplus": old_cs,
            "merged_consumer_surplus": new_cs,
            "consumer_surplus_change": new_cs - old_cs,
            "converged": converged.cpu().numpy(),
        }
    )
    if market is not None:
        products, markets = market.frame(products), market.frame(markets)
        products["merged_firm_ids"] = shown_ids
    return products, markets
