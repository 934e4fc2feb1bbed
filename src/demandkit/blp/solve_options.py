"""PyBLP's options of ``Problem.solve`` that change how the objective is evaluated, validated once.

:class:`SolveOptions` gathers ``scale_objective``, ``finite_differences``, ``error_behavior``, ``error_punishment``,
``fp_type`` and ``shares_bounds``, and handles the errors of an evaluation by ``error_behavior``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..configurations.optimization import OptimizationResult
from ..configurations.options import check_choice
from ..exceptions import ConvergenceWarning, SpecificationError
from .failures import EstimationError, where

FPType = Literal["safe_linear", "linear", "safe_nonlinear", "nonlinear"]
ErrorBehavior = Literal["revert", "punish", "raise"]
SolveDeltaBehavior = Literal["first", "last", "logit"]

DEFAULT_SHARES_BOUNDS = (1e-300, None)
"""PyBLP's default ``shares_bounds``: simulated shares are bounded from below by ``1e-300`` in the contraction."""

REVERTED_OBJECTIVE = 1e10
"""The objective that an evaluation whose objective is not finite reverts to when there is no earlier finite one
(``error_behavior='revert'``), PyBLP's value."""


@dataclass(frozen=True)
class SolveOptions:
    """How the GMM objective is evaluated during ``solve`` (PyBLP's arguments of the same names).

    Parameters
    ----------
    scale_objective : bool
        Scale the objective (and its gradient and Hessian) by :math:`N`, PyBLP's default; ``False`` reports
        :math:`\\bar g'W\\bar g`.
    finite_differences : bool
        Differentiate the stacked left-hand sides :math:`(\\delta - X_1\\beta, \\tilde c - X_3\\gamma)` and the micro
        statistics by central finite differences (PyBLP's step :math:`\\epsilon = \\sqrt{\\epsilon_{mach}}`,
        :math:`\\pm\\epsilon/2`) instead of autograd, for the gradient and the moments' Jacobian.
    error_behavior : {'revert', 'punish', 'raise'}
        What an evaluation whose objective or gradient is not finite, or whose inversion for :math:`\\delta` did not
        converge in some market, returns to the optimizer: ``'revert'`` reverts a non-finite objective and non-finite
        gradient elements to the last finite evaluation's (:data:`REVERTED_OBJECTIVE` and zeros before any) and scales
        the objective by ``error_punishment``; ``'punish'`` returns ``error_punishment`` and a zero gradient;
        ``'raise'`` raises :class:`~demandkit.blp.failures.EstimationError` (also when the optimizer does not
        converge, as PyBLP).
    error_punishment : float
        Non-negative; see ``error_behavior``.
    fp_type : {'safe_linear', 'linear', 'safe_nonlinear', 'nonlinear'}
        The linear types iterate :math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)`, the nonlinear ones
        :math:`e^\\delta \\leftarrow S e^\\delta/s(\\delta)` (the same map on :math:`e^\\delta`, so an accelerator
        extrapolates and the tolerance applies to :math:`e^\\delta`); the ``safe_`` and plain variants are the same,
        as demandkit's share kernels are always overflow-safe. All solve the same fixed point. (PyBLP 1.3 iterates
        the linear contraction for every type, as its test for the linear types, ``'linear' in fp_type``, matches
        the nonlinear ones too; its results agree with demandkit's at convergence.)
    shares_bounds : tuple, optional
        ``(lb, ub)``, each a float or None (NaN, None and a non-positive ``lb`` mean unbounded): simulated shares
        are clipped to them in the linear contractions. PyBLP's default ``(1e-300, None)``; no effect with a
        nonlinear ``fp_type``.
    """

    scale_objective: bool = True
    finite_differences: bool = False
    error_behavior: str = "revert"
    error_punishment: float = 1.0
    fp_type: str = "safe_linear"
    shares_bounds: Any = DEFAULT_SHARES_BOUNDS

    def __post_init__(self) -> None:
        for name in ("scale_objective", "finite_differences"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise SpecificationError(f"{name} must be True or False; received {getattr(self, name)!r}.")
        check_choice("error_behavior", self.error_behavior, ErrorBehavior)
        check_choice("fp_type", self.fp_type, FPType)
        punishment = self.error_punishment
        if isinstance(punishment, bool) or not isinstance(punishment, int | float) or not punishment >= 0:
            raise SpecificationError(f"error_punishment must be a non-negative float; received {punishment!r}.")
        object.__setattr__(self, "error_punishment", float(punishment))
        object.__setattr__(self, "shares_bounds", _coerce_bounds(self.shares_bounds))

    @property
    def nonlinear(self) -> bool:
        """Whether the contraction iterates on :math:`e^\\delta`."""
        return "nonlinear" in self.fp_type

    @property
    def contraction_bounds(self) -> tuple[float, float] | None:
        """``(lb, ub)`` that the contraction clips simulated shares to, or None when it clips nothing (no finite
        bound, or a nonlinear ``fp_type``)."""
        lower, upper = self.shares_bounds
        if self.nonlinear or (lower <= 0 and math.isinf(upper)):
            return None
        return lower, upper

    def after_error(
        self, evaluation: Any, previous: tuple[float, np.ndarray] | None, problem: Any
    ) -> tuple[float, np.ndarray]:
        """The objective and gradient the optimizer gets from an evaluation with an error (a non-finite objective or
        gradient element, or an inversion that did not converge), by ``error_behavior``.

        Parameters
        ----------
        evaluation : Evaluation
            The evaluation (its ``objective``, ``gradient``, ``fp_failures``, ``theta`` and ``converged``).
        previous : tuple, optional
            ``(objective, gradient)`` of the last evaluation whose values were finite; None before any.
        problem : Problem
            For the message.

        Raises
        ------
        EstimationError
            With ``error_behavior='raise'``.
        """
        gradient = np.asarray(evaluation.gradient, dtype=np.float64)
        if self.error_behavior == "raise":
            raise EstimationError(f"error_behavior='raise': {describe_errors(evaluation, problem)}.")
        if self.error_behavior == "punish":
            return self.error_punishment, np.zeros_like(gradient)
        last_objective, last_gradient = previous or (REVERTED_OBJECTIVE, np.zeros_like(gradient))
        objective = evaluation.objective if np.isfinite(evaluation.objective) else last_objective
        return objective * self.error_punishment, np.where(np.isfinite(gradient), gradient, last_gradient)

    def reported(self, evaluation: Any) -> Any:
        """A step's final evaluation as the results report it: as PyBLP's, its objective and gradient are those the
        optimizer would get (:meth:`after_error`) when an inversion failed there (the values are finite by then)."""
        if not evaluation.fp_failures or self.error_behavior == "raise":
            return evaluation
        objective, gradient = self.after_error(evaluation, None, None)
        return dataclasses.replace(evaluation, objective=float(objective), gradient=gradient)

    def check_evaluation(self, what: str, evaluation: Any, problem: Any) -> None:
        """With ``error_behavior='raise'``, raise :class:`EstimationError` if an evaluation outside the optimizer (the
        initial update's) failed to invert some market or is not finite."""
        if self.error_behavior != "raise":
            return
        finite = np.isfinite(evaluation.objective) and np.isfinite(evaluation.gradient).all()
        if evaluation.fp_failures or not finite:
            raise EstimationError(f"error_behavior='raise': {what}: {describe_errors(evaluation, problem)}.")

    def check_step(self, step: int, optimized: OptimizationResult, evaluation: Any, problem: Any) -> None:
        """At the end of a GMM step, an optimizer that did not converge or an inversion that failed at the estimates:
        a :class:`~demandkit.exceptions.ConvergenceWarning` each, or with ``error_behavior='raise'`` (PyBLP's) an
        :class:`EstimationError`."""
        messages = []
        if not optimized.converged:
            norm = float(np.abs(optimized.gradient).max()) if optimized.gradient.size else 0.0
            advice = "Try other starting values, a different Optimization method or a looser gtol."
            if optimized.message.upper().startswith("ABNORMAL"):
                advice = (
                    "The line search could not decrease the objective any further, which usually means that it is "
                    "flat to floating-point precision there (PyBLP's L-BFGS-B stops the same way); with a small "
                    "gradient the estimates are at the optimum to that precision. " + advice
                )
            messages.append(
                f"GMM step {step}: the optimizer stopped without converging ({optimized.message.strip()}) with "
                f"gradient infinity norm {norm:.2e}. {advice}"
            )
        if not bool(evaluation.converged.all()):
            messages.append(
                f"GMM step {step}: the inversion for delta did not converge in "
                f"{int((~evaluation.converged).sum())} market(s) at the final parameters; see results.fp_converged."
            )
        if messages and self.error_behavior == "raise":
            raise EstimationError("error_behavior='raise': " + " ".join(messages))
        for message in messages:
            warnings.warn(message, ConvergenceWarning, stacklevel=4)


def describe_errors(evaluation: Any, problem: Any) -> str:
    """What went wrong in an evaluation, and where (its parameters and the markets whose inversion failed)."""
    errors = []
    if not np.isfinite(evaluation.objective):
        errors.append("the objective is not finite")
    if not np.isfinite(evaluation.gradient).all():
        errors.append("the gradient is not finite")
    if evaluation.fp_failures:
        errors.append("the inversion for delta failed")  # where() counts the markets
    return f"{' and '.join(errors) or 'an error'}{where(problem, evaluation)}"


def _coerce_bounds(bounds: Any) -> tuple[float, float]:
    """``shares_bounds`` as ``(lb, ub)`` floats, ``-inf``/``inf`` where unbounded."""
    if bounds is None:
        return (-math.inf, math.inf)
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise SpecificationError(f"shares_bounds must be None or a tuple (lb, ub); received {bounds!r}.")
    values = []
    for value, default in zip(bounds, (-math.inf, math.inf), strict=True):
        try:
            number = default if value is None else float(value)
        except (TypeError, ValueError):
            raise SpecificationError(f"shares_bounds must hold floats or None; received {bounds!r}.") from None
        values.append(default if math.isnan(number) else number)
    if values[0] >= values[1] or values[1] <= 0:
        raise SpecificationError(f"shares_bounds must have lb < ub and a positive ub; received {bounds!r}.")
    return values[0], values[1]
