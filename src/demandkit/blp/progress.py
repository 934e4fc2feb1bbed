"""The state of estimation at one :math:`\\theta`, named as PyBLP names it: ``OptimizationProgress`` and its parts.

:class:`OptimizationProgress` describes one objective evaluation (PyBLP hands one to a custom optimization routine
with every evaluation). The helpers here compute the pieces that :class:`~demandkit.blp.results.ProblemResults`
shares with it: PyBLP's parameter labels, the flags of clipped shares and costs, the transformed marginal costs and
the projected gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def parameter_labels(problem: Any, space: Any) -> tuple[list[str], list[str]]:
    """``(rho_labels, theta_labels)`` in PyBLP's form.

    An element of :math:`\\Sigma` is labelled ``'row x column'`` with the labels of :math:`X_2`, one of :math:`\\Pi`
    ``'X2 label x demographic'``, one of :math:`\\rho` by its nesting group (the sorted distinct ``nesting_ids``; a
    scalar :math:`\\rho` takes the first group's label, as in PyBLP) and elements of :math:`\\beta` and
    :math:`\\gamma` in :math:`\\theta` by their columns of :math:`X_1` and :math:`X_3`.
    """
    X2, D = problem.design.X2_labels, problem.design.demographics_labels
    rho_labels = [str(label) for label in problem.nesting_labels] if problem.H else []
    theta_labels = [f"{X2[r]} x {X2[c]}" for r, c in zip(*space.sigma_index, strict=True)]
    theta_labels += [f"{X2[r]} x {D[c]}" for r, c in zip(*space.pi_index, strict=True)]
    theta_labels += [rho_labels[k] for k in space.rho_index]
    theta_labels += [f"{('Xi', 'Omega')[r]} on {('Xi', 'Omega')[c]}" for r, c in zip(*space.phi_index, strict=True)]
    theta_labels += [problem.design.X1_labels[k] for k in space.beta_index]
    theta_labels += [problem.X3_labels[k] for k in space.gamma_index]
    return rho_labels, theta_labels


def clipped_costs(problem: Any, evaluation: Any, costs_bounds: tuple[float, float]) -> np.ndarray:
    """``N x 1`` booleans: whether each marginal cost fell outside ``costs_bounds`` and was clipped (all False
    without a supply side)."""
    if evaluation.costs is None:
        return np.zeros((problem.N, 1), dtype=bool)
    costs = _numpy(evaluation.costs).reshape(-1, 1)
    lower, upper = costs_bounds
    return (costs < lower) | (costs > upper)


def tilde_costs(problem: Any, evaluation: Any, costs_bounds: tuple[float, float]) -> np.ndarray:
    """Transformed marginal costs :math:`\\tilde c` (``log c`` under ``costs_type='log'``) after clipping, before
    absorbing fixed effects: ``N x 1``, or ``N x 0`` without a supply side (PyBLP's shapes)."""
    if evaluation.costs is None:
        return np.zeros((problem.N, 0))
    costs = np.clip(_numpy(evaluation.costs), *costs_bounds).reshape(-1, 1)
    return np.log(costs) if problem.costs_type == "log" else costs


def project_gradient(gradient: np.ndarray, theta: np.ndarray, space: Any) -> np.ndarray:
    """Zero the gradient components that push against an active bound (as optimality is judged)."""
    projected = gradient.copy()
    at_lower = np.isclose(theta, space.lower) & (gradient > 0)
    at_upper = np.isclose(theta, space.upper) & (gradient < 0)
    projected[at_lower | at_upper] = 0
    return projected


def market_counts(values: torch.Tensor, dtype: type = np.int64) -> np.ndarray:
    """A per-market tensor (``T``) as a ``T`` numpy vector of ``dtype``."""
    return values.detach().cpu().numpy().astype(dtype).reshape(-1)


class OptimizationProgress:
    """The estimation's state at one objective evaluation, with PyBLP's attribute names and shapes.

    PyBLP gives one to a custom optimization routine with every evaluation of the objective. demandkit's
    :class:`~demandkit.Optimization` takes scipy's routines (and ``'return'``) only, so here an
    ``OptimizationProgress`` describes an evaluation after the fact: :meth:`at_estimates` gives the one at the
    final estimates of a :class:`~demandkit.ProblemResults`.

    Attributes
    ----------
    problem : Problem
        The problem evaluated.
    fp_converged, fp_iterations, contraction_evaluations : ndarray
        ``T`` vectors, markets in the order of the problem's markets: whether the inversion for :math:`\\delta`
        converged, its iterations and its evaluations of the contraction.
    theta : ndarray
        ``P`` vector of the unknown parameters, ordered :math:`\\Sigma`, :math:`\\Pi`, :math:`\\rho`, then the
        elements of :math:`\\beta` and :math:`\\gamma` that are not concentrated out; labelled by ``theta_labels``.
    sigma, sigma_squared, pi, rho, beta, gamma : ndarray
        The parameter matrices at this evaluation (:math:`\\beta` and :math:`\\gamma` with the concentrated-out
        elements filled in), labelled by ``sigma_labels``, ``pi_labels``, ``rho_labels``, ``beta_labels`` and
        ``gamma_labels``.
    delta, xi : ndarray
        ``N x 1`` mean utilities and demand-side structural errors.
    omega, tilde_costs : ndarray
        ``N x 1`` supply-side structural errors and transformed marginal costs (``N x 0`` without a supply side).
    clipped_shares, clipped_costs : ndarray
        ``N x 1`` booleans: clipped simulated shares (always False: shares are computed in logs and never clipped)
        and marginal costs clipped to ``costs_bounds``.
    micro, micro_values : ndarray
        Micro moments :math:`\\bar g_M` and the model's values :math:`f_m(v)`, ``M_M x 1``.
    objective : ndarray
        The GMM objective :math:`q(\\theta)` (a 0-dimensional array).
    gradient, projected_gradient : ndarray
        ``P x 1`` gradient, and the same with components pushing against an active bound zeroed;
        ``projected_gradient_norm`` is the infinity norm of the latter.
    W : ndarray
        The weighting matrix of the objective.

    Notes
    -----
    PyBLP's ``phi`` (not modelled here), its parameter bounds and the Jacobians ``xi_by_theta_jacobian``,
    ``omega_by_theta_jacobian`` and ``micro_by_theta_jacobian`` are not provided.
    """

    def __init__(
        self,
        problem: Any,
        space: Any,
        evaluation: Any,
        W: Any,
        costs_bounds: tuple[float, float] = (-np.inf, np.inf),
        micro_observed: np.ndarray | None = None,
    ) -> None:
        self.problem = problem
        self.fp_converged = market_counts(evaluation.converged, bool)
        self.fp_iterations = market_counts(evaluation.iterations)
        self.contraction_evaluations = market_counts(evaluation.evaluations)
        theta = np.asarray(evaluation.theta, dtype=np.float64).reshape(-1)
        self.theta = theta.copy()
        sigma, pi, rho = (_numpy(m) for m in space.unpack(torch.as_tensor(theta, dtype=torch.float64)))
        self.sigma, self.pi, self.rho = sigma, pi, rho.reshape(-1, 1)
        self.sigma_squared = sigma @ sigma.T
        self.beta = _numpy(evaluation.beta).reshape(-1, 1)
        self.gamma = _numpy(evaluation.gamma).reshape(-1, 1)
        self.sigma_labels = list(problem.design.X2_labels)
        self.pi_labels = list(problem.design.demographics_labels)
        self.beta_labels = list(problem.design.X1_labels)
        self.gamma_labels = list(problem.X3_labels)
        self.rho_labels, self.theta_labels = parameter_labels(problem, space)
        self.delta = _numpy(problem.layout.unpad(evaluation.delta)).reshape(-1, 1)
        self.xi = _numpy(evaluation.xi).reshape(-1, 1)
        N = problem.N
        self.omega = np.zeros((N, 0)) if evaluation.omega is None else _numpy(evaluation.omega).reshape(-1, 1)
        self.tilde_costs = tilde_costs(problem, evaluation, costs_bounds)
        self.clipped_shares = np.zeros((N, 1), dtype=bool)
        self.clipped_costs = clipped_costs(problem, evaluation, costs_bounds)
        values = evaluation.micro_values
        self.micro_values = np.zeros((0, 1)) if values is None else np.asarray(values, np.float64).reshape(-1, 1)
        observed = np.zeros((0, 1)) if micro_observed is None else np.asarray(micro_observed).reshape(-1, 1)
        self.micro = observed - self.micro_values if observed.size else np.zeros((0, 1))
        self.objective = np.asarray(evaluation.objective, dtype=np.float64)
        gradient = np.asarray(evaluation.gradient, dtype=np.float64).reshape(-1)
        self.gradient = gradient.reshape(-1, 1)
        self.projected_gradient = project_gradient(gradient, theta, space).reshape(-1, 1)
        self.projected_gradient_norm = np.float64(np.max(np.abs(self.projected_gradient)) if theta.size else 0.0)
        self.W = _numpy(W) if isinstance(W, torch.Tensor) else np.asarray(W, dtype=np.float64)

    @classmethod
    def at_estimates(cls, results: Any) -> OptimizationProgress:
        """The progress of the objective evaluation at the final estimates of ``results`` (a ProblemResults)."""
        last = results._steps[-1]
        micro = None if results._micro is None else _numpy(results._micro.observed)
        return cls(results.problem, results._space, last.evaluation, last.W, results.costs_bounds, micro)

    def __repr__(self) -> str:
        return f"<OptimizationProgress objective={float(self.objective):.6g} theta={self.theta.tolist()}>"
