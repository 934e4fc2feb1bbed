"""Covariances of maximum simulated likelihood estimates: one bread, several meats.

With :math:`H` the Hessian of the simulated log-likelihood and :math:`s_i` the score of individual :math:`i`
(all of its situations together, so the estimator is clustered by individual),

- ``'classical'``: :math:`(-H)^{-1}`;
- ``'robust'``: the sandwich :math:`\\frac{N}{N - 1} (-H)^{-1} \\big(\\sum_i s_i s_i'\\big) (-H)^{-1}`;
- ``'opg'``: the outer product of gradients (BHHH), :math:`\\big(\\sum_i s_i s_i'\\big)^{-1}`.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..exceptions import ConvergenceWarning


def _inverse(matrix: np.ndarray, name: str) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix, a pseudo-inverse with a warning otherwise."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues = np.linalg.eigvalsh(symmetric) if symmetric.size else np.ones(0)
    if eigenvalues.size and eigenvalues.min() <= 1e-12 * max(abs(eigenvalues).max(), 1.0):
        warnings.warn(
            f"The {name} is not positive definite (smallest eigenvalue {eigenvalues.min():.3g}); its pseudo-inverse "
            "is used, so some standard errors are unreliable. The estimate may not be a maximum, or some parameters "
            "are not identified (a spread near zero, a covariate without variation within situations).",
            ConvergenceWarning,
            stacklevel=4,
        )
        return np.linalg.pinv(symmetric)
    return np.linalg.inv(symmetric)


def covariances(hessian: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """The ``'classical'``, ``'robust'`` and ``'opg'`` covariance matrices.

    Parameters
    ----------
    hessian : ndarray
        ``[P, P]`` Hessian of the log-likelihood at the estimates.
    scores : ndarray
        ``[N, P]`` per-individual scores at the estimates.
    """
    n = scores.shape[0]
    bread = _inverse(-hessian, "negative Hessian of the log-likelihood")
    meat = scores.T @ scores
    robust = bread @ meat @ bread * (n / max(n - 1, 1))
    return {
        "classical": bread,
        "robust": (robust + robust.T) / 2,
        "opg": _inverse(meat, "outer product of the scores"),
    }
