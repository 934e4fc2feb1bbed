"""Builders of excluded instruments and of simulation ids: PyBLP's ``build_blp_instruments``,
``build_differentiation_instruments`` and ``build_id_data``.

Everything is computed for all markets at once. BLP instruments are group sums (by market and by
market-firm pair). Differentiation instruments need pairwise differences within a market; they are
formed on padded ``[markets, rows, products]`` blocks whose size is bounded by ``chunk_elements``:
markets are grouped by size (so padding stays small) and a market too large for one block is split
into chunks of its rows, so memory grows linearly with the number of products and a full
``products x products`` matrix of a large market is never formed.

This is the data layer: it works on numpy arrays and never sees a tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from ..configurations.formulation import Formulation
from ..configurations.options import check_choice
from ..exceptions import InvalidDataError, SpecificationError
from ..layout.padding import Layout
from ..layout.validation import as_frame, require_columns

DifferentiationVersion = Literal["local", "quadratic"]

DEFAULT_CHUNK_ELEMENTS = 2**22
"""Default bound on the number of float64 elements in one block of pairwise differences (32 MiB)."""


def build_id_data(T: int, J: int, F: int) -> np.recarray:
    """Market and firm ids of a balanced panel, as PyBLP's ``build_id_data``.

    Parameters
    ----------
    T : int
        Number of markets.
    J : int
        Number of products in each market.
    F : int
        Number of firms. Firm :math:`f` makes products :math:`j` with :math:`\\lfloor jF/J \\rfloor = f`, so when
        ``J`` is not a multiple of ``F`` firms with smaller ids make the extra products.

    Returns
    -------
    recarray
        ``T * J`` rows with object fields ``market_ids`` (``0..T-1``) and ``firm_ids`` (``0..F-1``), each of
        shape ``(1,)`` per row as in PyBLP.

    Examples
    --------
    >>> import demandkit as dk
    >>> ids = dk.build_id_data(T=2, J=3, F=2)
    >>> ids.market_ids.ravel().tolist(), ids.firm_ids.ravel().tolist()
    ([0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 1])
    """
    for name, value in (("T", T), ("F", F), ("J", J)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SpecificationError(f"{name} must be an int; received {value!r}.")
    if T < 1 or F < 1:
        raise SpecificationError(f"T and F must be positive; received T={T}, F={F}.")
    if J < F:
        raise SpecificationError(f"J must be at least F; received J={J}, F={F}.")
    market_ids = np.repeat(np.arange(T), J).astype(np.int64)
    firm_ids = np.floor(np.tile(np.arange(J), T) * F / J).astype(np.int64)
    dtype = [("market_ids", np.object_, (1,)), ("firm_ids", np.object_, (1,))]
    data = np.empty(T * J, dtype=dtype)
    data["market_ids"] = market_ids.astype(np.object_).reshape(-1, 1)
    data["firm_ids"] = firm_ids.astype(np.object_).reshape(-1, 1)
    return data.view(np.recarray)


def _load(formulation: Formulation, product_data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The characteristics ``X`` and integer codes of markets and firms."""
    if not isinstance(formulation, Formulation):
        raise SpecificationError(f"formulation must be a demandkit Formulation; received {type(formulation)!r}.")
    frame = as_frame(product_data, "product_data")
    require_columns(frame, ["market_ids", "firm_ids"], "product_data")
    for name in ("market_ids", "firm_ids"):
        if frame[name].isna().any():
            raise InvalidDataError(f"Column {name!r} of product_data has missing values.")
    X, _ = formulation.build_matrix(frame)
    if not np.isfinite(X).all():
        raise InvalidDataError(f"The characteristics of {formulation.formula!r} have NaN or infinite values.")
    markets = np.unique(frame["market_ids"].to_numpy(), return_inverse=True)[1].reshape(-1)
    firms = np.unique(frame["firm_ids"].to_numpy(), return_inverse=True)[1].reshape(-1)
    return X, markets.astype(np.int64), firms.astype(np.int64)


