"""Estimation of the integrated model: the concentrated likelihood, its gradient, the IV step and the covariances.

:math:`\\hat\\theta_2` maximizes :math:`LL(\\theta_2) = \\sum_h \\ell_h(\\theta_2, \\delta(\\theta_2))` (the optimizer
minimizes :math:`-LL/H`). Its covariance is the sandwich clustered by household,
:math:`V_\\theta = \\mathcal H^{-1} \\big(\\sum_h s_h s_h'\\big) \\mathcal H^{-1}`, with the total scores
:math:`s_h = \\partial_\\theta\\ell_h + \\partial_\\delta\\ell_h \\cdot \\partial\\delta/\\partial\\theta`
(forward mode through the
recursion) and :math:`\\mathcal H` from central differences of the analytic gradient. The aggregate
shares are treated as exact, so :math:`\\delta(\\theta_2)` carries no sampling error of its own.

Linear parameters: :math:`\\hat\\beta = A\\,\\tilde\\delta(\\hat\\theta_2)` by 2SLS on the periods past the burn-in,
with :math:`\\tilde\\delta` the mean utilities with fixed effects absorbed and
:math:`A = (X'Z W Z'X)^{-1} X'Z W Z'`, :math:`W = (Z'Z)^{-1}`. Its covariance adds the first step's error
(Murphy and Topel 1985): :math:`V_\\beta = V_{IV} + A\\,\\tilde\\Delta V_\\theta \\tilde\\Delta' A'` with
:math:`\\tilde\\Delta = \\partial\\tilde\\delta/\\partial\\theta_2`; :math:`V_{IV}` is robust or clustered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp

from ..configurations.formulation import absorb
from ..distributed import Shard
from .engine import Engine, MacroSolution
from .parameters import ParameterSpace


@dataclass
class Evaluation:
    """The likelihood at one :math:`\\theta_2` and what the macro step did there."""

    theta: np.ndarray
    loglikelihood: float
    gradient: np.ndarray | None  # of LL (not of the minimized -LL/H)
    solution: MacroSolution


class Likelihood:
    """The concentrated log-likelihood :math:`LL(\\theta_2)` of an :class:`Engine` over a :class:`ParameterSpace`."""

    def __init__(self, engine: Engine, space: ParameterSpace, shard: Shard | None = None) -> None:
        self.engine, self.space, self.shard = engine, space, shard
        self.evaluations = 0
        self.last: Evaluation | None = None
        self.households = engine.H if shard is None else int(shard.sum(np.array([engine.H]))[0])

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """Over the ranks of a distributed solve (identity in one process)."""
        return values if self.shard is None else self.shard.sum(values)

    def _theta(self, values: np.ndarray, grad: bool) -> torch.Tensor:
        theta = torch.as_tensor(
            np.asarray(values, dtype=np.float64), dtype=self.engine.dtype, device=self.engine.device
        )
        return theta.clone().requires_grad_(grad)

    def evaluate(self, values: np.ndarray, gradient: bool = True) -> Evaluation:
        """:math:`LL` and (by default) its gradient: reverse mode through the micro chunks and the recursion."""
        engine, space = self.engine, self.space
        self.evaluations += 1
        if self.shard is not None:  # every rank evaluates rank 0's theta, bit for bit
            values = self.shard.broadcast(values)
        theta = self._theta(values, gradient)
        solution = engine.solve_macro(space.coefficients(theta.detach()))
        if not gradient:
            with torch.no_grad():
                c = space.coefficients(theta)
                total = sum(float(engine.household_loglikelihood(c, solution.delta, k).sum()) for k in engine.chunks)
            total = float(self._sum(np.array([total]))[0])
            self.last = Evaluation(np.array(values, dtype=np.float64), total, None, solution)
            return self.last
        delta = engine.implicit_delta(space.coefficients(theta), solution)
        leaf = delta.detach().requires_grad_(True)
        total = 0.0
        for chunk in engine.chunks:
            value = engine.household_loglikelihood(space.coefficients(theta), leaf, chunk).sum()
            value.backward()
            total += float(value.detach())
        if leaf.grad is not None:
            delta.backward(leaf.grad)
        grad = theta.grad.detach().cpu().numpy().astype(np.float64) if theta.grad is not None else np.zeros(space.size)
        summed = self._sum(np.concatenate([[total], grad]))
        self.last = Evaluation(np.array(values, dtype=np.float64), float(summed[0]), summed[1:], solution)
        return self.last

    def __call__(self, values: np.ndarray) -> tuple[float, np.ndarray]:
        """``(-LL/H, -gradient/H)`` for a minimizer."""
        evaluation = self.evaluate(values)
        H = max(self.households, 1)
        return -evaluation.loglikelihood / H, -evaluation.gradient / H

    def delta_jacobian(self, values: np.ndarray, solution: MacroSolution) -> torch.Tensor:
        """``[P, M, T, J]``: :math:`\\partial\\delta/\\partial\\theta_2` by forward mode through the recursion."""
        theta = self._theta(values, False)
        basis = torch.eye(self.space.size, dtype=theta.dtype, device=theta.device)

        def delta_of(point: torch.Tensor) -> torch.Tensor:
            return self.engine.implicit_delta(self.space.coefficients(point), solution)

        return torch.stack([jvp(delta_of, (theta,), (basis[p],))[1] for p in range(self.space.size)])

    def scores(self, values: np.ndarray, solution: MacroSolution, delta_jacobian: torch.Tensor) -> np.ndarray:
        """``[H, P]`` total scores :math:`d\\ell_h/d\\theta_2` (direct and through :math:`\\delta(\\theta_2)`)."""
        engine, space = self.engine, self.space
        theta = self._theta(values, False)
        basis = torch.eye(space.size, dtype=theta.dtype, device=theta.device)
        out = np.zeros((engine.H, space.size))
        for chunk in engine.chunks:

            def likelihood(point: torch.Tensor, delta: torch.Tensor, chunk: tuple = chunk) -> torch.Tensor:
                return engine.household_loglikelihood(space.coefficients(point), delta, chunk, fused=False)

            for p in range(space.size):
                tangent = jvp(likelihood, (theta, solution.delta), (basis[p], delta_jacobian[p]))[1]
                out[chunk[0] : chunk[1], p] = tangent.detach().cpu().numpy()
        return out

    def hessian(self, values: np.ndarray, step: float = 1e-5) -> np.ndarray:
        """:math:`\\partial^2 LL/\\partial\\theta\\partial\\theta'` by central differences of the analytic gradient."""
        P = self.space.size
        hessian = np.zeros((P, P))
        for p in range(P):
            h = step * max(1.0, abs(values[p]))
            up, down = values.copy(), values.copy()
            up[p] += h
            down[p] -= h
            hessian[:, p] = (self.evaluate(up).gradient - self.evaluate(down).gradient) / (2 * h)
        return (hessian + hessian.T) / 2


@dataclass(frozen=True)
class LinearStep:
    """2SLS of the mean utilities on X1, with the first step's error added to the covariance."""

    beta: np.ndarray
    beta_covariance: np.ndarray
    xi: np.ndarray
    projector: np.ndarray  # A


