"""GMM estimation of a BLP problem: the one- and two-step procedure, the weighting matrices, the covariance of
the estimates and the optimality checks, around the objective of :mod:`demandkit.blp.objective`.

The first step minimizes :math:`q(\\theta) = N\\bar g(\\theta)'W\\bar g(\\theta)` (the objective and its gradient
are :class:`~demandkit.blp.objective.GMMObjective`'s) from the initial weighting matrix
:math:`W = (Z'Z/N)^{+}`; a second step re-weights with :math:`W = S^{+}`, the Moore-Penrose inverse of the
moments' covariance at the first-step estimates. The covariance of the estimates is
:math:`(G'WG)^{-1}G'WSWG(G'WG)^{-1}/N` with :math:`G` the moments' Jacobian.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..configurations.micro import MicroMoment
from ..configurations.optimization import Optimization, OptimizationResult
from ..configurations.options import CovarianceType, GMMMethod, Optimality, check_choice
from ..distributed import current_shard
from ..exceptions import ConvergenceWarning, SpecificationError
from ..kernels.gmm import invert, parameter_covariances
from ..settings import options as settings
from .contraction import clipped_shares
from .demand import DemandModel
from .extended_moments import ExtendedMoments, with_phi
from .extended_objective import ExtendedGMMObjective, aggregate_covariances, check_distributed, store_phi
from .failures import explain_failures, numerical_failure, where
from .hessian import objective_hessian
from .micro import MicroMoments
from .objective import Evaluation, EvaluationStats, GMMObjective, StackedSystem
from .parameters import ParameterSpace
from .results import ProblemResults
from .simulation_error import simulation_at
from .solve_options import DEFAULT_SHARES_BOUNDS, SolveDeltaBehavior, SolveOptions


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
    """Covariances of :math:`(\\theta, \\beta_c, \\gamma_c)` and what produced them.

    As in PyBLP, elements of :math:`\\theta` fixed by equal bounds are not estimated: ``parameters`` and ``G`` leave
    them out, and ``estimated`` marks, over :math:`(\\theta, \\beta_c, \\gamma_c)`, the elements they hold.
    """

    parameters: Tensor  # of sqrt(N)(estimate - truth)
    S: Tensor
    G: Tensor
    estimated: np.ndarray | None = None  # None: every element
    simulation: Tensor | None = None  # the simulation covariances added to S (resample_agent_data)


@explain_failures
def solve(
    problem: Any,
    sigma: Any = None,
    pi: Any = None,
    rho: Any = None,
    phi: Any = None,
    beta: Any = None,
    gamma: Any = None,
    sigma_bounds: Any = None,
    pi_bounds: Any = None,
    rho_bounds: Any = None,
    phi_bounds: Any = None,
    beta_bounds: Any = None,
    gamma_bounds: Any = None,
    delta: Any = None,
    method: str = "2s",
    initial_update: bool | None = None,
    optimization: Optimization | None = None,
    scale_objective: bool = True,
    check_optimality: str = "both",
    finite_differences: bool = False,
    error_behavior: str = "revert",
    error_punishment: float = 1,
    delta_behavior: str = "first",
    iteration: Iteration | None = None,
    fp_type: str = "safe_linear",
    shares_bounds: Any = DEFAULT_SHARES_BOUNDS,
    costs_bounds: Any = None,
    W: Any = None,
    center_moments: bool = True,
    W_type: str = "robust",
    se_type: str = "robust",
    demand_moment_types: Any = "levels",
    supply_moment_types: Any = "levels",
    covariance_moments_mean: float = 0,
    micro_moments: Sequence[MicroMoment] = (),
    micro_sample_covariances: Any = None,
    resample_agent_data: Callable[[int], Any] | None = None,
    *,
    progress: bool | None = None,
    distributed: bool | None = None,
) -> Any:
    """Estimate the problem by one- or two-step GMM, with PyBLP's arguments (in PyBLP's order) and defaults.

    ``progress`` and ``distributed``, demandkit's own, are keyword-only. ``phi``/``phi_bounds`` (AR(1) unobservables
    along ``lag_indices``), ``demand_moment_types``/``supply_moment_types`` and the covariance moments of
    ``covariance_instruments`` with mean ``covariance_moments_mean`` are PyBLP's (:mod:`.extended_moments`).

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
        With micro moments it is ``(M_D + M_S + M_M)`` square, the micro block last.
    method : {'1s', '2s'}
        One-step or two-step GMM (the second step uses :math:`W = S^{-1}` from the first).
    initial_update : bool, optional
        Update ``W`` (and the starting delta) at the starting values before the first step. By default only with
        micro moments and no ``W``, whose micro block is then :math:`S_M^{-1}` at the starting values (PyBLP's
        default); ``False`` is an error then.
    optimization : Optimization, optional
        Default ``Optimization('l-bfgs-b', {'ftol': 0, 'gtol': 1e-8})``, PyBLP's.
    iteration : Iteration, optional
        Default ``Iteration('squarem', {'atol': 1e-14})``.
    scale_objective, finite_differences, error_behavior, error_punishment, fp_type, shares_bounds
        PyBLP's, with PyBLP's defaults (:class:`~demandkit.blp.solve_options.SolveOptions`): the objective scaled
        by :math:`N` or not; gradients and the moments' Jacobian by central differences instead of autograd; on a
        non-finite objective or gradient or a failed inversion, ``'revert'`` to the last finite values (the
        objective times ``error_punishment``), ``'punish'`` (objective ``error_punishment``, zero gradient) or
        ``'raise'`` (:class:`~demandkit.blp.failures.EstimationError`, also when the optimizer or a final inversion
        fails); the contraction on :math:`\\delta` (``'safe_linear'``, ``'linear'``) or on :math:`e^\\delta`
        (``'safe_nonlinear'``, ``'nonlinear'``), which solve the same fixed point; and ``(lb, ub)`` bounds on
        simulated shares in the linear contraction (``results.clipped_shares`` flags those outside at the end).
    costs_bounds : tuple, optional
        ``(lower, upper)`` bounds on marginal costs; costs outside are clipped and counted (e.g.
        ``(0.001, None)`` with ``costs_type='log'``).
    delta_behavior : {'first', 'last', 'logit'}
        Start each inversion at the delta of the step's first evaluation, of the last one, or at the logit's
        :math:`\\log s_j - \\log s_0` (less :math:`\\rho\\log s_{j|g}` under nesting, at the evaluation's
        :math:`\\rho`).
    W_type, se_type : {'robust', 'clustered', 'unadjusted'}
        How :math:`S` is estimated for the weighting matrix and for standard errors.
    center_moments : bool
        Center the moment contributions when estimating :math:`S`.
    check_optimality : {'both', 'gradient'}
        At the estimates, ``'both'`` (PyBLP's default) also computes the Hessian of the objective, by central
        differences of the analytic gradient (``2P`` evaluations), for the second-order conditions: the
        results' ``hessian``, ``reduced_hessian`` and ``reduced_hessian_eigenvalues``. ``'gradient'`` skips it.
    progress : bool, optional
        Show a progress bar over optimizer evaluations; by default ``demandkit.options.verbose`` (False unless set).
    micro_moments : sequence of MicroMoment, optional
        Micro moments (:mod:`demandkit.configurations.micro`) stacked after the aggregate moments:
        :math:`\bar g_M = f(\bar v) - f(v(\theta))`, with covariance :math:`S_M = F S_P F'` (:mod:`.micro`) in
        the micro block of :math:`S` for the weighting matrix and the standard errors; zero covariance with the
        aggregate moments.
    micro_sample_covariances : array-like, optional
        ``M_M x M_M`` sample covariance of the observed micro statistics :math:`f(\\bar v)` (say, bootstrapped
        from the micro data); :math:`S_M` is :math:`N` times it (PyBLP's scaling).
    resample_agent_data : callable, optional
        ``resample_agent_data(index) -> agent_data or None``: sets of resampled agents (nodes and demographics)
        for ``index = 0, 1, ...`` until None; the covariance of the moments across them (the simulation error,
        :mod:`demandkit.blp.simulation_error`) is added to :math:`S` for the weighting matrix and the standard
        errors.
    distributed : bool, optional
        Shard the markets across the processes of a ``torch.distributed`` group (:mod:`demandkit.blp.sharding`):
        None (default) shards when a group is initialized, True requires one, False never shards. Every rank gets
        the same results.

    Returns
    -------
    ProblemResults

    Raises
    ------
    InvalidDataError
        The estimation broke down numerically (an objective, gradient or moment Jacobian that is not finite, a
        singular matrix) and some columns have an extreme scale (above :data:`EXTREME_SCALE`): the message names
        them and asks for rescaling.
    SpecificationError
        Bad arguments, or such a breakdown with no column of extreme scale (other starting values may help).
    EstimationError
        With ``error_behavior='raise'``, an evaluation with an error or an optimizer that did not converge.
    """
    check_choice("method", method, GMMMethod)
    check_choice("W_type", W_type, CovarianceType)
    check_choice("se_type", se_type, CovarianceType)
    check_choice("delta_behavior", delta_behavior, SolveDeltaBehavior)
    options = SolveOptions(
        scale_objective, finite_differences, error_behavior, error_punishment, fp_type, shares_bounds
    )
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
    space = with_phi(space, problem, phi, phi_bounds, optimization.supports_bounds)
    extended = ExtendedMoments(problem, demand_moment_types, supply_moment_types, covariance_moments_mean)
    extended = extended if extended.active else None
    _check_identification(problem, space, len(micro_moments) + problem.MC)
    bounds = _costs_bounds(costs_bounds)
    model = DemandModel(problem).fix_nodes(space.sigma0)
    start = _starting_delta(problem, delta)
    system = StackedSystem.build(problem, space)
    micro = MicroMoments(problem, micro_moments, micro_sample_covariances) if len(micro_moments) else None
    if micro is not None and W is None:
        if initial_update is False:
            raise SpecificationError(
                "With micro moments and no W, the micro block of the weighting matrix is the inverse of the micro "
                "moments' covariances at the starting values: initial_update cannot be False (give W instead)."
            )
        initial_update = True
    W_current = _initial_W(problem, system, W, micro, extended)
    theta = space.theta0
    total_start = time.perf_counter()
    shard = current_shard(distributed, problem.device)
    if shard is not None and resample_agent_data is not None:
        raise SpecificationError("resample_agent_data is not supported with distributed estimation.")
    if shard is not None and finite_differences:
        raise SpecificationError("finite_differences=True is not supported with distributed estimation.")
    check_distributed(extended, shard, resample_agent_data)

    def objective_for(W_step: Tensor, delta_start: Tensor, stats: EvaluationStats) -> GMMObjective:
        """The step's objective: on this process's markets when sharded (:mod:`.sharding`)."""
        arguments = (space, iteration, W_step, delta_start, delta_behavior, stats, bounds)
        if shard is None and extended is not None:
            return ExtendedGMMObjective(problem, model, *arguments, micro, options, extended=extended)
        if shard is None:
            return GMMObjective(problem, model, *arguments, micro, options)
        from .sharding import ShardedGMMObjective

        return ShardedGMMObjective(problem, model, *arguments, shard=shard, micro=micro, options=options)

    def whole(objective: GMMObjective) -> GMMObjective:
        """An objective on every market, for the weighting matrix and the covariances (itself when unsharded)."""
        if shard is None:
            return objective
        arguments = (space, iteration, objective.W, start, delta_behavior, EvaluationStats(), bounds, micro, options)
        return GMMObjective(problem, model, *arguments)

    if initial_update:
        objective = objective_for(W_current, start, EvaluationStats())
        initial = objective.complete(objective.evaluate(theta, gradient=False))
        options.check_evaluation("The initial update", initial, problem)
        simulation = simulation_at(objective, initial, resample_agent_data)
        W_current = _updated_W(problem, system, initial, W_type, center_moments, True, whole(objective), simulation)
        start = torch.where(problem.product_mask, initial.delta, 0.0)
    steps: list[StepResult] = []
    last_results = None  # the previous step's results (PyBLP's last_results)
    for step in range(1, (2 if method == "2s" else 1) + 1):
        stats = EvaluationStats()
        objective = objective_for(W_current, start, stats)
        shown = settings.verbose if progress is None else bool(progress)
        optimized = optimization.minimize(_with_progress(objective, shown, step), theta, space.bounds())
        evaluation = objective.complete(objective.evaluate_or_recall(optimized.x))
        if not (np.isfinite(evaluation.objective) and np.isfinite(evaluation.gradient).all()):
            raise numerical_failure(
                problem, f"GMM step {step}: the objective or its gradient is not finite{where(problem, evaluation)}"
            )
        options.check_step(step, optimized, evaluation, problem)
        evaluation = options.reported(evaluation)
        steps.append(StepResult(step, W_current, optimized, evaluation, stats))
        theta = optimized.x
        start = torch.where(problem.product_mask, evaluation.delta, 0.0)
        last_step = step == (2 if method == "2s" else 1)
        simulation = simulation_at(objective, evaluation, resample_agent_data)
        W_current = _updated_W(
            problem, system, evaluation, W_type, center_moments, not last_step, whole(objective), simulation
        )
        if not last_step:  # this step's results (without a Hessian), the next one's last_results
            covariances = _covariances(
                problem, whole(objective), system, steps[-1], se_type, center_moments, simulation, objective
            )
            arguments = (W_current, W_type, se_type, method, optimization, iteration, time.perf_counter() - total_start)
            last_results = ProblemResults(problem, space, list(steps), covariances, *arguments, bounds, None, micro)
            store_phi(last_results, space, last_results._standard_error_vector, extended, objective)
    covariances = _covariances(
        problem, whole(objective), system, steps[-1], se_type, center_moments, simulation, objective
    )
    hessian = objective_hessian(objective, steps[-1].evaluation.theta) if check_optimality == "both" else None
    results = ProblemResults(
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
        micro=micro,
        last_results=last_results,
    )
    store_phi(results, space, results._standard_error_vector, extended, objective)
    results.clipped_shares = clipped_shares(problem, model, space, steps[-1].evaluation, options.contraction_bounds)
    return results


def _check_identification(problem: Any, space: ParameterSpace, micro: int = 0) -> None:
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
    moments = problem.MD + problem.MS + micro
    linear = len(space.eliminated_beta) + len(space.eliminated_gamma)
    if moments < linear + space.P:
        raise SpecificationError(
            f"The model is under-identified: {moments} moments (instruments, including exogenous X1 and X3 "
            f"columns, and any micro moments) for {linear} linear and {space.P} nonlinear parameters. Add "
            "instruments or micro moments."
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
    return problem.padded(values)


def _initial_W(
    problem: Any, system: StackedSystem, W: Any, micro: MicroMoments | None = None, extended: Any = None
) -> Tensor:
    M = problem.MD + problem.MS + problem.MC + (micro.M if micro is not None else 0)
    if W is None:
        blocks = [invert(Z.T @ Z / problem.N)[0] for Z in system.instruments(problem)]
        blocks = [extended.initial_W()] if extended is not None else blocks
        if micro is not None:  # replaced by the initial update before it weights anything
            blocks.append(torch.eye(micro.M, dtype=torch.float64, device=problem.device))
        return torch.block_diag(*blocks)
    matrix = torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=torch.float64, device=problem.device)
    if matrix.shape != (M, M):
        raise SpecificationError(f"W must be {M} by {M}; received shape {tuple(matrix.shape)}.")
    return matrix


def _updated_W(
    problem: Any,
    system: StackedSystem,
    evaluation: Evaluation,
    W_type: str,
    center: bool,
    used: bool = True,
    objective: GMMObjective | None = None,
    simulation: Tensor | None = None,
) -> Tensor:
    """:math:`W = S^{-1}` (pseudo-inverse if singular; a warning if it will weight a further step); with micro
    moments block-diagonal, :math:`S_M^{-1}` in the micro block."""
    S = aggregate_covariances(problem, objective, system, evaluation, W_type, center)
    if objective is not None and objective.micro is not None:
        S = torch.block_diag(S, objective.micro_covariances(evaluation))
    if simulation is not None:
        S = S + simulation
    W, singular = invert(S)
    if singular and used:
        warnings.warn(
            "The moment covariance matrix is singular; its pseudo-inverse is the weighting matrix.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return W


def _covariances(
    problem: Any,
    objective: GMMObjective,
    system: StackedSystem,
    last: StepResult,
    se_type: str,
    center: bool,
    simulation: Tensor | None = None,
    jacobian: GMMObjective | None = None,
) -> Covariances:
    """The step's covariances; ``jacobian`` (a sharded step's own objective, by default ``objective``) takes the
    moments' Jacobian, so that each process differentiates only its markets."""
    evaluation = last.evaluation
    G = (jacobian or objective).moments_jacobian(evaluation)
    # PyBLP removes elements fixed by equal bounds from theta; a bounded optimizer holds them there (an unbounded
    # one lets them move, so they are estimated and keep their column)
    space = objective.space
    fixed = (space.lower == space.upper) & (evaluation.theta == space.lower)
    estimated = np.concatenate([~fixed, np.ones(G.shape[1] - fixed.size, dtype=bool)])
    G = G[:, torch.as_tensor(np.flatnonzero(estimated), device=G.device)]
    S = aggregate_covariances(problem, objective, system, evaluation, se_type, center)
    if objective.micro is not None:
        S = torch.block_diag(S, objective.micro_covariances(evaluation))
    if simulation is not None:
        S = S + simulation
    if not (bool(torch.isfinite(G).all()) and bool(torch.isfinite(S).all())):
        raise numerical_failure(
            problem, f"The moments' Jacobian or covariance is not finite{where(problem, evaluation)}"
        )
    W = last.W
    if se_type == "unadjusted" and last.step == 1:
        W = invert(S)[0]
    return Covariances(parameter_covariances(W, S, G, se_type), S, G, estimated, simulation)


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
