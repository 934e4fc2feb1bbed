"""PyBLP's remaining attributes of :class:`~demandkit.blp.results.ProblemResults`, as a mixin.

At the estimates :math:`\\hat\\theta` of a GMM step with weighting matrix :math:`W`, moments :math:`\\bar g`, their
Jacobian :math:`\\bar G` (``moments_jacobian``, ``M x P_e``: the estimated parameters, elements of :math:`\\theta`
fixed by equal bounds left out, then the concentrated-out :math:`\\beta` and :math:`\\gamma`), their covariance
:math:`S` (``moments_covariances``) and :math:`V` the covariance of :math:`\\sqrt N(\\hat\\theta - \\theta)`
(``parameter_covariances``), :class:`ResultsAttributes` adds, with PyBLP's meanings and shapes:

``parameter_sensitivity``
    The local sensitivity of the estimates to the moments (Andrews, Gentzkow and Shapiro 2017),
    :math:`\\Lambda = -(\\bar G'W\\bar G)^{-1}\\bar G'W`, ``P_e x M``; :math:`W` is the matrix the standard errors use
    (:math:`S^{-1}` for unadjusted standard errors after the first step, as in PyBLP).
``sigma_squared_se``
    Standard errors of :math:`\\hat\\Sigma\\hat\\Sigma'` by the delta method: with
    :math:`\\partial(\\Sigma\\Sigma')_{ij}/\\partial\\Sigma_{ab} = 1\\{i = a\\}\\Sigma_{jb} + 1\\{j = a\\}\\Sigma_{ib}`
    (:math:`J`, over the free elements of :math:`\\Sigma`), :math:`\\sqrt{\\mathrm{diag}(J V_\\Sigma J')/N}`,
    ``K2 x K2``.
``sigma_bounds``, ``pi_bounds``, ``rho_bounds``, ``beta_bounds``, ``gamma_bounds``
    ``(lower, upper)`` matrices of the shapes of :math:`\\Sigma`, :math:`\\Pi`, :math:`\\rho` (``H x 1``, or ``1 x 1``
    for one :math:`\\rho`), :math:`\\beta` (``K1 x 1``) and :math:`\\gamma` (``K3 x 1``) that the optimizer used:
    elements fixed at zero are bounded by ``(0, 0)``; with an optimizer that takes no bounds, only bounds that fix
    an element (equal lower and upper bounds) are kept, the others are infinite; concentrated-out elements of
    :math:`\\beta` and :math:`\\gamma` are unbounded.
``xi_fe``, ``omega_fe``
    The absorbed fixed effects' contributions :math:`\\delta - X_1\\hat\\beta - \\hat\\xi` and
    :math:`\\tilde c - X_3\\hat\\gamma - \\hat\\omega` (unabsorbed :math:`X_1`, :math:`X_3`), ``N x 1``; zeros of the
    shape of ``xi`` (``omega``) without absorbed demand-side (supply-side) fixed effects.
``micro_covariances``
    :math:`S_M/N`, the micro block of :math:`S` over :math:`N` (the given ``micro_sample_covariances`` if any),
    ``M_M x M_M``.
``simulation_covariances``
    The covariance of :math:`\\bar g` across agents drawn by ``resample_agent_data``
    (:mod:`demandkit.blp.simulation_error`), added to :math:`S`; zeros (``M x M``) without it.
``xi_by_theta_jacobian``, ``omega_by_theta_jacobian``
    :math:`\\partial\\xi/\\partial\\theta'` and :math:`\\partial\\omega/\\partial\\theta'`, ``N x P`` over the estimated
    elements of ``theta`` (as PyBLP, which leaves elements fixed by equal bounds out of :math:`\\theta`; the columns of
    ``moments_jacobian``), holding the concentrated-out :math:`\\beta` and :math:`\\gamma` fixed and before absorbing
    fixed effects (PyBLP's): by the implicit function theorem, with :math:`L = \\log s`,
    :math:`\\partial\\delta/\\partial\\theta' = -(\\partial L/\\partial\\delta')^{-1}\\partial L/\\partial\\theta'`
    market by market (all markets at once), less :math:`X_1` for elements of :math:`\\beta` in :math:`\\theta`; and
    :math:`\\partial\\tilde c/\\partial\\theta'` from :math:`c = p - \\eta(\\delta(\\theta), \\theta)` (over :math:`c`
    for log costs; zero where costs are clipped), less :math:`X_3` for elements of :math:`\\gamma` in :math:`\\theta`.
    One directional derivative per parameter, by autograd; computed when first asked for. Without a supply side the
    omega Jacobian is all NaN, as in PyBLP.
``micro_by_theta_jacobian``
    :math:`\\partial\\bar g_M/\\partial\\theta'`, ``M_M x P``: the micro rows of :math:`\\bar G` (autograd through the
    engine), over the same elements of :math:`\\theta`.
``last_results``
    The :class:`ProblemResults` of the previous GMM step (the first step of two-step GMM), or None. Its Hessian is
    not computed (NaN); the initial update of the weighting matrix is not a step of its own.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..kernels.gmm import invert
from .optimal_instruments import _jvp as directional_derivative
from .supply import SupplyModel


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def _bounds(
    start: np.ndarray, index: Any, lower: np.ndarray, upper: np.ndarray, bounded: bool, zeros_fixed: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` matrices shaped like ``start`` with the free elements' (``index``) bounds."""
    lb, ub = np.full(start.shape, -np.inf), np.full(start.shape, np.inf)
    lb[index], ub[index] = lower, upper
    if not bounded:  # an optimizer without bounds keeps only those that fix an element
        unfixed = lb != ub
        lb[unfixed], ub[unfixed] = -np.inf, np.inf
    if zeros_fixed:
        lb[start == 0] = ub[start == 0] = 0.0
    return lb, ub


