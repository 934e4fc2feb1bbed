"""``MixedLogit``: mixed logit on individual choice data by maximum simulated likelihood.

Individual :math:`i` in choice situation :math:`t` gets utility :math:`U_{ijt} = x_{ijt}'\\beta_i +
\\gamma_i 1\\{y_{i,t-1} = j\\} + \\varepsilon_{ijt}` from alternative :math:`j` (:math:`\\varepsilon` i.i.d. type I
extreme value; the optional outside alternative has utility :math:`\\varepsilon_{i0t}`), with :math:`\\beta_i` fixed
in some elements and random in others (:mod:`~demandkit.mixed_logit.distributions`). The same draws serve all
situations of an individual, so the simulated log-likelihood is

.. math:: \\log L(\\theta) = \\sum_i \\log \\frac{1}{R} \\sum_r \\prod_t P_{i y_{it} t}(\\beta_{ir}(\\theta)).

:meth:`MixedLogit.fit` maximizes it with :class:`demandkit.Optimization` (minimizing
:math:`-\\log L / N`, :math:`N` individuals), with the analytic gradient or autograd, and returns
:class:`~demandkit.mixed_logit.results.MixedLogitResults`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..configurations.formulation import Formulation
from ..configurations.integration import Integration
from ..configurations.optimization import Optimization, OptimizationResult
from ..configurations.options import check_choice
from ..device import resolve_device
from ..distributed import current_shard
from ..exceptions import ConvergenceWarning, SpecificationError
from .covariance import covariances
from .data import Panel, build_panel
from .draws import DrawSource
from .engine import Engine, Evaluation
from .kernels import Utility
from .results import MixedLogitResults
from .specification import (
    STATE_COEFFICIENT,
    STATE_VARIABLE,
    Columns,
    CovarianceType,
    GradientMethod,
    ModelSpecification,
    ParameterSpace,
    StateDependence,
)
from .starts import fit_from_starts

#: parameters by name (a mapping or Series) or as a full array in the order of :attr:`MixedLogit.names`
Parameters = Mapping[str, float] | pd.Series | np.ndarray

DEFAULT_INTEGRATION = Integration("halton", 500, {"seed": 0})
#: BFGS gradient tolerance on the mean negative log-likelihood when the user does not give one
DEFAULT_GTOL = 1e-5
#: the default gradient tolerance under float32, whose rounding of the mean log-likelihood is about 1e-7
FLOAT32_GTOL = 1e-3


class MixedLogit:
    """A mixed logit model of individual (panel) choice data.

    Parameters
    ----------
    formulation : Formulation
        Covariates of the alternatives, e.g. ``Formulation('0 + price + quality')``. Each covariate gets a
        coefficient of the same name. Without an outside alternative, covariates that do not vary within
        situations (an intercept) are not identified and are rejected.
    data : DataFrame
        Long data: one row per (choice situation, alternative). Alternatives missing from a situation are
        simply unavailable there; panels may be unbalanced.
    choice : str
        Column with 1 on the chosen alternative's row (0 elsewhere).
    situation_ids, individual_ids, alternative_ids : str
        Columns identifying choice situations, individuals (the panel) and alternatives. Situations of an
        individual are ordered as they first appear in ``data``.
    random : dict, optional
        Random coefficients and their distributions, ``{'price': 'normal', 'quality': 'lognormal'}``; one of
        ``'normal'``, ``'lognormal'``, ``'triangular'``, ``'uniform'``, ``'truncated_normal'``. Others are fixed.
    correlated : bool
        Whether the normal coefficients are jointly normal with a full covariance (its Cholesky factor is
        estimated) rather than independent.
    state_dependence : dict or StateDependence, optional
        ``dict(burn_in=24, random=False)`` adds :math:`\\gamma_i 1\\{y_{i,t-1} = j\\}` with the lagged choice built
        from the panel; the first ``burn_in`` situations of each individual only form the state.
    integration : Integration, optional
        How draws are made per individual (``'halton'``, ``'sobol'``, ``'monte_carlo'``, ``'mlhs'``, ``'lhs'`` or a
        quadrature); by default ``Integration('halton', 500, {'seed': 0})``. A seed of None is drawn once here.
    outside : bool
        Whether each situation also has an outside alternative with utility zero, chosen when no row is.
    utility : callable, optional
        A user-defined utility ``utility(beta, x) -> Tensor`` replacing :math:`x'\\beta`. ``beta`` maps each
        coefficient name to a ``[n, 1, 1, R]`` tensor (individuals, -, -, draws) and ``x`` each covariate name
        (and ``'lagged_choice'``) to a ``[n, T, J, 1]`` tensor; the result must broadcast to ``[n, T, J, R]``.
        Its gradient comes from autograd.

    Raises
    ------
    InvalidDataError, SpecificationError
        See :func:`~demandkit.mixed_logit.data.build_panel` for the data checks.

    Examples
    --------
    >>> import demandkit as dk
    >>> from demandkit.mixed_logit import MixedLogit, simulate_panel
    >>> sim = simulate_panel(200, 5, 3, {"price": ("normal", -1.0, 0.5), "quality": (None, 1.0, 0.0)})
    >>> model = MixedLogit(dk.Formulation("0 + price + quality"), sim.data, "chosen", "situation", "individual",
    ...                    "alternative", random={"price": "normal"}, integration=dk.Integration("halton", 100))
    >>> results = model.fit(progress=False)
    >>> list(results.params.index)
    ['price', 'quality', 'sd.price']

    A user-defined utility (here concave in quality) only changes the line that forms utilities:

    >>> import torch
    >>> def utility(beta, x):
    ...     return beta["price"] * x["price"] + beta["quality"] * torch.tanh(x["quality"])
    >>> custom = MixedLogit(dk.Formulation("0 + price + quality"), sim.data, "chosen", "situation", "individual",
    ...                     "alternative", random={"price": "normal"}, utility=utility)
    """

    def __init__(
        self,
        formulation: Formulation,
        data: pd.DataFrame,
        choice: str,
        situation_ids: str,
        individual_ids: str,
        alternative_ids: str,
        random: Mapping[str, str] | None = None,
        correlated: bool = False,
        state_dependence: StateDependence | dict[str, Any] | None = None,
        integration: Integration | None = None,
        outside: bool = False,
        utility: Utility | None = None,
    ) -> None:
        if not isinstance(formulation, Formulation):
            raise SpecificationError(
                f"formulation must be a demandkit.Formulation; received {type(formulation).__name__}."
            )
        if random is not None and not isinstance(random, Mapping):
            raise SpecificationError(
                f"random must be a dict of name -> distribution; received {type(random).__name__}."
            )
        if integration is not None and not isinstance(integration, Integration):
            raise SpecificationError(
                f"integration must be a demandkit.Integration; received {type(integration).__name__}."
            )
        if utility is not None and not callable(utility):
            raise SpecificationError("utility must be a callable utility(beta, x) -> Tensor.")
        columns = Columns(choice, situation_ids, individual_ids, alternative_ids)
        state = StateDependence.build(state_dependence)
        self.panel: Panel = build_panel(data, formulation, columns, bool(outside), state)
        self.data = data
        random = dict(random or {})
        draws = DrawSource(integration or DEFAULT_INTEGRATION, 0)
        seeded = draws.integration
        if "seed" in seeded.options:
            options = {**seeded.options, "seed": draws.seed if draws.seed is not None else _fresh_seed()}
            seeded = Integration(seeded.specification, seeded.size, options)
        self.specification = ModelSpecification(
            formulation=formulation,
            columns=columns,
            random=random,
            correlated=bool(correlated),
            state_dependence=state,
            outside=bool(outside),
            integration=seeded,
            covariates=tuple(self.panel.labels),
            utility=utility,
        )
        coefficients = self.specification.coefficients
        if len(set(coefficients)) < len(coefficients):
            raise SpecificationError(
                f"Coefficient names {list(coefficients)} repeat; the state-dependence coefficient is called "
                f"{STATE_COEFFICIENT!r} and its covariate {STATE_VARIABLE!r}, so rename such data columns."
            )
        self.space: ParameterSpace = self.specification.space()
        self.draws = DrawSource(seeded, self.space.n_random)
        if utility is None and not outside:
            _check_identified(self.panel)
        self._engines: dict[tuple[str, torch.dtype, int | None], Engine] = {}

    # ------------------------------------------------------------------ public
    @property
    def names(self) -> list[str]:
        """Parameter names, in the order of :math:`\\theta`."""
        return list(self.space.names)

    def __repr__(self) -> str:
        spec = self.specification
        return (
            f"MixedLogit({spec.formulation.formula!r}, random={spec.random}, correlated={spec.correlated}, "
            f"state_dependence={spec.state_dependence}, outside={spec.outside}, {self.panel.n_individuals} "
            f"individuals, {self.panel.n_choice_situations} situations, {self.draws.size} draws)"
        )

    def loglikelihood(
        self,
        params: Parameters,
        gradient: GradientMethod | None = None,
        device: str | torch.device = "cpu",
        chunk_size: int | None = None,
    ) -> float | tuple[float, pd.Series]:
        """The simulated log-likelihood at ``params`` (and its gradient by ``'analytic'`` or ``'autograd'``).

        ``params`` is a mapping or Series by parameter name (see :attr:`names`) or an array in that order.
        """
        engine = self._engine(device, torch.float64, chunk_size)
        theta = self._theta(params)
        if gradient is None:
            if self.specification.utility is None:
                return engine.evaluate(theta, "analytic").loglikelihood
            return engine.loglikelihood(theta)
        evaluation = engine.evaluate(theta, self._method(gradient))
        return evaluation.loglikelihood, pd.Series(evaluation.gradient, index=self.names)

    def fit(
        self,
        optimization: Optimization | None = None,
        gradient: GradientMethod | None = None,
        device: str | torch.device = "cpu",
        initial: Parameters | None = None,
        covariance: CovarianceType = "robust",
        chunk_size: int | None = None,
        progress: bool = True,
        dtype: torch.dtype = torch.float64,
        starts: int | list[Parameters] | None = None,
        starts_options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        distributed: bool | None = None,
    ) -> MixedLogitResults:
        """Estimate by maximum simulated likelihood.

        Parameters
        ----------
        optimization : Optimization, optional
            The optimizer; by default ``Optimization('bfgs', {'gtol': 1e-5})`` (``1e-3`` under float32, whose
            rounding of the mean log-likelihood stops a tighter line search). With ``'bfgs'`` and no
            ``hess_inv0`` option, the first inverse Hessian is the inverse outer product of the scores (BHHH) at the
            starting values. The objective is the *mean* negative log-likelihood per individual.
        gradient : {'analytic', 'autograd'}, optional
            How the gradient, the scores and the Hessian are computed: in closed form (the linear utility only,
            the default there) or by autograd (the default for a user-defined utility).
        device : str or torch.device
            ``'cpu'`` or ``'cuda'``.
        initial : dict, Series or array, optional
            Starting values by name (missing names take the defaults) or as a full array. By default the
            locations come from a logit with fixed coefficients and the spreads from
            :meth:`_starting_spreads` (half the logit coefficient, at least 0.1 over the covariate's standard
            deviation).
        covariance : {'robust', 'classical', 'opg'}
            Which covariance gives :attr:`MixedLogitResults.se` (all three are kept); ``'robust'`` is clustered
            by individual.
        chunk_size : int, optional
            Individuals per chunk; by default chosen from the device's free memory.
        progress : bool
            Whether to show a tqdm progress bar over objective evaluations.
        dtype : torch.dtype
            ``torch.float64`` (the default) or ``torch.float32``, an option for GPUs: the estimates stay within a
            few hundredths of a standard error of float64's (tested), the covariances are computed at the same
            precision.
        starts : int or list, optional
            Multi-start estimation (:mod:`~demandkit.mixed_logit.starts`): an int ``n`` fits from ``initial`` (or
            the defaults) and from ``n - 1`` draws around it; a list gives each start as ``initial`` would. The
            results of the start with the highest log-likelihood among those that converged (among all, if none
            did) are returned, with ``results.starts``: a DataFrame of ``start``, ``loglikelihood``, ``converged``,
            ``gradient_norm``, ``iterations``, ``seconds``, ``best``, ``warnings``, ``error``, ``initial`` and
            ``estimate`` per start; a :class:`~demandkit.exceptions.DistinctOptimaWarning` (a ``UserWarning``) says
            when converged starts end at log-likelihoods below the best by more than ``rtol * max(|best|, 1)``
            (``rtol = 1e-4`` by default). None (the default) fits once, and ``results.starts`` is None.
        starts_options : dict, optional
            ``{'seed': 0, 'scale': 1.0, 'rtol': 1e-4}`` (the defaults; see :mod:`demandkit.multistart`).
        executor : concurrent.futures.Executor, optional
            Where the starts run: by default a local ``ProcessPoolExecutor`` (one worker per core, one torch thread
            each), or this process for one start, one core or a GPU. The model is pickled to the workers.
        distributed : bool, optional
            In a ``torch.distributed`` group (None) or with True, each process takes a block of individuals.
        """
        if starts is not None or starts_options is not None or executor is not None:
            arguments = {"optimization": optimization, "gradient": gradient, "device": device, "initial": initial}
            arguments.update(covariance=covariance, chunk_size=chunk_size, progress=progress, dtype=dtype)
            return fit_from_starts(self, starts, starts_options, executor, arguments)
        start = time.perf_counter()
        check_choice("covariance", covariance, CovarianceType)
        method = self._method(gradient)
        if dtype not in (torch.float64, torch.float32):
            raise SpecificationError(f"dtype must be torch.float64 or torch.float32; received {dtype}.")
        optimization = _default_optimization(optimization, dtype)
        engine = self._engine(device, dtype, chunk_size)
        shard = current_shard(distributed, engine.device)
        if shard is not None:  # a separate engine: post-estimation keeps the whole panel's
            engine = Engine(self.panel, self.space, self.draws, engine.device, dtype, engine.utility, chunk_size, shard)
        theta0 = self._starting_values(initial, engine.device, dtype, chunk_size, method)
        n = self.panel.n_individuals
        if optimization.method == "bfgs" and "hess_inv0" not in optimization.options:
            first = engine.evaluate(theta0, method, scores=True)
            options = {**(optimization.method_options or {}), "hess_inv0": _bhhh_inverse(first.scores, n)}
            optimization = Optimization("bfgs", options, optimization.compute_gradient)
        result = _minimize(optimization, engine, method, n, theta0, progress)
        if not result.converged:
            warnings.warn(
                f"The optimizer did not converge: {result.message} Consider more iterations (method_options "
                "maxiter), other starting values, rescaled covariates or another method.",
                ConvergenceWarning,
                stacklevel=2,
            )
        final = engine.evaluate(result.x, method, scores=True)
        hessian = engine.hessian(result.x, method)
        return MixedLogitResults(
            specification=self.specification,
            names=self.names,
            theta=result.x,
            covariances=covariances(hessian, final.scores),
            covariance_type=covariance,
            loglikelihood=final.loglikelihood,
            gradient=final.gradient,
            hessian=hessian,
            statistics={
                "individuals": n,
                "situations": self.panel.n_choice_situations,
                "observations": self.panel.n_rows,
                "draws": self.draws.size,
                "converged": bool(result.converged),
                "message": result.message,
                "iterations": int(result.iterations),
                "evaluations": int(result.evaluations),
                "optimization_seconds": float(result.seconds),
                "seconds": time.perf_counter() - start,
                "gradient_method": method,
                "optimization": str(optimization.method),
                "device": str(engine.device),
            },
            model=self,
        )

    # ------------------------------------------------------------------ internals
    def _method(self, gradient: GradientMethod | None) -> str:
        if gradient is None:
            return "analytic" if self.specification.utility is None else "autograd"
        check_choice("gradient", gradient, GradientMethod)
        if gradient == "analytic" and self.specification.utility is not None:
            raise SpecificationError(
                "The analytic gradient needs the linear utility; a user-defined utility uses gradient='autograd'."
            )
        return gradient

    def _engine(self, device: str | torch.device, dtype: torch.dtype, chunk_size: int | None) -> Engine:
        resolved = resolve_device(device)
        key = (str(resolved), dtype, chunk_size)
        if key not in self._engines:
            self._engines[key] = Engine(
                self.panel, self.space, self.draws, resolved, dtype, self.specification.utility, chunk_size
            )
        return self._engines[key]

    def _theta(self, params: Parameters | None, default: np.ndarray | None = None) -> np.ndarray:
        """A full parameter vector from names or an array (missing names take ``default``)."""
        names = self.names
        theta = self.space.starting_values() if default is None else np.array(default, dtype=np.float64)
        if params is None:
            return theta
        if isinstance(params, (Mapping, pd.Series)):
            unknown = sorted(set(params.keys()) - set(names))
            if unknown:
                raise SpecificationError(f"Unknown parameter names {unknown}; the parameters are {names}.")
            for name, value in params.items():
                theta[names.index(name)] = float(value)
            return theta
        values = np.asarray(params, dtype=np.float64).reshape(-1)
        if values.size != len(names):
            raise SpecificationError(f"Expected {len(names)} parameters ({names}); received {values.size}.")
        return values.copy()

    def _starting_values(
        self,
        initial: Parameters | None,
        device: torch.device,
        dtype: torch.dtype,
        chunk_size: int | None,
        method: str,
    ) -> np.ndarray:
        """Starting values: ``initial`` as a full array, or the defaults overridden by ``initial``'s names."""
        if initial is not None and not isinstance(initial, (Mapping, pd.Series)):
            return self._theta(initial)
        logit = self._logit(device, dtype, chunk_size, method)
        return self._theta(initial, self.space.starting_values(logit, self._starting_spreads(logit)))

    def _starting_spreads(self, logit: np.ndarray) -> np.ndarray:
        """Starting spreads, one per coefficient: half the logit coefficient, and at least a tenth of a utility unit
        per standard deviation of the covariate (scale-free, so rescaled covariates start alike); 0.5 on the log
        scale of a lognormal."""
        scale = self.panel.X[~self.panel.outside].std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        spreads = np.maximum(0.5 * np.abs(logit), 0.1 / scale)
        lognormal = [
            k for k, name in enumerate(self.space.coefficients) if self.space.distributions.get(name) == "lognormal"
        ]
        spreads[lognormal] = 0.5
        return spreads

    def _logit(self, device: torch.device, dtype: torch.dtype, chunk_size: int | None, method: str) -> np.ndarray:
        """Coefficients of the logit with every coefficient fixed (the default starting locations)."""
        space = ParameterSpace(self.space.coefficients, {}, False)
        draws = DrawSource(self.draws.integration, 0)
        engine = Engine(self.panel, space, draws, resolve_device(device), dtype, self.specification.utility, chunk_size)
        optimization = Optimization("bfgs", {"gtol": 1e-8, "maxiter": 500})
        n = self.panel.n_individuals
        return _minimize(optimization, engine, method, n, np.zeros(space.size), False).x

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_engines"] = {}
        return state


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])


