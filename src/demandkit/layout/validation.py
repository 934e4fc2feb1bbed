"""Validation of user tables at the boundary, with errors that name the column and the market."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

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
            parts = {f"{key}{k}": array[:, k] for k in range(array.shape[1])}
        else:
            parts = {str(key): array.reshape(-1) if array.ndim == 2 else array}
        clash = sorted(parts.keys() & columns.keys())
        if clash:
            raise InvalidDataError(
                f"Column {clash[0]!r} of {name} is given twice (a matrix-valued field expands into numbered columns); "
                "pass either the matrix or its numbered columns."
            )
        columns.update(parts)
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


def numbered_columns(frame: pd.DataFrame, prefix: str, name: str = "the data") -> list[str]:
    """The columns of the matrix-valued field ``prefix``, in order.

    A field is either numbered columns ``prefix0, prefix1, ...`` or one unnumbered column ``prefix``, its only
    column (as PyBLP reads it; an ``N x 1`` array in a mapping arrives so from :func:`as_frame`).

    Parameters
    ----------
    frame : DataFrame
        A user table.
    prefix : str
        The field, e.g. ``'demand_instruments'``.
    name : str, optional
        The table, for messages (``'product_data'``).

    Returns
    -------
    list of str
        The field's columns; empty when it is absent.

    Raises
    ------
    InvalidDataError
        Naming the column, when the field is ambiguous: both ``prefix`` and ``prefix0..`` are present, the numbers
        skip one or do not start at zero, or a column looks numbered but is not ``prefix<k>`` (``prefix01``,
        ``prefix_1``).
    """
    unnumbered: str | None = None
    numbered: dict[int, str] = {}
    for column in frame.columns:
        if not isinstance(column, str) or not column.startswith(prefix):
            continue
        suffix = column[len(prefix) :]
        if not suffix:
            unnumbered = column
        elif suffix.isascii() and suffix.isdigit() and str(int(suffix)) == suffix:
            numbered[int(suffix)] = column
        elif suffix.lstrip("_- .").isascii() and suffix.lstrip("_- .").isdigit():
            raise InvalidDataError(
                f"Column {column!r} of {name} looks like a column of {prefix!r} but is not numbered as "
                f"{prefix}0, {prefix}1, ...; rename it."
            )
    if unnumbered is not None and numbered:
        raise InvalidDataError(
            f"Columns {unnumbered!r} and {numbered[min(numbered)]!r} of {name} both hold {prefix!r}: give either one "
            f"unnumbered column or numbered columns {prefix}0, {prefix}1, ..."
        )
    missing = sorted(set(range(len(numbered))) - numbered.keys())
    if missing:
        after = min(k for k in numbered if k > missing[0])
        raise InvalidDataError(
            f"Column {numbered[after]!r} of {name} has no {prefix + str(missing[0])!r} before it: the columns of "
            f"{prefix!r} must be numbered 0, 1, 2, ... without gaps."
        )
    if unnumbered is not None:
        return [unnumbered]
    return [numbered[k] for k in range(len(numbered))]


def check_finite(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    """Raise naming the first column with NaN or infinite values (and a row where it happens)."""
    for column in columns:
        reject_text(frame, column, name)
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


def reject_text(frame: pd.DataFrame, column: str, name: str) -> None:
    """Raise naming ``column`` of ``name`` if it holds text (numbers stored as strings) where numbers are needed.

    Such values are not converted on the user's behalf: a column read from a file as strings usually means a
    parsing problem (a thousands separator, a stray header) that a silent conversion would hide.
    """
    values = frame[column]
    if is_numeric_dtype(values) or is_bool_dtype(values):
        return
    text = values.map(lambda value: isinstance(value, (str, bytes))).to_numpy(dtype=bool)
    if text.any():
        row = int(np.argmax(text))
        raise InvalidDataError(
            f"Column {column!r} of {name} holds text where numbers are needed ({int(text.sum())} value(s), the first "
            f"{values.iloc[row]!r} in row {row}). Convert it first, for example "
            f"{name}[{column!r}] = pd.to_numeric({name}[{column!r}])."
        )


def require_rows(frame: pd.DataFrame, name: str) -> None:
    """Raise if the table ``name`` has no rows (an empty filter upstream, say)."""
    if len(frame) == 0:
        raise InvalidDataError(f"{name} has no rows.")


def warn_duplicate_products(frame: pd.DataFrame, name: str, stacklevel: int = 1) -> None:
    """Warn naming the markets where a product appears more than once.

    A product is repeated when two rows of a market have the same ``product_ids`` (rows without one are not
    compared) or are identical in every column. Both usually come from a merge or a concatenation gone wrong;
    estimation would count the product twice.

    Parameters
    ----------
    frame : DataFrame
        The product table, with ``market_ids``.
    name : str
        The table, for the message.
    stacklevel : int, optional
        Frames above the caller to attribute the warning to, as in :func:`warnings.warn`.
    """
    markets = frame["market_ids"]
    if "product_ids" in frame.columns:
        given = frame["product_ids"].notna().to_numpy()
        keys = pd.DataFrame({"market_ids": markets, "product_ids": frame["product_ids"]})[given]
        repeated = np.zeros(len(frame), dtype=bool)
        repeated[given] = keys.duplicated(keep=False).to_numpy()
        if repeated.any():
            _warn_repeated(markets[repeated], f"Column 'product_ids' of {name} repeats a product", stacklevel)
            return
    try:
        identical = frame.duplicated(keep=False).to_numpy()
    except TypeError:  # unhashable cells (lists): nothing sensible to compare
        return
    if identical.any():
        _warn_repeated(markets[identical], f"{name} has identical rows", stacklevel)


def _warn_repeated(markets: pd.Series, what: str, stacklevel: int) -> None:
    unique = pd.unique(markets)
    shown = ", ".join(label(m) for m in unique[:5]) + (f" and {len(unique) - 5} more" if len(unique) > 5 else "")
    warnings.warn(
        f"{what} within market(s) {shown} ({len(markets)} rows in all); each product should appear once per market, "
        "or it is counted more than once. Drop the duplicates (DataFrame.drop_duplicates).",
        UserWarning,
        stacklevel=stacklevel + 2,
    )
