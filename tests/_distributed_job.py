"""A torchrun job for tests/test_distributed.py: solve three problems in a gloo group, each rank pickles its results

(the integrated model, the mixed logit, a BLP problem with supply and micro moments, and one with absorbed fixed
effects).
Run as ``torchrun --standalone --nproc-per-node 2 tests/_distributed_job.py OUT``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed_cases import blp_results, integrated_results, mixed_logit_results  # noqa: E402

from demandkit.distributed import current_shard  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        results = {
            "integrated": integrated_results(),
            "mixed_logit": mixed_logit_results(),
            "blp": blp_results(),
            "blp_absorbed": blp_results(absorbed=True),
        }
        shard = current_shard(None, torch.device("cpu"))
        results["shard"] = (shard.rank, shard.world)
        Path(f"{sys.argv[1]}.{shard.rank}").write_bytes(pickle.dumps(results))
    finally:
        dist.barrier()  # both ranks are done before either tears the group down
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
