"""Chunks of individuals as padded tensors, and chunk sizes chosen from the device's free memory.

The work of one evaluation is a tensor of individuals x draws x situations x alternatives. It is never built
whole: individuals are sorted by panel length and cut into chunks whose padded size fits a memory budget, and
each chunk holds its own padded tensors (so a long panel only pads the chunk it lands in).

Two layouts serve different kernels:

- :class:`DifferenceChunk` for the analytic kernel: covariates of the non-chosen alternatives minus those of
  the chosen one, :math:`\\tilde x_{itj} = x_{itj} - x_{i t y_{it}}`, as ``[n, T J', K + 1]`` with rows ordered
  situation-major (``t * J' + j``) and a last *mask column* that is 0 for real entries and :math:`-\\infty`
  for padding, so that with a coefficient of one the padded utilities are :math:`-\\infty` and their
  exponentials exactly zero.
- :class:`FullChunk` for the differentiable kernel, prediction and post-estimation: all alternatives,
  ``[n, T, J, K]``, with availability, chosen slot and outside-alternative masks. Padded entries repeat the
  individual's first row so that any utility function stays finite there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data import Panel

#: a chunk's largest tensor on the CPU stays near this many elements, so the kernel's passes run in cache
CPU_CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class ChunkPlan:
    """Chunks as consecutive ranges of one ordering of the individuals (longest panels first).

    Every plan of a panel shares :func:`individual_order`, so data laid out in that order (the draws) is
    sliced, not gathered, whatever the chunk sizes.
    """

    order: np.ndarray  # [I] panel individual indices, longest panels first
    bounds: tuple[tuple[int, int], ...]  # [start, stop) positions in ``order`` of each chunk

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def members(self) -> tuple[np.ndarray, ...]:
        """Panel individual indices of each chunk."""
        return tuple(self.order[a:b] for a, b in self.bounds)


def individual_order(panel: Panel) -> np.ndarray:
    """Individuals by decreasing panel length, then decreasing largest situation, then index."""
    I = panel.n_individuals
    return np.lexsort((np.arange(I), -panel.n_alternatives, -panel.n_situations))


def available_memory(device: torch.device) -> int:
    """Free memory in bytes: ``torch.cuda.mem_get_info`` on a GPU, ``os.sysconf`` physical pages on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2 << 30


def element_budget(device: torch.device, dtype: torch.dtype, fraction: float = 0.5) -> int:
    """How many elements all of a chunk's tensors together may hold: ``fraction`` of the free memory."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return max(int(fraction * available_memory(device) / itemsize), 1)


def plan_chunks(
    panel: Panel,
    draws: int,
    budget: int,
    copies: float,
    extra: int = 0,
    cap: int | None = None,
    chunk_size: int | None = None,
) -> ChunkPlan:
    """Sort individuals by panel size and cut them into chunks that fit ``budget`` elements.

    A chunk of ``n`` individuals pads to its longest panel :math:`T` and largest situation :math:`J`; it holds
    ``copies`` tensors of :math:`n R T J` elements and ``extra`` more elements per individual and draw, so it
    costs :math:`n R (c T J + e)`. On the CPU, ``cap`` also bounds :math:`n R T J` (cache-sized chunks).
    ``chunk_size`` fixes ``n`` instead.

    Parameters
    ----------
    panel : Panel
        The validated rows.
    draws : int
        Draws per individual :math:`R`.
    budget : int
        Elements a chunk may use in all (see :func:`element_budget`).
    copies : float
        Live ``[n, T, J, R]``-sized tensors of the kernel.
    extra : int
        Further elements per individual and draw (for instance :math:`P K` for the Hessian).
    cap : int, optional
        Most elements of one ``[n, T, J, R]`` tensor.
    chunk_size : int, optional
        A fixed number of individuals per chunk.
    """
    I = panel.n_individuals
    order = individual_order(panel)
    bounds = []
    start = 0
    while start < I:
        if chunk_size is not None:
            n = int(chunk_size)
        else:
            # the first individual is the longest; the widest situation bounds the rest
            width = int(panel.n_alternatives[order[start:]].max())
            big = draws * int(panel.n_situations[order[start]]) * width
            n = max(1, int(budget // max(copies * big + draws * extra, 1)))
            if cap is not None:
                n = max(1, min(n, cap // max(big, 1)))
        bounds.append((start, min(start + n, I)))
        start += n
    return ChunkPlan(order, tuple(bounds))


def _rows_of(panel: Panel, individuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Panel rows of ``individuals`` and the chunk-local index of each row's individual.

    Panel rows are grouped by individual, so each individual's rows are one range (found by bisection); the cost is
    that of the chunk, not of the panel.
    """
    starts = np.searchsorted(panel.individual, individuals, side="left")
    stops = np.searchsorted(panel.individual, individuals, side="right")
    sizes = stops - starts
    local = np.repeat(np.arange(len(individuals)), sizes)
    rows = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(sizes.sum())
    return rows, local


