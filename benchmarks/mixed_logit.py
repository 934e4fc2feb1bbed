"""Mixed logit: xlogit vs demandkit on a synthetic panel, and a coverage Monte Carlo.

Run from the repository root::

    python benchmarks/mixed_logit.py                     # speed: R=3 fresh processes per library, 1 thread
    python benchmarks/mixed_logit.py --repeats 5 --threads 2
    python benchmarks/mixed_logit.py --coverage 100      # coverage of 95% intervals, 100 replications per design

Speed design: 1,000 individuals x 10 situations x 4 alternatives, 6 normal random coefficients (12 parameters),
500 Halton draws for both libraries, each library with its defaults (xlogit: multinomial-logit start, its BFGS
and tolerances, Halton draws with its own settings; demandkit: logit start, scipy BFGS with a BHHH first
inverse Hessian, scrambled Halton, analytic gradient and Hessian, robust standard errors). Every timed repetition
runs in a fresh process with BLAS/OpenMP (and torch) pinned to ``--threads`` threads. Timed: xlogit's ``fit``;
demandkit's ``MixedLogit(...)`` (validation, layout) and ``fit`` (estimates and standard errors). A second,
apples-to-apples measurement times one log-likelihood-and-gradient evaluation of each library at the same
parameters with the same draws layout.

Coverage design: five data-generating processes (independent normals with a fixed coefficient, a lognormal,
correlated normals, state dependence with burn-in with a fixed and with a random coefficient), each simulated
``--coverage`` times with fresh data and draws; the table reports bias, the spread of the estimates, the mean
standard error and how often the 95% Wald interval (robust and classical) covers the truth. Spreads are compared
in absolute value and Cholesky columns are normalized to a positive diagonal (their signs are not identified).

Results replace the ``mixed_logit`` section of ``benchmarks/RESULTS.md`` (other sections are kept; a speed run keeps
the coverage part and vice versa).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import sys
import time
import warnings

import _harness
import numpy as np

INDIVIDUALS, SITUATIONS, ALTERNATIVES, DRAWS = 1000, 10, 4, 500
MEANS = (1.0, -1.0, 0.5, -0.5, 1.0, 0.8)
SPREADS = (0.5, 0.8, 0.3, 0.6, 0.4, 0.7)
NAMES = [f"x{k}" for k in range(len(MEANS))]


def speed_data(seed: int = 1):
    from demandkit.mixed_logit import simulate_panel

    coefficients = {name: ("normal", m, s) for name, m, s in zip(NAMES, MEANS, SPREADS, strict=True)}
    return simulate_panel(INDIVIDUALS, SITUATIONS, ALTERNATIVES, coefficients, seed=seed)


# ---------------------------------------------------------------------------------------------- workers
def worker(library: str, threads: int | None) -> dict:
    """One repetition in this (fresh) process."""
    sim = speed_data()
    data = sim.data
    if library == "xlogit":
        import xlogit

        model = xlogit.MixedLogit()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(
                data[NAMES],
                data["chosen"],
                NAMES,
                data["alternative"],
                data["situation"],
                {name: "n" for name in NAMES},
                panels=data["individual"],
                n_draws=DRAWS,
                verbose=0,
            )
        fit = time.perf_counter() - start
        spreads = np.abs(model.coeff_[len(NAMES) :])
        return {
            "library": "xlogit",
            "version": xlogit.__version__ if hasattr(xlogit, "__version__") else "0.2.7",
            "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "build_s": 0.0,
            "fit_s": fit,
            "loglikelihood": float(model.loglikelihood),
            "params": [*map(float, model.coeff_[: len(NAMES)]), *map(float, spreads)],
            "se": list(map(float, model.stderr)),
            "iterations": int(model.total_iter),
            "evaluations": int(model.total_fun_eval),
            "converged": bool(model.convergence),
        }
    import torch

    import demandkit as dk

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    model = demandkit_model(data, sim.random)
    build = time.perf_counter() - start
    start = time.perf_counter()
    results = model.fit(progress=False)
    fit = time.perf_counter() - start
    return {
        "library": "demandkit",
        "version": dk.__version__,
        "threads": f"torch {torch.get_num_threads()}",
        "build_s": build,
        "fit_s": fit,
        "loglikelihood": results.loglikelihood,
        "params": [*results.params[NAMES], *np.abs(results.params[[f"sd.{n}" for n in NAMES]])],
        "se": results.se.tolist(),
        "iterations": results.statistics["iterations"],
        "evaluations": results.statistics["evaluations"],
        "converged": results.converged,
    }


def demandkit_model(data, random):
    """The benchmark's demandkit model: every variable random, the same Halton draws as xlogit."""
    import demandkit as dk
    from demandkit.mixed_logit import MixedLogit

    return MixedLogit(
        dk.Formulation("0 + " + " + ".join(NAMES)),
        data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random=random,
        integration=dk.Integration("halton", DRAWS, {"seed": 0}),
    )


