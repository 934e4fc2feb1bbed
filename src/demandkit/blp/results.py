"""``ProblemResults``: estimates, standard errors, diagnostics, a printed summary and round trips.

Attributes keep PyBLP's names and shapes (``sigma`` is ``K2 x K2``, ``beta`` is ``K1 x 1``, ``delta``
and ``xi`` are ``N x 1``, ...). Post-estimation comes from
:class:`~demandkit.blp.postestimation.DemandPostEstimation`, specification tests from
:class:`~demandkit.blp.inference.SpecificationTests`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..persistence import Persistent
from .bootstrap import BootstrappedResults, bootstrap
from .counterfactuals import SupplyPostEstimation
from .demand import DemandModel
from .diagnostics import first_stage
from .importance_sampling import ImportanceSamplingResults, importance_sampling
from .inference import SpecificationTests, mean_moments
from .micro_results import compute_micro_values
from .micro_scores import build_optimal_micro_moments, compute_agent_scores, compute_micro_scores, simulate_micro_data
from .optimal_instruments import OptimalInstrumentResults, compute_optimal_instruments
from .postestimation import DemandPostEstimation
from .progress import clipped_costs, market_counts, parameter_labels, project_gradient, tilde_costs
from .results_attributes import ResultsAttributes
from .summary import format_results

RESULTS_ATTRIBUTES = tuple(
    # PyBLP's default attributes that demandkit has, in PyBLP's order, then demandkit's additions
    (
        "step optimization_time cumulative_optimization_time total_time cumulative_total_time converged "
        "cumulative_converged optimization_iterations cumulative_optimization_iterations "
        "objective_evaluations cumulative_objective_evaluations fp_converged cumulative_fp_converged "
        "fp_iterations cumulative_fp_iterations contraction_evaluations cumulative_contraction_evaluations "
        "parameters parameter_covariances parameter_sensitivity theta sigma sigma_squared pi rho beta gamma "
        "sigma_se sigma_squared_se pi_se rho_se beta_se gamma_se sigma_bounds pi_bounds rho_bounds beta_bounds "
        "gamma_bounds sigma_labels pi_labels rho_labels beta_labels gamma_labels theta_labels delta tilde_costs "
        "clipped_shares clipped_costs xi omega xi_fe omega_fe micro micro_values micro_covariances moments "
        "moments_jacobian moments_covariances simulation_covariances objective xi_by_theta_jacobian "
        "omega_by_theta_jacobian micro_by_theta_jacobian gradient projected_gradient projected_gradient_norm hessian "
        "reduced_hessian reduced_hessian_eigenvalues W updated_W "
        "method W_type se_type costs_bounds repeated_objective_evaluations "
        "cumulative_repeated_objective_evaluations total_fp_iterations total_contraction_evaluations "
        "cumulative_total_fp_iterations cumulative_total_contraction_evaluations first_stage micro_moments "
    ).split()
)
"""What :meth:`ProblemResults.to_dict` (and so ``to_json``) writes by default."""


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


class ProblemResults(ResultsAttributes, DemandPostEstimation, SupplyPostEstimation, SpecificationTests, Persistent):
    """Results of :meth:`Problem.solve`.

    Attributes
    ----------
    sigma, pi, rho, beta : ndarray
        Estimates (:math:`\\Sigma` lower triangular ``K2 x K2``, :math:`\\Pi` ``K2 x D``, :math:`\\rho`
        ``H x 1``, :math:`\\beta` ``K1 x 1``), with standard errors ``sigma_se``, ``pi_se``, ``rho_se``,
        ``beta_se`` (NaN for elements fixed at zero, as in PyBLP).
    objective : float
        :math:`N \\bar g' W \\bar g` at the estimates.
    gradient : ndarray
        ``P x 1`` gradient of the objective with respect to :math:`\\theta`.
    delta, xi : ndarray
        ``N x 1`` mean utilities (fixed effects included, so that they reproduce the shares) and
        structural errors.
    W, updated_W : ndarray
        The weighting matrix of the last step and the one a further step would use.
    converged, cumulative_converged : bool
        Whether the optimizer of the last GMM step reported convergence, and whether every step's did.
    fp_converged, fp_iterations, contraction_evaluations : ndarray
        ``T x 1`` per market (in the order of the problem's markets) at the evaluation of the estimates: whether
        the inversion for :math:`\\delta` converged, its iterations and its evaluations of the contraction. PyBLP
        has a column per objective evaluation; demandkit keeps the counts of the evaluation at the estimates.
        ``cumulative_fp_converged``, ``cumulative_fp_iterations`` and ``cumulative_contraction_evaluations`` stack
        the columns of every step (``T x step``).
    total_fp_iterations, total_contraction_evaluations : int
        Sums over every objective evaluation and market of the last step; ``cumulative_total_fp_iterations`` and
        ``cumulative_total_contraction_evaluations`` over every step.
    parameters : ndarray
        The stacked estimated parameters: :math:`\\hat\\theta`, then the concentrated-out elements of
        :math:`\\hat\\beta` and of :math:`\\hat\\gamma` (the rows and columns of ``parameter_covariances``).
    theta_labels, rho_labels : list of str
        PyBLP's labels: ``'row x column'`` for :math:`\\Sigma` (labels of :math:`X_2`), ``'X2 x demographic'`` for
        :math:`\\Pi`, the nesting group for :math:`\\rho` and the column of :math:`X_1` or :math:`X_3` for elements
        of :math:`\\beta` or :math:`\\gamma` in :math:`\\theta`.
    clipped_shares, clipped_costs : ndarray
        ``N x 1`` booleans: simulated shares clipped (always False: shares are computed in logs and never clipped)
        and marginal costs clipped to ``costs_bounds`` (all False without a supply side).
    omega, tilde_costs : ndarray
        Supply-side structural errors and transformed marginal costs, ``N x 1`` (``N x 0`` without a supply side).
    projected_gradient, projected_gradient_norm : ndarray
        The gradient with components pushing against an active bound zeroed, and its infinity norm (also
        ``gradient_norm``, as a float).
    optimization_time, cumulative_optimization_time : float
        Seconds the optimizer of the last step took, and of every step. ``total_time`` and
        ``cumulative_total_time`` are the seconds the whole estimation took.
    parameter_covariances : ndarray
        Covariance of :math:`\\sqrt{N}(\\hat\\theta, \\hat\\beta)` (PyBLP's scaling); as in PyBLP, elements of
        :math:`\\theta` fixed by equal bounds are left out (their standard errors are NaN).
    moments, moments_jacobian, moments_covariances : ndarray
        Averaged moments :math:`\\bar g` (``M x 1``), their Jacobian with respect to the estimated parameters and
        their covariance :math:`S`, for the specification tests (``run_hansen_test``, ``run_wald_test``, ...).
    first_stage : DataFrame
        First-stage F statistics and partial R-squared of the endogenous X1 columns.
    hessian, reduced_hessian : ndarray
        ``P x P`` Hessian of the objective at the estimates (``check_optimality='both'``; NaN otherwise), and the
        same with the rows and columns of parameters at a bound zeroed; ``reduced_hessian_eigenvalues`` (``P``)
        should be positive at a minimum.
    objective_evaluations, cumulative_objective_evaluations : int
        Evaluations the optimizer asked for in the last step and in all steps (PyBLP's counts); of these,
        ``repeated_objective_evaluations`` and ``cumulative_repeated_objective_evaluations`` were at a
        :math:`\\theta` evaluated just before (a failed line search returns to its base point) and were answered
        from memory instead of computed again.
    parameter_sensitivity, sigma_squared_se, xi_fe, omega_fe, micro_covariances, simulation_covariances : ndarray
        The estimates' sensitivity to the moments, delta-method standard errors of :math:`\\Sigma\\Sigma'`, the
        absorbed fixed effects and the micro and simulation blocks of :math:`S` (PyBLP's; see
        :mod:`demandkit.blp.results_attributes` for these and the following).
    sigma_bounds, pi_bounds, rho_bounds, beta_bounds, gamma_bounds : tuple
        ``(lower, upper)`` matrices of the bounds the optimizer used.
    xi_by_theta_jacobian, omega_by_theta_jacobian, micro_by_theta_jacobian : ndarray
        Jacobians of :math:`\\xi`, :math:`\\omega` (``N x P``) and the micro moments (``M_M x P``) by :math:`\\theta`.
    last_results : ProblemResults or None
        The results of the previous GMM step.
    """

    def __init__(
        self,
        problem: Any,
        space: Any,
        steps: list,
        covariances: Any,
        updated_W: torch.Tensor,
        W_type: str,
        se_type: str,
        method: str,
        optimization: Any,
        iteration: Any,
        seconds: float,
        costs_bounds: tuple[float, float] = (-np.inf, np.inf),
        hessian: np.ndarray | None = None,
        micro: Any = None,
        last_results: ProblemResults | None = None,
    ) -> None:
        self.problem = problem
        self._micro = micro
        self.model = DemandModel(problem).fix_nodes(space.sigma0)
        self._space = space
        self._steps = steps
        last = steps[-1]
        evaluation = last.evaluation
        theta = evaluation.theta
        sigma, pi, rho = (_numpy(m) for m in space.unpack(torch.as_tensor(theta, dtype=torch.float64)))
        self.theta = theta.copy()
        self.rho_labels, self.theta_labels = parameter_labels(problem, space)
        self.sigma, self.pi = sigma, pi
        self.rho = rho.reshape(-1, 1)
        self.sigma_squared = sigma @ sigma.T
        self.beta = _numpy(evaluation.beta).reshape(-1, 1)
        self.gamma = _numpy(evaluation.gamma).reshape(-1, 1)
        self.gamma_labels = list(problem.X3_labels)
        self.costs_bounds = costs_bounds
        self.beta_labels = list(problem.design.X1_labels)
        self.sigma_labels = list(problem.design.X2_labels)
        self.pi_labels = list(problem.design.demographics_labels)
        self.objective = float(evaluation.objective)
        self.gradient = evaluation.gradient.reshape(-1, 1)
        self.projected_gradient = project_gradient(evaluation.gradient, theta, space).reshape(-1, 1)
        self.gradient_norm = float(np.max(np.abs(self.projected_gradient))) if theta.size else 0.0
        self.projected_gradient_norm = np.float64(self.gradient_norm)
        self.hessian = np.full((theta.size, theta.size), np.nan) if hessian is None else hessian
        self.reduced_hessian = _reduce(self.hessian, theta, space)
        self.reduced_hessian_eigenvalues = (
            np.linalg.eigvalsh(self.reduced_hessian)
            if hessian is not None and theta.size
            else np.full(theta.size, np.nan)
        )
        self._delta_padded = evaluation.delta
        self.delta = _numpy(problem.layout.unpad(evaluation.delta)).reshape(-1, 1)  # before absorption
        self.xi = _numpy(evaluation.xi).reshape(-1, 1)
        self.W = _numpy(last.W)
        self.updated_W = _numpy(updated_W)
        self.step = len(steps)
        self.method, self.W_type, self.se_type = method, W_type, se_type
        self.optimization, self.iteration = optimization, iteration
        self.converged = bool(last.optimization.converged)
        self.cumulative_converged = all(s.optimization.converged for s in steps)
        self.optimization_time = last.optimization.seconds
        self.cumulative_optimization_time = sum(s.optimization.seconds for s in steps)
        self.total_time = self.cumulative_total_time = seconds
        # counts of the last step, and cumulative_* over every step (PyBLP's convention)
        self.optimization_iterations = last.optimization.iterations
        # objective evaluations as the optimizer asked for them; the repeated ones were answered from memory
        self.objective_evaluations = last.stats.evaluations + last.stats.repeated
        self.repeated_objective_evaluations = last.stats.repeated
        self.cumulative_optimization_iterations = sum(s.optimization.iterations for s in steps)
        self.cumulative_objective_evaluations = sum(s.stats.evaluations + s.stats.repeated for s in steps)
        self.cumulative_repeated_objective_evaluations = sum(s.stats.repeated for s in steps)
        # per market at each step's final evaluation (T x 1, and T x step over the steps)
        by_step = [
            [market_counts(s.evaluation.converged, bool) for s in steps],
            [market_counts(s.evaluation.iterations) for s in steps],
            [market_counts(s.evaluation.evaluations) for s in steps],
        ]
        self.cumulative_fp_converged, self.cumulative_fp_iterations, self.cumulative_contraction_evaluations = (
            np.column_stack(columns) for columns in by_step
        )
        self.fp_converged = self.cumulative_fp_converged[:, -1:].copy()
        self.fp_iterations = self.cumulative_fp_iterations[:, -1:].copy()
        self.contraction_evaluations = self.cumulative_contraction_evaluations[:, -1:].copy()
        self.total_fp_iterations = last.stats.fp_iterations
        self.total_contraction_evaluations = last.stats.contraction_evaluations
        self.cumulative_total_fp_iterations = sum(s.stats.fp_iterations for s in steps)
        self.cumulative_total_contraction_evaluations = sum(s.stats.contraction_evaluations for s in steps)
        self.fp_failures = sum(s.stats.fp_failures for s in steps)
        self.clipped_shares = np.zeros((problem.N, 1), dtype=bool)
        self.trace = [list(s.optimization.trace) for s in steps]
        self.parameter_covariances = _numpy(covariances.parameters)
        self.moments_covariances = _numpy(covariances.S)
        self.moments_jacobian = _numpy(covariances.G)
        se = np.full(space.P + len(space.eliminated_beta) + len(space.eliminated_gamma), np.nan)
        estimated = slice(None) if covariances.estimated is None else covariances.estimated
        se[estimated] = np.sqrt(np.clip(np.diag(self.parameter_covariances), 0, None) / problem.N)
        self._standard_error_vector = se  # over (theta, concentrated beta, concentrated gamma); NaN if not estimated
        self.sigma_se, self.pi_se, self.rho_se, self.beta_se, self.gamma_se = _standard_errors(space, se)
        self.omega = np.zeros((problem.N, 0)) if evaluation.omega is None else _numpy(evaluation.omega).reshape(-1, 1)
        self.tilde_costs = tilde_costs(problem, evaluation, costs_bounds)
        self.clipped_costs = clipped_costs(problem, evaluation, costs_bounds)
        self.moments = mean_moments(problem, self.xi, self.omega)
        self.micro_values = np.zeros((0, 1))
        self.micro = np.zeros((0, 1))
        self.micro_moments: list[dict[str, Any]] = []  # name, value and parts of each micro moment (picklable)
        if micro is not None:
            self.micro_moments = [_describe_micro(moment) for moment in micro.moments]
            self.micro_values = np.asarray(evaluation.micro_values, dtype=np.float64).reshape(-1, 1)
            self.micro = _numpy(micro.observed).reshape(-1, 1) - self.micro_values
            self.moments = np.vstack([self.moments, self.micro])
        self.parameters = np.concatenate(
            [theta, self.beta[space.eliminated_beta, 0], self.gamma[space.eliminated_gamma, 0]]
        )[estimated].reshape(-1, 1)
        self.first_stage = first_stage(problem)
        self._store_pyblp_attributes(covariances, last_results)

    def compute_micro_values(self, micro_moments: Any) -> np.ndarray:
        """Micro moment values :math:`f_m(v)` at the estimates, ``M_M`` (the moments' ``value`` is ignored).

        See :func:`demandkit.blp.micro_results.compute_micro_values`.
        """
        return compute_micro_values(self, micro_moments)

    def simulate_micro_data(self, dataset: Any, seed: Any = None) -> pd.DataFrame:
        """Observations of a micro dataset drawn at the estimates (PyBLP's method; a DataFrame with its fields).

        See :func:`demandkit.blp.micro_scores.simulate_micro_data`.
        """
        return simulate_micro_data(self, dataset, seed)

    def compute_micro_scores(self, dataset: Any, micro_data: Any, integration: Any = None) -> list[np.ndarray]:
        """Scores :math:`\\partial \\log P_n/\\partial\\theta` of micro observations, one array per parameter.

        See :func:`demandkit.blp.micro_scores.compute_micro_scores`.
        """
        return compute_micro_scores(self, dataset, micro_data, integration)

    def compute_agent_scores(self, dataset: Any, micro_data: Any = None, integration: Any = None) -> list[dict]:
        """Scores of every agent-choice, by market (for optimal micro moments' values).

        See :func:`demandkit.blp.micro_scores.compute_agent_scores`.
        """
        return compute_agent_scores(self, dataset, micro_data, integration)

    def build_optimal_micro_moments(
        self, dataset: Any, micro_data: Any, integration: Any = None, **options: Any
    ) -> list:
        """Optimal micro moments (Conlon and Gortmaker 2025): the mean micro scores matched by the model's.

        See :func:`demandkit.blp.micro_scores.build_optimal_micro_moments`.
        """
        return build_optimal_micro_moments(self, dataset, micro_data, integration, **options)

    def bootstrap(
        self, draws: int = 1000, seed: int | None = None, iteration: Any = None, constant_costs: bool = True
    ) -> BootstrappedResults:
        """Parametric bootstrap: PyBLP's parameter draws, batched over draws.

        See :func:`demandkit.blp.bootstrap.bootstrap`.
        """
        return bootstrap(self, draws, seed, iteration, constant_costs)

    def importance_sampling(
        self,
        draws: int,
        ar_constant: float = 1.0,
        seed: int | None = None,
        agent_data: Any = None,
        integration: Any = None,
        delta: Any = None,
    ) -> ImportanceSamplingResults:
        """Agents drawn by importance sampling at the estimates (Berry, Levinsohn and Pakes 1995).

        See :func:`demandkit.blp.importance_sampling.importance_sampling`.
        """
        return importance_sampling(self, draws, ar_constant, seed, agent_data, integration, delta)

    def compute_optimal_instruments(self, *args: Any, **kwargs: Any) -> OptimalInstrumentResults:
        """Chamberlain (1987) optimal instruments.

        See :func:`demandkit.blp.optimal_instruments.compute_optimal_instruments` for the arguments.
        """
        return compute_optimal_instruments(self, *args, **kwargs)

    # --------------------------------------------------------------- tables
    def to_frame(self) -> pd.DataFrame:
        """One row per estimated parameter: name, estimate, standard error."""
        rows = []
        for label, value, se in zip(self.beta_labels, self.beta[:, 0], self.beta_se[:, 0], strict=True):
            rows.append(("beta", label, value, se))
        for r, c in zip(*self._space.sigma_index, strict=True):
            rows.append(
                ("sigma", f"{self.sigma_labels[r]} x {self.sigma_labels[c]}", self.sigma[r, c], self.sigma_se[r, c])
            )
        for r, c in zip(*self._space.pi_index, strict=True):
            rows.append(("pi", f"{self.sigma_labels[r]} x {self.pi_labels[c]}", self.pi[r, c], self.pi_se[r, c]))
        for k in self._space.rho_index:
            rows.append(("rho", f"rho[{k}]", self.rho[k, 0], self.rho_se[k, 0]))
        for label, value, se in zip(self.gamma_labels, self.gamma[:, 0], self.gamma_se[:, 0], strict=True):
            rows.append(("gamma", label, value, se))
        return pd.DataFrame(rows, columns=["parameter", "name", "estimate", "se"])

    def __str__(self) -> str:
        return format_results(self)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the micro moments' engine, whose callbacks (often lambdas) pickle cannot carry."""
        state = dict(self.__dict__)
        state["_micro"] = None
        return state

    def __repr__(self) -> str:
        return f"<ProblemResults objective={self.objective:.6g} step={self.step} converged={self.converged}>"

    # ------------------------------------------------------------ round trips
    def to_dict(self, attributes: Sequence[str] = RESULTS_ATTRIBUTES) -> dict[str, Any]:
        """A dictionary from the names of ``attributes`` to their values, as plain JSON-ready Python (PyBLP's method).

        Arrays become lists (a column vector a flat list, a matrix nested lists), tables lists of records and NaN
        None. By default, PyBLP's default attributes that demandkit has and the estimation's settings, first-stage
        statistics and micro moments; any attribute of the results can be asked for.
        """
        return {name: _json_ready(_plain(getattr(self, name))) for name in attributes}


def _describe_micro(moment: Any) -> dict[str, Any]:
    """A micro moment as plain data: its name, observed value and parts (with their datasets)."""
    return {
        "name": moment.name,
        "value": moment.value,
        "parts": [
            {
                "name": part.name,
                "dataset": part.dataset.name,
                "observations": part.dataset.observations,
                "markets": None if part.dataset.market_ids is None else part.dataset.market_ids.tolist(),
                "market_pairs": [list(pair) for pair in getattr(part.dataset, "market_pairs", [])] or None,
            }
            for part in moment.parts
        ],
    }


def _plain(value: Any) -> Any:
    """Arrays, tables and numpy scalars as lists, records and Python scalars (column vectors as flat lists)."""
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, np.ndarray):
        return (value.reshape(-1) if value.ndim == 2 and value.shape[1] == 1 else value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _json_ready(value: Any) -> Any:
    """Nested lists and dicts with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _standard_errors(space: Any, se: np.ndarray) -> tuple[np.ndarray, ...]:
    """Place standard errors ordered as (theta, concentrated beta, concentrated gamma) into matrices."""
    n_sigma, n_pi, n_rho = len(space.sigma_index[0]), len(space.pi_index[0]), len(space.rho_index)
    n_beta, P = len(space.beta_index), space.P  # phi's follow rho's (results.phi_se, .extended_objective)
    sigma_se = np.full(space.sigma0.shape, np.nan)  # NaN for elements fixed at zero, as PyBLP
    sigma_se[space.sigma_index] = se[:n_sigma]
    pi_se = np.full(space.pi0.shape, np.nan)
    pi_se[space.pi_index] = se[n_sigma : n_sigma + n_pi]
    rho_se = np.full(space.rho0.shape, np.nan)
    rho_se[space.rho_index] = se[n_sigma + n_pi : n_sigma + n_pi + n_rho]
    beta_se = np.full(space.beta0.shape, np.nan)
    beta_se[space.beta_index] = se[space.P_demand : space.P_demand + n_beta]
    beta_se[space.eliminated_beta] = se[P : P + len(space.eliminated_beta)]
    gamma_se = np.full(space.gamma0.shape, np.nan)
    gamma_se[space.gamma_index] = se[space.P_demand + n_beta : P]
    gamma_se[space.eliminated_gamma] = se[P + len(space.eliminated_beta) :]
    return sigma_se, pi_se, rho_se.reshape(-1, 1), beta_se.reshape(-1, 1), gamma_se.reshape(-1, 1)


def _reduce(hessian: np.ndarray, theta: np.ndarray, space: Any) -> np.ndarray:
    """Zero the rows and columns of the parameters not strictly inside their bounds (the reduced Hessian, whose
    eigenvalues judge the second-order conditions)."""
    reduced = hessian.copy()
    at_bound = ~((space.lower < theta) & (theta < space.upper))
    reduced[at_bound, :] = 0
    reduced[:, at_bound] = 0
    return reduced
