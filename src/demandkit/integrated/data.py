"""The integrated model's data: aggregate shares by market and period, a household panel, and the population.

Aggregate rows (``product_data``) are laid out as ``[M, T, J]`` tensors: markets, periods (``time_ids`` minus the
market's first, consecutive) and product slots (a market's ``product_ids``, persistent over time, so a product
keeps its slot as it enters and exits). Household rows (``micro_data``) become choice situations: the market and
period, the chosen slot (0 for the outside good, ``j + 1`` for slot ``j``), the last period's choice when the
household was observed in the last period, and whether the situation enters the likelihood (its last choice is
observed and its period is past the burn-in). A week without a record breaks the lag: the next week starts a
new spell whose first week only forms the state.

Every check raises :class:`~demandkit.exceptions.InvalidDataError` naming the column, market, period or household.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..configurations.formulation import Formulation, absorb
from ..configurations.integration import Integration
from ..exceptions import InvalidDataError, SpecificationError
from ..layout.validation import as_frame, label, numbered_columns, require_columns

PRODUCT_COLUMNS = ["market_ids", "time_ids", "product_ids", "shares"]
MICRO_COLUMNS = ["individual_ids", "market_ids", "time_ids", "choice_ids"]


@dataclass(frozen=True)
class Aggregate:
    """Aggregate data laid out as ``[M, T, J]`` numpy arrays, and the map back to the rows of ``product_data``."""

    market_ids: np.ndarray  # [M] the user's market ids
    first_time: np.ndarray  # [M] each market's first time_id
    periods: np.ndarray  # [M] number of periods of each market
    available: np.ndarray  # [M, T, J] bool
    log_shares: np.ndarray  # [M, T, J] (0 where unavailable)
    X2: np.ndarray  # [M, T, J, K2]
    row_market: np.ndarray  # [N]
    row_period: np.ndarray  # [N]
    row_slot: np.ndarray  # [N]
    product_ids: np.ndarray  # [M, J] object: the product of each slot

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.available.shape

    def pad(self, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``N`` (or ``N x K``) rows in ``product_data``'s order as ``[M, T, J(, K)]``."""
        out = np.full(self.available.shape + rows.shape[1:], fill, dtype=np.float64)
        out[self.row_market, self.row_period, self.row_slot] = rows
        return out

    def unpad(self, values: np.ndarray) -> np.ndarray:
        """``[M, T, J(, K)]`` back to ``N`` rows in ``product_data``'s order."""
        return values[self.row_market, self.row_period, self.row_slot]


@dataclass(frozen=True)
class Situations:
    """The household panel as choice situations that enter the likelihood (numpy arrays of equal length ``n``)."""

    household: np.ndarray  # [n] household code 0..H-1, sorted
    market: np.ndarray  # [n]
    period: np.ndarray  # [n]
    choice: np.ndarray  # [n] 0 outside, j + 1 for slot j
    lag: np.ndarray  # [n] the same coding
    household_ids: np.ndarray  # [H] the user's ids
    demographics: np.ndarray  # [H, D]
    rows: int  # household rows in micro_data (likelihood or not)


