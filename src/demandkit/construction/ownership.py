"""Builders of data a problem needs: ownership matrices (PyBLP's ``build_ownership``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import InvalidDataError, SpecificationError
from ..layout.padding import Layout
from ..layout.validation import as_frame, require_columns


def build_ownership(
    product_data: Any, kappa_specification: str | Callable[[Any, Any], float] | None = None
) -> np.ndarray:
    """Ownership matrices :math:`O_{jk} = \\kappa(f_j, f_k)` stacked by market, ``N x J_max`` (NaN padding).

    Parameters
    ----------
    product_data : DataFrame or mapping
        ``market_ids`` and (unless ``kappa_specification`` is ``'monopoly'`` or ``'single'``) ``firm_ids``.
    kappa_specification : callable, 'monopoly', 'single' or None
        :math:`\\kappa(f, g)`, the weight firm :math:`f` puts on firm :math:`g`'s profits (e.g. partial
        common ownership); None for ``1{f = g}``; ``'monopoly'`` for one owner of everything; ``'single'``
        for single-product firms.

    Examples
    --------
    Market 0 has three products (two of firm ``a``), market 1 two, so market 1's rows end in NaN padding:

    >>> import pandas as pd
    >>> import demandkit as dk
    >>> products = pd.DataFrame(
    ...     {"market_ids": [0, 0, 0, 1, 1], "firm_ids": ["a", "a", "b", "a", "b"]}
    ... )
    >>> dk.build_ownership(products)
    array([[ 1.,  1.,  0.],
           [ 1.,  1.,  0.],
           [ 0.,  0.,  1.],
           [ 1.,  0., nan],
           [ 0.,  1., nan]])

    Partial common ownership: each firm puts half the weight of its own profits on its rival's:

    >>> dk.build_ownership(products, lambda f, g: 1.0 if f == g else 0.5)[:3]
    array([[1. , 1. , 0.5],
           [1. , 1. , 0.5],
           [0.5, 0.5, 1. ]])
    """
    frame = as_frame(product_data, "product_data")
    require_columns(frame, ["market_ids"], "product_data")
    layout = Layout.build(frame["market_ids"].to_numpy())
    both = layout.mask[:, :, None] & layout.mask[:, None, :]
    if kappa_specification == "monopoly":
        matrices = np.ones(both.shape)
    elif kappa_specification == "single":
        matrices = np.broadcast_to(np.eye(both.shape[1]), both.shape).copy()
    elif kappa_specification is None or callable(kappa_specification):
        if "firm_ids" not in frame.columns:
            raise InvalidDataError("build_ownership needs a firm_ids column unless kappa is 'monopoly' or 'single'.")
        firms = layout.pad(frame["firm_ids"].to_numpy().astype(object), None)
        rows, columns = firms[:, :, None], firms[:, None, :]
        if kappa_specification is None:
            matrices = (rows == columns).astype(np.float64)
        else:
            matrices = np.vectorize(kappa_specification, otypes=[np.float64])(
                np.broadcast_to(rows, both.shape), np.broadcast_to(columns, both.shape)
            )
    else:
        raise SpecificationError(
            f"kappa_specification must be None, a callable, 'monopoly' or 'single'; received {kappa_specification!r}."
        )
    return layout.unpad(np.where(both, matrices, np.nan))


def ownership_from_firms(layout: Layout, firm_ids: np.ndarray) -> np.ndarray:
    """Padded ``[T, J, J]`` matrix with ones where two products of a market share a firm."""
    codes = np.unique(firm_ids, return_inverse=True)[1]
    padded = layout.pad(codes, -1)
    same = padded[:, :, None] == padded[:, None, :]
    both = layout.mask[:, :, None] & layout.mask[:, None, :]
    return (same & both).astype(np.float64)
