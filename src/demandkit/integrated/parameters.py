"""The nonlinear parameters :math:`\\theta_2 = (\\Sigma, \\Pi, \\gamma, \\sigma_\\gamma)` of the integrated model.

As in PyBLP, the starting ``sigma`` and ``pi`` say which elements are estimated: nonzero elements are free,
zeros stay zero. ``gamma`` (state dependence) is always free when the model has state dependence, and
``sigma_gamma`` (its standard deviation across households, ``state_dependence={'random': True}``) too. Diagonal
elements of :math:`\\Sigma` and :math:`\\sigma_\\gamma` are bounded below by zero (their sign is not identified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import SpecificationError


@dataclass(frozen=True)
class Coefficients:
    """:math:`\\theta_2` as tensors (differentiable in :math:`\\theta`)."""

    sigma: Tensor  # [K2, K2]
    pi: Tensor  # [K2, D]
    gamma: Tensor  # scalar
    sigma_gamma: Tensor  # scalar (zero for a fixed gamma)

    def tastes(self, nodes: Tensor, demographics: Tensor) -> Tensor:
        """``[..., K2]`` random coefficients :math:`\\Sigma\\nu + \\Pi d` from ``nodes`` ``[..., K2 (+1)]``."""
        K2 = self.sigma.shape[0]
        out = nodes[..., :K2] @ self.sigma.T
        if self.pi.shape[1]:
            out = out + demographics @ self.pi.T
        return out

    def state_dependence(self, nodes: Tensor) -> Tensor:
        """``[...]`` :math:`\\gamma + \\sigma_\\gamma \\nu_{\\gamma}` (the last node column when random)."""
        K2 = self.sigma.shape[0]
        if nodes.shape[-1] > K2:
            return self.gamma + self.sigma_gamma * nodes[..., K2]
        return self.gamma.expand(nodes.shape[:-1])


@dataclass(frozen=True)
class ParameterSpace:
    """Which elements of :math:`\\theta_2` are free, their labels, bounds and starting values."""

    sigma_free: np.ndarray  # [K2, K2] bool
    pi_free: np.ndarray  # [K2, D] bool
    has_gamma: bool
    random_gamma: bool
    start: np.ndarray
    labels: list[str]
    bounds: list[tuple[float, float]]

    @classmethod
    def build(
        cls,
        K2: int,
        D: int,
        X2_labels: list[str],
        demographics_labels: list[str],
        sigma: Any,
        pi: Any,
        gamma: Any,
        sigma_gamma: Any,
        has_gamma: bool,
        random_gamma: bool,
    ) -> ParameterSpace:
        sigma = _matrix("sigma", sigma, (K2, K2))
        pi = _matrix("pi", pi, (K2, D))
        if not has_gamma and gamma is not None:
            raise SpecificationError("gamma was given but the problem has state_dependence=False.")
        gamma_value = 0.0 if gamma is None else _scalar("gamma", gamma)
        spread = 1.0 if sigma_gamma is None else _scalar("sigma_gamma", sigma_gamma)
        if not random_gamma and sigma_gamma is not None:
            raise SpecificationError("sigma_gamma needs state_dependence={'random': True}.")
        start, labels, bounds = [], [], []
        for k, l in zip(*np.nonzero(sigma), strict=True):
            start.append(sigma[k, l])
            labels.append(f"sigma[{X2_labels[k]}, {X2_labels[l]}]")
            bounds.append((0.0, np.inf) if k == l else (-np.inf, np.inf))
        for k, d in zip(*np.nonzero(pi), strict=True):
            start.append(pi[k, d])
            labels.append(f"pi[{X2_labels[k]}, {demographics_labels[d]}]")
            bounds.append((-np.inf, np.inf))
        if has_gamma:
            start.append(gamma_value)
            labels.append("gamma")
            bounds.append((-np.inf, np.inf))
        if random_gamma:
            start.append(abs(spread))
            labels.append("sigma_gamma")
            bounds.append((0.0, np.inf))
        return cls(sigma != 0, pi != 0, has_gamma, random_gamma, np.asarray(start, dtype=np.float64), labels, bounds)

    @property
    def size(self) -> int:
        return self.start.size

    def coefficients(self, theta: Tensor) -> Coefficients:
        """Scatter the free elements of ``theta`` into :class:`Coefficients` (keeps ``theta``'s graph)."""
        kwargs = {"dtype": theta.dtype, "device": theta.device}
        K2, D = self.pi_free.shape
        s, p = int(self.sigma_free.sum()), int(self.pi_free.sum())
        sigma = torch.zeros(K2 * K2, **kwargs).index_put(
            (torch.as_tensor(np.flatnonzero(self.sigma_free), device=theta.device),), theta[:s]
        )
        pi = torch.zeros(K2 * D, **kwargs).index_put(
            (torch.as_tensor(np.flatnonzero(self.pi_free), device=theta.device),), theta[s : s + p]
        )
        k = s + p
        zero = torch.zeros((), **kwargs)
        gamma = theta[k] if self.has_gamma else zero
        sigma_gamma = theta[k + 1] if self.random_gamma else zero
        return Coefficients(sigma.reshape(K2, K2), pi.reshape(K2, D), gamma, sigma_gamma)

    def unpack(self, values: np.ndarray) -> dict[str, Any]:
        """Free elements (estimates or standard errors) as ``sigma``, ``pi`` matrices and ``gamma`` scalars; elements
        fixed at zero are 0 in an estimate and NaN in a standard error (``fixed`` given by the caller)."""
        K2, D = self.pi_free.shape
        s, p = int(self.sigma_free.sum()), int(self.pi_free.sum())
        sigma, pi = np.zeros((K2, K2)), np.zeros((K2, D))
        sigma[self.sigma_free] = values[:s]
        pi[self.pi_free] = values[s : s + p]
        k = s + p
        return {
            "sigma": sigma,
            "pi": pi,
            "gamma": float(values[k]) if self.has_gamma else np.nan,
            "sigma_gamma": float(values[k + 1]) if self.random_gamma else np.nan,
        }


def _matrix(name: str, value: Any, shape: tuple[int, int]) -> np.ndarray:
    if value is None:
        return np.zeros(shape)
    array = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if shape[0] == shape[1] and array.size == 1 and shape[0] == 1:
        array = array.reshape(1, 1)
    if array.shape != shape:
        raise SpecificationError(f"{name} must be {shape[0]} x {shape[1]}; received shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise SpecificationError(f"{name} must be finite.")
    return array


def _scalar(name: str, value: Any) -> float:
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1 or not np.isfinite(array).all():
        raise SpecificationError(f"{name} must be one finite number; received {value!r}.")
    return float(array.reshape(-1)[0])
