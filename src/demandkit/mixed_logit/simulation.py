"""Synthetic panels with known truth, for parameter recovery, oracle comparisons and benchmarks.

Individual :math:`i` draws its coefficients once, :math:`\\beta_i \\sim F(\\theta)`, and chooses in each
situation the alternative with the largest :math:`x_{ijt}'\\beta_i + \\gamma_i 1\\{y_{i,t-1} = j\\} +
\\varepsilon_{ijt}`, :math:`\\varepsilon` i.i.d. type I extreme value (the outside alternative, if any, has
utility :math:`\\varepsilon_{i0t}`). Covariates are i.i.d. standard normal, one column per coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from .specification import STATE_COEFFICIENT, check_distribution


@dataclass(frozen=True)
class SimulatedPanel:
    """A simulated long table and the true parameters, named as demandkit names them."""

    data: pd.DataFrame
    truth: pd.Series
    random: dict[str, str]


def _draw(distribution: str | None, location: float, spread: float, u: np.ndarray) -> np.ndarray:
    z = ndtri(u)
    if distribution is None:
        return np.full(u.shape, location)
    if distribution == "normal":
        return location + spread * z
    if distribution == "lognormal":
        return np.exp(location + spread * z)
    if distribution == "triangular":
        return location + spread * np.where(u <= 0.5, np.sqrt(2 * u) - 1, 1 - np.sqrt(2 * (1 - u)))
    if distribution == "uniform":
        return location + spread * (2 * u - 1)
    scale = abs(spread)
    return location - scale * ndtri((1 - u) * ndtr(location / scale))  # truncated to (0, inf)


def simulate_panel(
    individuals: int,
    situations: int,
    alternatives: int,
    coefficients: dict[str, tuple[str | None, float, float]],
    cholesky: np.ndarray | None = None,
    state_dependence: tuple[str | None, float, float] | None = None,
    outside: bool = False,
    unbalanced: bool = False,
    availability: float = 1.0,
    seed: int = 0,
) -> SimulatedPanel:
    """Simulate a long table of panel choices.

    Parameters
    ----------
    individuals, situations, alternatives : int
        Panel sizes (``situations`` is the longest panel when ``unbalanced``).
    coefficients : dict
        ``name -> (distribution or None, location, spread)``; each name is also a covariate column.
    cholesky : ndarray, optional
        Lower-triangular Cholesky factor of the covariance of the ``'normal'`` coefficients (in the order
        given); replaces their spreads.
    state_dependence : tuple, optional
        ``(distribution or None, location, spread)`` of :math:`\\gamma`.
    outside : bool
        Whether there is an outside alternative (no row chosen when it is).
    unbalanced : bool
        Whether panel lengths vary uniformly between ``situations // 2`` (at least 1) and ``situations``.
    availability : float
        Probability that each alternative is available in a situation (at least two always are).
    seed : int
        Seed of ``numpy.random.default_rng``.
    """
    rng = np.random.default_rng(seed)
    names = list(coefficients)
    K, I, T, J = len(names), individuals, situations, alternatives
    beta = (
        np.column_stack([_draw(d, loc, sd, rng.uniform(size=I)) for d, loc, sd in coefficients.values()])
        if K
        else np.zeros((I, 0))
    )
    truth: dict[str, float] = {name: float(loc) for name, (_, loc, _) in coefficients.items()}
    random = {name: d for name, (d, _, _) in coefficients.items() if d is not None}
    for name, distribution in random.items():
        check_distribution(name, distribution)
    normals = [k for k, name in enumerate(names) if random.get(name) == "normal"]
    for name, (d, _, sd) in coefficients.items():
        if d is not None and (cholesky is None or d != "normal"):
            truth[f"sd.{name}"] = float(sd)
    if cholesky is not None:
        L = np.asarray(cholesky, dtype=np.float64)
        locations = np.array([coefficients[names[k]][1] for k in normals])
        beta[:, normals] = locations + rng.standard_normal((I, len(normals))) @ L.T
        for a in range(len(normals)):
            for b in range(a + 1):
                truth[f"chol.{names[normals[a]]}.{names[normals[b]]}"] = float(L[a, b])
    gamma = np.zeros(I)
    if state_dependence is not None:
        d, loc, sd = state_dependence
        gamma = _draw(d, loc, sd, rng.uniform(size=I))
        truth[STATE_COEFFICIENT] = float(loc)
        if d is not None:
            random[STATE_COEFFICIENT] = d
            truth[f"sd.{STATE_COEFFICIENT}"] = float(sd)
    lengths = rng.integers(max(T // 2, 1), T + 1, size=I) if unbalanced else np.full(I, T)
    X = rng.standard_normal((I, T, J, K))
    available = rng.uniform(size=(I, T, J)) < availability
    keep = np.argsort(rng.uniform(size=(I, T, J)), axis=-1)[..., :2]  # two always available
    np.put_along_axis(available, keep, True, axis=-1)
    chosen = np.zeros((I, T, J), dtype=bool)
    previous = np.full(I, -1)
    for t in range(T):  # periods are sequential under state dependence
        v = np.einsum("ijk,ik->ij", X[:, t], beta) + rng.gumbel(size=(I, J))
        v = v + gamma[:, None] * (np.arange(J)[None] == previous[:, None])
        v = np.where(available[:, t], v, -np.inf)
        best = v.argmax(axis=1)
        if outside:
            best = np.where(rng.gumbel(size=I) > v.max(axis=1), -1, best)
        chosen[np.arange(I), t, best] = best >= 0
        previous = np.where(t < lengths, best, previous)
    i, t, j = np.nonzero(available & (np.arange(T)[None, :, None] < lengths[:, None, None]))
    frame = {
        "individual": i,
        "situation": i * T + t,
        "alternative": j,
        "chosen": chosen[i, t, j].astype(np.int64),
    }
    frame.update({name: X[i, t, j, k] for k, name in enumerate(names)})
    return SimulatedPanel(pd.DataFrame(frame), pd.Series(truth, dtype=np.float64), random)
