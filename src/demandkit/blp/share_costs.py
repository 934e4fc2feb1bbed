"""Marginal costs that move with market shares, for equilibrium prices with ``constant_costs=False`` (PyBLP's).

When the cost formulation :math:`X_3` involves ``shares`` (say ``log(shares)`` for returns to scale), costs at other
prices are

.. math::

    c(s) = c + [X_3(s) - X_3(S)]\\gamma \\quad\\text{(linear costs)}, \\qquad
    c(s) = c\\,\\exp\\{[X_3(s) - X_3(S)]\\gamma\\} \\quad\\text{(log costs)},

with :math:`c` the costs at the observed shares :math:`S` (estimated, or given) and :math:`s = s(p)` the shares at the
current prices: the structural cost shocks :math:`\\omega` and everything else in :math:`X_3` stay as they are.
:math:`X_3(s)` is built from its formulation for all markets at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import DemandkitError


def share_dependent_costs(results: Any, costs: Tensor) -> Callable[[Tensor], Tensor] | None:
    """Costs as a function of shares (``[T, J]`` to ``[T, J]``), or None when they do not depend on shares.

    Parameters
    ----------
    results : ProblemResults
        The estimates (their ``gamma`` and the problem's :math:`X_3` formulation and ``costs_type``).
    costs : Tensor
        ``[T, J]`` marginal costs at the observed shares.

    Returns
    -------
    callable or None
        ``shares -> costs``; None without a supply side or when :math:`X_3` does not involve ``shares``.
    """
    p = results.problem
    formulation = p.product_formulations[2]
    if formulation is None or "shares" not in formulation.variables or not p.K3:
        return None
    gamma = np.asarray(results.gamma, dtype=np.float64).reshape(-1)
    shifted = formulation.build_matrix(p.product_frame.assign(shares=0.5 * p.shares))[0]
    moving = np.flatnonzero(np.any(shifted != p.X3_raw, axis=0))
    if moving.size == 0:
        return None
    design, select = _share_design(formulation, [p.X3_labels[k] for k in moving], p.product_frame, p.X3_raw[:, moving])
    columns = p.product_frame[sorted(design.variables)]  # only what the formula reads: a small copy per iterate
    select = moving if select is None else select
    gamma = gamma[moving]
    base = p.X3_raw[:, moving] @ gamma

    def at(shares: Tensor) -> Tensor:
        rows = p.layout.unpad(shares.detach().cpu().numpy())
        X3 = design.build_matrix(columns.assign(shares=rows))[0][:, select]
        change = torch.where(p.product_mask, p.padded(X3 @ gamma - base), 0.0)
        return costs + change if p.costs_type == "linear" else costs * torch.exp(change)

    return at


def _share_design(formulation: Any, labels: list[str], products: Any, expected: np.ndarray) -> tuple[Any, Any]:
    """A formulation of only the :math:`X_3` columns that involve shares (their labels, such as ``log(shares)``, are
    formulas themselves), cheaper to build at every iterate, with ``slice(None)`` (all its columns); or, where that
    does not reproduce them, the full formulation with ``None`` (the caller selects the columns)."""
    try:
        reduced = type(formulation)("0 + " + " + ".join(labels))
        matrix, built = reduced.build_matrix(products)
        if built == labels and np.allclose(matrix, expected, rtol=1e-12, atol=0):
            return reduced, slice(None)
    except DemandkitError:
        pass
    return formulation, None