def _group_sums(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """:math:`\\sum_{k: g(k) = g(j)} x_k` for every row :math:`j` (``N x K``)."""
    sums = np.zeros((int(codes.max()) + 1 if codes.size else 0, X.shape[1]))
    np.add.at(sums, codes, X)
    return sums[codes]


def build_blp_instruments(formulation: Formulation, product_data: Any) -> np.ndarray:
    """The "sums of characteristics" instruments of Berry, Levinsohn and Pakes (1995).

    For product :math:`j` of firm :math:`f` in market :math:`t` and the characteristics :math:`x` designed by
    ``formulation``,

    .. math::

        Z^{\\text{Other}}_{jt} = \\sum_{k \\in J_{ft} \\setminus \\{j\\}} x_{kt}, \\qquad
        Z^{\\text{Rival}}_{jt} = \\sum_{k \\notin J_{ft}} x_{kt},

    returned side by side, ``[Z_other, Z_rival]`` (``N x 2K``), in the rows' order, as PyBLP's function.

    Parameters
    ----------
    formulation : Formulation
        The characteristics :math:`X`, e.g. ``Formulation('1 + hpwt + air')``.
    product_data : DataFrame or mapping
        ``market_ids``, ``firm_ids`` and the columns the formulation uses.
    """
    X, markets, firms = _load(formulation, product_data)
    pairs = np.unique(np.column_stack([markets, firms]), axis=0, return_inverse=True)[1].reshape(-1)
    other = _group_sums(X, pairs) - X
    rival = _group_sums(X, markets) - X - other
    return np.ascontiguousarray(np.column_stack([other, rival]))


def _blocks(layout: Layout, per_pair: int, chunk_elements: int) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """Blocks ``(markets, width, row_start, row_stop)`` with at most ``chunk_elements`` pair elements each.

    Markets are visited in order of size so that markets padded together have similar sizes; a block holds
    ``len(markets) x (row_stop - row_start) x width x per_pair`` elements.
    """
    sizes = layout.sizes
    order = np.argsort(sizes, kind="stable")
    budget = max(1, chunk_elements // max(per_pair, 1))
    start = 0
    while start < order.size:
        width = int(sizes[order[start]])
        if width * width <= budget:
            # as many whole markets as fit, each padded to the largest of them
            stop = start + 1
            while stop < order.size and (stop - start + 1) * int(sizes[order[stop]]) ** 2 <= budget:
                stop += 1
            markets = order[start:stop]
            width = int(sizes[markets].max())
            yield markets, width, 0, width
            start = stop
        else:
            # one large market, split into chunks of its rows
            rows = max(1, budget // width)
            for row_start in range(0, width, rows):
                yield order[start : start + 1], width, row_start, min(width, row_start + rows)
            start += 1


def _pairwise(
    X: np.ndarray, firms: np.ndarray, layout: Layout, markets: np.ndarray, width: int, row_start: int, row_stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Differences :math:`d_{jk} = x_j - x_k` for rows ``row_start:row_stop`` of ``markets`` against all products.

    Returns ``d`` (``[G, c, width, K]``, zero where padded), ``valid`` (real pairs with :math:`k \\ne j`),
    ``same`` (valid pairs of the same firm) and ``rival`` (valid pairs of different firms), each ``[G, c, width]``.
    """
    rows = layout.rows[markets, :width]
    mask = layout.mask[markets, :width]
    values = np.where(mask[..., None], X[rows], 0.0)  # [G, width, K]
    codes = np.where(mask, firms[rows], -1)
    d = values[:, row_start:row_stop, None, :] - values[:, None, :, :]
    slots = np.arange(width)
    distinct = np.arange(row_start, row_stop)[:, None] != slots[None, :]
    valid = mask[:, row_start:row_stop, None] & mask[:, None, :] & distinct[None]
    same_firm = codes[:, row_start:row_stop, None] == codes[:, None, :]
    return d, valid, valid & same_firm, valid & ~same_firm


def _scatter(target: np.ndarray, layout: Layout, markets: np.ndarray, row_start: int, row_stop: int, values: Any):
    """Write ``values`` (``[G, c, M]``) of real rows into ``target`` (``N x M``) in the user's row order."""
    rows = layout.rows[markets, row_start:row_stop]
    mask = layout.mask[markets, row_start:row_stop]
    target[rows[mask]] = values[mask]


def build_differentiation_instruments(
    formulation: Formulation,
    product_data: Any,
    version: str = "local",
    interact: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> np.ndarray:
    """Differentiation instruments of Gandhi and Houde (2020), batched over markets and chunked over rows.

    With :math:`d_{jkt\\ell} = x_{jt\\ell} - x_{kt\\ell}` the difference between products :math:`j` and :math:`k` of
    market :math:`t` in characteristic :math:`\\ell`, and :math:`J_{ft}` the products of :math:`j`'s firm,

    - ``'local'``: :math:`Z_{jt\\ell}^{\\text{Other}} =
      \\sum_{k \\in J_{ft}\\setminus\\{j\\}} 1(|d_{jkt\\ell}| < SD_\\ell)`
      and :math:`Z_{jt\\ell}^{\\text{Rival}} = \\sum_{k \\notin J_{ft}} 1(|d_{jkt\\ell}| < SD_\\ell)`, where
      :math:`SD_\\ell = \\sqrt{\\overline{d^2_\\ell} - \\bar d_\\ell^2}` is the standard deviation of all pairwise
      differences :math:`d_{jkt\\ell}`, :math:`j \\ne k`, pooled over every market (the strict inequality and the
      pooled, population standard deviation are PyBLP's);
    - ``'quadratic'``: the same sums of :math:`d_{jkt\\ell}^2`.

    With ``interact=True`` the summands are :math:`1(|d_{jkt\\ell}| < SD_\\ell)\\, d_{jkt\\ell'}` for every
    :math:`\\ell'` (local) or :math:`d_{jkt\\ell} d_{jkt\\ell'}` for :math:`\\ell' \\ge \\ell` (quadratic), with
    :math:`\\ell` the outer index. The result is ``[Z_other, Z_rival]`` in the rows' order, as PyBLP's.

    Parameters
    ----------
    formulation : Formulation
        The characteristics :math:`X`.
    product_data : DataFrame or mapping
        ``market_ids``, ``firm_ids`` and the columns the formulation uses.
    version : {'local', 'quadratic'}
        Which instruments to build.
    interact : bool
        Include interactions between characteristics.
    chunk_elements : int
        Upper bound on the elements of one block of pairwise terms (memory is about 8 bytes times a small
        multiple of this); large markets are processed a chunk of rows at a time.
    """
    check_choice("version", version, DifferentiationVersion)
    if not isinstance(interact, (bool, np.bool_)):
        raise SpecificationError(f"interact must be True or False; received {interact!r}.")
    if not isinstance(chunk_elements, (int, np.integer)) or chunk_elements < 1:
        raise SpecificationError(f"chunk_elements must be a positive int; received {chunk_elements!r}.")
    X, markets_of_rows, firms = _load(formulation, product_data)
    N, K = X.shape
    layout = Layout.build(markets_of_rows)
    if version == "quadratic":
        pairs = [(a, b) for a in range(K) for b in range(a, K if interact else a + 1)]
    else:
        pairs = [(a, b) for a in range(K) for b in (range(K) if interact else [a])]
    first, second = np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)
    per_pair = max(K, len(pairs)) + 2

    threshold = np.full(K, np.nan)
    if version == "local":
        count = 0
        total = np.zeros(K)
        squares = np.zeros(K)
        for markets, width, row_start, row_stop in _blocks(layout, per_pair, chunk_elements):
            d, valid, _, _ = _pairwise(X, firms, layout, markets, width, row_start, row_stop)
            d = np.where(valid[..., None], d, 0.0)
            count += int(valid.sum())
            total += d.sum(axis=(0, 1, 2))
            squares += (d**2).sum(axis=(0, 1, 2))
        if count:
            threshold = np.sqrt(squares / count - (total / count) ** 2)

    instruments = np.zeros((N, 2 * len(pairs)))
    for markets, width, row_start, row_stop in _blocks(layout, per_pair, chunk_elements):
        d, valid, same, rival = _pairwise(X, firms, layout, markets, width, row_start, row_stop)
        if version == "quadratic":
            terms = d[..., first] * d[..., second]
        else:
            with np.errstate(invalid="ignore"):
                close = (np.abs(d) < threshold) & valid[..., None]
            terms = close[..., first].astype(np.float64)
            if interact:
                terms = terms * d[..., second]
        other_sums = np.einsum("gcj,gcjp->gcp", same.astype(np.float64), terms)
        rival_sums = np.einsum("gcj,gcjp->gcp", rival.astype(np.float64), terms)
        _scatter(instruments, layout, markets, row_start, row_stop, np.concatenate([other_sums, rival_sums], -1))
    return instruments
