"""The ``demandkit`` command line.

``demandkit replicate nevo|blp [--output results.json] [--save results.pkl]`` runs a classic replication;
``demandkit merger results.pkl --merge 2=1 [--firm-ids FILE] [--output outcomes.csv] [--chart merger.png]``
simulates a merger on saved results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _replicate(arguments: argparse.Namespace) -> int:
    from .replications import REPLICATIONS

    start = time.perf_counter()
    results = REPLICATIONS[arguments.name](device=arguments.device, progress=not arguments.quiet)
    seconds = time.perf_counter() - start
    print(f"{arguments.name.capitalize()} replication on the built-in data ({arguments.device}):\n")
    print(results)
    print(f"\nEstimated in {seconds:.2f} seconds (including building the problem).")
    if arguments.output:
        payload = results.to_dict()
        payload["estimates"] = results.to_frame().to_dict(orient="records")
        payload["replication"] = arguments.name
        with open(arguments.output, "w") as file:
            json.dump(payload, file, indent=2)
        print(f"Wrote {arguments.output}.")
    if arguments.save:
        results.to_pickle(arguments.save)
        print(f"Saved the results to {arguments.save} (for 'demandkit merger').")
    return 0 if results.converged and bool(results.fp_converged.all()) else 1


def _apply_merges(firm_ids: Any, pairs: list[str]) -> Any:
    """Give the products of each ``ACQUIRED`` firm to ``ACQUIRER`` (ids compared as text)."""
    import numpy as np

    for pair in pairs:
        if pair.count("=") != 1:
            raise SystemExit(f"--merge takes ACQUIRED=ACQUIRER; received {pair!r}.")
        acquired, acquirer = pair.split("=")
        text = firm_ids.astype(str)
        if not (text == acquired).any() or not (text == acquirer).any():
            raise SystemExit(f"--merge {pair}: firm ids must be among {sorted(set(text))[:20]}.")
        firm_ids = np.where(text == acquired, firm_ids[text == acquirer][0], firm_ids)
    return firm_ids


def _merger(arguments: argparse.Namespace) -> int:
    import pandas as pd

    from ..blp.results import ProblemResults

    results = ProblemResults.from_pickle(arguments.results)
    firm_ids = results.problem.product_frame["firm_ids"].to_numpy().copy()
    if arguments.firm_ids:
        column = pd.read_csv(arguments.firm_ids).iloc[:, -1].to_numpy()
        if column.shape[0] != firm_ids.shape[0]:
            print(f"{arguments.firm_ids} has {column.shape[0]} rows; the results have {firm_ids.shape[0]} products.")
            return 2
        firm_ids = column
    firm_ids = _apply_merges(firm_ids, arguments.merge or [])
    merger = results.compute_merger(firm_ids)
    print(merger)
    if arguments.output:
        merger.products.to_csv(arguments.output, index=False)
        print(f"Wrote the product outcomes to {arguments.output}.")
    if arguments.chart:
        from .plots import plot_merger

        plot_merger(merger, path=arguments.chart)
        print(f"Wrote the chart to {arguments.chart}.")
    return 0 if bool(merger.markets.converged.all()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demandkit", description="Structural demand estimation.")
    commands = parser.add_subparsers(dest="command", required=True)
    replicate = commands.add_parser("replicate", help="Run a classic replication on the built-in data.")
    replicate.add_argument(
        "name", choices=["nevo", "blp"], help="nevo (Nevo 2000 cereal) or blp (BLP 1995 cars, with supply)."
    )
    replicate.add_argument("--output", help="Write the estimates, standard errors and objective to this JSON file.")
    replicate.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda'.")
    replicate.add_argument("--quiet", action="store_true", help="No progress bar.")
    replicate.add_argument("--save", help="Pickle the results to this file (input to 'demandkit merger').")
    replicate.set_defaults(handler=_replicate)
    merger = commands.add_parser("merger", help="Simulate a merger on saved results (a pickle from --save).")
    merger.add_argument("results", help="Pickled ProblemResults with a supply side or firm_ids.")
    merger.add_argument("--merge", action="append", help="ACQUIRED=ACQUIRER firm ids, e.g. --merge 2=1 (repeatable).")
    merger.add_argument("--firm-ids", help="CSV whose last column holds the new firm id of each product, in order.")
    merger.add_argument("--output", help="Write the product-level outcomes table to this CSV.")
    merger.add_argument("--chart", help="Write a chart of price changes to this PNG or SVG.")
    merger.set_defaults(handler=_merger)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
