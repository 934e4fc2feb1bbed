"""GMM estimation of a :class:`~demandkit.problem.Problem`: the objective, its autograd gradient, the
one- and two-step procedure, and the covariance of the estimates.

The objective at :math:`\\theta` inverts shares for :math:`\\delta(\\theta)` in every market at once
(:class:`~demandkit.demand.DemandModel`), absorbs fixed effects, concentrates out :math:`\\beta` by
IV-GMM and returns :math:`q(\\theta) = N\\bar g'W\\bar g`; one backward pass gives
:math:`\\nabla q`, with the inversion differentiated by the implicit function theorem.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .demand import DemandModel
from .exceptions import ConvergenceWarning, SpecificationError
from .iteration import Iteration
from .kernels.absorption import Absorb
from .kernels.gmm import LinearIV, invert, moment_covariances, parameter_covariances
from .optimization import Optimization, OptimizationResult
from .options import CovarianceType, DeltaBehavior, GMMMethod, check_choice
from .parameters import ParameterSpace


@dataclass
class EvaluationStats:
    """Running totals over objective evaluations."""

    evaluations: int = 0
    fp_iterations: int = 0
    contraction_evaluations: int = 0
    fp_failures: int = 0
    reverted: int = 0
    seconds: float = 0.0
    last_unconverged_markets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """Everything computed at one :math:`\\theta` (tensors detached)."""

    theta: np.ndarray
    objective: float
    gradient: np.ndarray
    delta: Tensor  # [T, J] padded, before absorption
    delta_rows: Tensor  # [N] absorbed, in the user's row order
    beta: Tensor
    xi: Tensor
    converged: Tensor  # [T]
    iterations: Tensor
    evaluations: Tensor


class GMMObjective:
    """The objective :math:`q(\\theta)` at a fixed weighting matrix, with the inversion's warm start."""

    def __init__(
        self,
        problem: Any,
        model: DemandModel,
        space: ParameterSpace,
        iteration: Iteration,
        W: Tensor,
        delta_start: Tensor,
        delta_behavior: str,
        stats: EvaluationStats,
    ) -> None:
        self.problem, self.model, self.space, self.iteration = problem, model, space, iteration
        self.iv = LinearIV.build(problem.X1_tensor, problem.ZD_tensor, W)
        self.start = delta_start
        self.delta_behavior = delta_behavior
        self.stats = stats
        self._first = True
        self.last: Evaluation | None = None

    def absorb(self, rows: Tensor) -> Tensor:
        if not self.problem.absorb_codes:
            return rows
        return Absorb.apply(rows, self.problem.absorb_codes, self.problem.absorb_counts)

    def evaluate(self, theta_values: np.ndarray, gradient: bool = True) -> Evaluation:
        start_time = time.perf_counter()
        p = self.problem
        theta = torch.as_tensor(theta_values, dtype=p.dtype, device=p.device).clone()
        theta.requires_grad_(gradient and theta.numel() > 0)
        sigma, pi, rho = self.space.unpack(theta)
        inversion = self.model.invert(sigma, pi, rho, self.start, self.iteration.method, self.iteration.options)
        delta_rows = self.absorb(inversion.delta[p.rows_market, p.rows_slot])
        beta, xi = self.iv.residuals(delta_rows)
        objective = self.iv.objective(xi)
        if theta.requires_grad:
            (grad,) = torch.autograd.grad(objective, theta)
        else:
            grad = torch.zeros_like(theta)
        result = inversion.result
        self.stats.evaluations += 1
        self.stats.fp_iterations += int(result.iterations.sum())
        self.stats.contraction_evaluations += int(result.evaluations.sum())
        failed = ~result.converged
        if bool(failed.any()):
            self.stats.fp_failures += 1
            self.stats.last_unconverged_markets = torch.nonzero(failed).flatten().tolist()
        finite_delta = torch.where(p.product_mask, result.values, 0.0)
        if self.delta_behavior == "last" or self._first:
            if bool(torch.isfinite(finite_delta).all()):
                self.start = finite_delta
            self._first = False
        self.stats.seconds += time.perf_counter() - start_time
        return Evaluation(
            np.asarray(theta_values, dtype=np.float64).copy(),
            float(objective.detach()),
            grad.detach().cpu().numpy().astype(np.float64),
            inversion.delta.detach(),
            delta_rows.detach(),
            beta.detach(),
            xi.detach(),
            result.converged,
            result.iterations,
            result.evaluations,
        )

    def __call__(self, theta_values: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient for the optimizer; a non-finite value reverts to the last finite one."""
        evaluation = self.evaluate(theta_values)
        if not np.isfinite(evaluation.objective) or not np.isfinite(evaluation.gradient).all():
            self.stats.reverted += 1
            if self.last is None:
                return 1e300, np.zeros_like(evaluation.gradient)
            return self.last.objective, self.last.gradient
        self.last = evaluation
        return evaluation.objective, evaluation.gradient


@dataclass(frozen=True)
class StepResult:
    """One GMM step: where the optimizer stopped and what was computed there."""

    step: int
    W: Tensor
    optimization: OptimizationResult
    evaluation: Evaluation
    stats: EvaluationStats


def solve(
    problem: Any,
    sigma: Any = None,
    pi: Any = None,
    rho: Any = None,
    beta: Any = None,
    sigma_bounds: Any = None,
    pi_bounds: Any = None,
    rho_bounds: Any = None,
    delta: Any = None,
    W: Any = None,
    method: str = "2s",
    initial_update: bool = False,
    optimization: Optimization | None = None,
    scale_objective: bool = True,
    check_optimality: str = "both",
    error_behavior: str = "revert",
    iteration: Iteration | None = None,
    delta_behavior: str = "first",
    W_type: str = "robust",
    se_type: str = "robust",
    center_moments: bool = True,
    progress: bool = False,
) -> Any:
    """Estimate the problem by one- or two-step GMM, with PyBLP's arguments and defaults.

    Parameters
    ----------
    sigma, pi, rho : array-like
        Starting values of :math:`\\Sigma` (``K2 x K2``, lower triangle used), :math:`\\Pi` (``K2 x D``) and
        :math:`\\rho` (``H x 1`` or a scalar for all nests). Zeros are fixed at zero.
    sigma_bounds, pi_bounds, rho_bounds : tuple of array-like, optional
        ``(lower, upper)`` bounds for bounded optimizers; PyBLP's defaults otherwise.
    delta : array-like, optional
        Starting mean utilities (``N``); the logit's :math:`\\log s_j - \\log s_0` by default.
    W : array-like, optional
        Starting weighting matrix; :math:`(Z'Z/N)^{-1}` by default.
    method : {'1s', '2s'}
        One-step or two-step GMM (the second step uses :math:`W = S^{-1}` from the first).
    initial_update : bool
        Update ``W`` at the starting values before the first step.
    optimization : Optimization, optional
        Default ``Optimization('l-bfgs-b', {'gtol': 1e-8})``.
    iteration : Iteration, optional
        Default ``Iteration('squarem', {'atol': 1e-14})``.
    delta_behavior : {'first', 'last'}
        Start each inversion at the delta of the step's first evaluation, or of the last one.
    W_type, se_type : {'robust', 'clustered', 'unadjusted'}
        How :math:`S` is estimated for the weighting matrix and for standard errors
        (``'clustered'`` needs ``clustering_ids``).
    center_moments : bool
        Center the moment contributions when estimating :math:`S`.
    progress : bool
        Print a progress bar over optimizer evaluations.

    Returns
    -------
    ProblemResults
    """
    from .results import ProblemResults

    check_choice("method", method, GMMMethod)
    check_choice("W_type", W_type, CovarianceType)
    check_choice("se_type", se_type, CovarianceType)
    check_choice("delta_behavior", delta_behavior, DeltaBehavior)
    if beta is not None:
        raise SpecificationError("beta is always concentrated out; fixing elements of beta is not supported yet.")
    if "clustered" in (W_type, se_type) and problem.clustering_codes is None:
        raise SpecificationError("W_type or se_type 'clustered' needs a clustering_ids column in product_data.")
    optimization = optimization or Optimization()
    iteration = iteration or Iteration()
    space = ParameterSpace.build(
        sigma,
        pi,
        rho,
        problem.K2,
        problem.D,
        problem.H,
        problem.design.X2_labels,
        problem.design.demographics_labels,
        optimization.supports_bounds,
        sigma_bounds,
        pi_bounds,
        rho_bounds,
    )
    if problem.MD < problem.K1 + space.P:
        raise SpecificationError(
            f"The model is under-identified: {problem.MD} demand moments (instruments, including exogenous X1 "
            f"columns) for {problem.K1} linear and {space.P} nonlinear parameters. Add instruments."
        )
    model = DemandModel(problem)
    start = _starting_delta(problem, delta)
    N = problem.N
    Z = problem.ZD_tensor
    W_current = (
        invert(Z.T @ Z / N)[0]
        if W is None
        else torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=problem.dtype, device=problem.device)
    )
    if W_current.shape != (problem.MD, problem.MD):
        raise SpecificationError(f"W must be {problem.MD} by {problem.MD}; received shape {tuple(W_current.shape)}.")
    theta = space.theta0
    total_start = time.perf_counter()
    if initial_update:
        stats = EvaluationStats()
        evaluation = GMMObjective(problem, model, space, iteration, W_current, start, delta_behavior, stats).evaluate(
            theta, gradient=False
        )
        W_current = _updated_W(problem, evaluation.xi, W_type, center_moments)
    steps: list[StepResult] = []
    for step in range(1, (2 if method == "2s" else 1) + 1):
        stats = EvaluationStats()
        objective = GMMObjective(problem, model, space, iteration, W_current, start, delta_behavior, stats)
        optimized = optimization.minimize(_with_progress(objective, progress, step), theta, space.bounds())
        evaluation = objective.evaluate(optimized.x)
        if not optimized.converged:
            warnings.warn(
                f"GMM step {step}: the optimizer stopped without converging ({optimized.message}). Try other "
                "starting values, a different Optimization method or a looser gtol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if not bool(evaluation.converged.all()):
            warnings.warn(
                f"GMM step {step}: the inversion for delta did not converge in {int((~evaluation.converged).sum())} "
                "market(s) at the final parameters; see results.fp_converged.",
                ConvergenceWarning,
                stacklevel=3,
            )
        steps.append(StepResult(step, W_current, optimized, evaluation, stats))
        theta = optimized.x
        start = torch.where(problem.product_mask, evaluation.delta, 0.0)
        W_current = _updated_W(problem, evaluation.xi, W_type, center_moments)
    covariances = _covariances(problem, model, space, steps[-1], W_type, se_type, center_moments)
    return ProblemResults(
        problem=problem,
        space=space,
        steps=steps,
        covariances=covariances,
        updated_W=W_current,
        W_type=W_type,
        se_type=se_type,
        method=method,
        optimization=optimization,
        iteration=iteration,
        seconds=time.perf_counter() - total_start,
    )


def _starting_delta(problem: Any, delta: Any) -> Tensor:
    if delta is None:
        return problem.logit_delta.clone()
    values = np.asarray(delta, dtype=np.float64).reshape(-1)
    if values.shape[0] != problem.N or not np.isfinite(values).all():
        raise SpecificationError(f"delta must hold {problem.N} finite starting values, one per product.")
    return torch.as_tensor(problem.layout.pad(values), dtype=problem.dtype, device=problem.device)


def _updated_W(problem: Any, xi: Tensor, W_type: str, center: bool) -> Tensor:
    S = moment_covariances(xi, problem.ZD_tensor, W_type, problem.clustering_codes, center)
    W, singular = invert(S)
    if singular:
        warnings.warn(
            "The moment covariance matrix is singular; its pseudo-inverse is the weighting matrix.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return W


@dataclass(frozen=True)
class Covariances:
    """Covariances of :math:`(\\theta, \\beta)` and what produced them."""

    parameters: Tensor  # [P + K1, P + K1], of sqrt(N)(estimate - truth)
    S: Tensor
    G: Tensor  # mean moment Jacobian [MD, P + K1]
    xi_by_theta: Tensor  # [N, P]


def _covariances(
    problem: Any,
    model: DemandModel,
    space: ParameterSpace,
    last: StepResult,
    W_type: str,
    se_type: str,
    center: bool,
) -> Covariances:
    evaluation = last.evaluation
    theta = torch.as_tensor(evaluation.theta, dtype=problem.dtype, device=problem.device)
    jacobian = model.delta_jacobian(evaluation.delta, theta, space.unpack)  # [T, J, P]
    rows = jacobian[problem.rows_market, problem.rows_slot]
    if problem.absorb_codes and rows.shape[1]:
        rows = Absorb.apply(rows, problem.absorb_codes, problem.absorb_counts)
    N = problem.N
    Z = problem.ZD_tensor
    G = Z.T @ torch.cat([rows, -problem.X1_tensor], dim=1) / N
    S = moment_covariances(evaluation.xi, Z, se_type, problem.clustering_codes, center)
    W = last.W
    if se_type == "unadjusted" and last.step == 1:
        W = invert(S)[0]
    return Covariances(parameter_covariances(W, S, G, se_type), S, G, rows)


def _with_progress(objective: GMMObjective, show: bool, step: int) -> Any:
    if not show:
        return objective
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"GMM step {step}", unit=" evaluations", leave=False)

    def wrapped(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = objective(theta)
        bar.update(1)
        bar.set_postfix(objective=f"{value:.6g}")
        return value, gradient

    return wrapped
