"""Estimation that breaks down numerically, explained: the columns of extreme scale that usually cause it.

Random coefficients multiply X2 columns and demographics, so starting values of order one make utilities overflow
when a column is in the thousands, and the GMM's linear algebra loses precision with columns that large. A failure
(a non-finite objective, gradient or moment Jacobian, a singular matrix) becomes an error that names such columns,
or says that none is extreme.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..exceptions import DemandkitError, InvalidDataError, SpecificationError


class EstimationError(DemandkitError, RuntimeError):
    """An error met during estimation with ``error_behavior='raise'`` (PyBLP's): an objective or gradient that is not
    finite, an inversion for :math:`\\delta` that did not converge, or an optimizer that stopped without converging.

    The message says which, and where. ``error_behavior='revert'`` (the default) or ``'punish'`` carries on instead.
    """


EXTREME_SCALE = 1e4
"""Columns with larger absolute values are named as the likely culprit when estimation breaks down numerically:
random coefficients multiply X2 columns and demographics, so starting values of order one make utilities overflow,
and the GMM's linear algebra loses precision with columns that large."""


def explain_failures(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a linear-algebra failure of ``function(problem, ...)`` into :func:`numerical_failure`'s error."""

    @functools.wraps(function)
    def wrapped(problem: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(problem, *args, **kwargs)
        except torch.linalg.LinAlgError as error:
            raise numerical_failure(
                problem, f"A linear-algebra routine failed during the estimation ({error})"
            ) from error

    return wrapped


def column_scales(problem: Any) -> dict[str, tuple[list[str], float]]:
    """For each column label: the matrices that hold it (X1, X2, ...) and its largest absolute value there."""
    design = problem.design
    matrices = [
        ("X1", design.X1_labels, design.X1_raw),
        ("X2", design.X2_labels, design.X2),
        ("demographics", design.demographics_labels, problem.demographics),
        ("demand instruments", design.ZD_labels, design.ZD),
        ("X3", problem.X3_labels, problem.X3),
        ("supply instruments", problem.ZS_labels, problem.ZS),
    ]
    scales: dict[str, tuple[list[str], float]] = {}
    for kind, labels, matrix in matrices:
        if matrix is None or matrix.size == 0:
            continue
        largest = np.nanmax(np.abs(matrix), axis=0)
        for name, scale in zip(labels, largest, strict=True):
            kinds, previous = scales.get(name, ([], 0.0))
            scales[name] = ([*kinds, kind], max(previous, float(scale)))
    return scales


def where(problem: Any, evaluation: Any) -> str:
    """Where an evaluation broke down: its parameters and the markets whose inversion failed."""
    text = f" at theta = {np.array2string(evaluation.theta, precision=4, threshold=10)}"
    failed = int((~evaluation.converged).sum())
    if failed:
        text += f" (the inversion for delta did not converge in {failed} of {problem.T} markets)"
    return text


def numerical_failure(problem: Any, what: str) -> DemandkitError:
    """The error for an estimation that broke down numerically, naming the columns of extreme scale if any."""
    scales = column_scales(problem)
    extreme = sorted(
        ((name, kinds, scale) for name, (kinds, scale) in scales.items() if scale > EXTREME_SCALE),
        key=lambda item: -item[2],
    )
    if extreme:
        names = "; ".join(
            f"{name!r} ({', '.join(kinds)}; |values| up to {scale:.2g})" for name, kinds, scale in extreme
        )
        return InvalidDataError(
            f"{what}. These columns have an extreme scale: {names}. Random coefficients multiply them and the GMM "
            "solves linear systems with them, so utilities overflow and the linear algebra loses precision. Rescale "
            "them to values of order one (prices in thousands rather than units, say) and build the problem again."
        )
    return SpecificationError(
        f"{what}. No column has an extreme scale (above {EXTREME_SCALE:.0e}); try starting values of sigma and pi "
        "(or rho) nearer to zero, another Iteration, or characteristics rescaled nearer to one."
    )
