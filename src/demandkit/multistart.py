"""Multi-start estimation: solve one model from several starting values, on any executor, and keep the best.

Both estimators (:meth:`demandkit.Problem.solve` and :meth:`demandkit.MixedLogit.fit`) take ``starts``,
``starts_options`` and ``executor``, and hand this module what is specific to them as small functions: ``fit``
(estimate from one start), ``summarize`` (read the compared value, convergence, gradient norm and iterations off
the results). This module draws the starts, runs them, chooses the best, builds the table of starts and warns
about distinct optima.

**Drawing starts.** ``starts=n`` solves from the given (or default) starting values :math:`\\theta_0` and from
:math:`n - 1` draws

.. math:: \\theta_s = \\theta_0 + \\text{scale} \\cdot m \\odot z_s, \\qquad z_s \\sim N(0, I),
    \\qquad m_p = \\max(|\\theta_{0p}|, f_p),

where :math:`f_p` is the estimator's unit of parameter :math:`p` (a coefficient giving utility differences of
about one), from :class:`numpy.random.Generator` seeded with ``starts_options['seed']``. Draws outside a bound
are reflected into it (and kept a thousandth of the width inside a bounded interval), so that no free parameter
becomes fixed at zero.

**Choosing the best.** Each start is estimated in full. Among the starts that converged (all the starts that
finished, if none converged) the one with the lowest compared value (GMM objective, negative log-likelihood) wins;
ties go to the earlier start. Starts that raise are recorded in the table, and only if every start raises is the
first start's error raised. The winner's results are returned as a single estimation's would be, its warnings
(``ConvergenceWarning``, say) re-emitted; the other starts' warnings are counted in the table.

**Distinct optima.** When converged starts end at values worse than the best by more than
``rtol * max(|best|, 1)`` (``starts_options['rtol']``, :data:`DEFAULT_RTOL` by default), a
:class:`~demandkit.exceptions.DistinctOptimaWarning` (a ``UserWarning``) says how many.

**Executors.** ``executor`` is any :class:`concurrent.futures.Executor`. By default the starts run in a local
:class:`~concurrent.futures.ProcessPoolExecutor` with one worker per core (at most one per start) and one torch
thread per worker, or one after another in this process when there is one start, one core, or the estimator asks
for it (a GPU). The estimator is pickled once and every start unpickles its own copy (so starts run in threads
do not share workspaces); the winner's results come back bound to the caller's own estimator object. A
user's executor keeps its workers' torch threads (give a ``ProcessPoolExecutor`` an ``initializer`` that calls
``torch.set_num_threads(1)``). While starts run in this process (threads, or one after another), the process's
warning filters show every warning, and each start's are recorded rather than shown.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import DistinctOptimaWarning, SpecificationError

#: standard deviation of the draws in units of :math:`m_p` (see the module docstring)
DEFAULT_SCALE = 1.0
#: relative gap between the best value and another converged start's above which the optima count as distinct
DEFAULT_RTOL = 1e-4
#: the keys of ``starts_options``
OPTIONS = ("seed", "scale", "rtol")
#: what stands for the estimator in the pickled results that come back from a worker
_ESTIMATOR = "demandkit.multistart.estimator"

Fit = Callable[[Any, Mapping[str, Any]], Any]

# not fork: a worker forked after torch's OpenMP threads ran here could hang in torch.linalg.eigh (3 runs in 10)
WORKER_CONTEXT = multiprocessing.get_context("forkserver")


@dataclass(frozen=True)
class StartsOptions:
    """``starts_options``: ``seed`` of :func:`numpy.random.default_rng` for the draws (``0``; None draws fresh
    entropy), their ``scale`` (standard deviation in units of :math:`m_p`, ``1``) and the ``rtol`` of distinct
    optima (:data:`DEFAULT_RTOL`)."""

    seed: int | None = 0
    scale: float = DEFAULT_SCALE
    rtol: float = DEFAULT_RTOL

    @classmethod
    def build(cls, options: Mapping[str, Any] | None) -> StartsOptions:
        """Check a ``starts_options`` mapping (None gives the defaults)."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise SpecificationError(
                f"starts_options must be a dict with keys among {list(OPTIONS)}; received {type(options).__name__}."
            )
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise SpecificationError(f"starts_options has unknown keys {unknown}; the keys are {list(OPTIONS)}.")
        seed = options.get("seed", 0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise SpecificationError(f"starts_options['seed'] must be a non-negative int or None; received {seed!r}.")
        scale, rtol = options.get("scale", DEFAULT_SCALE), options.get("rtol", DEFAULT_RTOL)
        for name, value, least in (("scale", scale, 0.0), ("rtol", rtol, -1.0)):
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not (number and least < value < np.inf) or (name == "rtol" and value < 0):
                kind = "positive" if name == "scale" else "non-negative"
                raise SpecificationError(f"starts_options[{name!r}] must be a {kind} number; received {value!r}.")
        return cls(None if seed is None else int(seed), float(scale), float(rtol))


def check_arguments(starts: Any, starts_options: Any, executor: Any) -> int | list[Any] | None:
    """Check ``starts`` (None, an int of at least 1 or a non-empty list of starts) and ``executor`` (None or a
    :class:`concurrent.futures.Executor`); ``starts_options`` and ``executor`` need ``starts``.

    Returns
    -------
    int, list or None
        The number of starts, the list of starts, or None (a single estimation, as without multi-start).
    """
    if executor is not None and not isinstance(executor, Executor):
        raise SpecificationError(
            f"executor must be a concurrent.futures.Executor (a ProcessPoolExecutor or ThreadPoolExecutor, say) or "
            f"None; received {type(executor).__name__}."
        )
    if starts is None:
        if starts_options is not None or executor is not None:
            raise SpecificationError(
                "starts_options and executor apply to multi-start estimation; pass starts (a number of starts or a "
                "list of starting values) with them."
            )
        return None
    if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool):
        if starts < 1:
            raise SpecificationError(f"starts must be at least 1 (or None); received {starts}.")
        return int(starts)
    if isinstance(starts, (list, tuple, np.ndarray)):
        if len(starts) == 0:
            raise SpecificationError("starts is an empty list; give at least one start (or None).")
        return list(starts)
    raise SpecificationError(
        f"starts must be None, a number of starts (an int of at least 1) or a list of starting values; received "
        f"{type(starts).__name__}."
    )


