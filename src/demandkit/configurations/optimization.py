"""``Optimization``: the bridge from a differentiable objective to scipy.optimize."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize

from .options import OptimizationMethod, check_choice

_BOUNDED = {"l-bfgs-b", "trust-constr", "nelder-mead"}
_GRADIENT = {"l-bfgs-b", "bfgs", "trust-constr"}
_SCIPY_NAMES = {"l-bfgs-b": "L-BFGS-B", "bfgs": "BFGS", "trust-constr": "trust-constr", "nelder-mead": "Nelder-Mead"}


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
class Optimization:
    """Configuration for minimizing the GMM objective over the nonlinear parameters :math:`\\theta`.

    Parameters
    ----------
    method : {'l-bfgs-b', 'bfgs', 'trust-constr', 'nelder-mead', 'return'}
        scipy.optimize's method of that name, or ``'return'`` to evaluate at the starting values.
    method_options : dict, optional
        Passed to ``scipy.optimize.minimize`` as ``options`` (``gtol``, ``maxiter``, ...). PyBLP's default
        ``gtol`` of 1e-8 is used where the method takes one and none is given.
    compute_gradient : bool
        Whether to pass the analytic (autograd) gradient to the optimizer.
    """

    method: OptimizationMethod = "l-bfgs-b"
    method_options: dict[str, Any] | None = None
    compute_gradient: bool = True
    options: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("Optimization method", self.method, OptimizationMethod)
        options = dict(self.method_options or {})
        if self.method in _GRADIENT:
            options.setdefault("gtol", 1e-8)
        object.__setattr__(self, "options", options)
        if self.method not in _GRADIENT:
            object.__setattr__(self, "compute_gradient", False)

    @property
    def supports_bounds(self) -> bool:
        return self.method in _BOUNDED

    def __str__(self) -> str:
        if self.method == "return":
            return "Configured to evaluate the objective at the starting values without optimizing."
        return f"Configured to optimize with scipy's {_SCIPY_NAMES[self.method]} and options {self.options}."

    def minimize(
        self,
        objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
        x0: np.ndarray,
        bounds: list[tuple[float, float]] | None,
    ) -> OptimizationResult:
        """Minimize ``objective(x) -> (value, gradient)`` from ``x0``."""
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
        use_bounds = bounds if self.supports_bounds and bounds is not None else None
        if use_bounds is not None and all(np.isinf(lb) and np.isinf(ub) for lb, ub in use_bounds):
            use_bounds = None
        if self.compute_gradient:
            result = scipy.optimize.minimize(
                wrapped, x0, jac=True, method=_SCIPY_NAMES[self.method], bounds=use_bounds, options=self.options
            )
        else:
            result = scipy.optimize.minimize(
                lambda x: wrapped(x)[0],
                x0,
                method=_SCIPY_NAMES[self.method],
                bounds=use_bounds,
                options=self.options,
            )
        x = np.asarray(result.x, dtype=np.float64)
        value, gradient = objective(x)
        return OptimizationResult(
            x,
            value,
            gradient,
            bool(result.success),
            str(result.message),
            int(getattr(result, "nit", 0)),
            evaluations,
            time.perf_counter() - start,
            tuple(trace),
        )
