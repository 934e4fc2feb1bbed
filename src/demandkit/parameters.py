"""The nonlinear parameters :math:`\\theta = (\\Sigma, \\Pi, \\rho)`: which elements are free, their order,
labels and bounds, and the map between the vector :math:`\\theta` and the matrices.

Conventions follow PyBLP so that the same call reaches the same optimum: :math:`\\Sigma` is lower
triangular (the Cholesky root of the covariance of the random coefficients) and elements that start at
zero stay at zero; free elements are ordered by the lower triangle of :math:`\\Sigma` row by row, then
:math:`\\Pi` row by row, then :math:`\\rho`. With a bounded optimizer, the diagonal of :math:`\\Sigma` is
bounded below by :math:`\\min(0, \\Sigma_{kk}^0)` and :math:`\\rho` lies in
:math:`[\\min(0, \\rho^0), \\max(0.99, \\rho^0)]` unless bounds are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .exceptions import SpecificationError


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


@dataclass(frozen=True)
class ParameterSpace:
    """Free elements of :math:`\\Sigma`, :math:`\\Pi` and :math:`\\rho` and how to pack them."""

    sigma0: np.ndarray
    pi0: np.ndarray
    rho0: np.ndarray
    sigma_index: tuple[np.ndarray, np.ndarray]
    pi_index: tuple[np.ndarray, np.ndarray]
    rho_index: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    labels: list[str]

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
    ) -> ParameterSpace:
        sigma0 = np.tril(_matrix("sigma", sigma, (K2, K2), required=True))
        pi0 = _matrix("pi", pi, (K2, D), required=True)
        rho0 = _matrix("rho", rho, (H, 1) if H else (0, 1), required=True).reshape(-1)
        rows, cols = np.tril_indices(K2)
        free = sigma0[rows, cols] != 0
        sigma_index = (rows[free], cols[free])
        pi_index = tuple(np.nonzero(pi0))
        rho_index = np.flatnonzero(rho0 != 0)
        labels = [f"sigma[{X2_labels[r]}, {X2_labels[c]}]" for r, c in zip(*sigma_index, strict=True)]
        labels += [f"pi[{X2_labels[r]}, {D_labels[c]}]" for r, c in zip(*pi_index, strict=True)]
        labels += [f"rho[{k}]" for k in rho_index]
        lower = np.full(len(labels), -np.inf)
        upper = np.full(len(labels), np.inf)
        offsets = (0, len(sigma_index[0]), len(sigma_index[0]) + len(pi_index[0]))
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
            lower[offsets[2] :] = lb[rho_index]
            upper[offsets[2] :] = ub[rho_index]
        theta0 = np.concatenate([sigma0[sigma_index], pi0[pi_index], rho0[rho_index]])
        outside = (theta0 < lower) | (theta0 > upper)
        if outside.any():
            raise SpecificationError(
                f"Starting values {[labels[k] for k in np.flatnonzero(outside)]} lie outside their bounds."
            )
        return cls(sigma0, pi0, rho0, sigma_index, pi_index, rho_index, lower, upper, labels)

    @property
    def P(self) -> int:
        return len(self.labels)

    @property
    def theta0(self) -> np.ndarray:
        return self.pack(self.sigma0, self.pi0, self.rho0)

    def pack(self, sigma: np.ndarray, pi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        return np.concatenate([sigma[self.sigma_index], pi[self.pi_index], np.asarray(rho).reshape(-1)[self.rho_index]])

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
            (torch.as_tensor(self.rho_index, device=theta.device),), theta[n_sigma + n_pi :]
        )
        return sigma, pi, rho

    def bounds(self) -> list[tuple[float, float]]:
        return [(float(lb), float(ub)) for lb, ub in zip(self.lower, self.upper, strict=True)]