def _default_optimization(optimization: Optimization | None, dtype: torch.dtype = torch.float64) -> Optimization:
    if optimization is None:
        gtol = DEFAULT_GTOL if dtype == torch.float64 else FLOAT32_GTOL
        return Optimization("bfgs", {"gtol": gtol})
    if not isinstance(optimization, Optimization):
        raise SpecificationError(
            f"optimization must be a demandkit.Optimization; received {type(optimization).__name__}."
        )
    return optimization


class _Objective:
    """The mean negative log-likelihood and its gradient, with a tqdm progress bar over evaluations."""

    def __init__(self, engine: Engine, method: str, n: int, progress: bool) -> None:
        self.engine, self.method, self.n = engine, method, n
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="mixed logit", unit=" evaluations", leave=False)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        evaluation: Evaluation = self.engine.evaluate(theta, self.method)
        value, gradient = -evaluation.loglikelihood / self.n, -evaluation.gradient / self.n
        if not np.isfinite(value) or not np.all(np.isfinite(gradient)):
            value, gradient = np.inf, np.zeros_like(gradient)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loglikelihood=f"{evaluation.loglikelihood:.6g}", gradient=f"{np.abs(gradient).max():.2e}"
            )
        return value, gradient

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _minimize(
    optimization: Optimization, engine: Engine, method: str, n: int, theta0: np.ndarray, progress: bool
) -> OptimizationResult:
    """Run the optimizer on the mean negative log-likelihood (closing the progress bar whatever happens)."""
    objective = _Objective(engine, method, n, progress)
    try:
        return optimization.minimize(objective, theta0, None)
    finally:
        objective.close()


