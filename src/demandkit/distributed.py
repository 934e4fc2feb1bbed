"""Data-parallel estimation on ``torch.distributed``: which shard this process holds, and the collectives.

Markets are independent inside one evaluation of an objective, so an estimator can give each process (rank) a
contiguous block of markets (with their households), compute its contributions (log-likelihood, gradient, moment
sums, scores) and add them up with one all-reduce per evaluation. Every rank then holds the same sums, runs the
same optimizer on them and so follows the same path; :func:`broadcast` keeps the parameters bit-identical anyway.
The process group is the user's: start the script with ``torchrun`` (one node or many, SLURM included), call
``torch.distributed.init_process_group('gloo')`` (CPU) or ``('nccl')`` (GPUs), and the estimators shard by
themselves. Nothing here schedules work: ``torch.distributed`` does.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .exceptions import SpecificationError


@dataclass(frozen=True)
class Shard:
    """This process's place in the group and the device its collectives use (CUDA for NCCL)."""

    rank: int
    world: int
    device: torch.device

    def block(self, sizes: np.ndarray) -> tuple[int, int]:
        """Contiguous ``[start, stop)`` of the items whose work ``sizes`` gives, balanced across the ranks."""
        cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(sizes, dtype=np.float64))])
        cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(self.world + 1) / self.world, side="left")
        cuts[0], cuts[-1] = 0, len(sizes)
        cuts = np.maximum.accumulate(np.minimum(cuts, len(sizes)))
        return int(cuts[self.rank]), int(cuts[self.rank + 1])

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (float64), the same on every rank."""
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64).copy(), device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def broadcast(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's ``values`` on every rank."""
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64).copy(), device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's (picklable) ``value``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, pickle.loads(pickle.dumps(value)))
        return out


def current_shard(distributed: bool | None, device: torch.device) -> Shard | None:
    """The shard of this process, or None to compute everything here.

    ``distributed=None`` shards when a process group is initialized; ``True`` requires one; ``False`` never shards.
    """
    if distributed is False:
        return None
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized:
        if distributed:
            raise SpecificationError(
                "distributed=True needs an initialized torch.distributed process group: launch with torchrun and call "
                "torch.distributed.init_process_group('gloo') (CPU) or ('nccl') (GPUs) first."
            )
        return None
    backend = dist.get_backend()
    collective = device if backend == "nccl" else torch.device("cpu")
    return Shard(dist.get_rank(), dist.get_world_size(), collective)
