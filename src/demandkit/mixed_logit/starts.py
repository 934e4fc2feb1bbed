"""Multi-start maximum simulated likelihood for :meth:`MixedLogit.fit <demandkit.mixed_logit.model.MixedLogit.fit>`:
what a start is, and what is read off its results. The machinery (drawing, executors, the best, the table, the
warning) is :mod:`demandkit.multistart`'s.

A start is ``fit``'s ``initial``: a full parameter vector in the order of :attr:`MixedLogit.names`, or a dict (or
Series) by name whose missing names take the default starting values. Drawn starts move every parameter around the
first start (``initial``, or the defaults) in units :math:`f_p` of one utility unit per standard deviation of the
parameter's covariate (one unit on the log scale of a lognormal coefficient). Starts are compared by their
simulated log-likelihood (the same draws serve every start).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..device import resolve_device
from ..exceptions import SpecificationError
from ..multistart import Estimator, StartsOptions, Summary, check_arguments, draw, run
from .results import MixedLogitResults


def fit_from_starts(
    model: Any,
    starts: int | list[Any],
    starts_options: Mapping[str, Any] | None,
    executor: Executor | None,
    arguments: dict[str, Any],
) -> MixedLogitResults:
    """Fit ``model`` from every start with ``arguments`` (the other arguments of ``fit``) and return the best
    start's results, with the table of starts as ``results.starts``."""
    starts = check_arguments(starts, starts_options, executor)
    options = StartsOptions.build(starts_options)
    progress = bool(arguments.pop("progress", True))
    if isinstance(starts, int):
        given: list[Any] = _drawn(model, starts, options, arguments)
    else:
        given = [_checked(model, start, k) for k, start in enumerate(starts)]
    calls = [{**arguments, "initial": start, "progress": False} for start in given]
    estimator = Estimator(model, _fit, _summarize, "loglikelihood", -1.0)
    local = resolve_device(arguments.get("device", "cpu")).type == "cpu"
    results, table = run(estimator, calls, executor, options, given, local, progress, stacklevel=4)
    results.starts = table
    return results


def _checked(model: Any, start: Any, k: int) -> Any:
    """A start as given (a dict by name or a full vector), checked against the parameters' names."""
    if isinstance(start, (Mapping, pd.Series)):
        unknown = sorted(set(start.keys()) - set(model.names))
        if unknown:
            raise SpecificationError(
                f"starts[{k}] names unknown parameters {unknown}; the parameters are {model.names}."
            )
        return dict(start)
    values = np.asarray(start, dtype=np.float64).reshape(-1)
    if values.size != len(model.names) or not np.isfinite(values).all():
        raise SpecificationError(
            f"starts[{k}] must be a dict by parameter name or {len(model.names)} finite values ({model.names}); "
            f"received {values.size} values."
        )
    return values


def _drawn(model: Any, count: int, options: StartsOptions, arguments: dict[str, Any]) -> list[np.ndarray]:
    """The first start (``initial`` or the defaults) and ``count - 1`` draws around it, as full vectors."""
    dtype = arguments.get("dtype", torch.float64)
    device = resolve_device(arguments.get("device", "cpu"))
    method = model._method(arguments.get("gradient"))
    base = model._starting_values(arguments.get("initial"), device, dtype, arguments.get("chunk_size"), method)
    return draw(base, count, options, _units(model))


def _units(model: Any) -> np.ndarray:
    """:math:`f_p`: one utility unit per standard deviation of each parameter's covariate (1 for a lognormal)."""
    panel, space = model.panel, model.space
    scale = panel.X[~panel.outside].std(axis=0)
    per_coefficient = 1 / np.where(scale > 0, scale, 1.0)  # in the user's order of coefficients
    lognormal = [k for k, name in enumerate(space.coefficients) if space.distributions.get(name) == "lognormal"]
    per_coefficient[lognormal] = 1.0
    return per_coefficient[space.order[space.parameter_coefficient]]


def _fit(model: Any, arguments: Mapping[str, Any]) -> MixedLogitResults:
    """One start (module level, so that it pickles)."""
    return model.fit(**arguments)


def _summarize(results: MixedLogitResults) -> Summary:
    statistics = results.statistics
    return Summary(
        value=-float(results.loglikelihood),
        converged=bool(statistics["converged"]),
        gradient_norm=float(np.max(np.abs(results.gradient.to_numpy()))) if len(results.gradient) else 0.0,
        iterations=int(statistics["iterations"]),
        estimate=np.asarray(results.theta, dtype=np.float64).copy(),
    )
