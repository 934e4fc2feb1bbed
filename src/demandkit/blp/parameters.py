"""The nonlinear parameters :math:`\\theta = (\\Sigma, \\Pi, \\rho)`: which elements are free, their order,
labels and bounds, and the map between the vector :math:`\\theta` and the matrices.

Conventions follow PyBLP so that the same call reaches the same optimum: :math:`\\Sigma` is lower
triangular (the Cholesky root of the covariance of the random coefficients) and elements that start at
zero stay at zero; free elements are ordered by the lower triangle of :math:`\\Sigma` row by row, then
:math:`\\Pi` row by row, then :math:`\\rho`, then the elements of :math:`\\beta` and :math:`\\gamma` given
starting values (NaN, the default, concentrates an element out by IV-GMM; with a supply side the
coefficients on prices must be given, since markups depend on them).
With a bounded optimizer, the diagonal of :math:`\\Sigma` is
bounded below by :math:`\\min(0, \\Sigma_{kk}^0)` and :math:`\\rho` lies in
:math:`[\\min(0, \\rho^0), \\max(0.99, \\rho^0)]` unless bounds are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import SpecificationError


def _matrix(name: str, value: Any, shape: tuple[int, int], required: bool) -> np.ndarray:
    if value is None:
        if required and shape[0] * shape[1] > 0:
            raise SpecificationError(f"{name} must be given as a {shape[0]} by {shape[1]} matrix of starting values.")
        return np.zeros(shape)
    matrix = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if shape[0] * shape[1] == 0:
        if matrix.size:
            raise SpecificationError(f"{name} was given, but the problem has no parameters of that kind.")
        return np.zeros(shape)
    if matrix.shape != shape:
        if name == "rho" and matrix.size == 1:
            return matrix.reshape(1, 1)
        raise SpecificationError(f"{name} must be {shape[0]} by {shape[1]}; received shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise SpecificationError(f"{name} has NaN or infinite starting values.")
    return matrix


def _linear(name: str, value: Any, size: int) -> np.ndarray:
    """Starting values of beta or gamma: NaN means concentrated out (the default for every element)."""
    if value is None:
        return np.full(size, np.nan)
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.shape[0] != size:
        raise SpecificationError(
            f"{name} must have {size} elements (NaN to concentrate one out); received {vector.size}."
        )
    if np.isinf(vector).any():
        raise SpecificationError(f"{name} has infinite starting values.")
    return vector


@dataclass(frozen=True)
class ParameterSpace:
    """Free elements of :math:`\\Sigma`, :math:`\\Pi` and :math:`\\rho` and how to pack them."""

    sigma0: np.ndarray
    pi0: np.ndarray
    rho0: np.ndarray
    sigma_index: tuple[np.ndarray, np.ndarray]
    pi_index: tuple[np.ndarray, np.ndarray]
    rho_index: np.ndarray
    beta0: np.ndarray
    gamma0: np.ndarray
    beta_index: np.ndarray
    gamma_index: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    labels: list[str]
    phi0: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # phi (see .extended_moments)
    phi_index: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    )

    @classmethod
    def for_problem(cls, problem: Any, sigma: Any, pi: Any, rho: Any, bounded: bool, **options: Any) -> ParameterSpace:
        """:meth:`build` with the dimensions and labels of ``problem``; ``options`` are :meth:`build`'s bounds and
        ``beta``/``gamma`` starting values."""
        return cls.build(
            sigma,
            pi,
            rho,
            problem.K2,
            problem.D,
            problem.H,
            problem.design.X2_labels,
            problem.design.demographics_labels,
            bounded,
            X1_labels=problem.design.X1_labels,
            X3_labels=problem.X3_labels,
            **options,
        )

    @classmethod
    def build(
        cls,
        sigma: Any,
        pi: Any,
        rho: Any,
        K2: int,
        D: int,
        H: int,
        X2_labels: list[str],
        D_labels: list[str],
        bounded: bool,
        sigma_bounds: Any = None,
        pi_bounds: Any = None,
        rho_bounds: Any = None,
        beta: Any = None,
        gamma: Any = None,
        X1_labels: list[str] | None = None,
        X3_labels: list[str] | None = None,
        beta_bounds: Any = None,
        gamma_bounds: Any = None,
    ) -> ParameterSpace:
        sigma0 = np.tril(_matrix("sigma", sigma, (K2, K2), required=True))
        pi0 = _matrix("pi", pi, (K2, D), required=True)
        rho0 = _matrix("rho", rho, (H, 1) if H else (0, 1), required=True).reshape(-1)
        rows, cols = np.tril_indices(K2)
        free = sigma0[rows, cols] != 0
        sigma_index = (rows[free], cols[free])
        pi_index = tuple(np.nonzero(pi0))
        rho_index = np.flatnonzero(rho0 != 0)
        X1_labels, X3_labels = list(X1_labels or []), list(X3_labels or [])
        beta0 = _linear("beta", beta, len(X1_labels))
        gamma0 = _linear("gamma", gamma, len(X3_labels))
        beta_index = np.flatnonzero(~np.isnan(beta0))
        gamma_index = np.flatnonzero(~np.isnan(gamma0))
        labels = [f"sigma[{X2_labels[r]}, {X2_labels[c]}]" for r, c in zip(*sigma_index, strict=True)]
        labels += [f"pi[{X2_labels[r]}, {D_labels[c]}]" for r, c in zip(*pi_index, strict=True)]
        labels += [f"rho[{k}]" for k in rho_index]
        labels += [f"beta[{X1_labels[k]}]" for k in beta_index]
        labels += [f"gamma[{X3_labels[k]}]" for k in gamma_index]
        lower = np.full(len(labels), -np.inf)
        upper = np.full(len(labels), np.inf)
        offsets = (
            0,
            len(sigma_index[0]),
            len(sigma_index[0]) + len(pi_index[0]),
            len(sigma_index[0]) + len(pi_index[0]) + len(rho_index),
        )
        if bounded:
            for p, (r, c) in enumerate(zip(*sigma_index, strict=True)):
                if r == c and sigma_bounds is None:
                    lower[p] = min(0.0, sigma0[r, c])
            for p, k in enumerate(rho_index):
                if rho_bounds is None:
                    lower[offsets[2] + p] = min(0.0, rho0[k])
                    upper[offsets[2] + p] = max(0.99, rho0[k])
        for given, index, offset in (
            (sigma_bounds, sigma_index, offsets[0]),
            (pi_bounds, pi_index, offsets[1]),
        ):
            if given is not None:
                lb, ub = (np.asarray(b, dtype=np.float64) for b in given)
                lower[offset : offset + len(index[0])] = np.nan_to_num(lb[index], nan=-np.inf)
                upper[offset : offset + len(index[0])] = np.nan_to_num(ub[index], nan=np.inf)
        if rho_bounds is not None:
            lb, ub = (np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), rho0.shape) for b in rho_bounds)
            lower[offsets[2] : offsets[3]] = lb[rho_index]
            upper[offsets[2] : offsets[3]] = ub[rho_index]
        for given, index, offset in (
            (beta_bounds, beta_index, offsets[3]),
            (gamma_bounds, gamma_index, offsets[3] + len(beta_index)),
        ):
            if given is not None:
                lb, ub = (np.asarray(b, dtype=np.float64).reshape(-1) for b in given)
                lower[offset : offset + len(index)] = np.nan_to_num(lb[index], nan=-np.inf)
                upper[offset : offset + len(index)] = np.nan_to_num(ub[index], nan=np.inf)
        theta0 = np.concatenate(
            [sigma0[sigma_index], pi0[pi_index], rho0[rho_index], beta0[beta_index], gamma0[gamma_index]]
        )
        outside = (theta0 < lower) | (theta0 > upper)
        if outside.any():
            raise SpecificationError(
                f"Starting values {[labels[k] for k in np.flatnonzero(outside)]} lie outside their bounds."
            )
        return cls(
            sigma0,
            pi0,
            rho0,
            sigma_index,
            pi_index,
            rho_index,
            beta0,
            gamma0,
            beta_index,
            gamma_index,
            lower,
            upper,
            labels,
        )

    @property
    def P(self) -> int:
        return len(self.labels)

    @property
    def theta0(self) -> np.ndarray:
        return self.pack(self.sigma0, self.pi0, self.rho0)

    @property
    def P_demand(self) -> int:
        """Number of free elements of sigma, pi, rho and phi (the rest of theta are beta and gamma elements)."""
        return len(self.sigma_index[0]) + len(self.pi_index[0]) + len(self.rho_index) + len(self.phi_index[0])

    def pack(self, sigma: np.ndarray, pi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                sigma[self.sigma_index],
                pi[self.pi_index],
                np.asarray(rho).reshape(-1)[self.rho_index],
                self.phi0[self.phi_index],
                self.beta0[self.beta_index],
                self.gamma0[self.gamma_index],
            ]
        )

    def unpack(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Matrices :math:`(\\Sigma, \\Pi, \\rho)` as tensors that depend on ``theta`` (differentiably)."""
        n_sigma, n_pi = len(self.sigma_index[0]), len(self.pi_index[0])
        kwargs = {"dtype": theta.dtype, "device": theta.device}
        sigma = torch.zeros(self.sigma0.shape, **kwargs).index_put(
            tuple(torch.as_tensor(i, device=theta.device) for i in self.sigma_index), theta[:n_sigma]
        )
        pi = torch.zeros(self.pi0.shape, **kwargs).index_put(
            tuple(torch.as_tensor(i, device=theta.device) for i in self.pi_index), theta[n_sigma : n_sigma + n_pi]
        )
        rho = torch.as_tensor(self.rho0, **kwargs).index_put(
            (torch.as_tensor(self.rho_index, device=theta.device),),
            theta[n_sigma + n_pi : n_sigma + n_pi + len(self.rho_index)],
        )
        return sigma, pi, rho

    def unpack_phi(self, theta: Tensor) -> Tensor:
        """The autocorrelation matrix :math:`\\phi` (``phi0``'s shape) as a tensor that depends on ``theta``."""
        kwargs = {"dtype": theta.dtype, "device": theta.device}
        start = self.P_demand - len(self.phi_index[0])
        return torch.as_tensor(self.phi0, **kwargs).index_put(
            tuple(torch.as_tensor(i, device=theta.device) for i in self.phi_index), theta[start : self.P_demand]
        )

    def unpack_linear(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``beta [K1]`` and ``gamma [K3]`` holding the elements in theta, zero where concentrated out."""
        kwargs = {"dtype": theta.dtype, "device": theta.device}
        start = self.P_demand
        beta = torch.zeros(self.beta0.shape, **kwargs).index_put(
            (torch.as_tensor(self.beta_index, device=theta.device),), theta[start : start + len(self.beta_index)]
        )
        gamma = torch.zeros(self.gamma0.shape, **kwargs).index_put(
            (torch.as_tensor(self.gamma_index, device=theta.device),), theta[start + len(self.beta_index) :]
        )
        return beta, gamma

    @property
    def eliminated_beta(self) -> np.ndarray:
        return np.flatnonzero(np.isnan(self.beta0))

    @property
    def eliminated_gamma(self) -> np.ndarray:
        return np.flatnonzero(np.isnan(self.gamma0))

    def bounds(self) -> list[tuple[float, float]]:
        return [(float(lb), float(ub)) for lb, ub in zip(self.lower, self.upper, strict=True)]
