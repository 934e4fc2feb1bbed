"""Shared helpers for the benchmark scripts: fresh-process workers, machine info, RESULTS.md sections."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RESULT_PREFIX = "@@RESULT@@ "


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries being compared, read in a child process so the parent stays light."""
    code = "import json, torch, pyblp; print(json.dumps({'torch': torch.__version__, 'pyblp': pyblp.__version__}))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker; with ``threads`` set, pin every BLAS/OpenMP pool to that many threads."""
    env = dict(os.environ)
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARS})
    return env


def emit(result: dict) -> None:
    """Worker side: print the result as one tagged JSON line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(args: list[str], threads: int | None) -> dict:
    """Run ``python <args>`` in a fresh process and return the JSON dict it emitted."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=worker_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"worker {args} emitted no result:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def header() -> str:
    """RESULTS.md header describing the machine and library versions."""
    ver = versions()
    return (
        "# Benchmarks\n\n"
        "Each section is written by one script in `benchmarks/`; every timed repetition runs in a fresh Python "
        "process.\n\n"
        f"- machine: {len(os.sched_getaffinity(0))} cores (`nproc`), CPU `{cpu_model()}`\n"
        f"- python {platform.python_version()}, torch {ver['torch']}, pyblp {ver['pyblp']}\n"
        f"- header written {datetime.date.today().isoformat()}\n"
    )