@dataclass(frozen=True)
class DifferenceChunk:
    """Differenced covariates of one chunk (see the module notes)."""

    individuals: Tensor  # [n] panel individual indices
    X: Tensor  # [n, T J', K + 1], last column the mask column
    XT: Tensor  # [n, K, T J'] without the mask column
    alternatives: int  # J'
    periods: int  # T


def difference_chunk(
    panel: Panel, individuals: np.ndarray, columns: np.ndarray, dtype: torch.dtype, device: torch.device
) -> DifferenceChunk:
    """Build the :class:`DifferenceChunk` of ``individuals`` with covariate columns in the order ``columns``."""
    rows, local = _rows_of(panel, individuals)
    n = len(individuals)
    T = int(panel.n_situations[individuals].max())
    J = int(panel.n_alternatives[individuals].max())
    Jp = max(J - 1, 1)
    K = len(columns)
    X = panel.X[rows][:, columns]
    period = panel.period[rows]
    chosen = panel.chosen[rows]
    chosen_x = np.zeros((n, T, K))
    chosen_slot = np.zeros((n, T), dtype=np.int64)
    chosen_x[local[chosen], period[chosen]] = X[chosen]
    chosen_slot[local[chosen], period[chosen]] = panel.slot[rows][chosen]
    others = ~chosen
    slot = panel.slot[rows][others]
    j = slot - (slot > chosen_slot[local[others], period[others]])
    out = np.zeros((n, T, Jp, K + 1))
    out[..., K] = -np.inf
    out[local[others], period[others], j, :K] = X[others] - chosen_x[local[others], period[others]]
    out[local[others], period[others], j, K] = 0.0
    out = out.reshape(n, T * Jp, K + 1)
    tensor = torch.as_tensor(out, dtype=dtype, device=device)
    return DifferenceChunk(
        individuals=torch.as_tensor(individuals, device=device),
        X=tensor.contiguous(),
        XT=tensor[..., :K].transpose(1, 2).contiguous(),
        alternatives=Jp,
        periods=T,
    )


@dataclass(frozen=True)
class FullChunk:
    """All alternatives of one chunk (see the module notes)."""

    individuals: Tensor  # [n]
    X: Tensor  # [n, T, J, K]
    available: Tensor  # [n, T, J] bool
    outside: Tensor  # [n, T, J] bool
    chosen: Tensor  # [n, T] long, slot of the chosen alternative (0 in padded situations)
    situations: Tensor  # [n, T] bool, real situations
    rows: np.ndarray  # [n, T, J] panel row of each entry, -1 for padding


def full_chunk(
    panel: Panel, individuals: np.ndarray, columns: np.ndarray, dtype: torch.dtype, device: torch.device
) -> FullChunk:
    """Build the :class:`FullChunk` of ``individuals`` with covariate columns in the order ``columns``."""
    rows, local = _rows_of(panel, individuals)
    n = len(individuals)
    T = int(panel.n_situations[individuals].max())
    J = int(panel.n_alternatives[individuals].max())
    X = panel.X[rows][:, columns]
    period, slot = panel.period[rows], panel.slot[rows]
    real = ~panel.outside[rows]
    # padding repeats each individual's first real row, so utilities stay finite there
    first = np.full(n, len(rows), dtype=np.int64)
    np.minimum.at(first, local[real], np.flatnonzero(real))
    first = np.where(first == len(rows), 0, first)
    out = np.broadcast_to(X[first][:, None, None, :], (n, T, J, len(columns))).copy()
    out[local[real], period[real], slot[real]] = X[real]
    available = np.zeros((n, T, J), dtype=bool)
    available[local, period, slot] = True
    outside = np.zeros((n, T, J), dtype=bool)
    outside[local, period, slot] = panel.outside[rows]
    situations = np.zeros((n, T), dtype=bool)
    situations[local, period] = True
    available[~situations, 0] = True  # a padded situation has one alternative, which is "chosen": log 1 = 0
    chosen = np.zeros((n, T), dtype=np.int64)
    chosen_rows = panel.chosen[rows]
    chosen[local[chosen_rows], period[chosen_rows]] = slot[chosen_rows]
    table = np.full((n, T, J), -1, dtype=np.int64)
    table[local, period, slot] = rows
    return FullChunk(
        individuals=torch.as_tensor(individuals, device=device),
        X=torch.as_tensor(out, dtype=dtype, device=device),
        available=torch.as_tensor(available, device=device),
        outside=torch.as_tensor(outside, device=device),
        chosen=torch.as_tensor(chosen, device=device),
        situations=torch.as_tensor(situations, device=device),
        rows=table,
    )
