"""Multi-start GMM for :meth:`Problem.solve <demandkit.blp.problem.Problem.solve>`: what a start is, and what is
read off its results. The machinery (drawing, executors, the best, the table, the warning) is
:mod:`demandkit.multistart`'s.

A start is a set of starting values of :math:`\\Sigma`, :math:`\\Pi`, :math:`\\rho` and of the elements of
:math:`\\beta` and :math:`\\gamma` given starting values (``sigma``, ``pi``, ``rho``, ``beta``, ``gamma``;
``delta`` may also be given per start). Drawn starts move the free elements of :math:`\\theta` (elements fixed at
zero stay there), in units :math:`f_p` of one utility unit per root mean square of what the parameter multiplies:
:math:`1/\\text{rms}(x_k)` for :math:`\\Sigma_{kl}` and an element of :math:`\\beta` on :math:`x_k`,
:math:`1/(\\text{rms}(x_k)\\,\\text{rms}(d_d))` for :math:`\\Pi_{kd}`, :math:`1/\\text{rms}(w_k)` for
:math:`\\gamma_k`, and :math:`0.5` for :math:`\\rho` (which stays within its bounds).

Starts are compared by the objective of the **first** GMM step, whose weighting matrix is the same for every
start (unless ``W`` is updated at each start's values with ``initial_update=True``); a second step re-weights with
each start's own first-step estimates, so its objectives are not comparable across starts. The table's
``objective`` is the first step's, ``final_objective`` the returned results' ``objective``.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..configurations.optimization import Optimization
from ..exceptions import SpecificationError
from ..multistart import Estimator, StartsOptions, Summary, check_arguments, draw, run
from .parameters import ParameterSpace
from .product_demographics import demographic_rows
from .results import ProblemResults

#: the arguments of ``solve`` that a start may set
START_ARGUMENTS = ("sigma", "pi", "rho", "beta", "gamma", "delta")
#: :math:`f_p` of :math:`\\rho`
RHO_UNIT = 0.5


def solve_from_starts(
    problem: Any,
    starts: int | list[Any],
    starts_options: Mapping[str, Any] | None,
    executor: Executor | None,
    arguments: dict[str, Any],
) -> ProblemResults:
    """Solve ``problem`` from every start with ``arguments`` (the other arguments of ``solve``) and return the best
    start's results, with the table of starts as ``results.starts``."""
    starts = check_arguments(starts, starts_options, executor)
    options = StartsOptions.build(starts_options)
    progress = bool(arguments.pop("progress", False))
    if isinstance(starts, int):
        given = _drawn(problem, starts, options, arguments)
    else:
        given = [_checked(start, k) for k, start in enumerate(starts)]
    calls = [{**arguments, **start, "progress": False} for start in given]
    estimator = Estimator(problem, _solve, _summarize, "objective", 1.0)
    local = problem.device.type == "cpu"
    results, table = run(estimator, calls, executor, options, given, local, progress, stacklevel=4)
    results.starts = table
    return results


def _checked(start: Any, k: int) -> dict[str, Any]:
    if not isinstance(start, Mapping):
        raise SpecificationError(
            f"starts[{k}] must be a dict of starting values with keys among {list(START_ARGUMENTS)}; received "
            f"{type(start).__name__}."
        )
    unknown = sorted(set(start) - set(START_ARGUMENTS))
    if unknown:
        raise SpecificationError(f"starts[{k}] has keys {unknown}; a start sets only {list(START_ARGUMENTS)}.")
    return dict(start)


def _drawn(problem: Any, count: int, options: StartsOptions, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """The given starting values and ``count - 1`` draws around them, as ``solve`` arguments."""
    optimization = arguments.get("optimization")
    bounded = optimization.supports_bounds if isinstance(optimization, Optimization) else True  # L-BFGS-B default
    bounds = {name: arguments.get(name) for name in _BOUNDS}
    space = ParameterSpace.for_problem(
        problem,
        arguments.get("sigma"),
        arguments.get("pi"),
        arguments.get("rho"),
        bounded,
        beta=arguments.get("beta"),
        gamma=arguments.get("gamma"),
        **bounds,
    )
    thetas = draw(space.theta0, count, options, _units(problem, space), space.lower, space.upper)
    return [_arguments(problem, space, theta) for theta in thetas]


_BOUNDS = ("sigma_bounds", "pi_bounds", "rho_bounds", "beta_bounds", "gamma_bounds")


def _rms(matrix: np.ndarray | None, column: int) -> float:
    if matrix is None or matrix.size == 0:
        return 1.0
    value = float(np.sqrt(np.nanmean(np.asarray(matrix[:, column], dtype=np.float64) ** 2)))
    return value if np.isfinite(value) and value > 0 else 1.0


def _units(problem: Any, space: ParameterSpace) -> np.ndarray:
    """:math:`f_p`: one utility (or cost) unit per root mean square of what each parameter multiplies."""
    design = problem.design
    demographics = demographic_rows(problem)
    if demographics is not None:
        demographics = np.asarray(demographics).reshape(-1, len(design.demographics_labels))
    units = [1 / _rms(design.X2, r) for r, _ in zip(*space.sigma_index, strict=True)]
    units += [1 / (_rms(design.X2, r) * _rms(demographics, d)) for r, d in zip(*space.pi_index, strict=True)]
    units += [RHO_UNIT] * len(space.rho_index)
    units += [1 / _rms(design.X1_raw, k) for k in space.beta_index]
    units += [1 / _rms(problem.X3, k) for k in space.gamma_index]
    return np.asarray(units, dtype=np.float64)


def _arguments(problem: Any, space: ParameterSpace, theta: np.ndarray) -> dict[str, Any]:
    """``theta`` as ``sigma``, ``pi``, ``rho``, ``beta`` and ``gamma`` arguments (those the problem has)."""
    n_sigma, n_pi, n_rho = len(space.sigma_index[0]), len(space.pi_index[0]), len(space.rho_index)
    sigma, pi, rho = space.sigma0.copy(), space.pi0.copy(), space.rho0.copy()
    sigma[space.sigma_index] = theta[:n_sigma]
    pi[space.pi_index] = theta[n_sigma : n_sigma + n_pi]
    rho[space.rho_index] = theta[n_sigma + n_pi : n_sigma + n_pi + n_rho]
    beta, gamma = space.beta0.copy(), space.gamma0.copy()
    beta[space.beta_index] = theta[space.P_demand : space.P_demand + len(space.beta_index)]
    gamma[space.gamma_index] = theta[space.P_demand + len(space.beta_index) :]
    start: dict[str, Any] = {"sigma": sigma} if problem.K2 else {}
    if problem.D:
        start["pi"] = pi
    if problem.H:
        start["rho"] = rho.reshape(-1, 1)
    if len(space.beta_index):
        start["beta"] = beta
    if len(space.gamma_index):
        start["gamma"] = gamma
    return start


def _solve(problem: Any, arguments: Mapping[str, Any]) -> ProblemResults:
    """One start (module level, so that it pickles)."""
    return problem.solve(**arguments)


def _summarize(results: ProblemResults) -> Summary:
    first = results._steps[0]
    return Summary(
        value=float(first.evaluation.objective),
        converged=bool(results.converged),
        gradient_norm=float(results.gradient_norm),
        iterations=int(results.cumulative_optimization_iterations),
        estimate=np.asarray(results.theta, dtype=np.float64).copy(),
        extra={"final_objective": float(results.objective)},
    )
