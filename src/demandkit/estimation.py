"""GMM estimation of a :class:`~demandkit.problem.Problem`: the objective, its autograd gradient, the
one- and two-step procedure, and the covariance of the estimates.

At :math:`\\theta` the objective inverts shares for :math:`\\delta(\\theta)` in every market at once,
absorbs fixed effects and, with a supply side, computes Bertrand-Nash markups and marginal costs
:math:`\\tilde c = c` or :math:`\\log c`. The structural errors come from the stacked system

.. math::

    \\begin{pmatrix}\\delta - X_1\\beta \\\\ \\tilde c - X_3\\gamma\\end{pmatrix}
    = \\begin{pmatrix}\\xi \\\\ \\omega\\end{pmatrix}, \\qquad
    E\\left[\\begin{pmatrix} Z_D'\\xi \\\\ Z_S'\\omega \\end{pmatrix}\\right] = 0,

with the elements of :math:`(\\beta, \\gamma)` not in :math:`\\theta` concentrated out by IV-GMM, and the
objective is :math:`q(\\theta) = N\\bar g'W\\bar g`. One backward pass gives :math:`\\nabla q`, with the
inversion differentiated by the implicit function theorem and the markups through the share Jacobian.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
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
from .options import CovarianceType, DeltaBehavior, GMMMethod, Optimality, check_choice
from .parameters import ParameterSpace
from .supply import SupplyModel


@dataclass
class EvaluationStats:
    """Running totals over objective evaluations.

    ``evaluations`` are computed; ``repeated`` are requests for a :math:`\\theta` evaluated moments before (an
    L-BFGS-B line search that fails returns to its base point), answered from memory.
    """

    evaluations: int = 0
    repeated: int = 0
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
    beta: Tensor  # [K1], all elements
    gamma: Tensor  # [K3]
    xi: Tensor  # [N]
    omega: Tensor | None  # [N]
    costs: Tensor | None  # [N] marginal costs before clipping
    clipped_costs: int
    converged: Tensor  # [T]
    iterations: Tensor
    evaluations: Tensor


@dataclass(frozen=True)
class StackedSystem:
    """Block-diagonal regressors and instruments of the demand (and supply) equations."""

    X: Tensor  # [E N, K_eliminated]
    Z: Tensor  # [E N, M]
    equations: int

    @classmethod
    def build(cls, problem: Any, space: ParameterSpace) -> StackedSystem:
        X1 = problem.X1_tensor[:, torch.as_tensor(space.eliminated_beta, device=problem.device)]
        if not problem.K3:
            return cls(X1, problem.ZD_tensor, 1)
        X3 = problem.X3_tensor[:, torch.as_tensor(space.eliminated_gamma, device=problem.device)]
        return cls(torch.block_diag(X1, X3), torch.block_diag(problem.ZD_tensor, problem.ZS_tensor), 2)

    def split(self, stacked: Tensor) -> list[Tensor]:
        return list(stacked.chunk(self.equations))

    def instruments(self, problem: Any) -> list[Tensor]:
        return [problem.ZD_tensor] + ([problem.ZS_tensor] if self.equations == 2 else [])


RECALLED = 4
"""How many of the latest evaluations :meth:`GMMObjective.evaluate_or_recall` keeps."""


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
        costs_bounds: tuple[float, float],
    ) -> None:
        self.problem, self.model, self.space, self.iteration = problem, model, space, iteration
        self.supply = SupplyModel(problem, model) if problem.K3 else None
        self.observed_shares = torch.where(problem.product_mask, torch.exp(problem.log_market_shares), 0.0)
        self.system = StackedSystem.build(problem, space)
        self.iv = LinearIV.build(self.system.X, self.system.Z, W)
        self.start = delta_start
        self.delta_behavior = delta_behavior
        self.stats = stats
        self.costs_bounds = costs_bounds
        self._first = True
        self.last: Evaluation | None = None
        self.recent: OrderedDict[bytes, Evaluation] = OrderedDict()  # the latest evaluations with gradients

    def _absorb(self, rows: Tensor, codes: list, counts: list) -> Tensor:
        return Absorb.apply(rows, codes, counts) if codes else rows

    def structural(self, theta: Tensor) -> tuple[Tensor, Any, Tensor, Tensor | None, int]:
        """Left-hand sides of the stacked system at ``theta``: ``(y, inversion, delta_rows, costs, clipped)``."""
        p = self.problem
        sigma, pi, rho = self.space.unpack(theta)
        beta, gamma = self.space.unpack_linear(theta)
        inversion = self.model.invert(sigma, pi, rho, self.start, self.iteration.method, self.iteration.options)
        delta_rows = self._absorb(inversion.delta[p.rows_market, p.rows_slot], p.absorb_codes, p.absorb_counts)
        y = delta_rows - p.X1_tensor @ beta
        if self.supply is None:
            return y, inversion, delta_rows, None, 0
        markups = self.supply.markups(
            inversion.delta, sigma, pi, rho, beta, shares=self.observed_shares, inversion=inversion
        )
        costs = (p.prices_padded - markups)[p.rows_market, p.rows_slot]
        lower, upper = self.costs_bounds
        clipped = int(((costs < lower) | (costs > upper)).sum())
        bounded = costs.clamp(min=lower, max=upper) if clipped else costs
        transformed = torch.log(bounded) if p.costs_type == "log" else bounded
        transformed = self._absorb(transformed, p.supply_absorb_codes, p.supply_absorb_counts)
        y_supply = transformed - p.X3_tensor @ gamma
        return torch.cat([y, y_supply]), inversion, delta_rows, costs, clipped

    def full_linear(self, theta: Tensor, eliminated: Tensor) -> tuple[Tensor, Tensor]:
        """``beta [K1]`` and ``gamma [K3]`` combining theta's elements with the concentrated ones."""
        beta, gamma = self.space.unpack_linear(theta)
        n_beta = len(self.space.eliminated_beta)
        beta = beta.index_put((torch.as_tensor(self.space.eliminated_beta, device=beta.device),), eliminated[:n_beta])
        gamma = gamma.index_put(
            (torch.as_tensor(self.space.eliminated_gamma, device=gamma.device),), eliminated[n_beta:]
        )
        return beta, gamma

    def evaluate(self, theta_values: np.ndarray, gradient: bool = True) -> Evaluation:
        start_time = time.perf_counter()
        p = self.problem
        theta = torch.as_tensor(theta_values, dtype=p.dtype, device=p.device).clone()
        theta.requires_grad_(gradient and theta.numel() > 0)
        y, inversion, delta_rows, costs, clipped = self.structural(theta)
        eliminated, residuals = self.iv.residuals(y)
        objective = self.iv.objective(residuals, p.N)
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
        solved = torch.where(p.product_mask, result.values, 0.0)
        if self.delta_behavior == "last" or self._first:
            if bool(torch.isfinite(solved).all()):
                self.start = solved
            self._first = False
        beta, gamma = self.full_linear(theta.detach(), eliminated.detach())
        parts = self.system.split(residuals.detach())
        self.stats.seconds += time.perf_counter() - start_time
        return Evaluation(
            np.asarray(theta_values, dtype=np.float64).copy(),
            float(objective.detach()),
            grad.detach().cpu().numpy().astype(np.float64),
            inversion.delta.detach(),
            delta_rows.detach(),
            beta,
            gamma,
            parts[0],
            parts[1] if len(parts) > 1 else None,
            None if costs is None else costs.detach(),
            clipped,
            result.converged,
            result.iterations,
            result.evaluations,
        )

    def evaluate_or_recall(self, theta_values: np.ndarray) -> Evaluation:
        """:meth:`evaluate` with the gradient, unless this exact :math:`\\theta` (bit for bit) was among the last
        :data:`RECALLED` evaluations, which are answered from memory (L-BFGS-B returns to its base point after a
        failed line search). A new evaluation would give the same up to the inversion's tolerance: by default each
        inversion starts from the step's first delta, so the objective is a function of :math:`\\theta` alone."""
        key = np.asarray(theta_values, dtype=np.float64).tobytes()
        evaluation = self.recent.get(key)
        if evaluation is not None:
            self.stats.repeated += 1
            self.recent.move_to_end(key)
            return evaluation
        evaluation = self.evaluate(theta_values)
        self.recent[key] = evaluation
        if len(self.recent) > RECALLED:
            self.recent.popitem(last=False)
        return evaluation

    def __call__(self, theta_values: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient for the optimizer; a non-finite value reverts to the last finite one."""
        evaluation = self.evaluate_or_recall(theta_values)
        if not np.isfinite(evaluation.objective) or not np.isfinite(evaluation.gradient).all():
            self.stats.reverted += 1
            if self.last is None:
                return 1e300, np.zeros_like(evaluation.gradient)
            return self.last.objective, self.last.gradient
        self.last = evaluation
        return evaluation.objective, evaluation.gradient

    def moments_jacobian(self, evaluation: Evaluation) -> Tensor:
        """:math:`\\bar G = \\partial \\bar g/\\partial(\\theta, \\beta_c, \\gamma_c)`, ``[M, P + K_c]``.

        The block for :math:`\\theta` comes from one reverse-mode pass per moment (no ``N x P`` or
        ``J x J x P`` array is formed); the concentrated block is :math:`-Z'X/N`.
        """
        p = self.problem
        N = p.N
        Z, X = self.system.Z, self.system.X
        concentrated = -Z.T @ X / N
        P = evaluation.theta.size
        if P == 0:
            return concentrated
        self.start = torch.where(p.product_mask, evaluation.delta, 0.0)
        theta = torch.as_tensor(evaluation.theta, dtype=p.dtype, device=p.device).clone().requires_grad_(True)
        y = self.structural(theta)[0]
        moments = Z.T @ y / N
        rows = [
            torch.autograd.grad(moments[m], theta, retain_graph=m + 1 < moments.shape[0])[0]
            for m in range(moments.shape[0])  # a loop over moments (post-estimation only)
        ]
        return torch.cat([torch.stack(rows), concentrated], dim=1)


@dataclass(frozen=True)
class StepResult:
    """One GMM step: where the optimizer stopped and what was computed there."""

    step: int
    W: Tensor
    optimization: OptimizationResult
    evaluation: Evaluation
    stats: EvaluationStats


@dataclass(frozen=True)
class Covariances:
    """Covariances of :math:`(\\theta, \\beta_c, \\gamma_c)` and what produced them."""

    parameters: Tensor  # of sqrt(N)(estimate - truth)
    S: Tensor
    G: Tensor


def solve(
    problem: Any,
    sigma: Any = None,
    pi: Any = None,
    rho: Any = None,
    beta: Any = None,
    gamma: Any = None,
    sigma_bounds: Any = None,
    pi_bounds: Any = None,
    rho_bounds: Any = None,
    beta_bounds: Any = None,
    gamma_bounds: Any = None,
    delta: Any = None,
    W: Any = None,
    method: str = "2s",
    initial_update: bool = False,
    optimization: Optimization | None = None,
    iteration: Iteration | None = None,
    costs_bounds: Any = None,
    delta_behavior: str = "first",
    W_type: str = "robust",
    se_type: str = "robust",
    center_moments: bool = True,
    check_optimality: str = "both",
    progress: bool = False,
) -> Any:
    """Estimate the problem by one- or two-step GMM, with PyBLP's arguments and defaults.

    Parameters
    ----------
    sigma, pi, rho : array-like
        Starting values of :math:`\\Sigma` (``K2 x K2``, lower triangle used), :math:`\\Pi` (``K2 x D``) and
        :math:`\\rho` (``H x 1`` or a scalar for all nests). Zeros are fixed at zero.
    beta, gamma : array-like, optional
        ``K1`` and ``K3`` vectors: NaN (the default) concentrates an element out; a number makes it a
        nonlinear parameter starting there. With a supply side, the elements of :math:`\\beta` on
        characteristics that involve prices must be given.
    sigma_bounds, pi_bounds, rho_bounds, beta_bounds, gamma_bounds : tuple of array-like, optional
        ``(lower, upper)`` bounds for bounded optimizers; PyBLP's defaults otherwise.
    delta : array-like, optional
        Starting mean utilities (``N``); the logit's :math:`\\log s_j - \\log s_0` by default.
    W : array-like, optional
        Starting weighting matrix; block-diagonal :math:`(Z_D'Z_D/N)^{-1}`, :math:`(Z_S'Z_S/N)^{-1}` by default.
    method : {'1s', '2s'}
        One-step or two-step GMM (the second step uses :math:`W = S^{-1}` from the first).
    initial_update : bool
        Update ``W`` at the starting values before the first step.
    optimization : Optimization, optional
        Default ``Optimization('l-bfgs-b', {'ftol': 0, 'gtol': 1e-8})``, PyBLP's.
    iteration : Iteration, optional
        Default ``Iteration('squarem', {'atol': 1e-14})``.
    costs_bounds : tuple, optional
        ``(lower, upper)`` bounds on marginal costs; costs outside are clipped and counted (e.g.
        ``(0.001, None)`` with ``costs_type='log'``).
    delta_behavior : {'first', 'last'}
        Start each inversion at the delta of the step's first evaluation, or of the last one.
    W_type, se_type : {'robust', 'clustered', 'unadjusted'}
        How :math:`S` is estimated for the weighting matrix and for standard errors.
    center_moments : bool
        Center the moment contributions when estimating :math:`S`.
    check_optimality : {'both', 'gradient'}
        At the estimates, ``'both'`` (PyBLP's default) also computes the Hessian of the objective, by central
        differences of the analytic gradient (``2P`` evaluations), for the second-order conditions: the
        results' ``hessian``, ``reduced_hessian`` and ``reduced_hessian_eigenvalues``. ``'gradient'`` skips it.
    progress : bool
        Show a progress bar over optimizer evaluations.

    Returns
    -------
    ProblemResults
    """
    from .results import ProblemResults

    check_choice("method", method, GMMMethod)
    check_choice("W_type", W_type, CovarianceType)
    check_choice("se_type", se_type, CovarianceType)
    check_choice("delta_behavior", delta_behavior, DeltaBehavior)
    check_choice("check_optimality", check_optimality, Optimality)
    if "clustered" in (W_type, se_type) and problem.clustering_codes is None:
        raise SpecificationError("W_type or se_type 'clustered' needs a clustering_ids column in product_data.")
    optimization = optimization or Optimization("l-bfgs-b", {"ftol": 0, "gtol": 1e-8})  # PyBLP's default
    iteration = iteration or Iteration()
    space = ParameterSpace.for_problem(
        problem,
        sigma,
        pi,
        rho,
        optimization.supports_bounds,
        sigma_bounds=sigma_bounds,
        pi_bounds=pi_bounds,
        rho_bounds=rho_bounds,
        beta=beta,
        gamma=gamma,
        beta_bounds=beta_bounds,
        gamma_bounds=gamma_bounds,
    )
    _check_identification(problem, space)
    bounds = _costs_bounds(costs_bounds)
    model = DemandModel(problem).fix_nodes(space.sigma0)
    start = _starting_delta(problem, delta)
    system = StackedSystem.build(problem, space)
    W_current = _initial_W(problem, system, W)
    theta = space.theta0
    total_start = time.perf_counter()
    if initial_update:
        objective = GMMObjective(
            problem, model, space, iteration, W_current, start, delta_behavior, EvaluationStats(), bounds
        )
        W_current = _updated_W(problem, system, objective.evaluate(theta, gradient=False), W_type, center_moments)
    steps: list[StepResult] = []
    for step in range(1, (2 if method == "2s" else 1) + 1):
        stats = EvaluationStats()
        objective = GMMObjective(problem, model, space, iteration, W_current, start, delta_behavior, stats, bounds)
        optimized = optimization.minimize(_with_progress(objective, progress, step), theta, space.bounds())
        evaluation = objective.evaluate_or_recall(optimized.x)
        _warn_failures(step, optimized, evaluation)
        steps.append(StepResult(step, W_current, optimized, evaluation, stats))
        theta = optimized.x
        start = torch.where(problem.product_mask, evaluation.delta, 0.0)
        last_step = step == (2 if method == "2s" else 1)
        W_current = _updated_W(problem, system, evaluation, W_type, center_moments, used=not last_step)
    covariances = _covariances(problem, objective, system, steps[-1], se_type, center_moments)
    hessian = _hessian(objective, steps[-1].evaluation.theta) if check_optimality == "both" else None
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
        costs_bounds=bounds,
        hessian=hessian,
    )


def _check_identification(problem: Any, space: ParameterSpace) -> None:
    if problem.K3 and problem.ownership_padded is None:
        raise SpecificationError("A supply side needs firm_ids (or ownership columns) in product_data.")
    if problem.K3:
        endogenous = [problem.design.X1_labels.index(label) for label in problem.design.endogenous]
        missing = [problem.design.X1_labels[k] for k in endogenous if np.isnan(space.beta0[k])]
        if missing:
            raise SpecificationError(
                f"With a supply side, markups depend on the coefficients on {missing}, so they cannot be "
                "concentrated out: give them starting values in beta (NaN for the other elements)."
            )
    moments = problem.MD + problem.MS
    linear = len(space.eliminated_beta) + len(space.eliminated_gamma)
    if moments < linear + space.P:
        raise SpecificationError(
            f"The model is under-identified: {moments} moments (instruments, including exogenous X1 and X3 "
            f"columns) for {linear} linear and {space.P} nonlinear parameters. Add instruments."
        )


def _costs_bounds(costs_bounds: Any) -> tuple[float, float]:
    if costs_bounds is None:
        return (-np.inf, np.inf)
    lower, upper = costs_bounds
    return (-np.inf if lower is None else float(lower), np.inf if upper is None else float(upper))


def _starting_delta(problem: Any, delta: Any) -> Tensor:
    if delta is None:
        return problem.logit_delta.clone()
    values = np.asarray(delta, dtype=np.float64).reshape(-1)
    if values.shape[0] != problem.N or not np.isfinite(values).all():
        raise SpecificationError(f"delta must hold {problem.N} finite starting values, one per product.")
    return torch.as_tensor(problem.layout.pad(values), dtype=problem.dtype, device=problem.device)


def _initial_W(problem: Any, system: StackedSystem, W: Any) -> Tensor:
    M = problem.MD + problem.MS
    if W is None:
        blocks = [invert(Z.T @ Z / problem.N)[0] for Z in system.instruments(problem)]
        return torch.block_diag(*blocks)
    matrix = torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=problem.dtype, device=problem.device)
    if matrix.shape != (M, M):
        raise SpecificationError(f"W must be {M} by {M}; received shape {tuple(matrix.shape)}.")
    return matrix


def _residuals(evaluation: Evaluation) -> list[Tensor]:
    return [evaluation.xi] + ([evaluation.omega] if evaluation.omega is not None else [])


def _updated_W(
    problem: Any, system: StackedSystem, evaluation: Evaluation, W_type: str, center: bool, used: bool = True
) -> Tensor:
    """:math:`W = S^{-1}` (pseudo-inverse if singular; a warning if it will weight a further step)."""
    S = moment_covariances(
        _residuals(evaluation), system.instruments(problem), W_type, problem.clustering_codes, center
    )
    W, singular = invert(S)
    if singular and used:
        warnings.warn(
            "The moment covariance matrix is singular; its pseudo-inverse is the weighting matrix.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return W


def _warn_failures(step: int, optimized: OptimizationResult, evaluation: Evaluation) -> None:
    if not optimized.converged:
        norm = float(np.abs(optimized.gradient).max()) if optimized.gradient.size else 0.0
        advice = "Try other starting values, a different Optimization method or a looser gtol."
        if optimized.message.upper().startswith("ABNORMAL"):
            advice = (
                "The line search could not decrease the objective any further, which usually means that it is flat "
                "to floating-point precision there (PyBLP's L-BFGS-B stops the same way); with a small gradient the "
                "estimates are at the optimum to that precision. " + advice
            )
        warnings.warn(
            f"GMM step {step}: the optimizer stopped without converging ({optimized.message.strip()}) with "
            f"gradient infinity norm {norm:.2e}. {advice}",
            ConvergenceWarning,
            stacklevel=4,
        )
    if not bool(evaluation.converged.all()):
        warnings.warn(
            f"GMM step {step}: the inversion for delta did not converge in {int((~evaluation.converged).sum())} "
            "market(s) at the final parameters; see results.fp_converged.",
            ConvergenceWarning,
            stacklevel=4,
        )


def _covariances(
    problem: Any, objective: GMMObjective, system: StackedSystem, last: StepResult, se_type: str, center: bool
) -> Covariances:
    evaluation = last.evaluation
    G = objective.moments_jacobian(evaluation)
    S = moment_covariances(
        _residuals(evaluation), system.instruments(problem), se_type, problem.clustering_codes, center
    )
    W = last.W
    if se_type == "unadjusted" and last.step == 1:
        W = invert(S)[0]
    return Covariances(parameter_covariances(W, S, G, se_type), S, G)


def _hessian(objective: GMMObjective, theta: np.ndarray) -> np.ndarray:
    """The Hessian of the objective at ``theta``, ``P x P``, by central differences of the analytic gradient.

    Column :math:`p` is :math:`(\\nabla q(\\theta + h_p e_p) - \\nabla q(\\theta - h_p e_p))/2h_p` with
    :math:`h_p = \\epsilon^{1/3}\\max(1, |\\theta_p|)`, and the result is symmetrized. Its evaluations are not
    counted with the optimizer's.
    """
    counted = objective.stats
    objective.stats = EvaluationStats()
    columns = []
    for p in range(theta.size):  # a loop over parameters (after estimation)
        step = np.finfo(np.float64).eps ** (1 / 3) * max(1.0, abs(theta[p]))
        up, down = theta.copy(), theta.copy()
        up[p] += step
        down[p] -= step
        columns.append((objective.evaluate(up).gradient - objective.evaluate(down).gradient) / (2 * step))
    objective.stats = counted
    hessian = np.column_stack(columns) if columns else np.zeros((0, 0))
    return (hessian + hessian.T) / 2


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
