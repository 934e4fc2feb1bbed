"""Product-specific demographics :math:`d_{ijt}` (PyBLP's ``distance0, distance1, ...`` columns of ``agent_data``).

A variable that ``agent_formulation`` names but ``agent_data`` lacks, given instead as numbered columns
``name0, name1, ...``, is product-specific: column :math:`j` holds the agents' value for the market's :math:`j`-th
product in the order of ``product_data``; markets with fewer products than the largest ignore the extra columns.
The formulation is built on the stacked agent-product pairs, so every demographic column that depends on such a
variable (``distance``, ``I(distance**2)``, ``income:distance``) is product-specific, the others regular. The
random coefficients become

.. math::

    \\mu_{ijt} = \\sum_k x^{(2)}_{jtk}\\Big(\\sum_l \\Sigma_{kl}\\nu_{itl} + \\sum_d \\Pi_{kd} d_{ijtd}\\Big)

(under ``rc_types`` the sum in parentheses passes through :math:`f_k`), regular demographics having
:math:`d_{ijtd} = d_{itd}` for every :math:`j`.

Memory: the regular demographics stay ``[T, I, D]`` (with zeros in the product-specific columns, so that the
agents' part of the coefficients ignores them) and only the :math:`D_P` product-specific columns are laid out
``[T, J, I, D_P]``; :class:`~demandkit.kernels.product_coefficients.ProductCoefficients` adds their term to
:math:`\\mu` without forming ``[T, J, I, K2]`` coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ..configurations.formulation import Formulation
from ..exceptions import InvalidDataError
from ..layout.padding import Layout
from ..layout.validation import check_finite, numbered_columns, require_columns


@dataclass(frozen=True)
class AgentDemographics:
    """The demographics of the agents, regular and product-specific.

    ``values`` is ``[I, D]`` with zeros in the product-specific columns; ``product`` is ``[I, D_P, J]`` (zero for
    products beyond each agent's market, ``J`` the largest market's number of products), or None; ``columns`` are
    the positions of the product-specific columns among the ``D``; ``records`` are PyBLP's ``agents.demographics``:
    ``I x D`` without product-specific demographics, else ``I x D x J`` with regular columns repeated over
    products.
    """

    values: np.ndarray
    labels: list[str]
    product: np.ndarray | None
    columns: list[int]
    records: np.ndarray

    def rows(self, select: Any) -> AgentDemographics:
        """The same demographics for the agents ``select`` picks out of the rows (``select(values) -> values``),
        e.g. the first rows of each market for an integration's agents."""
        flat = self.records.reshape(len(self.records), -1)
        records = select(flat).reshape((-1,) + self.records.shape[1:])
        if self.product is None:
            return replace(self, values=select(self.values), records=records)
        product = select(self.product.reshape(len(self.product), -1)).reshape((-1,) + self.product.shape[1:])
        return replace(self, values=select(self.values), product=product, records=records)


def product_specific_names(formulation: Formulation, frame: pd.DataFrame) -> list[str]:
    """The variables of ``formulation`` that ``frame`` gives as numbered columns ``name0, name1, ...`` only."""
    return [
        name
        for name in sorted(formulation.variables)
        if name not in frame.columns and numbered_columns(frame, name, "agent_data")
    ]


