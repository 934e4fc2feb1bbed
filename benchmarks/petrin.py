"""Petrin (2002) minivan replication with micro moments: PyBLP vs demandkit in fresh processes.

Run from the repository root::

    python benchmarks/petrin.py --repeats 1          # PyBLP takes tens of minutes per solve on 2 cores
    python benchmarks/petrin.py --worker pyblp > pyblp.out   # one side alone (prints a tagged JSON line)

The problem is PyBLP's micro-moments tutorial: demand ``1 + hpwt + space + air + mpd + fwd + mi + sw + su + pv
+ pgnp + trend + trend2`` (X1), 11 random coefficients on ``1 + I(-prices) + hpwt + space + air + mpd + fwd + mi +
sw + su + pv`` (X2) with income-group price sensitivities and family-size tastes for the vehicle types (Pi), log
marginal costs, 1,000 agents in each of 13 markets (Petrin's truncated chi-squared nodes and CEX demographics, as
shipped with PyBLP), and ten micro moments from the CEX (the mean age and family size of minivan, station wagon,
sport-utility and van buyers, the purchase probability of mid- and high-income households): each a ratio of two
micro parts. Two-step GMM with W and SEs clustered by product, BFGS with ``gtol=1e-4`` and SQUAREM at
``atol=1e-13``, PyBLP's tutorial settings. Results replace the ``petrin`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import time

import _harness
import numpy as np
import pandas as pd

SIGMA0 = np.diag([3.23, 0, 4.43, 0.46, 0.01, 2.58, 4.42, 0, 0, 0, 0])
PI0 = np.zeros((11, 9))
PI0[1, 1:4] = [7.52, 31.13, 34.49]
PI0[7:11, 4] = [0.57, 0.28, 0.31, 0.42]
AGE, FS, MID, HIGH = 5, 6, 7, 8  # demographic columns
TYPES = {"mi": 7, "sw": 8, "su": 9, "pv": 10}  # X2 columns of the vehicle types


def micro_moments(lib: object, values: pd.DataFrame) -> list:
    """The tutorial's ten ratio moments on one CEX dataset of 29,125 households (outside good included)."""
    dataset = lib.MicroDataset(
        name="CEX", observations=29125, compute_weights=lambda t, p, a: np.ones((a.size, 1 + p.size))
    )

    def part(name: str, demographic: int, column: int, outside: float = 0.0) -> object:
        return lib.MicroPart(
            name=name,
            dataset=dataset,
            compute_values=lambda t, p, a, d=demographic, c=column, o=outside: np.outer(
                a.demographics[:, d], np.r_[o, p.X2[:, c]]
            ),
        )

    def ratio(v: np.ndarray) -> float:
        return v[0] / v[1]

    def ratio_gradient(v: np.ndarray) -> list:
        return [1 / v[1], -v[0] / v[1] ** 2]

    moments = []
    denominators = {kind: part(f"E[{kind}_j]", 0, column) for kind, column in TYPES.items()}
    for demographic, label in ((AGE, "age"), (FS, "fs")):
        for kind, column in TYPES.items():
            numerator = part(f"E[{label}_i * {kind}_j]", demographic, column)
            denominator = denominators[kind]
            moments.append(
                lib.MicroMoment(
                    name=f"E[{label}_i | {kind}_j]",
                    value=float(values.loc[f"E[{label} | {kind}]", "value"]),
                    parts=[numerator, denominator],
                    compute_value=ratio,
                    compute_gradient=ratio_gradient,
                )
            )
    for demographic, label in ((MID, "mid"), (HIGH, "high")):
        inside = part(f"E[1{{j > 0}} * {label}_i]", demographic, 0)
        everyone = part(f"E[{label}_i]", demographic, 0, outside=1.0)
        moments.append(
            lib.MicroMoment(
                name=f"E[1{{j > 0}} | {label}_i]",
                value=float(values.loc[f"E[new | {label}]", "value"]),
                parts=[inside, everyone],
                compute_value=ratio,
                compute_gradient=ratio_gradient,
            )
        )
    return moments


def worker(library: str, device: str, threads: int | None = None, check_optimality: str = "both") -> dict:
    """One repetition in this (fresh) process: build the Petrin problem, solve it, return timings and estimates."""
    lib, kwargs, used = _harness.load_library(library, device, threads)
    products = pd.read_csv(lib.data.PETRIN_PRODUCTS_LOCATION)
    agents = pd.read_csv(lib.data.PETRIN_AGENTS_LOCATION)
    values = pd.read_csv(lib.data.PETRIN_VALUES_LOCATION, index_col=0)
    formulations = (
        lib.Formulation("1 + hpwt + space + air + mpd + fwd + mi + sw + su + pv + pgnp + trend + trend2"),
        lib.Formulation("1 + I(-prices) + hpwt + space + air + mpd + fwd + mi + sw + su + pv"),
        lib.Formulation("1 + log(hpwt) + log(wt) + log(mpg) + air + fwd + trend * (jp + eu) + log(q)"),
    )
    agent_formulation = lib.Formulation(
        "1 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) * fv) + age + fs + mid + high"
    )
    start = time.perf_counter()
    problem = lib.Problem(formulations, products, agent_formulation, agents, costs_type="log", **kwargs)
    build = time.perf_counter() - start
    moments = micro_moments(lib, values)
    start = time.perf_counter()
    results = problem.solve(
        sigma=SIGMA0,
        pi=PI0,
        optimization=lib.Optimization("bfgs", {"gtol": 1e-4}),
        iteration=lib.Iteration("squarem", {"atol": 1e-13}),
        se_type="clustered",
        W_type="clustered",
        micro_moments=moments,
        check_optimality=check_optimality,
    )
    solve = time.perf_counter() - start
    described = _harness.describe(library, device, used, build, solve, results)
    described["micro_values"] = np.asarray(results.micro_values, dtype=float).ravel().tolist()
    for name in ("sigma_se", "pi_se", "beta_se", "gamma_se"):
        described[name] = np.asarray(getattr(results, name), dtype=float).tolist()
    return described


def key_estimates(run: dict) -> tuple[float, float]:
    """Pi[-prices, high/income] and sigma[1, 1]."""
    return run["pi"][1][3], run["sigma"][0][0]


if __name__ == "__main__":
    _harness.main(
        "petrin",
        "Petrin (2002) minivan replication with micro moments and supply",
        __file__,
        worker,
        __doc__,
        ["pi[-prices,high/income]", "sigma[1,1]"],
        key_estimates,
        ("beta", "sigma", "pi", "gamma", "sigma_se", "pi_se", "beta_se", "gamma_se", "micro_values"),
    )
