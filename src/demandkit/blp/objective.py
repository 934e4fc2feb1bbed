"""The GMM objective of a BLP problem at :math:`\\theta`: its value, its autograd gradient, and what it computed.

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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..kernels.absorption import Absorb
from ..kernels.gmm import LinearIV
from ..kernels.shares import LogitProbabilities
from .buckets import BucketedMarkets, build_buckets
from .demand import DemandModel
from .economy import GMM_DTYPE
from .finite_differences import central_differences
from .micro import MicroMoments
from .parameters import ParameterSpace
from .solve_options import SolveOptions
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
    micro_values: np.ndarray | None = None  # [M_M] f_m(v) of the micro moments
    micro_parts: Tensor | None = None  # [P] the micro parts v_p
    fp_failures: int = 0  # markets whose inversion did not converge, over every process


class Structural(NamedTuple):
    """What :meth:`GMMObjective.structural` computes at :math:`\\theta` (differentiable where it says so)."""

    y: Tensor  # stacked left-hand sides, differentiable
    inversion: Any
    delta_rows: Tensor
    costs: Tensor | None
    clipped: int
    micro: Tensor | None  # [M_M] f_m(v(theta)), differentiable (first-order surrogate)
    micro_values: np.ndarray | None
    micro_parts: Tensor | None


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
    """The objective :math:`q(\\theta)` at a fixed weighting matrix, with the inversion's warm start.

    With micro moments the moments are :math:`\\bar g = (\\bar g_D, \\bar g_S, f(\\bar v) - f(v(\\theta)))` and ``W``
    covers all of them; the concentrated linear parameters use its upper-left (aggregate) block, as micro moments
    do not depend on them.
    """

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
        micro: MicroMoments | None = None,
        options: SolveOptions | None = None,
    ) -> None:
        self.options = options or SolveOptions()
        model = model.with_contraction(self.options.fp_type, self.options.contraction_bounds)
        self.problem, self.model, self.space, self.iteration = problem, model, space, iteration
        self.supply = SupplyModel(problem, model) if problem.K3 else None
        self.observed_shares = torch.where(problem.product_mask, torch.exp(problem.log_market_shares), 0.0)
        self.system = StackedSystem.build(problem, space)
        self.micro = micro
        buckets = build_buckets(problem)
        self.bucketed = None if buckets is None else BucketedMarkets(buckets, model, self.supply, self.observed_shares)
        self.reduce: Any = None  # sums over processes (a sharded objective's); None: this process has every market
        self.W = W
        self.iv = self._linear_iv(W)
        self.start = delta_start
        self.delta_behavior = delta_behavior
        self.stats = stats
        self.costs_bounds = costs_bounds
        self._first = True
        self.last: Evaluation | None = None
        self.recent: OrderedDict[bytes, Evaluation] = OrderedDict()  # the latest evaluations with gradients

    def _linear_iv(self, W: Tensor) -> LinearIV:
        """The concentrated linear parameters' operator, from the aggregate block of ``W``."""
        aggregate = self.system.Z.shape[1]
        return LinearIV.build(self.system.X, self.system.Z, W[:aggregate, :aggregate])

    def complete(self, evaluation: Evaluation) -> Evaluation:
        """The evaluation on the whole problem (a sharded objective gathers its ranks'); here, itself."""
        return evaluation

    def _absorb(self, rows: Tensor, codes: list, counts: list) -> Tensor:
        return Absorb.apply(rows, codes, counts) if codes else rows

    def probabilities(self, delta: Tensor, sigma: Tensor, pi: Tensor, rho: Tensor, mu: Tensor | None = None) -> Tensor:
        """Choice probabilities ``[T, I, 1 + J]`` (outside option first) at ``delta``, differentiable."""
        if mu is None and self.problem.K2:
            mu = self.model.mu(sigma, pi)
        if self.model.nesting is None:  # the logit's kernel: one pass and a closed-form backward
            return self.micro.choice_probabilities(LogitProbabilities.apply(delta, mu, self.problem.product_mask))
        inside = torch.exp(self.model.probabilities(delta, mu, rho).log_probabilities)
        return self.micro.choice_probabilities(torch.where(self.problem.product_mask.unsqueeze(-1), inside, 0.0))

    def _micro(self, inversion: Any, sigma: Tensor, pi: Tensor, rho: Tensor) -> tuple:
        if self.micro is None:
            return None, None, None
        probabilities = self.probabilities(inversion.delta, sigma, pi, rho, inversion.mu)
        parts = self.micro.part_values(probabilities, self.model.weights, rho, self.reduce)
        f, values, _ = self.micro.surrogate(parts)
        return f.to(GMM_DTYPE), values, parts.detach()

    def micro_covariances(self, evaluation: Evaluation) -> Tensor:
        """:math:`S_M` at an evaluation (or the given sample covariances)."""
        assert self.micro is not None
        with torch.no_grad():
            theta = torch.as_tensor(evaluation.theta, dtype=self.problem.dtype, device=self.problem.device)
            sigma, pi, rho = self.space.unpack(theta)
            probabilities = self.probabilities(evaluation.delta, sigma, pi, rho)
            return self.micro.covariances(probabilities, self.model.weights, rho).to(GMM_DTYPE)

    def structural(self, theta: Tensor) -> Structural:
        """Left-hand sides of the stacked system at ``theta``, and the micro statistics."""
        p = self.problem
        # theta and the GMM algebra in float64; the per-market work in the problem's dtype (GMM_DTYPE)
        sigma, pi, rho = (x.to(p.dtype) for x in self.space.unpack(theta))
        beta, gamma = self.space.unpack_linear(theta)
        inversion, markups = self._per_market(sigma, pi, rho, beta.to(p.dtype))
        delta_rows = inversion.delta[p.rows_market, p.rows_slot].to(GMM_DTYPE)
        delta_rows = self._absorb(delta_rows, p.absorb_codes, p.absorb_counts)
        y = delta_rows - p.X1_tensor @ beta
        micro = self._micro(inversion, sigma, pi, rho)
        if self.supply is None:
            return Structural(y, inversion, delta_rows, None, 0, *micro)
        costs = (p.prices_padded - markups)[p.rows_market, p.rows_slot].to(GMM_DTYPE)
        lower, upper = self.costs_bounds
        clipped = int(((costs < lower) | (costs > upper)).sum())
        bounded = costs.clamp(min=lower, max=upper) if clipped else costs
        transformed = torch.log(bounded) if p.costs_type == "log" else bounded
        transformed = self._absorb(transformed, p.supply_absorb_codes, p.supply_absorb_counts)
        y_supply = transformed - p.X3_tensor @ gamma
        return Structural(torch.cat([y, y_supply]), inversion, delta_rows, costs, clipped, *micro)

    def _per_market(self, sigma: Tensor, pi: Tensor, rho: Tensor, beta: Tensor) -> tuple[Any, Tensor | None]:
        """The inversion from the warm start and, with a supply side, the markups at the observed shares: one batch
        of all markets, or one per bucket of similar size (:mod:`.buckets`)."""
        method, options = self.iteration.method, self.iteration.options
        if self.bucketed is not None:
            return self.bucketed.solve(sigma, pi, rho, beta, self.start, method, options)
        inversion = self.model.invert(sigma, pi, rho, self.start, method, options)
        if self.supply is None:
            return inversion, None
        markups = self.supply.markups(
            inversion.delta, sigma, pi, rho, beta, shares=self.observed_shares, inversion=inversion
        )
        return inversion, markups

    def moments(self, residuals: Tensor, micro: Tensor | None) -> Tensor:
        """:math:`\\bar g`: the aggregate moments :math:`Z'u/N`, then the micro moments :math:`f(\\bar v) - f(v)`."""
        aggregate = self.system.Z.T @ residuals / self.problem.N
        if micro is None:
            return aggregate
        return torch.cat([aggregate, self.micro.observed - micro])

    def value(self, residuals: Tensor, micro: Tensor | None) -> Tensor:
        """:math:`q = N\\bar g'W\\bar g`."""
        if micro is None:
            return self.iv.objective(residuals, self.problem.N)
        g = self.moments(residuals, micro)
        return self.problem.N * g @ self.W @ g

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
        # a writable copy: scipy hands a read-only array when every bound is an equality, which torch warns about
        theta_values = self._agreed(np.array(theta_values, dtype=np.float64))
        theta = torch.as_tensor(theta_values.copy(), dtype=GMM_DTYPE, device=p.device)
        differenced = self.options.finite_differences
        theta.requires_grad_(gradient and theta.numel() > 0 and not differenced)
        if self.delta_behavior == "logit":
            self.start = self._logit_start(theta_values)
        structural = self.structural(theta)
        eliminated, residuals, objective = self._objective(structural.y, structural.micro)
        objective = objective if self.options.scale_objective else objective / p.N
        if theta.requires_grad:
            try:
                (grad,) = torch.autograd.grad(objective, theta)
            except torch.linalg.LinAlgError:  # a singular share Jacobian: a gradient that is not finite (PyBLP's)
                grad = torch.full_like(theta, torch.nan)
            grad = self._total(grad)
        elif gradient and theta.numel() > 0 and differenced:
            grad = self._total(self._differenced_gradient(theta_values, structural))
        else:
            grad = torch.zeros_like(theta)
        result = structural.inversion.result
        self.stats.evaluations += 1
        self.stats.fp_iterations += int(self._total(result.iterations.sum().double()))
        self.stats.contraction_evaluations += int(self._total(result.evaluations.sum().double()))
        failed = ~result.converged
        failures = int(self._total(failed.sum().double()))
        if failures > 0:
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
            theta_values,
            float(objective.detach()),
            grad.detach().cpu().numpy().astype(np.float64),
            structural.inversion.delta.detach(),
            structural.delta_rows.detach(),
            beta,
            gamma,
            parts[0],
            parts[1] if len(parts) > 1 else None,
            None if structural.costs is None else structural.costs.detach(),
            structural.clipped,
            result.converged,
            result.iterations,
            result.evaluations,
            structural.micro_values,
            structural.micro_parts,
            failures,
        )

    def _logit_start(self, theta_values: np.ndarray) -> Tensor:
        """The logit's (nested logit's at :math:`\\rho`) mean utilities, ``delta_behavior='logit'``'s start."""
        theta = torch.as_tensor(theta_values, dtype=GMM_DTYPE, device=self.problem.device)
        rho = self.space.unpack(theta)[2].to(self.problem.dtype)
        return torch.where(self.problem.product_mask, self.model.closed_form_delta(rho), 0.0)

    def _stacked(self, theta_values: np.ndarray) -> Tensor:
        """The left-hand sides :math:`y` and the micro statistics at ``theta_values``, stacked, without autograd."""
        if self.delta_behavior == "logit":
            self.start = self._logit_start(theta_values)
        with torch.no_grad():
            theta = torch.as_tensor(theta_values, dtype=GMM_DTYPE, device=self.problem.device)
            structural = self.structural(theta)
        micro = [] if structural.micro is None else [structural.micro.to(GMM_DTYPE)]
        return torch.cat([structural.y, *micro]).detach()

    def _differenced_gradient(self, theta_values: np.ndarray, structural: Structural) -> Tensor:
        """:math:`\\nabla q` from central differences of :meth:`_stacked` (PyBLP's ``finite_differences``), chained
        with the exact derivative of :math:`q` in :math:`y` and the micro statistics (this process's part)."""
        jacobian = central_differences(self._stacked, theta_values)
        leaves = [structural.y.detach().requires_grad_(True)]
        if structural.micro is not None:
            leaves.append(structural.micro.detach().requires_grad_(True))
        objective = self._objective(leaves[0], leaves[1] if len(leaves) > 1 else None)[2]
        objective = objective if self.options.scale_objective else objective / self.problem.N
        gradients = torch.autograd.grad(objective, leaves)
        return jacobian.T @ torch.cat([g.to(GMM_DTYPE) for g in gradients])

    def _agreed(self, theta_values: np.ndarray) -> np.ndarray:
        """The parameters every process evaluates (a sharded objective's rank 0's); here, as given."""
        return theta_values

    def _total(self, value: Tensor) -> Tensor:
        """``value`` summed over the processes that share the evaluation; here, as given."""
        return value

    def _objective(self, y: Tensor, micro: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The concentrated linear parameters, the residuals and :math:`q` from the left-hand sides."""
        eliminated, residuals = self.iv.residuals(y)
        return eliminated, residuals, self.value(residuals, micro)

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
        """Value and gradient for the optimizer. An objective or gradient that is not finite, or an inversion that
        failed, is handled by ``error_behavior`` (:class:`~demandkit.blp.solve_options.SolveOptions`): by default
        non-finite values revert to the last finite evaluation's."""
        evaluation = self.evaluate_or_recall(theta_values)
        finite = bool(np.isfinite(evaluation.objective) and np.isfinite(evaluation.gradient).all())
        last = self.last
        if finite:
            self.last = evaluation
            if not evaluation.fp_failures:
                return evaluation.objective, evaluation.gradient
        self.stats.reverted += 1
        previous = None if last is None else (last.objective, last.gradient)
        return self.options.after_error(evaluation, previous, self.problem)

    def moments_jacobian(self, evaluation: Evaluation) -> Tensor:
        """:math:`\\bar G = \\partial \\bar g/\\partial(\\theta, \\beta_c, \\gamma_c)`, ``[M, P + K_c]``.

        The block for :math:`\\theta` comes from one reverse-mode pass per moment (no ``N x P`` or
        ``J x J x P`` array is formed); the concentrated block is :math:`-Z'X/N`.
        """
        p = self.problem
        N = p.N
        Z, X = self.system.Z, self.system.X
        concentrated = -Z.T @ X / N
        if self.micro is not None:  # micro moments do not depend on the linear parameters
            concentrated = torch.cat([concentrated, concentrated.new_zeros((self.micro.M, X.shape[1]))])
        P = evaluation.theta.size
        if P == 0:
            return concentrated
        self.start = torch.where(p.product_mask, evaluation.delta, 0.0)
        if self.options.finite_differences:  # PyBLP's: the Jacobian of y and the micro statistics by differences
            jacobian = central_differences(self._stacked, evaluation.theta)
            block = Z.T @ jacobian[: Z.shape[0]] / N
            if self.micro is not None:
                block = torch.cat([block, -jacobian[Z.shape[0] :]])
            return torch.cat([block, concentrated], dim=1)
        theta = torch.as_tensor(evaluation.theta, dtype=GMM_DTYPE, device=p.device).clone().requires_grad_(True)
        structural = self.structural(theta)
        moments = self.moments(structural.y, structural.micro)
        rows = [
            torch.autograd.grad(moments[m], theta, retain_graph=m + 1 < moments.shape[0])[0]
            for m in range(moments.shape[0])  # a loop over moments (post-estimation only)
        ]
        return torch.cat([torch.stack(rows), concentrated], dim=1)
