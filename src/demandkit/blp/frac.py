"""FRAC: fast, robust and approximately correct estimation of the random-coefficients logit (Salanié and
Wolak 2022) by linear instrumental variables.

With agent tastes :math:`\\mu_{ijt} = \\sum_k x_{jtk}\\,\\varepsilon_{itk}`,
:math:`E[\\varepsilon_{it}] = \\Pi \\bar d_t` and
:math:`\\mathrm{Var}(\\varepsilon_{it}) = V_t = \\Sigma\\Sigma' + \\Pi\\,\\mathrm{Cov}_t(d)\\,\\Pi'`, a second-order
expansion of the inverted market shares around :math:`V_t = 0` gives the linear model

.. math::

    \\log\\frac{s_{jt}}{s_{0t}} = x^{(1)\\prime}_{jt}\\beta + \\sum_{k,d} \\Pi_{kd}\\, x_{jtk}\\bar d_{td}
        + \\sum_{k \\le l} (V_t)_{kl}\\, K_{jtkl} + \\xi_{jt} + O(\\|V_t\\|^{3/2}),

with the artificial regressors :math:`K_{jtkk} = (x_{jtk}/2 - e_{tk})\\,x_{jtk}` and, for :math:`k \\ne l`,
:math:`K_{jtkl} = x_{jtk}x_{jtl} - x_{jtk}e_{tl} - x_{jtl}e_{tk}`, where :math:`e_t = \\sum_j s_{jt}x_{jt}` is the
share-weighted mean of the characteristics in market :math:`t`. The elements of :math:`\\Sigma\\Sigma'` (those the
pattern of ``sigma`` makes free), :math:`\\Pi` and :math:`\\beta` are estimated by two-stage least squares with the
problem's demand instruments, after absorbing its fixed effects. The part of :math:`V_t` that comes from the
dispersion of demographics, :math:`\\Pi\\,\\mathrm{Cov}_t(d)\\,\\Pi'`, is quadratic in :math:`\\Pi`; it is moved to the
left-hand side at the current :math:`\\hat\\Pi` and the regression repeated until :math:`\\hat\\Pi` settles.

The estimates are consistent only up to the expansion's error, which grows with the variance of the random
coefficients; they cost one linear regression, need no contraction and no starting values, and are good
starting values for :meth:`~demandkit.blp.problem.Problem.solve` (see :meth:`FRACResults.starting_values`).
Standard errors are heteroskedasticity-robust 2SLS errors that ignore the approximation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..configurations.formulation import absorb
from ..exceptions import ConvergenceWarning, SpecificationError


@dataclass(frozen=True)
class FRACResults:
    """FRAC estimates.

    Attributes
    ----------
    beta : ndarray
        ``K1 x 1`` linear parameters.
    sigma_squared : ndarray
        ``K2 x K2`` estimated :math:`\\Sigma\\Sigma'` (zero outside the pattern of free elements).
    sigma : ndarray
        ``K2 x K2`` lower-triangular root of ``sigma_squared`` (negative variances are set to zero), restricted
        to the pattern of free elements.
    pi : ndarray
        ``K2 x D`` demographic interactions.
    table : DataFrame
        One row per regressor: parameter, name, estimate and robust standard error.
    iterations : int
        Regressions run (more than one when demographics disperse within markets).
    """

    beta: np.ndarray
    beta_se: np.ndarray
    sigma_squared: np.ndarray
    sigma_squared_se: np.ndarray
    sigma: np.ndarray
    pi: np.ndarray
    pi_se: np.ndarray
    sigma_pattern: np.ndarray
    pi_pattern: np.ndarray
    table: pd.DataFrame
    xi: np.ndarray
    iterations: int

    def starting_values(self, floor: float = 0.1) -> dict[str, np.ndarray]:
        """``sigma`` and ``pi`` to pass to :meth:`Problem.solve` as starting values.

        Free elements keep the pattern given to :func:`estimate`; an element that FRAC puts at zero (a negative
        variance) becomes ``floor`` so that it stays free (a zero starting value would fix it at zero).
        """
        sigma = np.where(self.sigma_pattern & (self.sigma == 0), floor, self.sigma)
        pi = np.where(self.pi_pattern & (self.pi == 0), floor, self.pi)
        return {"sigma": np.where(self.sigma_pattern, sigma, 0.0), "pi": np.where(self.pi_pattern, pi, 0.0)}

    def __str__(self) -> str:
        return "FRAC estimates (Salanie and Wolak 2022):\n" + self.table.to_string(index=False)


def _pattern(name: str, value: Any, shape: tuple[int, int], default: np.ndarray) -> np.ndarray:
    if value is None:
        return default
    matrix = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if matrix.shape != shape:
        raise SpecificationError(f"{name} must be {shape[0]} by {shape[1]}; received shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise SpecificationError(f"{name} has NaN or infinite values; nonzero elements mark free parameters.")
    return matrix != 0


def estimate(
    problem: Any, sigma: Any = None, pi: Any = None, max_iterations: int = 50, tol: float = 1e-10
) -> FRACResults:
    """Estimate a random-coefficients logit by FRAC (linear IV on the second-order expansion).

    Parameters
    ----------
    problem : Problem
        A random-coefficients logit problem (no nesting; linear random coefficients) with enough demand
        instruments for :math:`\\beta`, the free elements of :math:`\\Sigma\\Sigma'` and :math:`\\Pi`.
    sigma : array-like, optional
        ``K2 x K2``; nonzero elements of the lower triangle mark the free elements of :math:`\\Sigma` (their
        values are ignored). Default: the diagonal (independent random coefficients).
    pi : array-like, optional
        ``K2 x D``; nonzero elements are free. Default: all of :math:`\\Pi` when there are demographics.
    max_iterations, tol : int, float
        Repetitions of the regression for the dispersion of demographics, until :math:`\\hat\\Pi` changes by less
        than ``tol``.

    Returns
    -------
    FRACResults
    """
    K2, D = problem.K2, problem.D
    if K2 == 0:
        raise SpecificationError("FRAC needs random coefficients (an X2 formulation) in the problem.")
    if problem.H:
        raise SpecificationError("FRAC is implemented for the random-coefficients logit, not nested logit.")
    if any(kind != "linear" for kind in problem.rc_types):
        raise SpecificationError(f"FRAC needs linear random coefficients; the problem has rc_types {problem.rc_types}.")
    if getattr(problem, "product_demographics", None) is not None:
        raise SpecificationError("FRAC is implemented for demographics d_it, not product-specific ones d_ijt.")
    sigma_pattern = np.tril(_pattern("sigma", sigma, (K2, K2), np.eye(K2, dtype=bool)))
    pi_pattern = _pattern("pi", pi, (K2, D), np.ones((K2, D), dtype=bool))
    free = sigma_pattern.astype(float)
    variance_pattern = (free @ free.T) != 0
    rows, columns = np.nonzero(np.tril(variance_pattern))

    layout = problem.layout
    market = layout.market_of_row
    shares = problem.shares
    x = problem.design.X2  # [N, K2]
    weighted = np.zeros((problem.T, K2))
    np.add.at(weighted, market, shares[:, None] * x)
    e = weighted[market]  # share-weighted means, per row
    artificial, labels = [], []
    X2_labels = problem.design.X2_labels
    for k, l in zip(rows, columns, strict=True):
        if k == l:
            artificial.append((x[:, k] / 2 - e[:, k]) * x[:, k])
        else:
            artificial.append(x[:, k] * x[:, l] - x[:, k] * e[:, l] - x[:, l] * e[:, k])
        labels.append(("sigma_squared", f"{X2_labels[k]} x {X2_labels[l]}"))
    means = covariances = None
    pi_rows, pi_columns = np.nonzero(pi_pattern)
    if len(pi_rows):
        means, covariances = _demographic_moments(problem)
        for k, d in zip(pi_rows, pi_columns, strict=True):
            artificial.append(x[:, k] * means[market, d])
            labels.append(("pi", f"{X2_labels[k]} x {problem.design.demographics_labels[d]}"))
    ids, method = problem.design.absorb_ids, problem.product_formulations[0].absorb_method
    A = np.column_stack(artificial) if artificial else np.zeros((problem.N, 0))
    X = np.column_stack([problem.design.X1, absorb(A, ids, method)])
    Z = problem.design.ZD
    if Z.shape[1] < X.shape[1]:
        raise SpecificationError(
            f"FRAC needs at least {X.shape[1]} demand instruments (for {problem.K1} linear parameters and "
            f"{A.shape[1]} artificial regressors); the problem has {Z.shape[1]}. Add instruments, e.g. "
            "differentiation instruments."
        )
    y0 = np.log(shares) - np.log1p(-np.bincount(market, weights=shares, minlength=problem.T))[market]
    regression = _TwoStageLeastSquares.build(X, Z)
    pairs = [(k, l) for k, l in zip(rows, columns, strict=True)]
    pi_hat = np.zeros((K2, D))
    coefficients = regression.solve(absorb(y0[:, None], ids, method)[:, 0])
    iterations, converged = 1, covariances is None
    offset = problem.K1 + len(pairs)
    while not converged and iterations < max_iterations:
        updated = np.zeros((K2, D))
        updated[pi_rows, pi_columns] = coefficients[offset:]
        if not np.isfinite(updated).all():
            break
        change = np.max(np.abs(updated - pi_hat))
        converged = change <= tol * max(1.0, np.max(np.abs(updated)))
        pi_hat = updated
        if converged:
            break
        with np.errstate(all="ignore"):
            y = y0 - _demographic_term(pi_hat, covariances, market, x, e)
        if not np.isfinite(y).all():
            break
        coefficients = regression.solve(absorb(y[:, None], ids, method)[:, 0])
        iterations += 1
    if not converged:
        warnings.warn(
            f"FRAC's correction for the dispersion of demographics did not settle in {iterations} regressions "
            "(Pi is weakly identified when mean demographics vary little across markets); the estimates ignore "
            "that dispersion.",
            ConvergenceWarning,
            stacklevel=2,
        )
        coefficients = regression.solve(absorb(y0[:, None], ids, method)[:, 0])
    pi_hat = np.zeros((K2, D))
    pi_hat[pi_rows, pi_columns] = coefficients[offset:]
    xi = regression.residuals
    se = regression.standard_errors()
    K1 = problem.K1
    V = np.zeros((K2, K2))
    V_se = np.zeros((K2, K2))
    for index, (k, l) in enumerate(pairs):
        V[k, l] = V[l, k] = coefficients[K1 + index]
        V_se[k, l] = V_se[l, k] = se[K1 + index]
    pi_se = np.zeros((K2, D))
    pi_se[pi_rows, pi_columns] = se[K1 + len(pairs) :]
    table = pd.DataFrame(
        [("beta", label) for label in problem.design.X1_labels] + labels, columns=["parameter", "name"]
    ).assign(estimate=coefficients, se=se)
    return FRACResults(
        beta=coefficients[:K1].reshape(-1, 1),
        beta_se=se[:K1].reshape(-1, 1),
        sigma_squared=V,
        sigma_squared_se=V_se,
        sigma=_root(V, sigma_pattern),
        pi=pi_hat,
        pi_se=pi_se,
        sigma_pattern=sigma_pattern,
        pi_pattern=pi_pattern,
        table=table,
        xi=xi.reshape(-1, 1),
        iterations=iterations,
    )


def _demographic_moments(problem: Any) -> tuple[np.ndarray, np.ndarray]:
    """Agent-weighted means ``[T, D]`` and covariances ``[T, D, D]`` of the demographics in each market."""
    agents = problem.agent_layout
    weights = agents.pad(problem.weights)  # [T, I], zero in padding
    demographics = agents.pad(problem.demographics)  # [T, I, D]
    total = weights.sum(axis=1, keepdims=True)
    means = np.einsum("ti,tid->td", weights, demographics) / total
    centered = demographics - means[:, None, :]
    covariances = np.einsum("ti,tid,tie->tde", weights, centered, centered) / total[:, :, None]
    return means, covariances


def _demographic_term(pi: np.ndarray, covariances: np.ndarray, market: np.ndarray, x: np.ndarray, e: np.ndarray):
    """:math:`\\tfrac12 x_j'V_tx_j - x_j'V_te_t` with :math:`V_t = \\Pi\\,\\mathrm{Cov}_t(d)\\,\\Pi'`, per row."""
    V = np.einsum("kd,tde,le->tkl", pi, covariances, pi)[market]  # [N, K2, K2]
    return 0.5 * np.einsum("nk,nkl,nl->n", x, V, x) - np.einsum("nk,nkl,nl->n", x, V, e)


def _root(V: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Lower-triangular :math:`\\Sigma` with :math:`\\Sigma\\Sigma' = V` on the pattern (PSD part of ``V``)."""
    if not (np.tril(pattern, -1)).any():
        return np.diag(np.sqrt(np.clip(np.diag(V), 0, None))) * pattern
    values, vectors = np.linalg.eigh(V)
    clipped = (vectors * np.clip(values, 0, None)) @ vectors.T
    try:
        root = np.linalg.cholesky(clipped + 1e-12 * np.eye(len(V)))
    except np.linalg.LinAlgError:
        root = np.diag(np.sqrt(np.clip(np.diag(V), 0, None)))
    return np.where(pattern, root, 0.0)


