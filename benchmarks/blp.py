"""BLP (1995) automobile replication with its supply side: PyBLP vs demandkit in fresh processes.

Run from the repository root::

    python benchmarks/blp.py                 # R=3 repetitions per library, CPU
    python benchmarks/blp.py --repeats 1     # PyBLP takes minutes per solve on 2 cores

The specification is Conlon and Gortmaker's (2020): demand ``1 + hpwt + air + mpd + space`` (X1) and
``1 + prices + hpwt + air + mpd + space`` (X2) with Pi on 1/income for prices; log marginal costs on
``1 + log(hpwt) + air + log(mpg) + log(space) + trend``; Bertrand-Nash pricing by firm; two-step GMM with
clustered W and SEs, W updated at the starting values, costs bounded below by 0.001. Results replace the
``blp`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import time

import _harness
import numpy as np
import pandas as pd

SIGMA0 = np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056])
PI0 = np.c_[[0, -43.501, 0, 0, 0, 0]]


def worker(library: str, device: str, threads: int | None = None, check_optimality: str = "both") -> dict:
    """One repetition in this (fresh) process: build the BLP problem, solve it, return timings and estimates."""
    lib, kwargs, used = _harness.load_library(library, device, threads)
    products = pd.read_csv(lib.data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(lib.data.BLP_AGENTS_LOCATION)
    formulations = (
        lib.Formulation("1 + hpwt + air + mpd + space"),
        lib.Formulation("1 + prices + hpwt + air + mpd + space"),
        lib.Formulation("1 + log(hpwt) + air + log(mpg) + log(space) + trend"),
    )
    start = time.perf_counter()
    problem = lib.Problem(
        formulations, products, lib.Formulation("0 + I(1 / income)"), agents, costs_type="log", **kwargs
    )
    build = time.perf_counter() - start
    start = time.perf_counter()
    results = problem.solve(
        SIGMA0,
        PI0,
        costs_bounds=(0.001, None),
        W_type="clustered",
        se_type="clustered",
        initial_update=True,
        check_optimality=check_optimality,
    )
    return _harness.describe(library, device, used, build, time.perf_counter() - start, results)


def key_estimates(run: dict) -> tuple[float, float]:
    """Pi[prices, 1/income] and sigma[hpwt, hpwt]."""
    p, h = run["sigma_labels"].index("prices"), run["sigma_labels"].index("hpwt")
    return run["pi"][p][0], run["sigma"][h][h]


if __name__ == "__main__":
    _harness.main(
        "blp",
        "BLP (1995) automobile replication with supply",
        __file__,
        worker,
        __doc__,
        ["pi[prices,1/income]", "sigma[hpwt,hpwt]"],
        key_estimates,
        ("beta", "sigma", "pi", "gamma"),
    )