def parameter_bounds(space: Any, bounded: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """PyBLP's ``(sigma_bounds, pi_bounds, rho_bounds, beta_bounds, gamma_bounds)`` from a parameter space.

    Parameters
    ----------
    space : ParameterSpace
        The free elements, their starting values and the bounds on :math:`\\theta` (``lower``, ``upper``).
    bounded : bool
        Whether the optimizer took bounds.
    """
    sizes = [len(i) for i in (space.sigma_index[0], space.pi_index[0], space.rho_index, space.phi_index[0])]
    cuts = np.cumsum([0, *sizes, len(space.beta_index), len(space.gamma_index)])
    parts = [(space.lower[a:b], space.upper[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    del parts[3]  # phi's (results.phi_bounds, from .extended_objective)
    rho0 = space.rho0.reshape(-1, 1)
    return [
        _bounds(space.sigma0, space.sigma_index, *parts[0], bounded),
        _bounds(space.pi0, space.pi_index, *parts[1], bounded),
        _bounds(rho0, (space.rho_index, np.zeros_like(space.rho_index)), *parts[2], bounded),
        _bounds(space.beta0.reshape(-1, 1), (space.beta_index, 0), *parts[3], bounded, zeros_fixed=False),
        _bounds(space.gamma0.reshape(-1, 1), (space.gamma_index, 0), *parts[4], bounded, zeros_fixed=False),
    ]


def sigma_squared_standard_errors(sigma: np.ndarray, covariances: np.ndarray, index: Any, N: int) -> np.ndarray:
    """Delta-method standard errors of :math:`\\Sigma\\Sigma'`, ``K2 x K2``.

    Parameters
    ----------
    sigma : ndarray
        :math:`\\hat\\Sigma`, ``K2 x K2``.
    covariances : ndarray
        Covariance of :math:`\\sqrt N` times the free elements of :math:`\\hat\\Sigma` (in the order of ``index``).
    index : tuple of ndarray
        Rows and columns of the free elements.
    N : int
        Number of products.
    """
    K2 = sigma.shape[0]
    flat = np.ravel_multi_index(index, (K2, K2)) if K2 else np.zeros(0, dtype=np.int64)
    V = np.zeros((K2 * K2, K2 * K2))
    V[np.ix_(flat, flat)] = covariances
    eye = np.eye(K2)
    J = (np.einsum("ia,jb->ijab", eye, sigma) + np.einsum("ja,ib->ijab", eye, sigma)).reshape(K2 * K2, K2 * K2)
    variances = np.einsum("pq,qr,pr->p", J, V, J)
    return np.sqrt(np.clip(variances, 0, None) / N).reshape(K2, K2)


def theta_jacobians(results: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(xi_by_theta_jacobian, omega_by_theta_jacobian)`` at the results' estimates, ``N x P`` each.

    See the module's docstring. A loop over the parameters, each step vectorized over markets.
    """
    problem, space, model = results.problem, results._space, results.model
    columns = results._estimated_theta
    N, P = problem.N, columns.size
    omega = np.zeros((N, P)) if problem.K3 else np.full((N, P), np.nan)
    if P == 0:
        return np.zeros((N, 0)), omega
    dtype, device, mask = problem.dtype, problem.device, problem.product_mask
    theta = torch.as_tensor(results.theta, dtype=dtype, device=device)
    basis = torch.eye(theta.numel(), dtype=dtype, device=device)[torch.as_tensor(columns, device=device)]
    delta = torch.where(mask, results._delta_padded.to(dtype), 0.0)
    rows = (problem.rows_market, problem.rows_slot)

    def log_shares(theta_: torch.Tensor) -> torch.Tensor:
        sigma, pi, rho = space.unpack(theta_)
        return torch.where(mask, model.log_shares(delta, model.mu(sigma, pi), rho), 0.0)

    with torch.no_grad():
        sigma, pi, rho = space.unpack(theta)
        matrix = model.log_share_jacobian(delta, model.mu(sigma, pi), rho)
    tangents = [directional_derivative(log_shares, (theta,), (basis[k],)) for k in range(P)]  # over parameters
    delta_jacobian = -torch.linalg.solve(matrix, torch.stack(tangents, dim=-1))
    delta_jacobian = torch.where(mask.unsqueeze(-1), delta_jacobian, 0.0)  # [T, J, P]
    linear = [space.unpack_linear(basis[k]) for k in range(P)]
    beta_basis = np.column_stack([_numpy(b) for b, _ in linear]).reshape(-1, P)  # [K1, P]
    xi = _numpy(delta_jacobian[rows]) - problem.design.X1_raw @ beta_basis
    if not problem.K3:
        return xi, omega
    supply = SupplyModel(problem, model)
    observed = torch.where(mask, torch.exp(problem.log_market_shares), 0.0)
    concentrated = np.where(np.isnan(space.beta0), results.beta[:, 0], 0.0)
    concentrated_beta = torch.as_tensor(concentrated, dtype=dtype, device=device)

    def markups(theta_: torch.Tensor, delta_: torch.Tensor) -> torch.Tensor:
        sigma_, pi_, rho_ = space.unpack(theta_)
        beta = space.unpack_linear(theta_)[0] + concentrated_beta
        return torch.where(mask, supply.markups(delta_, sigma_, pi_, rho_, beta, shares=observed), 0.0)

    eta = [directional_derivative(markups, (theta, delta), (basis[k], delta_jacobian[..., k])) for k in range(P)]
    costs_jacobian = -_numpy(torch.stack(eta, dim=-1)[rows])  # c = p - eta
    if problem.costs_type == "log":
        costs_jacobian = costs_jacobian / _numpy(results._steps[-1].evaluation.costs).reshape(-1, 1)
    costs_jacobian[results.clipped_costs[:, 0]] = 0.0  # clipped costs do not move
    gamma_basis = np.column_stack([_numpy(g) for _, g in linear]).reshape(-1, P)  # [K3, P]
    return xi, costs_jacobian - problem.X3_raw @ gamma_basis


class ResultsAttributes:
    """PyBLP's sensitivity, bounds, fixed effects, covariance blocks, Jacobians and ``last_results`` (a mixin of
    :class:`~demandkit.blp.results.ProblemResults`; see the module's docstring)."""

    problem: Any
    _space: Any
    optimization: Any
    theta: np.ndarray
    sigma: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    delta: np.ndarray
    xi: np.ndarray
    omega: np.ndarray
    tilde_costs: np.ndarray
    W: np.ndarray
    moments: np.ndarray
    moments_jacobian: np.ndarray
    moments_covariances: np.ndarray
    parameter_covariances: np.ndarray
    se_type: str
    step: int

    def _store_pyblp_attributes(self, covariances: Any, last_results: Any = None) -> None:
        """Compute the attributes other than the ``N x P`` Jacobians, which wait until asked for."""
        problem, space = self.problem, self._space
        P = space.P
        self.last_results = last_results
        bounded = bool(getattr(self.optimization, "supports_bounds", True))
        bounds = parameter_bounds(space, bounded)
        self.sigma_bounds, self.pi_bounds, self.rho_bounds, self.beta_bounds, self.gamma_bounds = bounds
        W = self.W
        if self.se_type == "unadjusted" and self.step == 1:  # the weighting matrix of the standard errors
            W = _numpy(invert(torch.as_tensor(self.moments_covariances, dtype=torch.float64))[0])
        G = self.moments_jacobian
        bread = _numpy(invert(torch.as_tensor(G.T @ W @ G, dtype=torch.float64))[0])
        self.parameter_sensitivity = -bread @ G.T @ W
        estimated = np.ones(P, dtype=bool)
        if covariances.estimated is not None:  # elements of theta fixed by equal bounds are not estimated
            estimated = np.asarray(covariances.estimated, dtype=bool)[:P]
        free_theta = np.flatnonzero(estimated)  # their rows lead parameter_covariances
        theta_covariances = np.zeros((P, P))
        leading = self.parameter_covariances[: free_theta.size, : free_theta.size]
        theta_covariances[np.ix_(free_theta, free_theta)] = leading
        n_sigma = len(space.sigma_index[0])
        self.sigma_squared_se = sigma_squared_standard_errors(
            self.sigma, theta_covariances[:n_sigma, :n_sigma], space.sigma_index, problem.N
        )
        self.xi_fe = np.zeros_like(self.xi)
        if problem.ED:
            self.xi_fe = self.delta - problem.design.X1_raw @ self.beta - self.xi
        self.omega_fe = np.zeros_like(self.omega)
        if problem.ES:
            self.omega_fe = self.tilde_costs - problem.X3_raw @ self.gamma - self.omega
        M = self.moments_covariances.shape[0]
        simulation = getattr(covariances, "simulation", None)
        self.simulation_covariances = np.zeros((M, M)) if simulation is None else _numpy(simulation)
        aggregate = problem.MD + (problem.MS if problem.K3 else 0) + problem.MC
        S = self.moments_covariances - self.simulation_covariances
        self.micro_covariances = S[aggregate:, aggregate:] / problem.N
        self.micro_by_theta_jacobian = G[aggregate:, : free_theta.size]
        self._estimated_theta = free_theta

    @cached_property
    def _theta_jacobians(self) -> tuple[np.ndarray, np.ndarray]:
        return theta_jacobians(self)

    @property
    def xi_by_theta_jacobian(self) -> np.ndarray:
        """:math:`\\partial\\xi/\\partial\\theta'`, ``N x P`` (see :mod:`demandkit.blp.results_attributes`)."""
        return self._theta_jacobians[0]

    @property
    def omega_by_theta_jacobian(self) -> np.ndarray:
        """:math:`\\partial\\omega/\\partial\\theta'`, ``N x P``; NaN without a supply side."""
        return self._theta_jacobians[1]
