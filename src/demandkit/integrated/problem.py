"""``IntegratedProblem``: aggregate shares and a household panel in one model (Tuchman 2019).

.. math::

    U_{ijmt} = \\delta_{jmt} + \\sum_k x^{(2)}_{jmtk} (\\Sigma \\nu_i + \\Pi d_i)_k + \\gamma_i 1\\{y_{i,t-1} = j\\}
    + \\varepsilon_{ijmt}, \\qquad \\gamma_i = \\gamma + \\sigma_\\gamma \\nu_{i0},

with an outside good of utility zero (a lagged outside choice gives no boost). The aggregate shares of every
market and period pin down :math:`\\delta_{jmt}` given :math:`\\theta_2 = (\\Sigma, \\Pi, \\gamma, \\sigma_\\gamma)`
through a recursion over time (the population's state distribution evolves with its choices); the household panel
identifies :math:`\\theta_2` by maximum likelihood with those same :math:`\\delta`; :math:`\\beta` comes from 2SLS of
:math:`\\delta` on X1. See :mod:`demandkit.integrated.engine` and :mod:`demandkit.integrated.estimation`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..configurations.formulation import Formulation
from ..configurations.integration import Integration
from ..configurations.iteration import Iteration
from ..configurations.optimization import Optimization
from ..device import resolve_device
from ..distributed import current_shard
from ..exceptions import SpecificationError
from ..layout.validation import as_frame, label
from .data import build_aggregate, build_linear_design, build_population, build_situations
from .data import shard as data_shard
from .engine import Engine
from .estimation import Likelihood, linear_step, robust_covariance
from .parameters import ParameterSpace
from .results import IntegratedResults

INITIAL_STATES = ("outside", "stationary")


class IntegratedProblem:
    """The integrated macro-micro demand model with state dependence.

    Parameters
    ----------
    product_formulations : sequence of Formulation
        ``(X1, X2)``: the IV step's characteristics (``absorb`` for fixed effects) and the characteristics with
        random coefficients (None for none).
    product_data : DataFrame or mapping
        Aggregate data: ``market_ids``, ``time_ids`` (consecutive integers within a market), ``product_ids``
        (persistent over time), ``shares``, the X1/X2 columns and ``demand_instruments0..`` for endogenous X1
        columns; optional ``clustering_ids`` for the IV step's standard errors.
    micro_data : DataFrame or mapping
        The household panel: ``individual_ids``, ``market_ids``, ``time_ids``, ``choice_ids`` (the chosen
        ``product_ids``; missing for the outside good) and the demographics of ``agent_formulation``.
    agent_formulation : Formulation, optional
        Demographics :math:`d_i` for :math:`\\Pi`; the population's draws of them are in ``agent_data``.
    agent_data : DataFrame or mapping, optional
        The population of each market: ``market_ids``, demographics, and optionally ``nodes0..`` with ``weights``
        (then the macro step integrates over these agents).
    integration : Integration
        Draws of each household and, when ``agent_data`` has no nodes, nodes and weights of each market's
        population.
    state_dependence : bool or dict
        ``True`` for a common :math:`\\gamma`, ``{'random': True}`` for
        :math:`\\gamma_i = \\gamma + \\sigma_\\gamma\\nu_{i0}`, ``False`` for none.
    burn_in : int
        The first ``burn_in`` periods of every market only form the state: they enter neither the likelihood nor
        the IV step.
    initial_state : {'outside', 'stationary'}
        The state before the first period: nobody has a lagged product (``'outside'``), or each agent's stationary
        distribution over last choices at the first period's utilities (``'stationary'``, in closed form; the
        first period's mean utilities then solve the shares of that stationary population).
    device, dtype
        Where and in what precision to compute (the same code on CPU and GPU).

    Attributes
    ----------
    product_frame : DataFrame
        The product data as given, a DataFrame (with a fresh index), as ``Problem.product_frame``.
    micro : DataFrame
        The household panel as given.
    """

    def __init__(
        self,
        product_formulations: Sequence[Formulation | None],
        product_data: Any,
        micro_data: Any,
        agent_formulation: Formulation | None = None,
        agent_data: Any = None,
        integration: Integration | None = None,
        state_dependence: bool | dict[str, Any] = True,
        burn_in: int = 0,
        initial_state: str = "outside",
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        formulations = list(product_formulations) + [None] * (2 - len(product_formulations))
        if not isinstance(formulations[0], Formulation):
            raise SpecificationError("product_formulations must start with the X1 Formulation.")
        if initial_state not in INITIAL_STATES:
            raise SpecificationError(f"initial_state must be one of {INITIAL_STATES}; received {initial_state!r}.")
        if isinstance(state_dependence, dict):
            unknown = set(state_dependence) - {"random"}
            if unknown:
                raise SpecificationError(f"state_dependence accepts the key 'random'; received {sorted(unknown)}.")
            self.random_gamma = bool(state_dependence.get("random", False))
            self.has_gamma = True
        else:
            self.has_gamma, self.random_gamma = bool(state_dependence), False
        if not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
            raise SpecificationError(f"burn_in must be a non-negative integer; received {burn_in!r}.")
        self.product_formulations = tuple(formulations[:2])
        self.agent_formulation = agent_formulation
        self.integration = integration
        self.burn_in = int(burn_in)
        self.initial_state = initial_state
        self.device, self.dtype = resolve_device(device), dtype
        self.product_frame = as_frame(product_data, "product_data").reset_index(drop=True)
        self.micro = as_frame(micro_data, "micro_data").reset_index(drop=True)
        self.aggregate = build_aggregate(self.product_frame, self.product_formulations[1])
        self.X2_labels = self.product_formulations[1].build_matrix(self.product_frame.iloc[:1])[1] if self.K2 else []
        self.demographics_labels = [] if agent_formulation is None else sorted(agent_formulation.variables)
        self.situations = build_situations(self.micro, self.aggregate, self.burn_in, self.demographics_labels)
        self.dimensions = self.K2 + int(self.random_gamma)
        if self.dimensions and integration is None:
            raise SpecificationError("Random coefficients need an integration for the households' draws.")
        agents = None if agent_data is None else as_frame(agent_data, "agent_data")
        self.population = build_population(
            self.aggregate, integration, agents, self.demographics_labels, self.dimensions
        )
        self.household_draws = self._household_draws()
        self.linear = build_linear_design(
            self.product_frame, self.product_formulations[0], self.aggregate.row_period, self.burn_in
        )

    @property
    def products(self) -> pd.DataFrame:
        """The product data as given, a DataFrame: the same table as :attr:`product_frame`. The integrated model has
        no PyBLP counterpart, so no record array: unlike ``Problem.products``, this stays the aggregate product
        table."""
        return self.product_frame

    @property
    def K2(self) -> int:
        return self.aggregate.X2.shape[-1]

    def _household_draws(self) -> tuple[np.ndarray, np.ndarray]:
        H = self.situations.household_ids.size
        if not self.dimensions:
            return np.zeros((H, 1, 0)), np.ones(1)
        _, nodes, weights = self.integration.build_many(self.dimensions, np.arange(H), rescramble=False)
        R = weights.size // max(H, 1)
        return nodes.reshape(H, R, self.dimensions), weights[:R]

    def __str__(self) -> str:
        M, T, J = self.aggregate.shape
        s = self.situations
        return "\n".join(
            [
                "Integrated problem:",
                f"  markets M = {M}, periods T = {T}, product slots J = {J}, "
                f"aggregate rows N = {len(self.product_frame)}",
                f"  households H = {s.household_ids.size}, choice situations in the likelihood = {s.household.size} "
                f"(of {s.rows} household rows; burn-in {self.burn_in} periods)",
                f"  X1: {self.product_formulations[0]}; X2: {self.product_formulations[1]}",
                f"  state dependence: {'random' if self.random_gamma else self.has_gamma}; draws: {self.integration}",
            ]
        )

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        sigma: Any = None,
        pi: Any = None,
        gamma: Any = None,
        sigma_gamma: Any = None,
        optimization: Optimization | None = None,
        iteration: Iteration | None = None,
        se_type: str = "robust",
        chunk_size: int | None = None,
        distributed: bool | None = None,
    ) -> IntegratedResults:
        """Estimate :math:`\\theta_2` by the concentrated likelihood, then :math:`\\beta` by 2SLS.

        Parameters
        ----------
        sigma, pi : array-like, optional
            Starting values; nonzero elements are estimated, zeros stay zero (as in PyBLP).
        gamma, sigma_gamma : float, optional
            Starting values of the state dependence (default 0) and its spread (default 1, random gamma only).
        optimization : Optimization, optional
            Default ``Optimization('l-bfgs-b', {'gtol': 1e-6})`` on :math:`-LL/H`.
        iteration : Iteration, optional
            The per-period inversion; default ``Iteration('squarem', {'atol': 1e-13})``.
        se_type : {'robust', 'clustered'}
            For the IV step: heteroskedasticity-robust, or clustered by ``clustering_ids`` of ``product_data``.
        chunk_size : int, optional
            Households per chunk of the likelihood (default: chosen from the problem's size).
        distributed : bool, optional
            Inside a ``torch.distributed`` process group (None, the default) or with ``True``, each process takes a
            block of markets with their households and one all-reduce per evaluation adds up the log-likelihood and
            its gradient; every process returns the same results (:mod:`demandkit.distributed`).
        """
        if se_type not in ("robust", "clustered"):
            raise SpecificationError(f"se_type must be 'robust' or 'clustered'; received {se_type!r}.")
        clusters = None
        if se_type == "clustered":
            if "clustering_ids" not in self.product_frame.columns:
                raise SpecificationError("se_type='clustered' needs a clustering_ids column in product_data.")
            clusters = self.product_frame["clustering_ids"].to_numpy()[self.linear.rows]
        optimization = optimization or Optimization("l-bfgs-b", {"gtol": 1e-6})
        iteration = iteration or Iteration("squarem", {"atol": 1e-13})
        if iteration.method not in ("squarem", "simple"):
            raise SpecificationError(
                f"The inversion iterates with 'squarem' or 'simple'; received {iteration.method!r}."
            )
        D = len(self.demographics_labels)
        space = ParameterSpace.build(
            self.K2, D, self.X2_labels, self.demographics_labels, sigma, pi, gamma, sigma_gamma, self.has_gamma,
            self.random_gamma,
        )  # fmt: skip
        shard = current_shard(distributed, self.device)
        pieces = (self.aggregate, self.situations, self.population, self.household_draws)
        rows, households = np.arange(len(self.product_frame)), np.arange(self.situations.household_ids.size)
        if shard is not None:
            work = np.bincount(self.situations.market, minlength=self.aggregate.shape[0]) + 1
            *pieces, rows, households = data_shard(*pieces, *shard.block(work))
        engine = Engine(
            *pieces, self.device, self.dtype, iteration.options, chunk_size, self.initial_state
        )  # fmt: skip
        likelihood = Likelihood(engine, space, shard)
        start = time.perf_counter()
        optimized = optimization.minimize(likelihood, space.start.copy(), space.bounds)
        theta = optimized.x
        evaluation = likelihood.evaluate(theta)
        solution = evaluation.solution
        jacobian = likelihood.delta_jacobian(theta, solution)  # [P, M, T, J] of this process's markets
        scores = likelihood.scores(theta, solution, jacobian)
        hessian = likelihood.hessian(theta)
        covariance = robust_covariance(hessian, likelihood._sum(scores.T @ scores))
        local = pieces[0]
        delta_rows = local.unpad(solution.delta.detach().cpu().numpy())
        jacobian_rows = local.unpad(jacobian.detach().cpu().numpy().transpose(1, 2, 3, 0))  # [N, P]
        fp_converged = solution.converged.cpu().numpy()
        fp_iterations = solution.iterations.cpu().numpy()
        if shard is not None:  # every process assembles the whole problem's rows, markets and households
            parts = shard.gather((rows, delta_rows, jacobian_rows, households, scores, fp_converged, fp_iterations))
            order = np.concatenate([part[0] for part in parts])
            delta_rows = np.concatenate([part[1] for part in parts])[np.argsort(order)]
            jacobian_rows = np.concatenate([part[2] for part in parts])[np.argsort(order)]
            scores = np.concatenate([part[4] for part in parts])[np.argsort(np.concatenate([p[3] for p in parts]))]
            fp_converged = np.concatenate([part[5] for part in parts])
            fp_iterations = np.concatenate([part[6] for part in parts])
        a = self.aggregate
        used = self.linear.rows
        X1_formulation = self.product_formulations[0]
        ids = X1_formulation.build_ids(self.product_frame.iloc[used].reset_index(drop=True))
        linear = linear_step(
            delta_rows[used], jacobian_rows[used], self.linear.X1, self.linear.ZD, ids, X1_formulation.absorb_method,
            covariance, clusters,
        )  # fmt: skip
        se = np.sqrt(np.clip(np.diag(covariance), 0, None))
        estimates, errors = space.unpack(theta), space.unpack(se)
        errors["sigma"][~space.sigma_free] = np.nan
        errors["pi"][~space.pi_free] = np.nan
        failed = np.argwhere(~fp_converged)
        return IntegratedResults(
            self,
            _engine=engine if shard is None else None,
            engine_options=(iteration.options, chunk_size),
            space=space,
            sigma=estimates["sigma"],
            sigma_se=errors["sigma"],
            pi=estimates["pi"],
            pi_se=errors["pi"],
            gamma=estimates["gamma"],
            gamma_se=errors["gamma"],
            sigma_gamma=estimates["sigma_gamma"],
            sigma_gamma_se=errors["sigma_gamma"],
            beta=linear.beta,
            beta_se=np.sqrt(np.clip(np.diag(linear.beta_covariance), 0, None)),
            beta_covariance=linear.beta_covariance,
            beta_labels=list(self.linear.X1_labels),
            theta=theta,
            theta_labels=list(space.labels),
            theta_covariance=covariance,
            hessian=hessian,
            scores=scores,
            delta=delta_rows.reshape(-1, 1),
            xi=linear.xi.reshape(-1, 1),
            xi_rows=used,
            loglikelihood=evaluation.loglikelihood,
            gradient=evaluation.gradient,
            converged=bool(optimized.converged),
            message=optimized.message,
            evaluations=likelihood.evaluations,
            seconds=time.perf_counter() - start,
            fp_converged=fp_converged,
            fp_iterations=fp_iterations,
            failed_inversions=pd.DataFrame(
                {
                    "market_ids": [label(a.market_ids[m]) for m, _ in failed],
                    "time_ids": [int(a.first_time[m] + t) for m, t in failed],
                }
            ),
            households=int(self.situations.household_ids.size),
            situations=int(self.situations.household.size),
        )
