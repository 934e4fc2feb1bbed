"""``Optimization``: the bridge from a differentiable objective to scipy.optimize."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize

from ..exceptions import SpecificationError
from .options import OptimizationMethod, check_choice

# scipy.optimize.minimize's name of each method, and which take bounds, a gradient and a gtol option
_SCIPY_NAMES = {
    "l-bfgs-b": "L-BFGS-B",
    "bfgs": "BFGS",
    "slsqp": "SLSQP",
    "tnc": "TNC",
    "trust-constr": "trust-constr",
    "cg": "CG",
    "newton-cg": "Newton-CG",
    "nelder-mead": "Nelder-Mead",
    "powell": "Powell",
}
# methods that take bounds; 'return' too, as in PyBLP: the bounds still define the reported bounds and the
# projected gradient at the starting values
_BOUNDED = {"return", "l-bfgs-b", "slsqp", "tnc", "trust-constr", "nelder-mead", "powell", "knitro"}
_GRADIENT = {"l-bfgs-b", "bfgs", "slsqp", "tnc", "trust-constr", "cg", "newton-cg", "knitro"}
_GTOL = {"l-bfgs-b", "bfgs", "tnc", "trust-constr", "cg"}
# Knitro options that differ from Knitro's own defaults, as PyBLP documents them
_KNITRO_DEFAULTS = {"algorithm": 1, "hessopt": 2, "honorbnds": 1}


@dataclass(frozen=True, slots=True)
class OptimizationResult:
    """What an optimizer returned, as data."""

    x: np.ndarray
    objective: float
    gradient: np.ndarray
    converged: bool
    message: str
    iterations: int
    evaluations: int
    seconds: float
    trace: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class ObjectiveProgress:
    """What a custom optimization routine is told about one evaluation when the caller gives no richer progress
    (the GMM estimator gives an :class:`~demandkit.OptimizationProgress`): PyBLP's key attributes."""

    theta: np.ndarray
    objective: float
    gradient: np.ndarray | None
    iterations: int
    evaluations: int


