"""Estimate the integrated macro-micro model with its markets sharded across processes (torch.distributed).

One machine, two processes on the CPU::

    torchrun --standalone --nproc-per-node 2 examples/distributed_integrated.py

Several machines (run the same command on each; SLURM sets the rank variables, see the README)::

    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/distributed_integrated.py --backend nccl --device cuda

Every process builds the same problem from the same data; ``problem.solve`` sees the process group and gives
each process a block of markets with their households. Every process returns the same results; rank 0 prints.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import demandkit as dk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markets", type=int, default=20)
    args = parser.parse_args()
    dist.init_process_group(args.backend)
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    try:
        sim = dk.IntegratedSimulation.draw(markets=args.markets, periods=52, products=4, households=100, seed=0)
        problem = dk.IntegratedProblem(
            (dk.Formulation("1 + prices + ads"), dk.Formulation("1 + prices")),
            sim.product_data,
            sim.micro_data,
            integration=dk.Integration("halton", 100, {"seed": 0}),
            burn_in=8,
            device=args.device,
        )
        results = problem.solve(sigma=[[0.5, 0.0], [0.0, 0.5]], gamma=0.5)
        if dist.get_rank() == 0:
            print(f"{dist.get_world_size()} processes")
            print(results)
    finally:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
