"""Scale: time per GMM objective evaluation and peak memory of a large BLP problem with supply, on 1 and 2 local
processes, and PyBLP on a subset of markets with its linear extrapolation (not in CI).

Run from the repository root::

    python benchmarks/scale.py                                  # 1,000 markets x 50 products x 200 agents, and 25
                                                                # products
    python benchmarks/scale.py --markets 2000 --agents 1000     # the issue's example size (tens of GB)

Data: a random-coefficients logit (random coefficients on the constant, prices and ``x``, Pi on prices x income)
with a Bertrand-Nash supply side (linear marginal costs on ``1 + w + x``); characteristics, prices and shares are
drawn directly, not solved as an equilibrium (only the computation is timed), and written once to a temporary
folder so that every worker reads the same data. Each worker runs in a fresh process:

- demandkit: builds the ``Problem`` (demand and log-cost supply, differentiation instruments) and times the GMM
  objective and its gradient at the starting values (the median of 3 evaluations after one warm-up, each inverting
  shares from the same starting delta); with 2 processes the markets are sharded (``torchrun``, gloo), and the
  time is the slowest rank's. Peak memory is the process's maximum resident set (the largest rank's).
- PyBLP: the same problem on the first ``--pyblp-markets`` markets, timed as one ``solve`` with
  ``Optimization('return')`` (the objective and gradient once, plus its standard errors: an upper bound on one
  evaluation); its time is linear in markets, so the table extrapolates it to all markets and labels it so.

Two product counts (``--products`` and half of it) show that memory grows linearly in products per market: no
``[T, J, J, I]`` tensor is formed. Results replace the ``scale`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _harness
import numpy as np
import pandas as pd

SIGMA0 = np.diag([0.5, 0.3, 0.4])
PI0 = np.array([[0.0], [0.2], [0.0]])
FORMULATIONS = ("1 + prices + x", "1 + prices + x", "1 + w + x")


def simulate(folder: Path, markets: int, products: int, agents: int, seed: int = 0) -> None:
    """Data of the design written to ``folder`` (products.csv, agents.csv): characteristics, prices and shares drawn
    directly (shares from a Dirichlet with half the market inside), not an equilibrium. Only the computation is
    timed, and solving the equilibrium of a problem this size would take longer than the benchmark itself."""
    from demandkit.construction.instruments import build_id_data

    rng = np.random.default_rng(seed)
    ids = build_id_data(markets, products, max(2, products // 5))
    x, w = rng.uniform(0, 2, markets * products), rng.uniform(0, 1, markets * products)
    shares = 0.5 * rng.dirichlet(np.ones(products), size=markets).ravel()
    frame = pd.DataFrame(
        {
            "market_ids": ids.market_ids.ravel().astype(int),
            "firm_ids": ids.firm_ids.ravel().astype(int),
            "x": x,
            "w": w,
            "prices": 1 + w + 0.5 * x + 0.3 * rng.uniform(size=x.size),
            "shares": shares,
        }
    )
    write_data(folder, frame, markets, agents, rng)


def write_data(folder: Path, frame: pd.DataFrame, markets: int, agents: int, rng: np.random.Generator) -> None:
    """Write ``frame`` with quadratic differentiation instruments of ``(x, w)`` (demand and supply) and ``agents``
    standard normal agents per market with an income demographic to ``folder`` (products.csv, agents.csv)."""
    import demandkit as dk
    from demandkit.construction.instruments import build_differentiation_instruments

    rows = np.repeat(np.arange(markets), agents)
    agent_data = pd.DataFrame(
        {
            "market_ids": rows,
            "weights": 1 / agents,
            **{f"nodes{k}": rng.normal(size=rows.size) for k in range(3)},
            "income": rng.normal(size=rows.size),
        }
    )
    differences = build_differentiation_instruments(dk.Formulation("0 + x + w"), frame, "quadratic", interact=True)
    columns = {f"demand_instruments{k}": differences[:, k] for k in range(differences.shape[1])}
    columns.update({f"supply_instruments{k}": differences[:, k] for k in range(differences.shape[1])})
    frame.assign(**columns).to_csv(folder / "products.csv", index=False)
    agent_data.to_csv(folder / "agents.csv", index=False)


def build(lib: object, folder: Path, markets: int | None = None) -> object:
    products = pd.read_csv(folder / "products.csv")
    agents = pd.read_csv(folder / "agents.csv")
    if markets is not None:
        keep = products["market_ids"].unique()[:markets]
        products = products[products["market_ids"].isin(keep)]
        agents = agents[agents["market_ids"].isin(keep)]
    formulations = [lib.Formulation(f) for f in FORMULATIONS]
    return lib.Problem(formulations, products, lib.Formulation("0 + income"), agents)


def peak_megabytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demandkit_worker(folder: Path) -> dict:
    """Time the objective and gradient (this process's markets when sharded)."""
    import torch

    import demandkit as dk
    from demandkit.blp import estimation
    from demandkit.blp.demand import DemandModel
    from demandkit.blp.objective import EvaluationStats, GMMObjective
    from demandkit.blp.parameters import ParameterSpace
    from demandkit.distributed import current_shard

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    start = time.perf_counter()
    problem = build(dk, folder)
    built = time.perf_counter() - start
    space = ParameterSpace.for_problem(problem, SIGMA0, PI0, None, True, beta=[np.nan, -1.0, np.nan])
    model = DemandModel(problem).fix_nodes(space.sigma0)
    system = estimation.StackedSystem.build(problem, space)
    W = estimation._initial_W(problem, system, None)
    arguments = (space, dk.Iteration("squarem", {"atol": 1e-12}), W, problem.logit_delta.clone(), "first")
    shard = current_shard(None, problem.device)
    if shard is None:
        objective = GMMObjective(problem, model, *arguments, EvaluationStats(), (-np.inf, np.inf))
    else:
        from demandkit.blp.sharding import ShardedGMMObjective

        objective = ShardedGMMObjective(problem, model, *arguments, EvaluationStats(), (-np.inf, np.inf), shard=shard)
    objective.evaluate(space.theta0)
    times = []
    for _ in range(3):
        objective._first = True
        objective.start = torch.where(objective.problem.product_mask, objective.problem.logit_delta, 0.0)
        tick = time.perf_counter()
        value = objective.evaluate(space.theta0 * 1.001).objective
        times.append(time.perf_counter() - tick)
    out = {"seconds": statistics.median(times), "build_s": built, "peak_mb": peak_megabytes(), "objective": value}
    if distributed:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, out)
        torch.distributed.destroy_process_group()
        out = {
            "seconds": max(g["seconds"] for g in gathered),
            "build_s": max(g["build_s"] for g in gathered),
            "peak_mb": max(g["peak_mb"] for g in gathered),
            "objective": gathered[0]["objective"],
        }
    return out