def build_aggregate(frame: pd.DataFrame, X2_formulation: Formulation | None) -> Aggregate:
    """Validate ``product_data`` and lay it out (see the module docstring)."""
    require_columns(frame, PRODUCT_COLUMNS, "product_data")
    if frame.empty:
        raise InvalidDataError("product_data has no rows.")
    shares = _numeric(frame, "shares", "product_data")
    bad = ~((shares > 0) & (shares < 1))
    if bad.any():
        row = frame.iloc[int(np.argmax(bad))]
        raise InvalidDataError(
            f"shares must lie in (0, 1); market {label(row['market_ids'])}, time {label(row['time_ids'])}, product "
            f"{label(row['product_ids'])} has {row['shares']!r}."
        )
    time = _numeric(frame, "time_ids", "product_data")
    if not np.all(time == np.round(time)):
        raise InvalidDataError("time_ids must be integers (consecutive periods within each market).")
    time = time.astype(np.int64)
    market_ids, market = np.unique(frame["market_ids"].to_numpy(), return_inverse=True)
    keys = pd.DataFrame({"market": market, "time": time, "product": frame["product_ids"].to_numpy()})
    duplicated = keys.duplicated(["market", "time", "product"])
    if duplicated.any():
        row = frame[duplicated.to_numpy()].iloc[0]
        raise InvalidDataError(
            f"product_ids {label(row['product_ids'])} appears more than once in market {label(row['market_ids'])}, "
            f"time {label(row['time_ids'])}."
        )
    totals = keys.assign(shares=shares).groupby(["market", "time"])["shares"].sum()
    if (totals >= 1).any():
        m, t = totals.index[int(np.argmax(totals.to_numpy() >= 1))]
        raise InvalidDataError(
            f"shares in market {label(market_ids[m])}, time {t} sum to {totals[(m, t)]:.6g}; they must sum to "
            "less than one (the outside good has the rest)."
        )
    first = np.full(market_ids.size, np.iinfo(np.int64).max)
    last = np.full(market_ids.size, np.iinfo(np.int64).min)
    np.minimum.at(first, market, time)
    np.maximum.at(last, market, time)
    periods = last - first + 1
    seen = np.zeros(market_ids.size, dtype=np.int64)
    np.add.at(seen, totals.index.get_level_values(0).to_numpy(), 1)
    gaps = seen != periods
    if gaps.any():
        m = int(np.argmax(gaps))
        present = set(totals.loc[m].index.tolist())
        missing = [t for t in range(first[m], last[m] + 1) if t not in present][:5]
        raise InvalidDataError(
            f"time_ids of market {label(market_ids[m])} have gaps (missing {missing}); periods must be consecutive."
        )
    period = time - first[market]
    pairs = keys[["market", "product"]].drop_duplicates().sort_values(["market", "product"], kind="stable")
    pairs = pairs.assign(slot=pairs.groupby("market").cumcount().to_numpy())
    slot = keys.merge(pairs, on=["market", "product"], how="left")["slot"].to_numpy()
    M, T, J = market_ids.size, int(periods.max()), int(pairs["slot"].max()) + 1
    available = np.zeros((M, T, J), dtype=bool)
    available[market, period, slot] = True
    log_shares = np.zeros((M, T, J))
    log_shares[market, period, slot] = np.log(shares)
    product_ids = np.full((M, J), None, dtype=object)
    product_ids[pairs["market"].to_numpy(), pairs["slot"].to_numpy()] = pairs["product"].to_numpy()
    K2 = 0
    X2 = np.zeros((M, T, J, 0))
    if X2_formulation is not None:
        matrix = X2_formulation.build_matrix(frame)[0]
        K2 = matrix.shape[1]
        X2 = np.zeros((M, T, J, K2))
        X2[market, period, slot] = matrix
    return Aggregate(market_ids, first, periods, available, log_shares, X2, market, period, slot, product_ids)


def build_situations(frame: pd.DataFrame, aggregate: Aggregate, burn_in: int, demographics: list[str]) -> Situations:
    """Validate ``micro_data`` against the aggregate data and build its choice situations."""
    require_columns(frame, MICRO_COLUMNS + demographics, "micro_data")
    if frame.empty:
        raise InvalidDataError("micro_data has no rows.")
    position = {market_id: m for m, market_id in enumerate(aggregate.market_ids.tolist())}
    market = frame["market_ids"].map(position)
    if market.isna().any():
        missing = frame.loc[market.isna(), "market_ids"].iloc[0]
        raise InvalidDataError(f"micro_data has households in market {label(missing)}, which product_data lacks.")
    market = market.to_numpy(dtype=np.int64)
    time = _numeric(frame, "time_ids", "micro_data")
    period = time.astype(np.int64) - aggregate.first_time[market]
    outside = (period < 0) | (period >= aggregate.periods[market]) | (time != np.round(time))
    if outside.any():
        row = frame[outside].iloc[0]
        raise InvalidDataError(
            f"micro_data has household {label(row['individual_ids'])} in market {label(row['market_ids'])} at time "
            f"{label(row['time_ids'])}, a period product_data lacks."
        )
    household_ids, household = np.unique(frame["individual_ids"].to_numpy(), return_inverse=True)
    markets_per_household = pd.Series(market).groupby(household).nunique()
    if (markets_per_household > 1).any():
        h = int(markets_per_household.index[int(np.argmax(markets_per_household.to_numpy() > 1))])
        raise InvalidDataError(f"Household {label(household_ids[h])} appears in more than one market of micro_data.")
    keys = pd.DataFrame({"household": household, "period": period})
    if keys.duplicated().any():
        row = frame[keys.duplicated().to_numpy()].iloc[0]
        raise InvalidDataError(
            f"Household {label(row['individual_ids'])} has more than one row at time {label(row['time_ids'])}."
        )
    choice = _choices(frame, market, period, aggregate)
    short = aggregate.periods <= burn_in
    if short.any():
        m = int(np.argmax(short))
        raise InvalidDataError(
            f"burn_in={burn_in} is as long as market {label(aggregate.market_ids[m])}'s {aggregate.periods[m]} "
            "periods: no period would enter the likelihood."
        )
    order = np.lexsort((period, household))
    household, market, period, choice = household[order], market[order], period[order], choice[order]
    follows = np.zeros(order.size, dtype=bool)
    follows[1:] = (household[1:] == household[:-1]) & (period[1:] == period[:-1] + 1)
    lag = np.zeros(order.size, dtype=np.int64)
    lag[1:] = choice[:-1]
    keep = follows & (period >= burn_in)
    values = np.zeros((household_ids.size, len(demographics)))
    if demographics:
        first_rows = np.unique(household, return_index=True)[1]
        values = np.column_stack([_numeric(frame.iloc[order], c, "micro_data")[first_rows] for c in demographics])
    used, codes = np.unique(household[keep], return_inverse=True)
    return Situations(
        codes, market[keep], period[keep], choice[keep], lag[keep], household_ids[used], values[used], frame.shape[0]
    )


