"""Monte Carlo studies: simulate many data sets from one design, estimate each, and summarize how well the
truth is recovered.

Each replication :math:`r` draws a seed from ``numpy.random.SeedSequence(seed)``, builds a
:class:`~demandkit.simulation.Simulation` with it, solves the equilibrium, turns it into a
:class:`~demandkit.blp.problem.Problem` and estimates it. For every parameter with true value :math:`\\theta_0` and
estimates :math:`\\hat\\theta_r` with standard errors :math:`\\hat s_r` over the :math:`R` successful replications,

.. math::

    \\text{bias} = \\frac1R\\sum_r (\\hat\\theta_r - \\theta_0), \\quad
    \\text{RMSE} = \\Big(\\frac1R\\sum_r (\\hat\\theta_r - \\theta_0)^2\\Big)^{1/2}, \\quad
    \\text{coverage} = \\frac1R\\sum_r 1\\{|\\hat\\theta_r - \\theta_0| \\le z_{1-\\alpha/2}\\,\\hat s_r\\}.

The sign of a diagonal element of :math:`\\Sigma` is not identified, so its absolute value is compared with the
truth's. Replications are independent jobs, run by :class:`concurrent.futures.ProcessPoolExecutor` (``processes=1``
runs them in this process) or by any :class:`concurrent.futures.Executor` passed as ``executor`` (a Dask cluster's
``client.get_executor()``, say); the factories must be picklable (module-level functions) for ``processes > 1`` or an
executor. Each replication's seed is fixed before it runs, so where it runs does not change its results.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..exceptions import SpecificationError

SolveArguments = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


def run(
    simulation_factory: Callable[[int], Any],
    solve_kwargs: SolveArguments | None = None,
    replications: int = 100,
    seed: int | None = 0,
    processes: int = 1,
    problem_factory: Callable[[Any], Any] | None = None,
    alpha: float = 0.05,
    threads: int | None = 1,
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Run a Monte Carlo study.

    Parameters
    ----------
    simulation_factory : callable
        ``simulation_factory(seed) -> Simulation``: the design, drawing its data with ``seed``.
    solve_kwargs : mapping or callable, optional
        Arguments of :meth:`Problem.solve` (e.g. ``{'sigma': ..., 'method': '1s'}``), or a callable of the
        :class:`~demandkit.simulation.Simulation` returning them (to start at the truth, say).
    replications : int
        Number of simulated data sets :math:`R`.
    seed : int, optional
        Seeds the :class:`numpy.random.SeedSequence` that gives each replication its own seed.
    processes : int
        Worker processes; 1 runs every replication in this process.
    problem_factory : callable, optional
        ``problem_factory(simulation_results) -> Problem``; ``simulation_results.to_problem()`` by default.
    alpha : float
        Confidence intervals are :math:`\\hat\\theta \\pm z_{1-\\alpha/2}\\hat s`.
    threads : int, optional
        Torch threads in each worker process (1 by default so that processes do not compete); None leaves
        torch's default.
    progress : bool
        Show a tqdm progress bar over replications.
    executor : Executor, optional
        Where the replications run instead: any :class:`concurrent.futures.Executor` (a Dask cluster's
        ``client.get_executor()``, say), which the study leaves open. Its workers keep their own torch threads
        (``threads`` applies to the ``processes`` pool only), and they should be processes, not threads of this one,
        since each replication records its warnings with :class:`warnings.catch_warnings`. None (the default) runs
        them as ``processes`` says; pass one or the other.

    Returns
    -------
    DataFrame
        One row per parameter: ``parameter``, ``name``, ``truth``, ``mean``, ``bias``, ``median_bias``, ``sd``,
        ``rmse``, ``mean_se``, ``coverage`` and ``replications`` (successful ones). ``attrs['replications']``
        holds every replication's estimates, standard errors and diagnostics, and ``attrs['failures']`` the
        seeds and errors of replications that raised.
    """
    if isinstance(replications, bool) or not isinstance(replications, (int, np.integer)) or replications < 1:
        raise SpecificationError(f"replications must be a positive int; received {replications!r}.")
    if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 1:
        raise SpecificationError(f"processes must be a positive int; received {processes!r}.")
    if executor is not None and not isinstance(executor, Executor):
        raise SpecificationError(
            f"executor must be a concurrent.futures.Executor or None; received {type(executor).__name__}."
        )
    if executor is not None and processes != 1:
        raise SpecificationError(
            f"Pass processes or executor, not both; received processes={processes} and an executor."
        )
    if not 0 < alpha < 1:
        raise SpecificationError(f"alpha must lie in (0, 1); received {alpha!r}.")
    if not callable(simulation_factory):
        raise SpecificationError("simulation_factory must be a callable of a seed returning a Simulation.")
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(replications)]
    job = (simulation_factory, problem_factory, solve_kwargs)
    outcomes: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=replications, desc="Monte Carlo", unit=" replications")
    try:
        if executor is not None:
            _run_on(executor, job, seeds, None, outcomes, bar)
        elif processes == 1:
            for r, replication_seed in enumerate(seeds):
                outcomes.append(_replicate(job, r, replication_seed, None))
                _advance(bar, outcomes)
        else:
            context = multiprocessing.get_context("forkserver")  # not fork: see demandkit.multistart.WORKER_CONTEXT
            with ProcessPoolExecutor(
                processes, mp_context=context, initializer=_initialize, initargs=(threads,)
            ) as pool:
                _run_on(pool, job, seeds, threads, outcomes, bar)
    finally:
        if bar is not None:
            bar.close()
    outcomes.sort(key=lambda outcome: outcome["replication"])
    return summarize(outcomes, alpha)


