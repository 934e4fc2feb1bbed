"""Multi-start estimation (issue 17): ten starts on the default local process pool versus one start.

Run from the repository root::

    python benchmarks/multistart.py                 # R=1 fresh process per case
    python benchmarks/multistart.py --repeats 3

Two designs: the Nevo (2000) problem (``Problem.solve`` as the replication does it: PyBLP's starting values, BFGS,
one-step GMM) and a mixed logit on a simulated panel (1,000 individuals x 10 situations x 4 alternatives, a
lognormal price coefficient and two normal ones, 200 Halton draws, ``MixedLogit.fit`` from the default start).
For each, three cases run in fresh processes: one start with torch's default threads (what a single estimation
gets), one start with one torch thread (the cost of a start in a worker), and ``starts=10`` on the default
executor (a ``ProcessPoolExecutor`` with one worker per core, one torch thread each). Times are wall seconds of
the estimation call only. Results replace the ``multistart`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import warnings

import _harness

CASES = ("one start", "one start, 1 thread", "10 starts")


def nevo() -> tuple[object, dict]:
    """The replication's problem and arguments (PyBLP's starting values, BFGS, one-step GMM)."""
    from demandkit import Optimization
    from demandkit.interfaces.replications import NEVO_PI0, NEVO_SIGMA0, nevo_problem

    arguments = {"sigma": NEVO_SIGMA0, "pi": NEVO_PI0, "method": "1s"}
    return nevo_problem(), {**arguments, "optimization": Optimization("bfgs", {"gtol": 1e-5})}


def mixed_logit() -> tuple[object, dict]:
    import demandkit as dk
    from demandkit.mixed_logit import MixedLogit, simulate_panel

    coefficients = {"price": ("lognormal", 0.0, 0.5), "quality": ("normal", 1.0, 0.8), "x": ("normal", -0.5, 0.6)}
    sim = simulate_panel(1000, 10, 4, coefficients, seed=1)
    model = MixedLogit(
        dk.Formulation("0 + price + quality + x"),
        sim.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={"price": "lognormal", "quality": "normal", "x": "normal"},
        integration=dk.Integration("halton", 200, {"seed": 0}),
    )
    return model, {"progress": False}


DESIGNS = {"nevo": nevo, "mixed_logit": mixed_logit}


def worker(design: str, case: str) -> dict:
    """One case in this (fresh) process."""
    import numpy as np
    import torch

    if case == "one start, 1 thread":
        torch.set_num_threads(1)
    target, arguments = DESIGNS[design]()
    estimate = target.solve if design == "nevo" else target.fit
    if case == "10 starts":
        arguments["starts"] = 10
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distinct optima and convergence are reported in the table
        results = estimate(**arguments)
    seconds = time.perf_counter() - start
    value = float(results.objective) if design == "nevo" else float(results.loglikelihood)
    iterations = results.optimization_iterations if design == "nevo" else results.statistics["iterations"]
    out = {"design": design, "case": case, "seconds": seconds, "value": value, "threads": torch.get_num_threads()}
    out["iterations"] = float(iterations)
    if results.starts is not None:
        table = results.starts
        column = "objective" if design == "nevo" else "loglikelihood"
        out.update(
            start_seconds=float(table["seconds"].sum()),
            converged=int(table["converged"].sum()),
            distinct=int(np.unique(np.round(table.loc[table["converged"], column], 4)).size),
            best=int(table.index[table["best"]][0]),
            spread=float(table[column].max() - table[column].min()),
            iterations=float(table["iterations"].mean()),
        )
    return out


def report(runs: dict[tuple[str, str], list[dict]], args: argparse.Namespace, load: tuple[float, float]) -> str:
    lines = [
        "## Multi-start: 10 starts on 2 local workers vs one start",
        "",
        f"`python benchmarks/multistart.py --repeats {args.repeats}` — run "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; each case in a fresh process; wall seconds of "
        f"the estimation call; {len(os.sched_getaffinity(0))} cores, so the default executor is a "
        "`ProcessPoolExecutor` of 2 workers with one torch thread each. 1-min load average "
        f"{load[0]:.2f} before / {load[1]:.2f} after (above the core count, other processes competed for the CPU).",
        "",
        "| design | case | torch threads | median s | min s | x one 1-thread start | best value | "
        "iterations per start | starts converged | distinct optima | seconds per start in its worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for design in DESIGNS:
        single = statistics.median(r["seconds"] for r in runs[(design, CASES[1])])
        for case in CASES:
            reps = runs[(design, case)]
            last = reps[-1]
            median = statistics.median(r["seconds"] for r in reps)
            extra = (
                f"{last['converged']} / 10 | {last['distinct']} | {last['start_seconds'] / 10:.2f}"
                if "converged" in last
                else "- | - | -"
            )
            threads = "1 per worker" if "converged" in last else last["threads"]
            lines.append(
                f"| {design} | {case} | {threads} | {median:.2f} | {min(r['seconds'] for r in reps):.2f} "
                f"| {median / single:.2f} | {last['value']:.6f} | {last['iterations']:.1f} | {extra} |"
            )
    lines += [
        "",
        "With 2 workers, 10 starts ideally take 5x one start with one torch thread (each start is solved in full, "
        "two at a time). Beyond that come the drawn starts' extra iterations (they begin farther from the optimum), "
        "process start-up, pickling the problem to each start, the pool waiting for the slowest start, and any "
        "other load on the cores ('seconds per start in its worker' against the one-thread start shows it). Nevo's "
        "value is the one-step GMM objective, the mixed logit's the simulated log-likelihood; 'distinct optima' "
        "counts the converged starts' values to 4 decimals.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process repetitions per case (default 1)")
    parser.add_argument("--worker", nargs=2, metavar=("DESIGN", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        design, case = args.worker
        _harness.emit(worker(design, CASES[int(case)]))
        return
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for design in DESIGNS:
            for index, case in enumerate(CASES):
                run = _harness.run_worker([os.path.abspath(__file__), "--worker", design, str(index)], None)
                runs.setdefault((design, case), []).append(run)
                print(f"{design:12s} {case:20s} {run['seconds']:8.2f}s  value {run['value']:.6f}", file=sys.stderr)
    section = report(runs, args, (load_before, os.getloadavg()[0]))
    print(section)
    print(f"\nwrote {_harness.update_section('multistart', section)}", file=sys.stderr)


if __name__ == "__main__":
    main()
