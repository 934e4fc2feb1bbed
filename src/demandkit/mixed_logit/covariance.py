"""Covariances of maximum simulated likelihood estimates: one bread, several meats.

With :math:`H` the Hessian of the simulated log-likelihood and :math:`s_i` the score of individual :math:`i`
(all of its situations together, so the estimator is clustered by individual),

- ``'classical'``: :math:`(-H)^{-1}`;
- ``'robust'``: the sandwich :math:`\\frac{N}{N - 1} (-H)^{-1} \\big(\\sum_i s_i s_i'\\big) (-H)^{-1}`;
- ``'opg'``: the outer product of gradients (BHHH), :math:`\\big(\\sum_i s_i s_i'\\big)^{-1}`.

**The second-order check.** At a maximum the Hessian is negative definite. Its eigenvalues (of its symmetric part,
:func:`hessian_eigenvalues`) count as negative below :math:`-10^{-12} \\max(\\max_p |\\lambda_p|, 1)`; when any is
not, :func:`covariances` warns (a :class:`~demandkit.exceptions.ConvergenceWarning` that says whether the point is a
saddle, some eigenvalues of each sign) and uses the pseudo-inverse of :math:`-H`.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..exceptions import ConvergenceWarning

#: eigenvalues within this much of zero, relative to the largest in magnitude (at least one), count as zero
RELATIVE_TOLERANCE = 1e-12


def hessian_eigenvalues(hessian: np.ndarray) -> np.ndarray:
    """The eigenvalues, ascending, of the Hessian of the log-likelihood (of its symmetric part).

    Parameters
    ----------
    hessian : ndarray
        ``[P, P]`` Hessian of the log-likelihood.

    Returns
    -------
    ndarray
        ``[P]`` eigenvalues from :func:`numpy.linalg.eigvalsh`; all negative at a strict local maximum.
    """
    hessian = np.asarray(hessian, dtype=np.float64)
    return np.linalg.eigvalsh((hessian + hessian.T) / 2) if hessian.size else np.zeros(0)


def second_order(eigenvalues: np.ndarray) -> str:
    """What the Hessian's eigenvalues say of the point: ``'maximum'`` (all negative), ``'saddle point'`` (some
    negative, some positive) or ``'not negative definite'`` (none positive but some zero, or none negative).

    Parameters
    ----------
    eigenvalues : ndarray
        Eigenvalues of the Hessian of the log-likelihood (:func:`hessian_eigenvalues`).

    Returns
    -------
    str
        One of the three descriptions.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if not eigenvalues.size:
        return "maximum"
    tolerance = RELATIVE_TOLERANCE * max(float(np.abs(eigenvalues).max()), 1.0)
    if eigenvalues.max() < -tolerance:
        return "maximum"
    if eigenvalues.min() < -tolerance and eigenvalues.max() > tolerance:
        return "saddle point"
    return "not negative definite"


def _check_second_order(eigenvalues: np.ndarray) -> bool:
    """Warn when the Hessian of the log-likelihood is not negative definite; whether it is."""
    kind = second_order(eigenvalues)
    if kind == "maximum":
        return True
    tolerance = RELATIVE_TOLERANCE * max(float(np.abs(eigenvalues).max()), 1.0)
    count = int((eigenvalues >= -tolerance).sum())
    what = "a saddle point" if kind == "saddle point" else "not a strict maximum"
    warnings.warn(
        f"The Hessian of the log-likelihood at the estimates is not negative definite ({count} of {eigenvalues.size} "
        f"eigenvalues are not negative; the largest is {eigenvalues.max():.3g}): the estimate is {what}. The "
        "optimizer may have stopped short of a maximum (try other starting values or starts=...), or some parameters "
        "are not identified (a spread near zero, a covariate without variation within situations). The classical "
        "and robust covariances use the pseudo-inverse of the negative Hessian, so their standard errors are "
        "unreliable; results.hessian_eigenvalues holds the eigenvalues.",
        ConvergenceWarning,
        stacklevel=4,
    )
    return False


def _inverse(matrix: np.ndarray, name: str) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix, a pseudo-inverse with a warning otherwise."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues = np.linalg.eigvalsh(symmetric) if symmetric.size else np.ones(0)
    if eigenvalues.size and eigenvalues.min() <= RELATIVE_TOLERANCE * max(abs(eigenvalues).max(), 1.0):
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
    """The ``'classical'``, ``'robust'`` and ``'opg'`` covariance matrices, after the second-order check.

    Parameters
    ----------
    hessian : ndarray
        ``[P, P]`` Hessian of the log-likelihood at the estimates.
    scores : ndarray
        ``[N, P]`` per-individual scores at the estimates.

    Returns
    -------
    dict
        The three ``[P, P]`` covariance matrices by name.

    Warns
    -----
    ConvergenceWarning
        When the Hessian is not negative definite (a saddle point, say: see the module docstring), or the outer
        product of the scores is singular.
    """
    n = scores.shape[0]
    negative = -(hessian + hessian.T) / 2
    bread = np.linalg.inv(negative) if _check_second_order(hessian_eigenvalues(hessian)) else np.linalg.pinv(negative)
    meat = scores.T @ scores
    robust = bread @ meat @ bread * (n / max(n - 1, 1))
    return {
        "classical": bread,
        "robust": (robust + robust.T) / 2,
        "opg": _inverse(meat, "outer product of the scores"),
    }