def pyblp_worker(folder: Path, markets: int) -> dict:
    import pyblp

    pyblp.options.verbose = False
    problem = build(pyblp, folder, markets)
    start = time.perf_counter()
    problem.solve(
        SIGMA0,
        PI0,
        beta=[np.nan, -1.0, np.nan],
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-12}),
        check_optimality="gradient",
    )
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_megabytes(), "markets": markets}


def run(arguments: list[str], processes: int = 1) -> dict:
    """A worker in a fresh process, or in ``processes`` processes launched by torchrun."""
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    )
    return _harness.run_worker([*launcher, os.path.abspath(__file__), *arguments], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--products", type=int, default=50)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--pyblp-markets", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=["demandkit", "pyblp"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "demandkit":
        result = demandkit_worker(Path(args.folder))
        if int(os.environ.get("RANK", "0")) == 0:
            _harness.emit(result)
        return
    if args.worker == "pyblp":
        _harness.emit(pyblp_worker(Path(args.folder), args.pyblp_markets))
        return
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for products in (args.products // 2, args.products):
            folder = Path(root) / f"J{products}"
            folder.mkdir()
            tick = time.perf_counter()
            simulate(folder, args.markets, products, args.agents)
            print(f"simulated J={products} in {time.perf_counter() - tick:.0f} s", file=sys.stderr)
            size = f"{args.markets} x {products} x {args.agents}"
            for processes in (1, 2):
                result = run(["--worker", "demandkit", "--folder", str(folder)], processes)
                rows.append(
                    {
                        "size (T x J x I)": size,
                        "library": f"demandkit, {processes} process{'es' if processes > 1 else ''}",
                        "seconds per evaluation": result["seconds"],
                        "peak memory MB (per process)": result["peak_mb"],
                        "note": "objective and gradient, median of 3",
                    }
                )
                print(rows[-1], file=sys.stderr)
            result = run(["--worker", "pyblp", "--folder", str(folder), "--pyblp-markets", str(args.pyblp_markets)])
            factor = args.markets / args.pyblp_markets
            rows.append(
                {
                    "size (T x J x I)": size,
                    "library": f"PyBLP, {args.pyblp_markets} markets measured",
                    "seconds per evaluation": result["seconds"],
                    "peak memory MB (per process)": result["peak_mb"],
                    "note": "one solve with Optimization('return') (objective, gradient, SEs)",
                }
            )
            rows.append(
                {
                    "size (T x J x I)": size,
                    "library": f"PyBLP, extrapolated to {args.markets} markets",
                    "seconds per evaluation": result["seconds"] * factor,
                    "peak memory MB (per process)": float("nan"),
                    "note": f"measured time x {factor:.0f} (linear in markets)",
                }
            )
            print(rows[-2], file=sys.stderr)
    table = pd.DataFrame(rows)
    lines = [
        "## Scale: a large BLP problem with supply, 1 and 2 processes, PyBLP extrapolated",
        "",
        f"`python benchmarks/scale.py --markets {args.markets} --products {args.products} --agents {args.agents} "
        f"--pyblp-markets {args.pyblp_markets}` — run {datetime.datetime.now().isoformat(timespec='seconds')}, fresh "
        f"processes, one thread each (1-min load average {load:.2f} before). Design and timing in the script's "
        "docstring; the PyBLP rows time a solve that also computes standard errors, an upper bound on one evaluation.",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        print(f"\nwrote {_harness.update_section('scale', section)}", file=sys.stderr)


if __name__ == "__main__":
    main()
