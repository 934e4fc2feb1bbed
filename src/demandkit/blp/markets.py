"""One market of a results object: PyBLP's ``market_id`` argument of every post-estimation method.

Each method still computes every market in one batched pass; :class:`MarketSelection` then keeps one market's part
of the stacked output, as PyBLP returns it: product-level vectors ``J_t x 1``, product-by-product matrices
``J_t x J_t``, choice probabilities ``J_t x I_t`` and market-level values ``1 x 1``. Inputs that PyBLP takes for
that market only (``prices``, ``costs``, ``shares``, ``firm_ids``: ``J_t`` values; ``ownership``: ``J_t x J_t``)
are widened to all products first, the other markets keeping their unchanged values; the full ``N`` rows are
accepted as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import InvalidDataError


@dataclass(frozen=True)
class MarketSelection:
    """Where one market lives in a problem's stacked (``N`` rows) and market-level (``T`` rows) arrays.

    Attributes
    ----------
    market_id : object
        The market's id as the user wrote it.
    index : int
        Its row among the problem's sorted unique market ids.
    rows : ndarray
        Its product rows in the user's product table, in their order (``J_t``).
    N : int
        The number of products of all markets.
    slot_of_row : ndarray
        Each product's slot within its market (``N``), to widen ownership matrices.
    agents : int or None
        Its number of agents ``I_t`` (``None`` without agent data).
    """

    market_id: Any
    index: int
    rows: np.ndarray
    N: int
    slot_of_row: np.ndarray
    agents: int | None

    @property
    def size(self) -> int:
        """:math:`J_t`, the market's number of products."""
        return int(self.rows.size)

    # ------------------------------------------------------------------------------------------------- outputs
    def vector(self, stacked: np.ndarray) -> np.ndarray:
        """The market's rows of an ``N x K`` stacked array: ``J_t x K``."""
        return np.asarray(stacked)[self.rows]

    def matrices(self, stacked: np.ndarray) -> np.ndarray:
        """The market's block of ``N x J_max`` stacked matrices: ``J_t x J_t``."""
        return np.asarray(stacked)[self.rows][:, : self.size]

    def agent_matrix(self, stacked: np.ndarray) -> np.ndarray:
        """The market's block of ``N x I_max`` stacked probabilities: ``J_t x I_t``."""
        block = np.asarray(stacked)[self.rows]
        return block if self.agents is None else block[:, : self.agents]

    def market(self, values: np.ndarray) -> np.ndarray:
        """The market's row of a ``T x K`` market-level array: ``1 x K``."""
        return np.asarray(values)[[self.index]]

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The market's rows of a tidy table with a ``market_ids`` column."""
        return frame.loc[(frame["market_ids"] == self.market_id).to_numpy(dtype=bool)].reset_index(drop=True)

    # -------------------------------------------------------------------------------------------------- inputs
    def _values(self, values: Any, name: str) -> np.ndarray:
        array = np.asarray(values)
        array = array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array
        if array.ndim != 1 or array.shape[0] not in (self.size, self.N):
            raise InvalidDataError(
                f"With market_id={self.market_id!r}, {name} must hold {self.size} values, one per product of that "
                f"market (or all {self.N}); received shape {np.shape(values)}."
            )
        return array

    def restrict(self, values: Any, name: str) -> np.ndarray:
        """The market's ``J_t`` values of ``values`` given for the market (``J_t``) or for all products (``N``)."""
        array = self._values(values, name)
        return array if array.shape[0] == self.size and self.size != self.N else array[self.rows]

    def expand(self, values: Any, default: Any, name: str) -> np.ndarray:
        """``values`` for the market (``J_t``) or all products (``N``) as ``N`` values, other markets' from
        ``default``."""
        array = self._values(values, name)
        if array.shape[0] == self.N:
            return array
        full = np.array(np.asarray(default).reshape(-1), dtype=np.result_type(array, np.asarray(default)))
        full[self.rows] = array
        return full

    def expand_ids(self, ids: Any, default: Any, name: str) -> np.ndarray:
        """Firm ids for the market (``J_t``) or all products (``N``) as ``N`` integer codes that keep which products
        share a firm within each market (ids of the market and the other markets' ``default`` may differ in type)."""
        array = self._values(ids, name)
        if array.shape[0] == self.N:
            return array
        codes = np.unique(np.asarray(default).reshape(-1), return_inverse=True)[1].astype(np.int64)
        own = np.unique(array, return_inverse=True)[1].astype(np.int64)
        codes[self.rows] = own + codes.max() + 1
        return codes

    def expand_ownership(self, ownership: Any, width: int) -> np.ndarray:
        """A ``J_t x J_t`` ownership matrix of the market (or ``N x J_max`` for all) as ``N x J_max``; products of
        other markets are single-product firms."""
        matrix = np.asarray(ownership, dtype=np.float64)
        if matrix.ndim == 2 and matrix.shape[0] == self.N and self.size != self.N:
            return matrix
        if matrix.ndim != 2 or matrix.shape[0] != self.size or matrix.shape[1] < self.size:
            raise InvalidDataError(
                f"With market_id={self.market_id!r}, ownership must be {self.size} x {self.size} (the products of "
                f"that market); received shape {matrix.shape}."
            )
        full = np.zeros((self.N, width))
        full[np.arange(self.N), self.slot_of_row] = 1.0
        full[self.rows, : self.size] = np.nan_to_num(matrix[:, : self.size])
        return full

    def square(self, matrices: Any) -> np.ndarray:
        """The market's ``J_t x J_t`` block of ``matrices`` given as that block (or wider) or stacked ``N x J_max``."""
        array = np.asarray(matrices, dtype=np.float64)
        if array.ndim == 2 and array.shape[0] == self.N and self.size != self.N:
            array = array[self.rows]
        if array.ndim != 2 or array.shape[0] != self.size or array.shape[1] < self.size:
            raise InvalidDataError(
                f"With market_id={self.market_id!r}, matrices must be {self.size} x {self.size} (or stacked for all "
                f"{self.N} products); received shape {np.shape(matrices)}."
            )
        return array[:, : self.size]


def select_market(problem: Any, market_id: Any) -> MarketSelection | None:
    """The :class:`MarketSelection` of ``market_id`` in ``problem`` (``None`` for ``None``: all markets).

    Parameters
    ----------
    problem : Problem
        The problem whose markets are searched.
    market_id : object or None
        A market id as in the ``market_ids`` field of ``product_data``.

    Returns
    -------
    MarketSelection or None
        The market's rows, or ``None`` when ``market_id`` is ``None``.

    Raises
    ------
    InvalidDataError
        If ``market_id`` is not one of the problem's markets; the message names it.
    """
    if market_id is None:
        return None
    layout = problem.layout
    matches = []
    if np.ndim(market_id) == 0:
        matches = [t for t, value in enumerate(layout.market_ids.tolist()) if _equal(value, market_id)]
    if not matches:
        known = layout.market_ids.tolist()
        shown = ", ".join(repr(value) for value in known[:10]) + (", ..." if len(known) > 10 else "")
        raise InvalidDataError(f"market_id {market_id!r} is not a market of this problem; its markets are {shown}.")
    index = matches[0]
    agent_layout = getattr(problem, "agent_layout", None)
    agents = None if agent_layout is None else int(agent_layout.sizes[index])
    rows = layout.rows[index][layout.mask[index]]
    return MarketSelection(market_id, index, rows, int(problem.N), layout.slot_of_row, agents)


def _equal(value: Any, market_id: Any) -> bool:
    try:
        return bool(value == market_id)
    except (TypeError, ValueError):
        return False
