"""Layout: long product or agent tables to padded ``[markets, slots]`` batches, and back.

Rows are grouped by market (markets in sorted order of their ids, rows in their original order
within a market) and padded to the largest market. ``mask`` marks real slots; ``unpad`` returns
values to the user's own row order. Markets of very different sizes could be bucketed to save padding;
the data sets of the field (24 products everywhere in Nevo, 72 to 150 in BLP) waste little, so one
bucket is used and padding costs at most a factor of the largest to the mean market size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """Where each row of a long table lives in the padded ``[T, S]`` batch."""

    market_ids: np.ndarray  # [T] unique market ids, sorted
    rows: np.ndarray  # [T, S] row of the table in each slot (0 in padding)
    mask: np.ndarray  # [T, S] real slots
    market_of_row: np.ndarray  # [N] market index of each row
    slot_of_row: np.ndarray  # [N] slot of each row within its market

    @classmethod
    def build(cls, ids: np.ndarray, market_ids: np.ndarray | None = None) -> Layout:
        """Lay out rows whose market ids are ``ids``; ``market_ids`` fixes the market order and set."""
        ids = np.asarray(ids)
        if market_ids is None:
            market_ids = np.unique(ids)
        codes = np.searchsorted(market_ids, ids)
        codes = np.clip(codes, 0, len(market_ids) - 1)
        order = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes, minlength=len(market_ids))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        slot_sorted = np.arange(len(ids)) - np.repeat(starts, sizes)
        slot_of_row = np.empty(len(ids), dtype=np.int64)
        slot_of_row[order] = slot_sorted
        width = int(sizes.max()) if len(sizes) else 0
        rows = np.zeros((len(market_ids), width), dtype=np.int64)
        mask = np.zeros((len(market_ids), width), dtype=bool)
        rows[codes, slot_of_row] = np.arange(len(ids))
        mask[codes, slot_of_row] = True
        return cls(np.asarray(market_ids), rows, mask, codes.astype(np.int64), slot_of_row)

    @property
    def sizes(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    def pad(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``[N, ...]`` to ``[T, S, ...]`` with ``fill`` in padded slots."""
        values = np.asarray(values)
        padded = values[self.rows]
        mask = self.mask.reshape(self.mask.shape + (1,) * (values.ndim - 1))
        return np.where(mask, padded, fill)

    def unpad(self, values: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """``[T, S, ...]`` to ``[N, ...]`` in the table's own row order."""
        if isinstance(values, Tensor):
            return values[
                torch.as_tensor(self.market_of_row, device=values.device),
                torch.as_tensor(self.slot_of_row, device=values.device),
            ]
        return values[self.market_of_row, self.slot_of_row]
