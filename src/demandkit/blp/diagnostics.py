"""First-stage diagnostics for the endogenous columns of X1 (weak instruments).

For each endogenous column :math:`x` (those that move with prices), regress it on the included
exogenous X1 columns alone and on all demand instruments, and report the F statistic of the excluded
instruments :math:`F = \\frac{(RSS_r - RSS_u)/q}{RSS_u/(N - k_u)}` and the partial :math:`R^2`. Fixed effects
are absorbed beforehand, as in estimation. F below about 10 (Staiger and Stock 1997) signals weak
instruments. The statistic is the classical (homoskedastic) one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _rss(y: np.ndarray, X: np.ndarray) -> float:
    if X.shape[1] == 0:
        return float(y @ y)
    coefficients, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ coefficients
    return float(residuals @ residuals)


def first_stage(problem: Any) -> pd.DataFrame:
    """One row per endogenous X1 column: F statistic, degrees of freedom and partial R-squared."""
    design = problem.design
    exogenous = [k for k, label in enumerate(design.X1_labels) if label not in design.endogenous]
    X_included = design.X1[:, exogenous]
    Z = design.ZD
    N, k_u = Z.shape
    q = k_u - X_included.shape[1]
    rows = []
    for label in design.endogenous:
        y = design.X1[:, design.X1_labels.index(label)]
        restricted, unrestricted = _rss(y, X_included), _rss(y, Z)
        F = ((restricted - unrestricted) / q) / (unrestricted / (N - k_u)) if q > 0 else np.nan
        rows.append(
            {
                "column": label,
                "F": F,
                "df_excluded": q,
                "df_residual": N - k_u,
                "partial_R2": 1 - unrestricted / restricted,
            }
        )
    return pd.DataFrame(rows, columns=["column", "F", "df_excluded", "df_residual", "partial_R2"])