def draw(
    base: np.ndarray,
    count: int,
    options: StartsOptions,
    units: np.ndarray | float = 1.0,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The first start ``base`` (:math:`\\theta_0`) and ``count - 1`` draws around it (see the module docstring),
    each inside ``[lower, upper]``; ``units`` are the :math:`f_p`, the least standard deviations before ``scale``."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    lower = np.full(base.shape, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    upper = np.full(base.shape, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    spread = options.scale * np.maximum(np.abs(base), np.broadcast_to(np.asarray(units, dtype=np.float64), base.shape))
    rng = np.random.default_rng(options.seed)
    starts = [base.copy()]
    for _ in range(count - 1):
        starts.append(_inside(base + spread * rng.standard_normal(base.shape), lower, upper))
    return starts


def _inside(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Reflect values across the bounds they cross: folded into a bounded interval (kept a thousandth of its width
    inside), mirrored at a one-sided bound."""
    finite = np.isfinite(lower) & np.isfinite(upper) & (upper > lower)
    width = np.where(finite, upper - lower, 1.0)
    folded = np.mod(theta - np.where(finite, lower, 0.0), 2 * width)
    folded = np.where(finite, lower + np.where(folded > width, 2 * width - folded, folded), theta)
    theta = np.where(finite, folded, theta)
    theta = np.where(~finite & (theta < lower), 2 * lower - theta, theta)
    theta = np.where(~finite & (theta > upper), 2 * upper - theta, theta)
    margin = np.where(finite, 1e-3 * width, 0.0)
    return np.clip(theta, lower + margin, upper - margin)


# ------------------------------------------------------------------------------------------ running the starts


@dataclass(frozen=True)
class Summary:
    """What the estimator reads off one start's results: the compared ``value`` (lower is better: a GMM objective,
    a negative log-likelihood), ``converged``, the infinity norm of the gradient, optimizer ``iterations``, the
    ``estimate`` and ``extra`` columns of the table."""

    value: float
    converged: bool
    gradient_norm: float
    iterations: int
    estimate: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One start: its summary and results (pickled when it ran on a copy of the estimator), or its error."""

    start: int
    seconds: float
    summary: Summary | None = None
    results: Any = None
    pickled: bool = False
    warnings: tuple[tuple[type[Warning], str], ...] = ()
    error: BaseException | None = None
    error_text: str | None = None


@dataclass(frozen=True)
class Estimator:
    """What runs a start: the ``target`` (a :class:`~demandkit.Problem`, a :class:`~demandkit.MixedLogit`),
    ``fit(target, arguments) -> results`` and ``summarize(results) -> Summary`` (module-level, so that they pickle);
    the table shows ``sign * value`` under ``column`` (``'loglikelihood'`` is ``-1`` times the value compared)."""

    target: Any
    fit: Fit
    summarize: Callable[[Any], Summary]
    column: str = "objective"
    sign: float = 1.0


def run(
    estimator: Estimator,
    starts: Sequence[Mapping[str, Any]],
    executor: Executor | None,
    options: StartsOptions,
    shown: Sequence[Any] | None = None,
    local: bool = True,
    progress: bool = False,
    stacklevel: int = 2,
) -> tuple[Any, pd.DataFrame]:
    """Estimate from every start and return the best results and the table of starts.

    Parameters
    ----------
    estimator : Estimator
        The estimator and how to fit and read it.
    starts : sequence of dict
        For each start, the arguments of ``estimator.fit`` (the starting values and the common arguments).
    executor : Executor, optional
        Where the starts run; by default a local process pool (see the module docstring).
    options : StartsOptions
        ``rtol`` of the distinct-optima warning.
    shown : sequence, optional
        What the table's ``initial`` column shows for each start (by default its arguments).
    local : bool
        Whether the default may run the starts in local processes (False runs them one after another here).
    progress : bool
        Show a progress bar over starts.
    stacklevel : int
        Of the warnings, as :func:`warnings.warn` counts it from this function (4: the estimator's caller, through
        ``solve`` and the estimator's multi-start function).

    Returns
    -------
    results, DataFrame
        The winner's results and one row per start: ``start``, the compared value (``estimator.column``),
        ``converged``, ``gradient_norm``, ``iterations``, ``seconds``, ``best``, ``warnings`` (how many),
        ``error``, the estimator's extra columns, ``initial`` and ``estimate``.
    """
    workers = min(len(starts), _cores())
    sequential = executor is None and (workers == 1 or not local)
    bar = _bar(len(starts), progress)
    try:
        with _routed_warnings():
            if sequential:
                outcomes = []
                for index, arguments in enumerate(starts):
                    outcomes.append(_solve(None, estimator, index, arguments, os.getpid()))
                    _advance(bar)
            else:
                outcomes = _run_on(executor, workers, _payload(estimator), starts, bar)
    finally:
        if bar is not None:
            bar.close()
    outcomes.sort(key=lambda outcome: outcome.start)
    best = _best(outcomes)
    results = _loads(best.results, estimator.target) if best.pickled else best.results
    for category, message in best.warnings:
        warnings.warn(message, category, stacklevel=stacklevel)
    table = _table(outcomes, best, estimator, shown if shown is not None else starts)
    _warn_distinct(outcomes, best, estimator, options, stacklevel + 1)
    return results, table


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _initialize(threads: int) -> None:
    """A default worker: one torch thread, so that workers do not compete for the cores."""
    import torch

    torch.set_num_threads(threads)


def _payload(estimator: Estimator) -> bytes:
    """The estimator pickled once for every start (a clear error if it does not pickle)."""
    try:
        return pickle.dumps((estimator.target, estimator.fit, estimator.summarize), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # pickling raises many kinds (PicklingError, AttributeError, TypeError)
        raise SpecificationError(
            f"The {type(estimator.target).__name__} could not be pickled to send to the executor's workers "
            f"({type(error).__name__}: {error}). Functions it holds (a user-defined utility, say) must be defined at "
            "the top level of a module."
        ) from error


def _run_on(
    executor: Executor | None, workers: int, payload: bytes, starts: Sequence[Mapping[str, Any]], bar: Any
) -> list[Outcome]:
    own = executor is None
    context = {"mp_context": WORKER_CONTEXT, "initializer": _initialize, "initargs": (1,)}
    pool = ProcessPoolExecutor(workers, **context) if own else executor
    futures: list[Future] = []
    try:
        futures = [pool.submit(_solve, payload, None, i, dict(a), os.getpid()) for i, a in enumerate(starts)]
        outcomes = []
        for future in as_completed(futures):
            outcomes.append(future.result())
            _advance(bar)
        return outcomes
    finally:
        for future in futures:
            future.cancel()
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------- one start (a worker)

_local = threading.local()


def _solve(
    payload: bytes | None, estimator: Estimator | None, start: int, arguments: Mapping[str, Any], caller: int
) -> Outcome:
    """Estimate from one start; errors are returned, not raised. Runs in a worker or in the caller."""
    begin = time.perf_counter()
    if payload is not None:
        target, fit, summarize = pickle.loads(payload)
    else:
        target, fit, summarize = estimator.target, estimator.fit, estimator.summarize
    with _recorded(caller) as caught:
        try:
            results = fit(target, arguments)
            summary = summarize(results)
        except Exception as error:  # a failed start is recorded; the others go on
            text = f"{type(error).__name__}: {error}"
            return Outcome(
                start, time.perf_counter() - begin, warnings=tuple(caught), error=_portable(error), error_text=text
            )
    seconds = time.perf_counter() - begin
    if payload is not None:
        return Outcome(start, seconds, summary, _dumps(results, target), True, tuple(caught))
    return Outcome(start, seconds, summary, results, False, tuple(caught))


def _portable(error: BaseException) -> BaseException | None:
    """The error if it pickles (to travel back from a worker), else None (its text is kept)."""
    try:
        pickle.dumps(error)
    except Exception:  # an error object that does not pickle
        return None
    return error


@contextmanager
def _recorded(caller: int) -> Iterator[list[tuple[type[Warning], str]]]:
    """Record the warnings of one start as ``(category, message)``.

    In the caller's process (threads, or one start after another) the caller's :func:`_routed_warnings` sends each
    thread's warnings to that thread's list. In another process's main thread (a process pool's worker) they are
    caught with :class:`warnings.catch_warnings`; in another process's other threads they are left alone.
    """
    caught: list[tuple[type[Warning], str]] = []
    if os.getpid() == caller:
        _local.records = caught
        try:
            yield caught
        finally:
            _local.records = None
    elif threading.current_thread() is threading.main_thread():
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)
            yield caught
        caught.extend((w.category, str(w.message)) for w in recorded)
    else:
        yield caught


@contextmanager
def _routed_warnings() -> Iterator[None]:
    """While starts run in this process, send the warnings of a thread that runs a start to its list."""
    with warnings.catch_warnings():
        shown = warnings.showwarning
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)

        def route(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            records = getattr(_local, "records", None)
            if records is None:
                shown(message, category, *args, **kwargs)
            else:
                records.append((category, str(message)))

        warnings.showwarning = route
        yield


def _dumps(results: Any, target: Any) -> bytes:
    """Results pickled with the worker's copy of the estimator left out (the caller puts its own back)."""
    buffer = BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.persistent_id = lambda obj: _ESTIMATOR if obj is target else None
    pickler.dump(results)
    return buffer.getvalue()


def _loads(data: bytes, target: Any) -> Any:
    unpickler = pickle.Unpickler(BytesIO(data))
    unpickler.persistent_load = lambda pid: target  # the only persistent id is _ESTIMATOR
    return unpickler.load()


# ------------------------------------------------------------------------------------------------ the outcome


def _best(outcomes: list[Outcome]) -> Outcome:
    finished = [o for o in outcomes if o.summary is not None and math.isfinite(o.summary.value)]
    if not finished:
        first = outcomes[0]
        if first.error is not None:
            raise first.error
        what = first.error_text or "a value that is not finite"
        raise SpecificationError(f"Every one of the {len(outcomes)} starts failed; the first with {what}.")
    converged = [o for o in finished if o.summary.converged]
    return min(converged or finished, key=lambda o: (o.summary.value, o.start))


def _table(outcomes: list[Outcome], best: Outcome, estimator: Estimator, shown: Sequence[Any]) -> pd.DataFrame:
    rows = []
    for outcome in outcomes:
        summary = outcome.summary
        row = {
            "start": outcome.start,
            estimator.column: np.nan if summary is None else estimator.sign * summary.value,
            "converged": False if summary is None else bool(summary.converged),
            "gradient_norm": np.nan if summary is None else float(summary.gradient_norm),
            "iterations": 0 if summary is None else int(summary.iterations),
            "seconds": float(outcome.seconds),
            "best": outcome.start == best.start,
            "warnings": len(outcome.warnings),
            "error": outcome.error_text,
        }
        row.update({} if summary is None else summary.extra)
        row["initial"] = shown[outcome.start]
        row["estimate"] = None if summary is None else np.asarray(summary.estimate)
        rows.append(row)
    return pd.DataFrame(rows)


def _warn_distinct(
    outcomes: list[Outcome], best: Outcome, estimator: Estimator, options: StartsOptions, stacklevel: int
) -> None:
    if not best.summary.converged:
        return
    value = best.summary.value
    tolerance = options.rtol * max(abs(value), 1.0)
    converged = [o for o in outcomes if o.summary is not None and o.summary.converged]
    distinct = [o for o in converged if o.summary.value - value > tolerance]
    if distinct:
        worst = max(o.summary.value for o in distinct)
        warnings.warn(
            f"{len(distinct)} of {len(converged)} converged starts ended at optima whose {estimator.column} differs "
            f"from the best's ({estimator.sign * value:.8g}, start {best.start}) by more than rtol={options.rtol:g} "
            f"relative (up to {estimator.sign * worst:.8g}): the objective has distinct local optima, and the results "
            "are the best start's. See results.starts; more starts may find a better optimum.",
            DistinctOptimaWarning,
            stacklevel=stacklevel,
        )


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="starts", unit=" starts", leave=False)


def _advance(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