def _run_on(
    executor: Executor, job: tuple, seeds: list[int], threads: int | None, outcomes: list[dict[str, Any]], bar: Any
) -> None:
    """Submit every replication to ``executor`` and append the outcomes as they finish; the replications not yet
    started are cancelled if one cannot be collected (a worker lost, say)."""
    futures: list[Future] = []
    try:
        futures = [executor.submit(_replicate, job, r, s, threads) for r, s in enumerate(seeds)]
        for future in as_completed(futures):
            outcomes.append(future.result())
            _advance(bar, outcomes)
    finally:
        for future in futures:
            future.cancel()


def _advance(bar: Any, outcomes: list[dict[str, Any]]) -> None:
    if bar is None:
        return
    failures = sum(outcome["error"] is not None for outcome in outcomes)
    bar.update(1)
    bar.set_postfix(failures=failures)


def _initialize(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _replicate(job: tuple, replication: int, seed: int, threads: int | None) -> dict[str, Any]:
    """Simulate, solve and estimate one data set; errors are returned, not raised."""
    simulation_factory, problem_factory, solve_kwargs = job
    start = time.perf_counter()
    outcome: dict[str, Any] = {"replication": replication, "seed": seed, "error": None, "rows": []}
    with warnings.catch_warnings(record=True) as caught:  # warnings are data of the replication
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)  # library deprecations are not the study's business
        try:
            simulation = simulation_factory(seed)
            solved = simulation.replace_endogenous()
            problem = solved.to_problem() if problem_factory is None else problem_factory(solved)
            arguments = dict(solve_kwargs(simulation) if callable(solve_kwargs) else (solve_kwargs or {}))
            results = problem.solve(**arguments)
            outcome["rows"] = _compare(simulation, results)
            outcome["converged"] = bool(results.converged)
            outcome["optimization_iterations"] = int(results.optimization_iterations)
            outcome["objective_evaluations"] = int(results.objective_evaluations)
        except Exception as error:  # a failed replication is recorded and the study goes on
            outcome["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
    outcome["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    outcome["seconds"] = time.perf_counter() - start
    return outcome


def _compare(simulation: Any, results: Any) -> list[tuple[str, str, float, float, float]]:
    """``(parameter, name, truth, estimate, se)`` for every estimated parameter."""
    rows = []
    for k, label in enumerate(results.beta_labels):
        rows.append(("beta", label, simulation.beta[k], results.beta[k, 0], results.beta_se[k, 0]))
    space = results._space
    for r, c in zip(*space.sigma_index, strict=True):
        estimate = abs(results.sigma[r, c]) if r == c else results.sigma[r, c]
        truth = abs(simulation.sigma[r, c]) if r == c else simulation.sigma[r, c]
        name = f"{results.sigma_labels[r]} x {results.sigma_labels[c]}"
        rows.append(("sigma", name, truth, estimate, results.sigma_se[r, c]))
    for r, c in zip(*space.pi_index, strict=True):
        name = f"{results.sigma_labels[r]} x {results.pi_labels[c]}"
        rows.append(("pi", name, simulation.pi[r, c], results.pi[r, c], results.pi_se[r, c]))
    for k in space.rho_index:
        rows.append(("rho", f"rho[{k}]", simulation.rho[k, 0], results.rho[k, 0], results.rho_se[k, 0]))
    for k, label in enumerate(results.gamma_labels):
        rows.append(("gamma", label, simulation.gamma[k], results.gamma[k, 0], results.gamma_se[k, 0]))
    return [(p, n, float(t), float(e), float(s)) for p, n, t, e, s in rows]


def summarize(outcomes: list[dict[str, Any]], alpha: float = 0.05) -> pd.DataFrame:
    """Bias, RMSE and coverage per parameter from replication outcomes (see :func:`run`)."""
    records = [
        {"replication": o["replication"], "seed": o["seed"], "parameter": p, "name": n, "truth": t, "estimate": e}
        | {"se": s, "converged": o.get("converged"), "seconds": o["seconds"]}
        for o in outcomes
        if o["error"] is None
        for p, n, t, e, s in o["rows"]
    ]
    columns = ["replication", "seed", "parameter", "name", "truth", "estimate", "se", "converged", "seconds"]
    table = pd.DataFrame(records, columns=columns)
    z = float(norm.ppf(1 - alpha / 2))
    error = table["estimate"] - table["truth"]
    table["covered"] = error.abs() <= z * table["se"]
    grouped = table.assign(error=error, squared=error**2).groupby(["parameter", "name"], sort=False)
    summary = pd.DataFrame(
        {
            "truth": grouped["truth"].first(),
            "mean": grouped["estimate"].mean(),
            "bias": grouped["error"].mean(),
            "median_bias": grouped["error"].median(),
            "sd": grouped["estimate"].std(ddof=1),
            "rmse": np.sqrt(grouped["squared"].mean()),
            "mean_se": grouped["se"].mean(),
            "coverage": grouped["covered"].mean(),
            "replications": grouped["estimate"].count(),
        }
    ).reset_index()
    summary.attrs["replications"] = table
    summary.attrs["failures"] = [(o["seed"], o["error"]) for o in outcomes if o["error"] is not None]
    summary.attrs["alpha"] = alpha
    summary.attrs["diagnostics"] = pd.DataFrame(
        [
            {
                "replication": o["replication"],
                "seed": o["seed"],
                "converged": o.get("converged"),
                "optimization_iterations": o.get("optimization_iterations"),
                "objective_evaluations": o.get("objective_evaluations"),
                "seconds": o["seconds"],
                "warnings": len(o.get("warnings", [])),
                "failed": o["error"] is not None,
            }
            for o in outcomes
        ]
    )
    return summary