def evaluation_worker(threads: int | None, repeats: int = 5) -> dict:
    """Seconds of one log-likelihood + gradient evaluation of each library at the truth, same draws for both."""
    import torch
    import xlogit
    from xlogit._choice_model import diff_nonchosen_chosen

    if threads:
        torch.set_num_threads(threads)
    sim = speed_data()
    data = sim.data
    model = demandkit_model(data, sim.random)
    theta = sim.truth[model.names].to_numpy()
    engine = model._engine("cpu", torch.float64, None)
    engine.analytic(theta)  # draws and chunks are built once per model
    ours = []
    for _ in range(repeats):
        start = time.perf_counter()
        ours_value = engine.analytic(theta).loglikelihood
        ours.append(time.perf_counter() - start)
    oracle = xlogit.MixedLogit()
    alternatives, situations = data["alternative"].to_numpy(), data["situation"].to_numpy()
    oracle._pre_fit(alternatives, NAMES, None, None, False, 100)
    _, X, y, panels, _, _, avail, _, scale, addit = oracle._setup_input_data(
        data[NAMES].to_numpy(),
        data["chosen"].to_numpy(),
        NAMES,
        alternatives,
        situations,
        {name: "n" for name in NAMES},
        panels=data["individual"].to_numpy(),
        n_draws=DRAWS,
        verbose=0,
    )
    differences, _, _, avail = diff_nonchosen_chosen(X, y, scale, addit, avail)
    draws = model.draws.normals(0, model.panel.n_individuals)[panels]  # demandkit's draws, xlogit's layout
    theirs = []
    for _ in range(repeats):
        start = time.perf_counter()
        negative = oracle._loglik_gradient(theta, differences, panels, draws, None, avail, None, None, None)[0]
        theirs.append(time.perf_counter() - start)
    return {
        "demandkit_s": statistics.median(ours),
        "xlogit_s": statistics.median(theirs),
        "difference": abs(ours_value + negative),
    }


# ---------------------------------------------------------------------------------------------- coverage
DESIGNS = {
    "independent normals + fixed": dict(
        coefficients={"price": ("normal", -1.0, 0.8), "quality": ("normal", 1.0, 0.5), "x": (None, 0.5, 0.0)},
    ),
    "lognormal": dict(coefficients={"cost": ("lognormal", 0.0, 0.5), "quality": ("normal", 1.0, 0.5)}),
    "correlated normals": dict(
        coefficients={"price": ("normal", -1.0, 0.0), "quality": ("normal", 1.0, 0.0)},
        cholesky=[[0.8, 0.0], [0.4, 0.6]],
        correlated=True,
    ),
    "state dependence (burn-in 3)": dict(
        coefficients={"price": ("normal", -1.0, 0.5), "quality": (None, 1.0, 0.0)},
        state=(None, 1.0, 0.0),
        state_dependence=dict(burn_in=3),
        situations=12,
    ),
    "random state dependence (burn-in 3)": dict(
        coefficients={"price": ("normal", -1.0, 0.5), "quality": (None, 1.0, 0.0)},
        state=("normal", 1.0, 0.5),
        state_dependence=dict(burn_in=3, random=True),
        situations=12,
    ),
}


def _normalized(params, names):
    """Spreads in absolute value; Cholesky columns signed so the diagonal is positive."""
    values = dict(zip(names, params, strict=True))
    for name in names:
        if name.startswith("sd."):
            values[name] = abs(values[name])
    chol = [n for n in names if n.startswith("chol.")]
    for name in chol:
        _, row, column = name.split(".")
        diagonal = values.get(f"chol.{column}.{column}", 1.0)
        if f"chol.{column}.{column}" in values and diagonal < 0 and row != column:
            values[name] = -values[name]
    for name in chol:
        _, row, column = name.split(".")
        if row == column:
            values[name] = abs(values[name])
    return np.array([values[n] for n in names])


