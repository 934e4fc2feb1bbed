"""Validation of user tables at the boundary, with errors that name the column and the market."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..exceptions import InvalidDataError, SpecificationError


def as_frame(data: object, name: str) -> pd.DataFrame:
    """Accept a DataFrame, a mapping of columns or a structured array; expand matrix-valued fields.

    A field such as ``demand_instruments`` holding an ``N x M`` matrix becomes columns
    ``demand_instruments0..M-1`` as in PyBLP.
    """
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True)
    if isinstance(data, np.ndarray) and data.dtype.names is not None:
        data = {key: data[key] for key in data.dtype.names}
    if not isinstance(data, dict):
        try:
            data = dict(data)  # type: ignore[call-overload]
        except (TypeError, ValueError) as error:
            raise InvalidDataError(
                f"{name} must be a DataFrame, a mapping of columns or a structured array."
            ) from error
    columns: dict[str, np.ndarray] = {}
    for key, value in data.items():
        array = np.asarray(value)
        if array.ndim == 2 and array.shape[1] != 1:
            for k in range(array.shape[1]):
                columns[f"{key}{k}"] = array[:, k]
        else:
            columns[str(key)] = array.reshape(-1) if array.ndim == 2 else array
    return pd.DataFrame(columns)


def label(value: object) -> str:
    """A market id or value as the user wrote it (``7``, ``'C01Q1'``), not as numpy prints it."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidDataError(f"{name} is missing the required column(s) {missing}.")


def numbered_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Columns ``prefix0, prefix1, ...`` in order (stopping at the first gap)."""
    names = []
    while f"{prefix}{len(names)}" in frame.columns:
        names.append(f"{prefix}{len(names)}")
    return names


def check_finite(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise naming the first column with NaN or infinite values (and a row where it happens)."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InvalidDataError(
                f"Column {column!r} of {name} has {int(bad.sum())} NaN, infinite or non-numeric value(s) "
                f"(first at row {int(np.argmax(bad))})."
            )


def check_shares(shares: np.ndarray, market_ids: np.ndarray) -> None:
    """Shares strictly inside (0, 1), with inside shares summing to less than one in every market."""
    bad = (shares <= 0) | (shares >= 1)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidDataError(
            f"Column 'shares' must lie strictly between 0 and 1; row {row} in market {label(market_ids[row])} "
            f"has {label(shares[row])} ({int(bad.sum())} such rows)."
        )
    unique, codes = np.unique(market_ids, return_inverse=True)
    totals = np.bincount(codes, weights=shares)
    over = totals >= 1
    if over.any():
        t = int(np.argmax(over))
        raise InvalidDataError(
            f"Column 'shares' sums to {totals[t]:.6g} >= 1 in market {label(unique[t])}: the outside good needs a "
            "positive share. Rescale the market size."
        )


def check_agent_markets(product_markets: np.ndarray, agent_markets: np.ndarray) -> None:
    products, agents = set(np.unique(product_markets).tolist()), set(np.unique(agent_markets).tolist())
    if agents - products:
        raise InvalidDataError(
            "Column 'market_ids' of agent_data has markets with no products: "
            f"{[label(m) for m in sorted(agents - products)[:5]]}."
        )
    if products - agents:
        raise InvalidDataError(
            f"Markets {[label(m) for m in sorted(products - agents)[:5]]} have products but no agents in agent_data."
        )


def check_weights(weights: np.ndarray, market_ids: np.ndarray) -> None:
    bad = weights <= 0
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidDataError(
            f"Column 'weights' of agent_data must be positive; row {row} in market {label(market_ids[row])} has "
            f"{label(weights[row])}."
        )


def check_full_rank(matrix: np.ndarray, labels: list[str], name: str) -> None:
    """Raise naming the columns of ``matrix`` that are (nearly) linear combinations of earlier ones."""
    if matrix.shape[1] == 0:
        return
    scale = np.linalg.norm(matrix, axis=0)
    zero = scale == 0
    if zero.any():
        raise SpecificationError(f"{name} has all-zero column(s) {[labels[k] for k in np.flatnonzero(zero)]}.")
    _, r = np.linalg.qr(matrix / scale)
    diagonal = np.abs(np.diag(r))
    collinear = diagonal < 1e-10 * diagonal.max()
    if collinear.any():
        names = [labels[k] for k in np.flatnonzero(collinear)]
        raise SpecificationError(
            f"{name} is collinear: column(s) {names} are (nearly) linear combinations of the others "
            "(after absorbing fixed effects, if any). Drop them or the fixed effects they duplicate."
        )