def build_demographics(formulation: Formulation, frame: pd.DataFrame, layout: Layout) -> AgentDemographics:
    """The demographics ``formulation`` names, from ``agent_data`` (``frame``), for the products of ``layout``.

    Raises
    ------
    InvalidDataError
        Naming the column: a regular demographic is missing or not finite, a product-specific one has fewer
        numbered columns than the largest market has products, or a value for a product of the agent's market
        is not finite.
    """
    names = product_specific_names(formulation, frame)
    regular = sorted(formulation.variables - set(names))
    require_columns(frame, regular, "agent_data")
    check_finite(frame, sorted(formulation.numeric_variables - set(names)), "agent_data")
    if not names:
        values, labels = formulation.build_matrix(frame)
        return AgentDemographics(values, labels, None, [], values)
    width = layout.mask.shape[1]
    market = np.searchsorted(layout.market_ids, frame["market_ids"].to_numpy())
    used = np.arange(width)[None, :] < layout.sizes[np.clip(market, 0, len(layout.sizes) - 1)][:, None]  # [I, J]
    given = {name: _product_values(frame, name, width, used) for name in names}  # [I, J]
    I = len(frame)
    stacked = {name: np.tile(frame[name].to_numpy(), width) for name in regular}
    stacked.update({name: values.T.reshape(-1) for name, values in given.items()})  # product-major: j * I + i
    matrix, labels = formulation.build_matrix(pd.DataFrame(stacked))
    records = matrix.reshape(width, I, -1).transpose(1, 2, 0)  # [I, D, J]
    base = {name: frame[name].to_numpy() for name in regular}  # the first product, as is and shifted
    first = formulation.build_matrix(pd.DataFrame({**base, **{n: given[n][:, 0] for n in names}}))[0]
    shifted = formulation.build_matrix(pd.DataFrame({**base, **{n: given[n][:, 0] * 1.5 + 1.0 for n in names}}))[0]
    moved = np.any(shifted != first, axis=0)
    varies = np.any((records != records[:, :, :1]) & used[:, None, :], axis=(0, 2))
    columns = [int(d) for d in np.flatnonzero(moved | varies)]
    product = np.where(used[:, None, :], records[:, columns, :], 0.0)
    values = records[:, :, 0].copy()
    values[:, columns] = 0.0
    ignored = ~used & np.any([~np.isfinite(_numbers(frame, name, width)) for name in names], axis=0)
    records = records.copy()
    records[:, columns, :] = np.where(ignored[:, None, :], np.nan, records[:, columns, :])  # as PyBLP keeps them
    return AgentDemographics(values, labels, product, columns, records)


def _numbers(frame: pd.DataFrame, name: str, width: int) -> np.ndarray:
    """``name0..name{width-1}`` as numbers ``[I, width]`` (text becomes NaN)."""
    columns = numbered_columns(frame, name, "agent_data")[:width]
    return np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64) for c in columns])


def _product_values(frame: pd.DataFrame, name: str, width: int, used: np.ndarray) -> np.ndarray:
    """The product-specific variable ``name`` ``[I, width]``, checked where used; ignored values that are not
    finite become zero."""
    columns = numbered_columns(frame, name, "agent_data")
    if len(columns) < width:
        raise InvalidDataError(
            f"agent_data gives the product-specific demographic {name!r} in {len(columns)} columns "
            f"{name}0..{name}{len(columns) - 1}; markets have up to {width} products, so {name}0..{name}{width - 1} "
            "are needed."
        )
    values = _numbers(frame, name, width)
    bad = used & ~np.isfinite(values)
    if bad.any():
        row, j = (int(v) for v in np.argwhere(bad)[0])
        raise InvalidDataError(
            f"Column {columns[j]!r} of agent_data has {int(bad[:, j].sum())} NaN, infinite or non-numeric value(s) "
            f"for agents of markets with more than {j} products (first at row {row})."
        )
    return np.where(np.isfinite(values), values, 0.0)


def pad_product_demographics(product: np.ndarray, agent_layout: Layout) -> np.ndarray:
    """``[I, D_P, J]`` product-specific demographics as ``[T, J, I, D_P]`` (zero in padded slots)."""
    return agent_layout.pad(product).transpose(0, 3, 1, 2).copy()  # [T, I, D_P, J] -> [T, J, I, D_P]


def demographic_rows(problem: Any) -> np.ndarray | None:
    """The demographics as ``[rows, D]`` samples of each column, for the scale of :math:`\\Pi`'s elements: every
    agent-product pair when some are product-specific (NaN for products beyond the agent's market)."""
    records = getattr(problem, "demographic_records", None)
    if records is None or records.ndim == 2:
        return problem.demographics
    sizes = problem.layout.sizes[problem.agent_layout.market_of_row]  # J_t of each agent's market
    values = np.where(np.arange(records.shape[2])[None, None, :] < sizes[:, None, None], records, np.nan)
    return np.moveaxis(values, 2, 1).reshape(-1, records.shape[1])