def update_section(name: str, body: str) -> Path:
    """Replace (or append) the ``<!-- name:start -->`` ... ``<!-- name:end -->`` section of RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else header()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text.rstrip("\n") + "\n")
    return RESULTS


def max_rel_diff(reference: dict, other: dict, names: tuple[str, ...] = ("beta", "sigma", "pi")) -> tuple[float, str]:
    """Largest |other - reference| / |reference| over the nonzero elements of the named estimates."""
    import numpy as np

    worst, where = 0.0, ""
    for name in names:
        ref, oth = np.asarray(reference.get(name, [])), np.asarray(other.get(name, []))
        for index in zip(*np.nonzero((ref != 0) | (oth != 0)), strict=True):
            rel = abs(oth[index] - ref[index]) / max(abs(ref[index]), 1e-300)
            if rel > worst:
                worst, where = rel, f"{name}{list(map(int, index))}"
    return worst, where


def report(
    name: str,
    title: str,
    runs: dict[str, list[dict]],
    args: Any,
    load: tuple[float, float],
    key_columns: list[str],
    key_estimates: Callable[[dict], tuple[float, ...]],
    compared: tuple[str, ...],
) -> str:
    """Markdown section: one row per library, the speed-up ratio and the agreement of the estimates."""
    import statistics

    lines = [
        f"## {title}",
        "",
        f"`python benchmarks/{name.split('_')[0]}.py --repeats {args.repeats} --device {args.device}"
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --check-optimality {args.check_optimality}" if args.check_optimality != "both" else "")
        + f"` — run {datetime.datetime.now().isoformat(timespec='seconds')}; each repetition in a fresh process; "
        "times in seconds; only `problem.solve` is in the solve columns. "
        f"1-min load average {load[0]:.2f} before / {load[1]:.2f} after (a load above the core count means "
        "other processes competed for the CPU).",
        "",
        "| library | device | threads | solve median s | solve min s | build median s | objective | "
        + " | ".join(key_columns)
        + " | evaluations (last step) | evaluations (all steps) | computed (all steps) | ms per computed evaluation"
        + " | converged |",
        "|---" * (12 + len(key_columns)) + "|",
    ]
    medians, per_evaluation = {}, {}
    for library, reps in runs.items():
        solves = [r["solve_s"] for r in reps]
        medians[library] = statistics.median(solves)
        per_evaluation[library] = statistics.median(1000 * r["solve_s"] / r["computed_evaluations"] for r in reps)
        last = reps[-1]
        keys = " | ".join(f"{v:.6g}" for v in key_estimates(last))
        lines.append(
            f"| {library} | {last['device']} | {last['threads']} | {medians[library]:.3f} | {min(solves):.3f} "
            f"| {statistics.median(r['build_s'] for r in reps):.3f} | {last['objective']:.6g} | {keys} "
            f"| {last['evaluations']} | {last['total_evaluations']} | {last['computed_evaluations']} "
            f"| {per_evaluation[library]:.1f} "
            f"| {last['converged']} |"
        )
    pyblp, dk = runs["pyblp"][-1], runs["demandkit"][-1]
    rel, where = max_rel_diff(pyblp, dk, compared)
    objective_rel = abs(dk["objective"] - pyblp["objective"]) / abs(pyblp["objective"])
    lines += [
        "",
        f"**Speed-up (PyBLP median / demandkit median, solve only): {medians['pyblp'] / medians['demandkit']:.2f}x** "
        f"over R={args.repeats}; per computed objective evaluation (whole solve time over the evaluations computed, "
        "which also covers the covariances and any Hessian): "
        f"{per_evaluation['pyblp'] / per_evaluation['demandkit']:.2f}x. The optimizer asks for the evaluations of "
        "the 'all steps' column; demandkit answers a request at a theta it has just evaluated from memory "
        "(a failed L-BFGS-B line search returns to its base point) and computes the rest. "
        + (
            "Both libraries run with their default `check_optimality='both'`: PyBLP differentiates its gradient "
            "for the Hessian after each GMM step, demandkit once, at the final estimates (2P evaluations, not "
            "counted in the columns)."
            if args.check_optimality == "both"
            else "Neither computes a Hessian (`check_optimality='gradient'` in both)."
        ),
        "",
        f"Max relative difference of estimates ({', '.join(compared)}, nonzero elements): {rel:.2e} (at {where}); "
        f"objective relative difference: {objective_rel:.2e}.",
    ]
    return "\n".join(lines)


def main(
    name: str,
    title: str,
    script: str,
    worker: Callable[[str, str, int | None, str], dict],
    doc: str,
    key_columns: list[str],
    key_estimates: Callable[[dict], tuple[float, ...]],
    compared: tuple[str, ...],
) -> None:
    """Command line shared by the benchmark scripts: a driver that alternates fresh worker processes."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process repetitions per library (default 3)")
    parser.add_argument("--device", default="cpu", help="demandkit device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="pin OMP/MKL/OpenBLAS/torch threads in both workers")
    parser.add_argument(
        "--check-optimality",
        choices=["both", "gradient"],
        default="both",
        help="both libraries' check_optimality (default 'both', their default: with the Hessian); 'gradient' "
        "writes its own section",
    )
    parser.add_argument("--worker", choices=["pyblp", "demandkit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        emit(worker(args.worker, args.device, args.threads, args.check_optimality))
        return
    if args.check_optimality != "both":
        name, title = f"{name}_{args.check_optimality}", f"{title}, check_optimality='{args.check_optimality}'"
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"pyblp": [], "demandkit": []}
    for rep in range(args.repeats):
        for library in runs:
            cmd = [os.path.abspath(script), "--worker", library, "--device", args.device]
            cmd += ["--check-optimality", args.check_optimality]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            run = run_worker(cmd, args.threads)
            runs[library].append(run)
            print(
                f"[{rep + 1}/{args.repeats}] {library:9s} solve {run['solve_s']:8.3f}s  build {run['build_s']:.3f}s  "
                f"objective {run['objective']:.6g}",
                file=sys.stderr,
            )
    section = report(name, title, runs, args, (load_before, os.getloadavg()[0]), key_columns, key_estimates, compared)
    print(section)
    print(f"\nwrote {update_section(name, section)}", file=sys.stderr)


def load_library(library: str, device: str, threads: int | None) -> tuple[Any, dict, str]:
    """Import PyBLP or demandkit in a worker: the module, extra Problem kwargs and a thread description."""
    import os

    if library == "pyblp":
        import pyblp

        pyblp.options.verbose = False
        return pyblp, {}, os.environ.get("OMP_NUM_THREADS", f"BLAS default ({len(os.sched_getaffinity(0))} cores)")
    import torch

    import demandkit

    if threads:
        torch.set_num_threads(threads)
    return demandkit, {"device": device}, f"torch {torch.get_num_threads()}"


def describe(library: str, device: str, threads: str, build: float, solve: float, results: Any) -> dict:
    """Worker output: timings and the estimates with their labels."""
    import numpy as np

    return {
        "library": library,
        "device": device if library == "demandkit" else "cpu",
        "threads": threads,
        "build_s": build,
        "solve_s": solve,
        "objective": float(np.asarray(results.objective).squeeze()),
        "evaluations": int(results.objective_evaluations),
        "total_evaluations": int(results.cumulative_objective_evaluations),
        "computed_evaluations": int(results.cumulative_objective_evaluations)
        - int(getattr(results, "cumulative_repeated_objective_evaluations", 0)),
        "converged": bool(results.converged),
        **{name: np.asarray(getattr(results, name), dtype=float).tolist() for name in ("beta", "sigma", "pi", "gamma")},
        **{f"{name}_labels": [str(x) for x in getattr(results, f"{name}_labels")] for name in ("beta", "sigma", "pi")},
    }
