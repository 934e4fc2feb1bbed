"""Markets bucketed by size: time per GMM objective evaluation (value and gradient) with one padded batch of all
markets against the buckets chosen by the cost model, on data whose market sizes differ (not in CI).

Run from the repository root::

    python benchmarks/buckets.py                      # 300 markets of 5 to 150 products, 200 agents, and BLP (1995)
    python benchmarks/buckets.py --markets 1000

Designs:

- *scanner*: ``--markets`` markets whose product counts are drawn uniformly from 5 to ``--products`` (a store-week
  panel where small stores carry a handful of products and large ones a hundred and more), ``--agents`` agents,
  random coefficients on the constant, prices and ``x``, Pi on prices x income, and a Bertrand-Nash supply side with
  log marginal costs (the data of ``benchmarks/scale.py``: drawn directly, not an equilibrium; only the computation
  is timed).
- *blp*: the BLP (1995) automobile problem with supply at its published starting values (72 to 150 products).

Each configuration runs in a fresh process with one torch thread: the problem is built, one evaluation warms up,
and the median of 5 evaluations (each inverting shares from the same starting delta) is reported with the objective,
which must be the same with and without buckets. Results replace the ``buckets`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _harness
import numpy as np
import pandas as pd
from scale import FORMULATIONS, PI0, SIGMA0, write_data


def simulate(folder: Path, markets: int, products: int, agents: int, seed: int = 0) -> None:
    """Scanner-like data in ``folder``: market sizes uniform on 5..``products``, shares from a Dirichlet with half of
    each market inside."""

    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, products + 1, size=markets)
    market_ids = np.repeat(np.arange(markets), sizes)
    slots = np.concatenate([np.arange(size) for size in sizes])  # data set-up, not a hot path
    shares = np.concatenate([0.5 * rng.dirichlet(np.ones(size)) for size in sizes])
    x, w = rng.uniform(0, 2, market_ids.size), rng.uniform(0, 1, market_ids.size)
    frame = pd.DataFrame(
        {
            "market_ids": market_ids,
            "firm_ids": slots % 7,
            "x": x,
            "w": w,
            "prices": 1 + w + 0.5 * x + 0.3 * rng.uniform(size=x.size),
            "shares": shares,
        }
    )
    write_data(folder, frame, markets, agents, rng)


def worker(design: str, folder: str, buckets: int | None) -> dict:
    """Build the design's problem with ``buckets`` and time its objective and gradient."""
    import torch

    import demandkit as dk
    from demandkit.blp import estimation
    from demandkit.blp.buckets import build_buckets
    from demandkit.blp.demand import DemandModel
    from demandkit.blp.objective import EvaluationStats, GMMObjective
    from demandkit.blp.parameters import ParameterSpace
    from demandkit.interfaces import replications

    torch.set_num_threads(1)
    if design == "blp":
        products = pd.read_csv(dk.data.BLP_PRODUCTS_LOCATION)
        agents = pd.read_csv(dk.data.BLP_AGENTS_LOCATION)
        formulations = (
            dk.Formulation("1 + hpwt + air + mpd + space"),
            dk.Formulation("1 + prices + hpwt + air + mpd + space"),
            dk.Formulation("1 + log(hpwt) + air + log(mpg) + log(space) + trend"),
        )
        agent_formulation = dk.Formulation("0 + I(1 / income)")
        sigma, pi, beta = replications.BLP_SIGMA0, replications.BLP_PI0, [np.nan] * 5  # prices are in X2 only
    else:
        products = pd.read_csv(Path(folder) / "products.csv")
        agents = pd.read_csv(Path(folder) / "agents.csv")
        formulations = tuple(dk.Formulation(f) for f in FORMULATIONS)
        agent_formulation = dk.Formulation("0 + income")
        sigma, pi, beta = SIGMA0, PI0, [np.nan, -1.0, np.nan]
    problem = dk.Problem(formulations, products, agent_formulation, agents, costs_type="log", buckets=buckets)
    plan = build_buckets(problem)
    space = ParameterSpace.for_problem(problem, sigma, pi, None, True, beta=beta)
    model = DemandModel(problem).fix_nodes(space.sigma0)
    system = estimation.StackedSystem.build(problem, space)
    W = estimation._initial_W(problem, system, None)
    arguments = (space, dk.Iteration("squarem", {"atol": 1e-12}), W, problem.logit_delta.clone(), "first")
    objective = GMMObjective(problem, model, *arguments, EvaluationStats(), (1e-3, np.inf))
    objective.evaluate(space.theta0)
    times = []
    for _ in range(5):
        objective._first = True
        objective.start = torch.where(problem.product_mask, problem.logit_delta, 0.0)
        tick = time.perf_counter()
        value = objective.evaluate(space.theta0 * 1.001).objective
        times.append(time.perf_counter() - tick)
    sizes = problem.product_mask.sum(1)
    return {
        "seconds": statistics.median(times),
        "objective": value,
        "markets": int(problem.T),
        "products": f"{int(sizes.min())}-{int(sizes.max())}",
        "padding": float(1 - sizes.sum() / problem.product_mask.numel()),
        "buckets": 1 if plan is None else len(plan),
        "widths": "all" if plan is None else ", ".join(f"{len(b.markets)}x{b.products}" for b in plan.buckets),
    }


def run(arguments: list[str]) -> dict:
    return _harness.run_worker([os.path.abspath(__file__), *arguments], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=300)
    parser.add_argument("--products", type=int, default=150)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=["scanner", "blp"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--buckets", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _harness.emit(worker(args.worker, args.folder, args.buckets))
        return
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        simulate(Path(folder), args.markets, args.products, args.agents)
        for design in ("scanner", "blp"):
            measured = {}
            for buckets in (1, None):
                extra = [] if buckets is None else ["--buckets", str(buckets)]
                measured[buckets] = run(["--worker", design, "--folder", folder, *extra])
            one, bucketed = measured[1], measured[None]
            rows.append((design, one, bucketed))
            print(design, json.dumps(one), json.dumps(bucketed), flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "## Markets bucketed by size",
        "",
        f"`python benchmarks/buckets.py --markets {args.markets} --products {args.products} --agents {args.agents}`"
        f" - run {started}; each configuration in a fresh process with one torch thread; median of 5 evaluations of "
        f"the GMM objective and its gradient (supply side included). 1-min load average {load_before:.2f} before / "
        f"{load_after:.2f} after.",
        "",
        "| design | markets | products per market | padded slots empty | one batch s | buckets | bucket sizes "
        "(markets x width) | bucketed s | speed-up | objective difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for design, one, bucketed in rows:
        difference = abs(one["objective"] - bucketed["objective"]) / abs(one["objective"])
        lines.append(
            f"| {design} | {one['markets']} | {one['products']} | {one['padding']:.0%} | {one['seconds']:.3f} | "
            f"{bucketed['buckets']} | {bucketed['widths']} | {bucketed['seconds']:.3f} | "
            f"{one['seconds'] / bucketed['seconds']:.2f}x | {difference:.1e} |"
        )
    lines += [
        "",
        "The scanner design has the market sizes of a store-week panel; BLP (1995) is the automobile replication at "
        "its starting values. The buckets are chosen by the cost model of `demandkit.blp.buckets` (a dynamic "
        "program over the sorted sizes); the objective is the same up to rounding.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        _harness.update_section("buckets", body)


if __name__ == "__main__":
    main()