def _bhhh_inverse(scores: np.ndarray, n: int) -> np.ndarray:
    """Inverse of the mean outer product of the scores, regularized to be positive definite."""
    outer = scores.T @ scores / n
    eigenvalues, vectors = np.linalg.eigh((outer + outer.T) / 2)
    floor = max(eigenvalues.max(), 1e-8) * 1e-8
    eigenvalues = np.maximum(eigenvalues, floor)
    inverse = (vectors / eigenvalues) @ vectors.T
    return (inverse + inverse.T) / 2  # exactly symmetric, as scipy checks


def _check_identified(panel: Panel) -> None:
    """Reject covariates that never vary within a situation (not identified without an outside alternative)."""
    X = panel.X
    situation = panel.situation
    S = panel.n_choice_situations
    low = np.full((S, X.shape[1]), np.inf)
    high = np.full((S, X.shape[1]), -np.inf)
    np.minimum.at(low, situation, X)
    np.maximum.at(high, situation, X)
    constant = np.all(high - low <= 1e-12 * np.maximum(1.0, np.abs(high)), axis=0)
    if constant.any():
        names = [panel.labels[k] for k in np.flatnonzero(constant)]
        raise SpecificationError(
            f"The covariate(s) {names} do not vary across the alternatives of any choice situation, so their "
            "coefficients are not identified (utility differences cancel them). Drop them (write '0 + ...' to drop "
            "the intercept), interact them with alternative-specific columns, or use outside=True."
        )