def coverage(replications: int, threads: int | None, individuals: int = 500, draws: int = 100) -> str:
    import torch

    import demandkit as dk
    from demandkit.mixed_logit import MixedLogit, simulate_panel

    if threads:
        torch.set_num_threads(threads)
    columns = dict(
        choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative"
    )
    rows = []
    started = time.perf_counter()
    for design, spec in DESIGNS.items():
        spec = dict(spec)
        coefficients = spec.pop("coefficients")
        cholesky = spec.pop("cholesky", None)
        state = spec.pop("state", None)
        situations = spec.pop("situations", 8)
        estimates, robust, classical, failures = [], [], [], 0
        truth = None
        for replication in range(replications):
            sim = simulate_panel(
                individuals,
                situations,
                3,
                coefficients,
                cholesky=None if cholesky is None else np.array(cholesky),
                state_dependence=state,
                seed=1000 + replication,
            )
            model = MixedLogit(
                dk.Formulation("0 + " + " + ".join(coefficients)),
                sim.data,
                **columns,
                random={k: v for k, v in sim.random.items() if k != "gamma"},
                integration=dk.Integration("halton", draws, {"seed": replication}),
                **spec,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = model.fit(progress=False)
            if not results.converged:
                failures += 1
                continue
            truth = sim.truth[results.names].to_numpy()
            estimates.append(_normalized(results.params.to_numpy(), results.names))
            robust.append(results.standard_errors("robust").to_numpy())
            classical.append(results.standard_errors("classical").to_numpy())
        estimates, robust, classical = map(np.array, (estimates, robust, classical))
        for p, name in enumerate(results.names):
            error = estimates[:, p] - truth[p]
            rows.append(
                {
                    "design": design,
                    "parameter": name,
                    "truth": truth[p],
                    "mean estimate": estimates[:, p].mean(),
                    "bias": error.mean(),
                    "sd of estimates": estimates[:, p].std(ddof=1),
                    "mean robust se": robust[:, p].mean(),
                    "coverage robust": np.mean(np.abs(error) <= 1.959964 * robust[:, p]),
                    "coverage classical": np.mean(np.abs(error) <= 1.959964 * classical[:, p]),
                    "converged": f"{len(estimates)}/{replications}",
                }
            )
        print(f"{design}: {len(estimates)} of {replications} converged", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    lines = [
        "### Coverage of 95% intervals (Monte Carlo)",
        "",
        f"`python benchmarks/mixed_logit.py --coverage {replications}` — run "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; {replications} replications per design, each with "
        f"fresh data (seed 1000 + r) and fresh scrambled Halton draws (seed r); {individuals} individuals x 8 "
        f"situations (12 under state dependence) x 3 alternatives, {draws} draws; {elapsed / 60:.1f} minutes. Spreads "
        "in absolute "
        f"value. A coverage of 0.95 is estimated to within about +-{196 * np.sqrt(0.95 * 0.05 / replications):.0f} "
        "points (two binomial standard errors).",
        "",
        "| design | parameter | truth | mean estimate | bias | sd of estimates | mean robust se | coverage robust |"
        " coverage classical | converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['design']} | {row['parameter']} | {row['truth']:.3f} | {row['mean estimate']:.4f} | "
            f"{row['bias']:+.4f} | {row['sd of estimates']:.4f} | {row['mean robust se']:.4f} | "
            f"{row['coverage robust']:.2f} | {row['coverage classical']:.2f} | {row['converged']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- driver
def load() -> float:
    return os.getloadavg()[0]


def speed(repeats: int, threads: int | None) -> str:
    before = load()
    runs = {"xlogit": [], "demandkit": []}
    for repetition in range(repeats):
        for library in ("xlogit", "demandkit"):  # alternate, so both see the same background load
            run = _harness.run_worker([__file__, "--worker", library, "--threads", str(threads or 0)], threads)
            runs[library].append(run)
            print(f"{library} repetition {repetition + 1}: {run['build_s'] + run['fit_s']:.2f} s", file=sys.stderr)
    evaluation = _harness.run_worker([__file__, "--worker", "evaluation", "--threads", str(threads or 0)], threads)
    after = load()
    table = [
        "| library | threads | total median s | total min s | build median s | fit median s | log-likelihood |"
        " iterations | evaluations | converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    medians = {}
    for library, values in runs.items():
        totals = [r["build_s"] + r["fit_s"] for r in values]
        medians[library] = statistics.median(totals)
        last = values[-1]
        table.append(
            f"| {library} | {last['threads']} | {medians[library]:.2f} | {min(totals):.2f} | "
            f"{statistics.median(r['build_s'] for r in values):.3f} | "
            f"{statistics.median(r['fit_s'] for r in values):.2f} |"
            f" {last['loglikelihood']:.4f} | {last['iterations']} | {last['evaluations']} | {last['converged']} |"
        )
    ours, theirs = runs["demandkit"][-1], runs["xlogit"][-1]
    gap = np.abs(np.array(ours["params"]) - np.array(theirs["params"])) / np.array(ours["se"])
    lines = [
        "## Mixed logit: xlogit vs demandkit",
        "",
        f"`python benchmarks/mixed_logit.py --repeats {repeats} --threads {threads or 0}` — run "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; synthetic panel of {INDIVIDUALS} individuals x "
        f"{SITUATIONS} situations x {ALTERNATIVES} alternatives, 6 normal random coefficients (12 parameters), "
        f"{DRAWS} Halton draws for both; each repetition in a fresh process, BLAS/OpenMP/torch pinned to "
        f"{threads or 'default'} thread(s); times in seconds (xlogit: `fit`, which includes its data setup and its "
        "standard errors; demandkit: `MixedLogit(...)` as build plus `fit`, estimates and robust standard errors from "
        f"the Hessian). 1-min load average {before:.2f} before / {after:.2f} after (the machine has "
        f"{len(os.sched_getaffinity(0))} cores; a higher load means other processes competed for them).",
        "",
        *table,
        "",
        f"**Speed-up (xlogit median / demandkit median, total): {medians['xlogit'] / medians['demandkit']:.1f}x.**",
        "",
        f"Estimates differ by at most {gap.max():.2f} demandkit standard errors (each library with its own draws); "
        f"log-likelihoods {ours['loglikelihood']:.3f} (demandkit) and {theirs['loglikelihood']:.3f} (xlogit).",
        "",
        f"One log-likelihood + gradient evaluation at the truth with the same draws: demandkit "
        f"{evaluation['demandkit_s'] * 1000:.0f} ms, xlogit {evaluation['xlogit_s'] * 1000:.0f} ms "
        f"({evaluation['xlogit_s'] / evaluation['demandkit_s']:.1f}x); log-likelihoods differ by "
        f"{evaluation['difference']:.1e}.",
    ]
    return "\n".join(lines)


def write(part: str, text: str) -> None:
    """Replace one part (speed or coverage) of the mixed_logit section, keeping the other."""
    start, end = "<!-- mixed_logit:start -->", "<!-- mixed_logit:end -->"
    current = _harness.RESULTS.read_text() if _harness.RESULTS.exists() else ""
    match = re.search(re.escape(start) + r"(.*?)" + re.escape(end), current, re.DOTALL)
    body = match.group(1) if match else ""
    pieces = {"speed": "", "coverage": ""}
    split = body.split("### Coverage of 95% intervals", 1)
    pieces["speed"] = split[0].strip()
    if len(split) == 2:
        pieces["coverage"] = ("### Coverage of 95% intervals" + split[1]).strip()
    pieces[part] = text.strip()
    _harness.update_section("mixed_logit", "\n\n".join(p for p in (pieces["speed"], pieces["coverage"]) if p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (0: library defaults)")
    parser.add_argument("--coverage", type=int, default=0, help="replications per design of the coverage study")
    parser.add_argument("--worker", choices=["xlogit", "demandkit", "evaluation"])
    arguments = parser.parse_args()
    threads = arguments.threads or None
    if arguments.worker == "evaluation":
        _harness.emit(evaluation_worker(threads))
    elif arguments.worker:
        _harness.emit(worker(arguments.worker, threads))
    elif arguments.coverage:
        write("coverage", coverage(arguments.coverage, threads))
        print(f"wrote the coverage part of {_harness.RESULTS}")
    else:
        write("speed", speed(arguments.repeats, threads))
        print(f"wrote the speed part of {_harness.RESULTS}")


if __name__ == "__main__":
    main()