def _choices(frame: pd.DataFrame, market: np.ndarray, period: np.ndarray, aggregate: Aggregate) -> np.ndarray:
    """Chosen slots coded 0 (outside, a missing ``choice_ids``) or ``j + 1``; a product not on sale is an error."""
    ids = frame["choice_ids"]
    inside = ids.notna().to_numpy()
    M, J = aggregate.product_ids.shape
    table = pd.DataFrame(
        {
            "market": np.repeat(np.arange(M), J),
            "product": aggregate.product_ids.reshape(-1),
            "slot": np.tile(range(J), M),
        }
    ).dropna(subset=["product"])
    wanted = pd.DataFrame({"market": market[inside], "product": ids[inside].to_numpy()})
    slot = wanted.merge(table, on=["market", "product"], how="left")["slot"].to_numpy(dtype=np.float64)
    choice = np.zeros(frame.shape[0], dtype=np.int64)
    unknown = np.isnan(slot)
    if not unknown.any():
        on_sale = aggregate.available[market[inside], period[inside], slot.astype(np.int64)]
        unknown = ~on_sale
    if unknown.any():
        row = frame[inside].iloc[int(np.argmax(unknown))]
        raise InvalidDataError(
            f"Household {label(row['individual_ids'])} chose {label(row['choice_ids'])} in market "
            f"{label(row['market_ids'])} at time {label(row['time_ids'])}, which is not a product of that market and "
            "period in product_data."
        )
    choice[inside] = slot.astype(np.int64) + 1
    return choice


