"""The ``demandkit`` command line: ``demandkit replicate nevo [--output results.json]``."""

from __future__ import annotations

import argparse
import json
import sys
import time


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
    return 0 if results.converged and bool(results.fp_converged.all()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demandkit", description="Structural demand estimation.")
    commands = parser.add_subparsers(dest="command", required=True)
    replicate = commands.add_parser("replicate", help="Run a classic replication on the built-in data.")
    replicate.add_argument("name", choices=["nevo"], help="Which replication: nevo (Nevo 2000 cereal).")
    replicate.add_argument("--output", help="Write the estimates, standard errors and objective to this JSON file.")
    replicate.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda'.")
    replicate.add_argument("--quiet", action="store_true", help="No progress bar.")
    replicate.set_defaults(handler=_replicate)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
