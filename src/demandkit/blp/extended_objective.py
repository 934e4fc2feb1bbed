"""The GMM objective with PyBLP's extended moments (:mod:`.extended_moments`): covariance restrictions and AR(1)
unobservables, and what estimation and the results need from them.

At :math:`\\theta` (which holds the free elements of :math:`\\phi` after :math:`\\rho`) the left-hand sides
:math:`y_D = \\delta - X_1\\beta_\\theta` and :math:`y_S = \\tilde c - X_3\\gamma_\\theta` and the regressors of the
concentrated parameters are transformed block by block (levels, innovations, differenced innovations); the
concentrated :math:`(\\beta_c, \\gamma_c)` solve the stacked IV-GMM problem under the demand and supply block of
:math:`W`, and

.. math::

    \\bar g = \\Big(\\tfrac1N Z_b'u_b(\\theta)\\ \\text{for each block } b,\\
    \\tfrac1N Z_C'(\\xi\\omega - m),\\ f(\\bar v) - f(v)\\Big), \\qquad q = N\\bar g'W\\bar g.

The gradient is the total derivative (through :math:`\\hat\\beta_c(\\theta)`). The moments' Jacobian for the
covariances differentiates :math:`\\bar g` in :math:`\\theta` with :math:`(\\beta_c, \\gamma_c)` held, except that with
covariance moments the :math:`\\theta` columns are total derivatives, as PyBLP's (its Jacobians of :math:`\\xi` and
:math:`\\omega` are then taken through the concentrated parameters).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import SpecificationError
from ..kernels.gmm import LinearIV, moment_covariances
from .economy import GMM_DTYPE
from .extended_moments import PHI_LABELS, ExtendedMoments
from .finite_differences import central_differences
from .objective import Evaluation, GMMObjective, Structural


class ExtendedGMMObjective(GMMObjective):
    """:class:`~demandkit.blp.objective.GMMObjective` with the moments of an :class:`ExtendedMoments`."""

    def __init__(self, *args: Any, extended: ExtendedMoments, **kwargs: Any) -> None:
        self.extended = extended
        super().__init__(*args, **kwargs)
        self._phi: Tensor = torch.zeros((2, 2), dtype=GMM_DTYPE)

    def structural(self, theta: Tensor) -> Structural:
        """The base class's, keeping :math:`\\phi(\\theta)` for the moments."""
        self._phi = self.space.unpack_phi(theta).to(GMM_DTYPE)
        return super().structural(theta)

    def _levels(self, y: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``(y_D, y_S, X_D, X_S)``: the left-hand sides and the concentrated regressors (extended with zeros)."""
        N, X = self.problem.N, self.system.X
        if self.system.equations == 1:
            return y, None, X, None
        return y[:N], y[N:], X[:N], X[N:]

    def concentrated(self, y: Tensor, phi: Tensor) -> Tensor:
        """:math:`(\\hat\\beta_c, \\hat\\gamma_c)` from the stacked blocks under ``W``'s demand and supply block."""
        y_D, y_S, X_D, X_S = self._levels(y)
        y_list = self.extended.equations(y_D, y_S, phi)
        X_list = self.extended.equations(X_D, X_S, phi)
        M = self.problem.MD + self.problem.MS
        iv = LinearIV.build(torch.cat(X_list), torch.block_diag(*self.extended.Z_list), self.W[:M, :M])
        return iv.beta(torch.cat(y_list))

    def extended_moments(self, y: Tensor, phi: Tensor, eliminated: Tensor) -> tuple[Tensor, Tensor]:
        """The aggregate moments and the stacked level residuals :math:`(\\xi, \\omega)` at given concentrated
        parameters."""
        y_D, y_S, X_D, X_S = self._levels(y)
        xi = y_D - X_D @ eliminated
        omega = None if y_S is None or X_S is None else y_S - X_S @ eliminated
        g = self.extended.aggregate(self.extended.equations(xi, omega, phi), xi, omega)
        return g, xi if omega is None else torch.cat([xi, omega])

    def _objective(self, y: Tensor, micro: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        eliminated = self.concentrated(y, self._phi)
        g, residuals = self.extended_moments(y, self._phi, eliminated)
        if micro is not None:
            g = torch.cat([g, self.micro.observed - micro])
        return eliminated, residuals, self.problem.N * g @ self.W @ g

    def _surrogate(self, theta: Tensor, theta_values: np.ndarray, structural: Structural) -> tuple:
        """First-order surrogates of :math:`y` and the micro statistics in ``theta`` whose derivatives are their
        central differences (``finite_differences=True``), and :math:`\\phi(\\theta)`."""
        jacobian = central_differences(self._stacked, theta_values).to(GMM_DTYPE)
        step = jacobian @ (theta - torch.as_tensor(theta_values, dtype=GMM_DTYPE, device=theta.device))
        n = structural.y.shape[0]
        y = structural.y.detach() + step[:n]
        micro = None if structural.micro is None else structural.micro.detach().to(GMM_DTYPE) + step[n:]
        return y, micro, self.space.unpack_phi(theta).to(GMM_DTYPE)

    def _differenced_gradient(self, theta_values: np.ndarray, structural: Structural) -> Tensor:
        theta = torch.as_tensor(theta_values, dtype=GMM_DTYPE, device=self.problem.device).requires_grad_(True)
        y, micro, self._phi = self._surrogate(theta, theta_values, structural)
        objective = self._objective(y, micro)[2]
        objective = objective if self.options.scale_objective else objective / self.problem.N
        return torch.autograd.grad(objective, theta)[0]

    def moments_jacobian(self, evaluation: Evaluation) -> Tensor:
        """:math:`\\bar G = \\partial\\bar g/\\partial(\\theta, \\beta_c, \\gamma_c)`, ``[M, P + K_c]``, one
        reverse-mode pass per moment."""
        p, space = self.problem, self.space
        held = torch.cat([evaluation.beta[space.eliminated_beta], evaluation.gamma[space.eliminated_gamma]])
        held = held.to(GMM_DTYPE).detach().clone().requires_grad_(True)
        theta = torch.as_tensor(evaluation.theta, dtype=GMM_DTYPE, device=p.device).clone()
        leaves = [theta.requires_grad_(True)] if theta.numel() else []
        self.start = torch.where(p.product_mask, evaluation.delta, 0.0)
        structural = self.structural(theta)
        y, micro, phi = structural.y, structural.micro, self._phi
        if leaves and self.options.finite_differences:
            y, micro, phi = self._surrogate(theta, evaluation.theta, structural)
        eliminated = held
        if self.extended.MC and leaves:  # PyBLP's theta columns are total derivatives then
            total = self.concentrated(y, phi)
            eliminated = held + total - total.detach()
        g = self.extended_moments(y, phi, eliminated)[0]
        if micro is not None:
            g = torch.cat([g, self.micro.observed - micro.to(GMM_DTYPE)])
        leaves.append(held)
        rows = []
        for m in range(g.shape[0]):  # a loop over moments (post-estimation only)
            parts = torch.autograd.grad(g[m], leaves, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat([torch.zeros_like(x) if d is None else d for d, x in zip(parts, leaves, strict=True)])
            )
        return torch.stack(rows) if rows else g.new_zeros((0, theta.numel() + held.numel()))

    def covariance_terms(self, evaluation: Evaluation) -> tuple[list[Tensor], list[Tensor]]:
        """The errors and instruments of the moment contributions at an evaluation, for :math:`S`."""
        phi = self.space.unpack_phi(torch.as_tensor(evaluation.theta, dtype=GMM_DTYPE, device=self.problem.device))
        return self.extended.terms(evaluation.xi, evaluation.omega, phi.to(GMM_DTYPE))


def aggregate_covariances(
    problem: Any, objective: Any, system: Any, evaluation: Evaluation, covariance_type: str, center: bool
) -> Tensor:
    """:math:`S` of the aggregate moments (demand, supply, and covariance moments when there are any)."""
    if isinstance(objective, ExtendedGMMObjective):
        u_list, Z_list = objective.covariance_terms(evaluation)
    else:
        u_list = [evaluation.xi] + ([evaluation.omega] if evaluation.omega is not None else [])
        Z_list = system.instruments(problem)
    return moment_covariances(u_list, Z_list, covariance_type, problem.clustering_codes, center)


def check_distributed(extended: ExtendedMoments | None, shard: Any, resample: Any) -> None:
    """Covariance moments, :math:`\\phi` and moment types other than levels are not sharded (nor resampled)."""
    if extended is None:
        return
    if shard is not None:
        raise SpecificationError(
            "Covariance instruments, lag_indices (phi) and moment types other than 'levels' are not supported with "
            "distributed estimation (distributed=True): solve without distributing."
        )
    if resample is not None:
        raise SpecificationError(
            "resample_agent_data is not supported with covariance instruments, phi or moment types other than 'levels'."
        )


def store_phi(results: Any, space: Any, se: np.ndarray, extended: ExtendedMoments | None, objective: Any) -> None:
    """PyBLP's ``phi``, ``phi_se``, ``phi_labels`` and ``phi_bounds`` of the results, and with extended moments
    the moments :math:`\\bar g` (including the covariance moments)."""
    theta = torch.as_tensor(results.theta, dtype=GMM_DTYPE)
    results.phi = (
        space.unpack_phi(theta).numpy() if space.phi0.size else np.zeros((1 + int(bool(results.problem.K3)), 0))
    )
    results.phi_labels = list(PHI_LABELS[: 1 + int(bool(results.problem.K3))])
    start = space.P_demand - len(space.phi_index[0])
    results.phi_se = np.full(results.phi.shape, np.nan)
    results.phi_se[space.phi_index] = se[start : space.P_demand]
    lower, upper = np.full(results.phi.shape, -np.inf), np.full(results.phi.shape, np.inf)
    lower[results.phi == 0] = upper[results.phi == 0] = 0
    lower[space.phi_index], upper[space.phi_index] = (
        space.lower[start : space.P_demand],
        space.upper[start : space.P_demand],
    )
    results.phi_bounds = (lower, upper)
    if extended is not None and isinstance(objective, ExtendedGMMObjective):
        evaluation = results._steps[-1].evaluation
        u_list, Z_list = objective.covariance_terms(evaluation)
        g = torch.cat([Z.T @ u / results.problem.N for u, Z in zip(u_list, Z_list, strict=True)])
        results.moments = np.vstack([g.detach().cpu().numpy().reshape(-1, 1), results.micro])
