"""Nevo (2000) cereal replication: PyBLP vs demandkit, each repetition in a fresh Python process.

Run from the repository root::

    python benchmarks/nevo.py                      # R=3 repetitions per library, CPU
    python benchmarks/nevo.py --repeats 5 --threads 1
    python benchmarks/nevo.py --device cuda        # demandkit on the GPU (PyBLP always runs on the CPU)

Only ``problem.solve(...)`` is timed for the headline numbers; problem construction is timed separately. Results
replace the ``nevo`` section of ``benchmarks/RESULTS.md`` (other sections are kept). A worker mode
(``--worker pyblp|demandkit``) runs one repetition and prints a JSON line; the driver spawns it with ``python``.
"""

from __future__ import annotations

import time

import _harness
import numpy as np
import pandas as pd

SIGMA0 = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI0 = [[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]


def worker(library: str, device: str, threads: int | None = None, check_optimality: str = "both") -> dict:
    """One repetition in this (fresh) process: build the Nevo problem, solve it, return timings and estimates."""
    lib, kwargs, used = _harness.load_library(library, device, threads)
    products = pd.read_csv(lib.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(lib.data.NEVO_AGENTS_LOCATION)
    X1 = lib.Formulation("0 + prices", absorb="C(product_ids)")
    X2 = lib.Formulation("1 + prices + sugar + mushy")
    agent_formulation = lib.Formulation("0 + income + income_squared + age + child")
    start = time.perf_counter()
    problem = lib.Problem((X1, X2), products, agent_formulation, agents, **kwargs)
    build = time.perf_counter() - start
    start = time.perf_counter()
    results = problem.solve(
        SIGMA0,
        PI0,
        optimization=lib.Optimization("bfgs", {"gtol": 1e-5}),
        method="1s",
        check_optimality=check_optimality,
    )
    return _harness.describe(library, device, used, build, time.perf_counter() - start, results)


def key_estimates(run: dict) -> tuple[float, float, float]:
    """Price coefficient, sigma[prices, prices] and pi[prices, income]."""
    p = run["sigma_labels"].index("prices")
    return (
        run["beta"][run["beta_labels"].index("prices")][0],
        run["sigma"][p][p],
        run["pi"][p][run["pi_labels"].index("income")],
    )


if __name__ == "__main__":
    _harness.main(
        "nevo",
        "Nevo (2000) cereal replication",
        __file__,
        worker,
        __doc__,
        ["price coef", "sigma[prices,prices]", "pi[prices,income]"],
        key_estimates,
        ("beta", "sigma", "pi"),
    )
