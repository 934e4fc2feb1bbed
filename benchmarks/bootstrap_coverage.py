"""Monte Carlo: coverage of parametric-bootstrap intervals for elasticities (not in CI).

Run from the repository root::

    python benchmarks/bootstrap_coverage.py                       # R=100 replications, 200 draws each, 2 processes
    python benchmarks/bootstrap_coverage.py --replications 10 --no-write

Design: the demand side of ``benchmarks/micro_montecarlo.py`` (60 markets x 10 products, 200 agents, a random
coefficient on ``x`` and a price-income interaction, equilibrium prices), estimated by two-step GMM with
differentiation instruments. In each replication ``ProblemResults.bootstrap(draws=200)`` gives the distribution of
two statistics, the mean own-price elasticity over all products and the own-price elasticity of the first product
of the first market; the true values are the same statistics at the true parameters and the true mean utilities.
The table reports how often the 95% (and 90%) percentile intervals cover the truth, with Monte Carlo standard
errors, and the bootstrap's speed. Results replace the ``bootstrap_coverage`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _harness
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DRAWS = 200


def _design():
    sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location("micro_montecarlo", HERE / "micro_montecarlo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def statistics(results) -> np.ndarray:
    """The mean own-price elasticity and the first product's own-price elasticity."""
    elasticities = results.compute_elasticities()
    own = results.extract_diagonals(elasticities)[:, 0]
    return np.array([own.mean(), own[0]])


def replicate(seed: int) -> dict:
    import warnings

    import torch

    import demandkit as dk
    from demandkit.exceptions import ConvergenceWarning

    torch.set_num_threads(1)
    design = _design()
    problem = design.simulate(seed)
    sigma0, pi0 = np.diag([design.SIGMA_X, 0.0]), np.array([[0.0], [design.PI_P]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = problem.solve(sigma=sigma0, pi=pi0, check_optimality="gradient")
        truth = problem.solve(
            sigma=sigma0,
            pi=pi0,
            beta=[3, -2, 1],
            method="1s",
            optimization=dk.Optimization("return"),
            check_optimality="gradient",
        )
    start = time.perf_counter()
    boot = results.bootstrap(draws=DRAWS, seed=seed)
    drawn = np.stack([statistics(boot.draw(b)) for b in range(DRAWS)])
    seconds = time.perf_counter() - start
    return {
        "seed": seed,
        "truth": statistics(truth),
        "estimate": statistics(results),
        "draws": drawn,
        "seconds": seconds,
        "converged": bool(results.converged or results.gradient_norm < 1e-4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.processes) as executor:
        outcomes = list(executor.map(replicate, range(2000, 2000 + args.replications)))
    elapsed = time.perf_counter() - start
    rows = []
    R = len(outcomes)
    for k, name in enumerate(("mean own-price elasticity", "own-price elasticity, product 1 of market 1")):
        truth = np.array([o["truth"][k] for o in outcomes])
        estimates = np.array([o["estimate"][k] for o in outcomes])
        for level in (0.95, 0.90):
            tail = (1 - level) / 2 * 100
            lower = np.array([np.percentile(o["draws"][:, k], tail) for o in outcomes])
            upper = np.array([np.percentile(o["draws"][:, k], 100 - tail) for o in outcomes])
            covered = ((lower <= truth) & (truth <= upper)).mean()
            rows.append(
                {
                    "statistic": name,
                    "level": level,
                    "coverage": covered,
                    "MC s.e.": np.sqrt(level * (1 - level) / R),
                    "mean truth": truth.mean(),
                    "mean estimate": estimates.mean(),
                    "mean interval width": (upper - lower).mean(),
                }
            )
    table = pd.DataFrame(rows)
    seconds = np.median([o["seconds"] for o in outcomes])
    converged = sum(o["converged"] for o in outcomes)
    lines = [
        "## Bootstrap coverage: percentile intervals for elasticities",
        "",
        f"`python benchmarks/bootstrap_coverage.py --replications {args.replications}` — run "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, {args.processes} worker processes, "
        f"{elapsed:.0f} s in all (1-min load average {load:.2f} before); {converged} of {R} estimations converged "
        f"(flag or gradient below 1e-4). Each replication: `results.bootstrap(draws={DRAWS})` and the "
        f"elasticities of every draw, median {seconds:.2f} s. Design in the script's docstring.",
        "",
        table.to_markdown(index=False, floatfmt=".4f"),
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        print(f"\nwrote {_harness.update_section('bootstrap_coverage', section)}")


if __name__ == "__main__":
    main()