@dataclass(frozen=True, slots=True)
class Optimization:
    """Configuration for minimizing the GMM objective over the nonlinear parameters :math:`\\theta`.

    Parameters
    ----------
    method : str or callable
        :func:`scipy.optimize.minimize`'s method of that name: ``'l-bfgs-b'``, ``'slsqp'``, ``'tnc'``,
        ``'trust-constr'`` (bounds and the analytic gradient), ``'bfgs'``, ``'cg'``, ``'newton-cg'`` (the gradient,
        no bounds), ``'nelder-mead'``, ``'powell'`` (bounds, no gradient; PyBLP ignores their bounds, scipy now
        takes them). ``'knitro'`` uses an installed Artelys Knitro (its Python package ``knitro``, with a
        license): bounds and the gradient, Knitro's interior/direct algorithm with BFGS Hessians by default.
        ``'return'`` evaluates the objective at the starting values.

        A callable is a custom routine with PyBLP's contract,
        ``method(initial, bounds, objective_function, iteration_callback, **method_options) -> (final, converged)``:
        ``bounds`` is a list of ``(lower, upper)`` pairs (infinite where unbounded), ``iteration_callback()`` is
        called after each major iteration, and ``objective_function(theta) -> (objective, gradient, progress)``,
        with ``gradient`` None unless ``compute_gradient`` and ``progress`` an
        :class:`~demandkit.OptimizationProgress` where the estimator provides one (else an
        :class:`ObjectiveProgress`).
    method_options : dict, optional
        Passed to ``scipy.optimize.minimize`` as ``options`` (``gtol``, ``maxiter``, ...), except
        ``keep_feasible`` (default True, as in PyBLP), which goes to :class:`scipy.optimize.Bounds`. PyBLP's default
        ``gtol`` of 1e-8 is used where the method takes one and none is given. For ``'knitro'``, Knitro's user
        options by name (``algorithm``, ``gradopt``, ``hessopt``, ``honorbnds``, ``opttol``, ...); for a callable,
        the keyword arguments it is called with.
    compute_gradient : bool
        Whether to pass the analytic (autograd) gradient to the optimizer; always False for ``'nelder-mead'`` and
        ``'powell'``, and required by ``'newton-cg'``.
    """

    method: OptimizationMethod | Callable[..., Any] = "l-bfgs-b"
    method_options: dict[str, Any] | None = None
    compute_gradient: bool = True
    options: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        options = dict(self.method_options or {})
        if callable(self.method):
            object.__setattr__(self, "options", options)
            return
        check_choice("Optimization method", self.method, OptimizationMethod)
        if self.method == "knitro":
            if importlib.util.find_spec("knitro") is None:
                raise SpecificationError(
                    "Optimization method 'knitro' needs Artelys Knitro and its Python package 'knitro' (with a "
                    "license), which is not installed; use one of the scipy methods such as 'l-bfgs-b' instead."
                )
            options = {**_KNITRO_DEFAULTS, "gradopt": 1 if self.compute_gradient else 2, **options}
        elif self.method in _GTOL:
            options.setdefault("gtol", 1e-8)
        if self.method == "newton-cg" and not self.compute_gradient:
            raise SpecificationError("Optimization method 'newton-cg' needs compute_gradient=True.")
        object.__setattr__(self, "options", options)
        if self.method not in _GRADIENT:
            object.__setattr__(self, "compute_gradient", False)

    @property
    def supports_bounds(self) -> bool:
        return callable(self.method) or self.method in _BOUNDED

    def __str__(self) -> str:
        if self.method == "return":
            return "Configured to evaluate the objective at the starting values without optimizing."
        if callable(self.method):
            name = "a custom method"
        elif self.method == "knitro":
            name = "Artelys Knitro"
        else:
            name = f"scipy's {_SCIPY_NAMES[self.method]}"
        gradients = "with" if self.compute_gradient else "without"
        return f"Configured to optimize with {name} {gradients} analytic gradients and options {self.options}."

    def minimize(
        self,
        objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
        x0: np.ndarray,
        bounds: list[tuple[float, float]] | None,
        progress: Callable[[np.ndarray, float, np.ndarray], Any] | None = None,
    ) -> OptimizationResult:
        """Minimize ``objective(x) -> (value, gradient)`` from ``x0``.

        ``bounds`` are ``(lower, upper)`` pairs, used by the methods that take them. ``progress(theta, value,
        gradient)``, if given, makes what a custom routine receives as ``progress`` (an
        :class:`ObjectiveProgress` otherwise)."""
        start = time.perf_counter()
        trace: list[tuple[float, float]] = []
        evaluations = 0

        def wrapped(x: np.ndarray) -> tuple[float, np.ndarray]:
            nonlocal evaluations
            evaluations += 1
            value, gradient = objective(np.asarray(x, dtype=np.float64))
            trace.append((value, float(np.max(np.abs(gradient))) if gradient.size else 0.0))
            return value, gradient

        if self.method == "return" or x0.size == 0:
            value, gradient = wrapped(x0)
            return OptimizationResult(
                x0.copy(),
                value,
                gradient,
                True,
                "Evaluated at the starting values.",
                0,
                evaluations,
                time.perf_counter() - start,
                tuple(trace),
            )
        if callable(self.method):
            x, converged, message, iterations = self._custom(wrapped, x0, bounds, progress)
        elif self.method == "knitro":
            x, converged, message, iterations = self._knitro(wrapped, x0, bounds)
        else:
            x, converged, message, iterations = self._scipy(wrapped, x0, bounds)
        value, gradient = objective(x)
        return OptimizationResult(
            x, value, gradient, converged, message, iterations, evaluations, time.perf_counter() - start, tuple(trace)
        )

    def _scipy(self, wrapped: Callable, x0: np.ndarray, bounds: list | None) -> tuple[np.ndarray, bool, str, int]:
        options = dict(self.options)
        keep_feasible = bool(options.pop("keep_feasible", True))
        use_bounds = None
        if self.supports_bounds and bounds is not None and not all(np.isinf(b).all() for b in bounds):
            lower, upper = np.asarray(bounds, dtype=np.float64).reshape(-1, 2).T
            use_bounds = scipy.optimize.Bounds(lower, upper, keep_feasible=keep_feasible)
        function = wrapped if self.compute_gradient else (lambda x: wrapped(x)[0])
        # scipy's own arithmetic overflows harmlessly at infinite bounds (trust-constr's nudged bounds, Powell's
        # bracketing); the objective reports its own failures
        with np.errstate(over="ignore", invalid="ignore"):
            result = scipy.optimize.minimize(
                function,
                x0,
                jac=True if self.compute_gradient else None,
                method=_SCIPY_NAMES[self.method],
                bounds=use_bounds,
                options=options,
            )
        x = np.asarray(result.x, dtype=np.float64).reshape(x0.shape)
        return x, bool(result.success), str(result.message), int(getattr(result, "nit", 0))

    def _custom(
        self, wrapped: Callable, x0: np.ndarray, bounds: list | None, progress: Callable | None
    ) -> tuple[np.ndarray, bool, str, int]:
        """Run a user's routine with PyBLP's contract (see the class docstring)."""
        iterations = evaluations = 0
        pairs = [(-np.inf, np.inf)] * x0.size if bounds is None else [(float(lb), float(ub)) for lb, ub in bounds]

        def objective_function(theta: Any) -> tuple[float, np.ndarray | None, Any]:
            nonlocal evaluations
            evaluations += 1
            theta = np.asarray(theta, dtype=np.float64).reshape(x0.shape)
            value, gradient = wrapped(theta)
            if progress is not None:
                state = progress(theta, value, gradient)
            else:
                state = ObjectiveProgress(theta.copy(), value, gradient, iterations, evaluations)
            return value, (gradient if self.compute_gradient else None), state

        def iteration_callback() -> None:
            nonlocal iterations
            iterations += 1

        output = self.method(x0.copy(), pairs, objective_function, iteration_callback, **self.options)
        try:
            final, converged = output
        except (TypeError, ValueError) as error:
            raise TypeError("A custom optimization method must return (final, converged).") from error
        final = np.asarray(final, dtype=np.float64).reshape(-1)
        if final.size != x0.size:
            raise ValueError(f"The custom optimization method returned {final.size} parameters for {x0.size}.")
        return final, bool(converged), "The custom optimization method returned.", iterations

    def _knitro(self, wrapped: Callable, x0: np.ndarray, bounds: list | None) -> tuple[np.ndarray, bool, str, int]:
        """Minimize with Knitro's callable library (its ``KN_*`` Python API): the objective as an evaluation
        callback, its dense gradient as a gradient callback (Knitro's finite differences without one)."""
        import knitro

        context = knitro.KN_new()
        try:
            knitro.KN_add_vars(context, x0.size)
            if bounds is not None:
                lower, upper = np.asarray(bounds, dtype=np.float64).reshape(-1, 2).T
                infinity = knitro.KN_INFINITY
                knitro.KN_set_var_lobnds(context, xLoBnds=np.maximum(lower, -infinity).tolist())
                knitro.KN_set_var_upbnds(context, xUpBnds=np.minimum(upper, infinity).tolist())
            knitro.KN_set_var_primal_init_values(context, xInitVals=x0.tolist())
            last: dict[str, Any] = {}

            def evaluate(kc: Any, cb: Any, request: Any, result: Any, user: Any) -> int:
                theta = np.array(request.x, dtype=np.float64)
                if last.get("theta") is None or not np.array_equal(last["theta"], theta):
                    last["theta"], (last["value"], last["gradient"]) = theta, wrapped(theta)
                if request.type == knitro.KN_RC_EVALFC:
                    result.obj = float(last["value"])
                else:
                    result.objGrad = np.asarray(last["gradient"], dtype=np.float64).tolist()
                return 0

            callback = knitro.KN_add_eval_callback(context, evalObj=True, funcCallback=evaluate)
            if self.compute_gradient:
                knitro.KN_set_cb_grad(context, callback, objGradIndexVars=knitro.KN_DENSE, gradCallback=evaluate)
            for name, value in self.options.items():
                knitro.KN_set_param_by_name(context, name, value)
            status = knitro.KN_solve(context)
            _, _, x, _ = knitro.KN_get_solution(context)
            iterations = int(knitro.KN_get_number_iters(context))
        finally:
            knitro.KN_free(context)
        return np.asarray(x, dtype=np.float64), status == 0, f"Knitro returned status {status}.", iterations
