"""PyBLP's counting attributes of a problem: the distinct identifiers in the data and the dimensions that follow.

:class:`ProblemIdentifiers` is a mixin of :class:`~demandkit.blp.economy.Economy`. Each attribute is computed from
the product and agent tables when asked for, with PyBLP's meaning and shape: the ``unique_*_ids`` are sorted
one-dimensional object arrays (empty when the field is absent), :math:`F` counts the distinct firms, :math:`E_D` and
:math:`E_S` the absorbed dimensions of demand- and supply-side fixed effects, and :math:`M_C` the covariance
instruments of the moments :math:`E[(\\xi\\omega - m) Z_C] = 0`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ..layout.validation import numbered_columns


def unique_ids(frame: pd.DataFrame | None, field: str) -> np.ndarray:
    """The sorted distinct values of a (possibly matrix-valued) identifier field, as a 1-D object array.

    Parameters
    ----------
    frame : DataFrame or None
        The product or agent table.
    field : str
        ``'market_ids'``, ``'firm_ids'``, ``'product_ids'`` (which may be numbered, ``product_ids0, ...``), ...

    Returns
    -------
    ndarray
        The distinct values over every column of the field, sorted; empty when the field is absent.
    """
    if frame is None:
        return np.array([], dtype=object)
    if field in frame.columns:
        columns = [field]
    else:  # numbered columns field0, field1, ... (product_ids and agent_ids may hold several)
        pattern = re.compile(rf"{re.escape(field)}(0|[1-9][0-9]*)")
        columns = [c for c in frame.columns if isinstance(c, str) and pattern.fullmatch(c)]
    if not columns:
        return np.array([], dtype=object)
    values = frame[columns].to_numpy().astype(object).reshape(-1)
    try:
        return np.unique(values)
    except TypeError:  # ids of mixed types (numbers and text) that do not compare: ordered by their text
        distinct = pd.unique(values)
        return distinct[np.argsort([str(value) for value in distinct], kind="stable")].astype(object)


class ProblemIdentifiers:
    """PyBLP's ``unique_*_ids``, :math:`F`, :math:`M_C`, :math:`E_D` and :math:`E_S` of a problem (a mixin)."""

    product_frame: pd.DataFrame
    design: Any
    supply_absorb_ids: np.ndarray | None

    @property
    def unique_market_ids(self) -> np.ndarray:
        """Distinct market ids of the product data, sorted (PyBLP's ``unique_market_ids``), ``T``."""
        return unique_ids(self.product_frame, "market_ids")

    @property
    def unique_firm_ids(self) -> np.ndarray:
        """Distinct ``firm_ids`` of the product data, sorted; empty without them."""
        return unique_ids(self.product_frame, "firm_ids")

    @property
    def unique_nesting_ids(self) -> np.ndarray:
        """Distinct ``nesting_ids`` of the product data, sorted; empty without nests (``H`` of them)."""
        return unique_ids(self.product_frame, "nesting_ids")

    @property
    def unique_product_ids(self) -> np.ndarray:
        """Distinct ``product_ids`` (over every column, when numbered) of the product data, sorted; empty without."""
        return unique_ids(self.product_frame, "product_ids")

    @property
    def unique_agent_ids(self) -> np.ndarray:
        """Distinct ``agent_ids`` of the agent data, sorted; empty without them (or without agent data)."""
        return unique_ids(getattr(self, "agent_frame", None), "agent_ids")

    @property
    def F(self) -> int:
        """Number of distinct firms :math:`F` over all markets (0 without ``firm_ids``)."""
        return int(self.unique_firm_ids.size)

    @property
    def MC(self) -> int:
        """Number of covariance instruments :math:`M_C` (columns of ``covariance_instruments`` in the product data)."""
        return len(numbered_columns(self.product_frame, "covariance_instruments", "product_data"))

    @property
    def ED(self) -> int:
        """Number of absorbed dimensions of demand-side fixed effects :math:`E_D` (terms of X1's ``absorb``)."""
        ids = self.design.absorb_ids
        return 0 if ids is None else int(ids.shape[1])

    @property
    def ES(self) -> int:
        """Number of absorbed dimensions of supply-side fixed effects :math:`E_S` (terms of X3's ``absorb``)."""
        ids = self.supply_absorb_ids
        return 0 if ids is None else int(ids.shape[1])