def _numeric(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    try:
        values = pd.to_numeric(frame[column], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidDataError(f"Column {column!r} of {name} must be numeric: {error}") from error
    if not np.all(np.isfinite(values)):
        raise InvalidDataError(f"Column {column!r} of {name} has missing or infinite values.")
    return values


@dataclass(frozen=True)
class LinearDesign:
    """The IV step's matrices on the rows past the burn-in, fixed effects absorbed."""

    rows: np.ndarray  # [N_used] indices into product_data
    X1: np.ndarray
    X1_labels: list[str]
    ZD: np.ndarray
    ZD_labels: list[str]


def build_linear_design(
    frame: pd.DataFrame, formulation: Formulation, period: np.ndarray, burn_in: int
) -> LinearDesign:
    """X1 and the demand instruments (excluded ``demand_instruments0..`` plus exogenous X1) past the burn-in."""
    rows = np.flatnonzero(period >= burn_in)
    used = frame.iloc[rows].reset_index(drop=True)
    X1, labels = formulation.build_matrix(used)
    endogenous = []
    if "prices" in used.columns:
        derivative = formulation.derivative_matrix(used, "prices")
        endogenous = [k for k in range(X1.shape[1]) if np.any(np.abs(derivative[:, k]) > 0)]
    excluded = numbered_columns(used, "demand_instruments", "product_data")
    if endogenous and not excluded:
        raise SpecificationError(
            f"X1 has endogenous columns {[labels[k] for k in endogenous]} but product_data has no "
            "demand_instruments0.. columns."
        )
    exogenous = [k for k in range(X1.shape[1]) if k not in endogenous]
    Z = np.column_stack([used[excluded].to_numpy(dtype=np.float64), X1[:, exogenous]]) if excluded else X1[:, exogenous]
    ids = formulation.build_ids(used)
    X1 = absorb(X1, ids, formulation.absorb_method)
    Z = absorb(Z, ids, formulation.absorb_method)
    return LinearDesign(rows, X1, labels, Z, excluded + [labels[k] for k in exogenous])


def build_population(
    aggregate: Aggregate,
    integration: Integration | None,
    agent_data: pd.DataFrame | None,
    demographics: list[str],
    dimensions: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes ``[M, I, dimensions]``, weights ``[M, I]`` and demographics ``[M, I, D]`` of each market's population.

    Nodes come from ``agent_data``'s ``nodes0..`` columns (with ``weights``) when it has them, otherwise from
    ``integration``; demographics from ``agent_data`` (each market needs as many rows as it has agents).
    """
    M = aggregate.market_ids.size
    if agent_data is not None:
        agent_data = as_frame(agent_data, "agent_data")
        require_columns(agent_data, ["market_ids"] + demographics, "agent_data")
    node_columns = numbered_columns(agent_data, "nodes", "agent_data") if agent_data is not None else []
    if node_columns and dimensions:
        if len(node_columns) < dimensions:
            raise InvalidDataError(
                f"agent_data has {len(node_columns)} nodes columns; the model integrates over {dimensions} dimensions."
            )
        require_columns(agent_data, ["weights"], "agent_data")
        values = _agent_arrays(agent_data, aggregate, node_columns[:dimensions] + ["weights"])
        nodes, weights = values[..., :-1], values[..., -1]
        I = weights.shape[1]
    elif integration is not None and dimensions:
        _, nodes, weights = integration.build_many(dimensions, aggregate.market_ids)
        I = weights.size // M
        nodes, weights = nodes.reshape(M, I, dimensions), weights.reshape(M, I)
    elif dimensions:
        raise SpecificationError("Pass an integration or agent_data with nodes0.. columns for the random coefficients.")
    else:
        return np.zeros((M, 1, 0)), np.ones((M, 1)), np.zeros((M, 1, 0))
    values = np.zeros((M, I, 0))
    if demographics:
        if agent_data is None:
            raise SpecificationError("An agent_formulation needs agent_data with the population's demographics.")
        values = _agent_arrays(agent_data, aggregate, demographics, I)
    return nodes, weights, values


def _agent_arrays(
    agent_data: pd.DataFrame, aggregate: Aggregate, columns: list[str], size: int | None = None
) -> np.ndarray:
    """``columns`` of ``agent_data`` as ``[M, I, len(columns)]``: every market needs the same ``I`` rows."""
    position = {market_id: m for m, market_id in enumerate(aggregate.market_ids.tolist())}
    market = agent_data["market_ids"].map(position)
    counts = np.bincount(market.dropna().to_numpy(dtype=np.int64), minlength=aggregate.market_ids.size)
    I = size if size is not None else int(counts.max())
    short = counts < I
    if short.any():
        m = int(np.argmax(short))
        raise InvalidDataError(
            f"agent_data has {counts[m]} rows in market {label(aggregate.market_ids[m])}; every market needs {I}."
        )
    kept = agent_data[market.notna().to_numpy()].assign(_m=market.dropna().to_numpy(dtype=np.int64))
    kept = kept[kept.groupby("_m").cumcount().to_numpy() < I].sort_values("_m", kind="stable")
    values = np.column_stack([_numeric(kept, c, "agent_data") for c in columns])
    return values.reshape(aggregate.market_ids.size, I, len(columns))


def shard(
    aggregate: Aggregate,
    situations: Situations,
    population: tuple[np.ndarray, np.ndarray, np.ndarray],
    household_draws: tuple[np.ndarray, np.ndarray],
    start: int,
    stop: int,
) -> tuple[Aggregate, Situations, tuple, tuple, np.ndarray, np.ndarray]:
    """Markets ``[start, stop)`` with their households: the pieces one process of a distributed solve holds.

    Also returns the ``product_data`` rows of those markets and the (global) codes of their households.
    """
    rows = np.flatnonzero((aggregate.row_market >= start) & (aggregate.row_market < stop))
    part = Aggregate(
        aggregate.market_ids[start:stop],
        aggregate.first_time[start:stop],
        aggregate.periods[start:stop],
        aggregate.available[start:stop],
        aggregate.log_shares[start:stop],
        aggregate.X2[start:stop],
        aggregate.row_market[rows] - start,
        aggregate.row_period[rows],
        aggregate.row_slot[rows],
        aggregate.product_ids[start:stop],
    )
    keep = (situations.market >= start) & (situations.market < stop)
    households, codes = np.unique(situations.household[keep], return_inverse=True)
    local = Situations(
        codes,
        situations.market[keep] - start,
        situations.period[keep],
        situations.choice[keep],
        situations.lag[keep],
        situations.household_ids[households],
        situations.demographics[households],
        int(keep.sum()),
    )
    nodes, weights, demographics = population
    draws, draw_weights = household_draws
    return (
        part,
        local,
        (nodes[start:stop], weights[start:stop], demographics[start:stop]),
        (draws[households], draw_weights),
        rows,
        households,
    )
