"""Agent-specific product availability (PyBLP's ``availability0, availability1, ...`` columns of ``agent_data``).

With :math:`a_{ijt} \\ge 0` the choice probabilities become

.. math::

    s_{ijt} = \\frac{a_{ijt} e^{V_{ijt}}}{1 + \\sum_{k} a_{ikt} e^{V_{ikt}}},

the logit in the utilities :math:`V_{ijt} + \\log a_{ijt}`, so availability enters the model as a fixed part of the
agents' utilities: :math:`\\mu_{ijt} \\to \\mu_{ijt} + \\log a_{ijt}` (:math:`\\log 0` is the kernels' ``MASKED``,
whose exponential is exactly zero). Every share, inversion, markup, consumer surplus and micro moment then sees it
through :meth:`~demandkit.blp.demand.DemandModel.heterogeneity`. Column :math:`j` is the market's :math:`j`-th
product in the order of ``product_data``; markets with fewer products ignore the extra columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import InvalidDataError, SpecificationError
from ..kernels.shares import MASKED
from ..layout.padding import Layout
from ..layout.validation import check_finite, numbered_columns


def log_availability(
    frame: pd.DataFrame | None, agent_layout: Layout, width: int, integration: Any, K2: int
) -> np.ndarray | None:
    """:math:`\\log a_{ijt}`, ``[T, J, I]`` (``MASKED`` where :math:`a = 0`, zero in padded slots), or None when
    ``agent_data`` has no availability columns."""
    columns = numbered_columns(frame, "availability", "agent_data") if frame is not None else []
    if not columns:
        return None
    if K2 == 0 or integration is not None:
        raise SpecificationError(
            "Agent-specific availability needs random coefficients and agent_data that gives every agent "
            "(nodes0.., weights); an integration builds agents without availability columns."
        )
    if len(columns) < width:
        raise InvalidDataError(
            f"agent_data has {len(columns)} availability columns; markets have up to {width} products, so "
            f"availability0..availability{width - 1} are needed."
        )
    check_finite(frame, columns[:width], "agent_data")
    values = frame[columns[:width]].to_numpy(dtype=np.float64)
    if (values < 0).any():
        row = int(np.argwhere(values < 0)[0, 0])
        raise InvalidDataError(f"agent_data's availability columns must be non-negative; row {row} is not.")
    logs = np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), MASKED)
    return agent_layout.pad(logs).transpose(0, 2, 1).copy()  # [T, I, J] -> [T, J, I]