@dataclass(frozen=True)
class _TwoStageLeastSquares:
    """2SLS of ``y`` on ``X`` with instruments ``Z``: :math:`\\hat b = (X'P_ZX)^{-1}X'P_Zy`."""

    X: np.ndarray
    Z: np.ndarray
    projected: np.ndarray  # P_Z X
    bread: np.ndarray  # (X' P_Z X)^{-1}
    state: dict

    @classmethod
    def build(cls, X: np.ndarray, Z: np.ndarray) -> _TwoStageLeastSquares:
        first_stage, *_ = np.linalg.lstsq(Z, X, rcond=None)
        projected = Z @ first_stage
        matrix = projected.T @ X
        if np.linalg.matrix_rank(matrix) < X.shape[1]:
            raise SpecificationError(
                "FRAC's regressors are not identified by the instruments (X'P_Z X is singular): the artificial "
                "regressors may be collinear with X1 or the fixed effects, or the instruments too few."
            )
        return cls(X, Z, projected, np.linalg.inv(matrix), {})

    def solve(self, y: np.ndarray) -> np.ndarray:
        coefficients = self.bread @ (self.projected.T @ y)
        self.state["residuals"] = y - self.X @ coefficients
        return coefficients

    @property
    def residuals(self) -> np.ndarray:
        return self.state["residuals"]

    def standard_errors(self) -> np.ndarray:
        """Heteroskedasticity-robust: :math:`\\sqrt{\\mathrm{diag}(B\\,\\hat X'\\mathrm{diag}(u^2)\\hat X B)}`."""
        scores = self.projected * self.residuals[:, None]
        covariance = self.bread @ (scores.T @ scores) @ self.bread.T
        return np.sqrt(np.clip(np.diag(covariance), 0, None))