def linear_step(
    delta_rows: np.ndarray,
    delta_jacobian_rows: np.ndarray,
    X1: np.ndarray,
    ZD: np.ndarray,
    absorb_ids: np.ndarray | None,
    absorb_method: str | None,
    theta_covariance: np.ndarray,
    clusters: np.ndarray | None,
) -> LinearStep:
    """:math:`\\hat\\beta` and :math:`V_\\beta` (see the module docstring) on the rows past the burn-in.

    ``delta_rows`` ``[N]``, ``delta_jacobian_rows`` ``[N, P]``; ``X1`` and ``ZD`` already absorbed.
    """
    N, K1 = X1.shape
    if K1 == 0:
        return LinearStep(np.zeros(0), np.zeros((0, 0)), delta_rows.copy(), np.zeros((0, N)))
    stacked = absorb(np.column_stack([delta_rows, delta_jacobian_rows]), absorb_ids, absorb_method)
    delta, jacobian = stacked[:, 0], stacked[:, 1:]
    W = np.linalg.pinv(ZD.T @ ZD)
    ZX = ZD.T @ X1
    bread = np.linalg.inv(ZX.T @ W @ ZX)
    projector = bread @ ZX.T @ W @ ZD.T
    beta = projector @ delta
    xi = delta - X1 @ beta
    scores = ZD * xi[:, None]
    if clusters is not None:
        codes = np.unique(clusters, return_inverse=True)[1]
        scores = np.zeros((codes.max() + 1, ZD.shape[1]))
        np.add.at(scores, codes, ZD * xi[:, None])
    meat = scores.T @ scores
    iv = bread @ ZX.T @ W @ meat @ W @ ZX @ bread
    G = projector @ jacobian
    return LinearStep(beta, iv + G @ theta_covariance @ G.T, xi, projector)


def robust_covariance(hessian: np.ndarray, meat: np.ndarray) -> np.ndarray:
    """:math:`\\mathcal H^{-1} (\\sum_h s_h s_h') \\mathcal H^{-1}` from ``meat`` :math:`= \\sum_h s_h s_h'`
    (pseudo-inverse when singular)."""
    inverse = np.linalg.pinv(hessian)
    return inverse @ meat @ inverse
