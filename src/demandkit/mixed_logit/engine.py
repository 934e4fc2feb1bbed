"""The evaluation loop: kernels applied chunk by chunk and accumulated, on one device.

An :class:`Engine` owns the device-side state of one model on one device: the chunk plans, the padded chunk
tensors, a reusable workspace and the base draws (kept on the device when they fit, in host memory for a GPU when
they fit there, regenerated chunk by chunk otherwise). It turns a parameter vector into the log-likelihood, its
gradient (analytic or by autograd), per-individual scores and the Hessian (from its structure, or by autograd), and
serves post-estimation with chunks and posterior weights. Parameters come in and results go out as NumPy
arrays; this is the layer that synchronizes with the device (once per evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..distributed import Shard
from ..exceptions import SpecificationError
from . import kernels
from .chunks import (
    CPU_CHUNK_ELEMENTS,
    ChunkPlan,
    DifferenceChunk,
    FullChunk,
    available_memory,
    difference_chunk,
    element_budget,
    full_chunk,
    plan_chunks,
)
from .data import Panel
from .distributions import CoefficientMap, base_draws
from .draws import DrawSource
from .specification import STATE_COEFFICIENT, STATE_VARIABLE, ParameterSpace

#: live ``[n, T, J, R]``-sized tensors per chunk, by kind of work (sets the chunk size from free memory)
_COPIES = {"analytic": 3, "autograd": 12, "hessian": 8, "autograd_hessian": 40}


@dataclass(frozen=True)
class Evaluation:
    """Log-likelihood, gradient and (optionally) per-individual scores at one :math:`\\theta`."""

    loglikelihood: float
    gradient: np.ndarray
    scores: np.ndarray | None = None


class Engine:
    """Chunked evaluation of a mixed logit on one device.

    Parameters
    ----------
    panel : Panel
        The validated rows.
    space : ParameterSpace
        The parameter layout.
    draws : DrawSource
        Standard normal nodes per individual and draw weights.
    device : torch.device
        Where the work runs.
    dtype : torch.dtype
        Floating point type (float64 by default).
    utility : callable, optional
        A user-defined utility; without it the utility is linear in the covariates.
    chunk_size : int, optional
        Individuals per chunk; by default chosen from the free memory of ``device``.
    shard : Shard, optional
        In a ``torch.distributed`` group: this process evaluates a contiguous block of individuals (of the chunk
        plans' ordering, balanced by situations x alternatives) and every total is summed over the processes.
    """

    def __init__(
        self,
        panel: Panel,
        space: ParameterSpace,
        draws: DrawSource,
        device: torch.device,
        dtype: torch.dtype = torch.float64,
        utility: kernels.Utility | None = None,
        chunk_size: int | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.panel, self.space, self.draws, self.shard = panel, space, draws, shard
        self.map = CoefficientMap(space, device)
        self.device, self.dtype, self.utility, self.chunk_size = device, dtype, utility, chunk_size
        # covariate columns in the internal coefficient order (random first)
        self.columns = space.order.copy()
        internal = [panel.labels[k] for k in self.columns]
        self.names = {
            "coefficients": list(space.internal_names),
            "covariates": internal,
        }
        self.weights = torch.as_tensor(draws.weights, dtype=dtype, device=device)
        self.log_weights = self.weights.log()
        self._plans: dict[str, ChunkPlan] = {}
        self._chunks: dict[tuple[str, int, int], DifferenceChunk | FullChunk] = {}
        itemsize = torch.empty(0, dtype=dtype).element_size()
        total = panel.n_individuals * max(space.n_random, 1) * draws.size * itemsize
        # where the base draws live: on the device if they fit in half of the free memory of a CPU or a quarter of a
        # GPU's, else (GPU) in host memory if they fit in half of it, copied chunk by chunk; else they are
        # regenerated chunk by chunk
        if total <= available_memory(device) // (2 if device.type == "cpu" else 4):
            self._draws_home: torch.device | None = device
        elif device.type != "cpu" and total <= available_memory(torch.device("cpu")) // 2:
            self._draws_home = torch.device("cpu")
        else:
            self._draws_home = None
        self._base: Tensor | None = None  # [I, Kr, R] in individual_order, when cached
        self._workspace: Tensor | None = None
        self._last: tuple[str, np.ndarray, Evaluation] | None = None

    def workspace(self) -> Tensor:
        """A flat buffer as large as the largest analytic chunk's utilities, reused by every evaluation."""
        if self._workspace is None:
            sizes = [
                len(m) * int(self.panel.n_situations[m].max()) * max(int(self.panel.n_alternatives[m].max()) - 1, 1)
                for m in self.plan("analytic").members
            ]
            self._workspace = torch.empty(max(sizes) * self.draws.size, dtype=self.dtype, device=self.device)
        return self._workspace

    # ------------------------------------------------------------------ chunks
    def plan(self, kind: str) -> ChunkPlan:
        """The chunk plan for a kind of work (``'analytic'``, ``'autograd'`` or ``'hessian'``)."""
        if kind not in self._plans:
            K, P = len(self.space.order), self.space.size
            extra = {"hessian": P * K + 2 * K * K + P * P, "autograd_hessian": P * K}.get(kind, 2 * P + K)
            cap = CPU_CHUNK_ELEMENTS if self.device.type == "cpu" else None
            self._plans[kind] = plan_chunks(
                self.panel,
                self.draws.size,
                element_budget(self.device, self.dtype),
                _COPIES[kind],
                extra=extra,
                cap=cap,
                chunk_size=self.chunk_size,
            )
            if self.shard is not None:  # this process's block of positions in the plans' shared ordering
                start, stop = self._block(self._plans[kind].order)
                bounds = tuple((max(a, start), min(b, stop)) for a, b in self._plans[kind].bounds)
                self._plans[kind] = ChunkPlan(self._plans[kind].order, tuple((a, b) for a, b in bounds if a < b))
        return self._plans[kind]

    def _block(self, order: np.ndarray) -> tuple[int, int]:
        """The positions of ``order`` (the same in every plan) that this process evaluates."""
        work = self.panel.n_situations[order] * self.panel.n_alternatives[order]
        return self.shard.block(work)

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """Over the processes of a distributed fit (identity in one process)."""
        return values if self.shard is None else self.shard.sum(values)

    def _chunk(self, kind: str, index: int) -> DifferenceChunk | FullChunk:
        """The padded tensors of a chunk, built once and shared by the kinds of work with the same layout."""
        layout = "difference" if kind in ("analytic", "hessian") else "full"
        start, stop = self.plan(kind).bounds[index]
        key = (layout, start, stop)
        if key not in self._chunks:
            members = self.plan(kind).order[start:stop]
            build = difference_chunk if layout == "difference" else full_chunk
            self._chunks[key] = build(self.panel, members, self.columns, self.dtype, self.device)
        return self._chunks[key]

    def _base_draws(self, kind: str, index: int) -> Tensor:
        """Base draws ``[n, Kr, R]`` of a chunk: a slice of the cached draws, or generated for the chunk."""
        plan = self.plan(kind)
        start, stop = plan.bounds[index]
        if self._draws_home is not None:
            if self._base is None:
                self._base = self._all_base_draws(plan.order)
            return self._base[start:stop].to(self.device, non_blocking=True)
        normals = torch.as_tensor(self.draws.take(plan.order[start:stop]), dtype=self.dtype, device=self.device)
        return base_draws(self.space.random_distributions, normals)

    def _all_base_draws(self, order: np.ndarray) -> Tensor:
        """Base draws of every individual in ``order``, ``[I, Kr, R]``, generated block by block (bounded memory)."""
        I, R = len(order), self.draws.size
        home = self._draws_home
        out = torch.empty((I, self.space.n_random, R), dtype=self.dtype, device=home)
        if home.type == "cpu" and self.device.type == "cuda":
            out = out.pin_memory()
        position = np.empty(I, dtype=np.int64)
        position[order] = np.arange(I)
        block = max(1, (1 << 22) // max(R * max(self.space.n_random, 1), 1))
        for start in range(0, I, block):
            stop = min(start + block, I)
            normals = torch.as_tensor(self.draws.normals(start, stop), dtype=self.dtype, device=home)
            rows = torch.as_tensor(position[start:stop], device=home)
            out[rows] = base_draws(self.space.random_distributions, normals)
        return out

    def chunks(self, kind: str) -> Iterator[tuple[DifferenceChunk | FullChunk, Tensor]]:
        """Each chunk of a kind with its base draws ``[n, Kr, R]``."""
        for index in range(len(self.plan(kind))):
            yield self._chunk(kind, index), self._base_draws(kind, index)

    def release(self) -> None:
        """Drop the cached device tensors (they are rebuilt on demand)."""
        self._chunks.clear()
        self._base = None
        self._workspace = None

    def _theta(self, theta: np.ndarray) -> Tensor:
        return torch.tensor(np.asarray(theta, dtype=np.float64), dtype=self.dtype, device=self.device)

    def _scatter(self, kind: str, values: list[Tensor]) -> np.ndarray:
        """Per-chunk per-individual values back to the panel's individual order (every process's, when sharded)."""
        stacked = torch.cat(values).detach().cpu().numpy().astype(np.float64)
        plan = self.plan(kind)
        members = np.concatenate([plan.order[a:b] for a, b in plan.bounds]) if plan.bounds else plan.order[:0]
        out = np.zeros((len(plan.order), *stacked.shape[1:]))
        out[members] = stacked
        return self._sum(out)

    # ------------------------------------------------------------------ objective
    def analytic(self, theta: np.ndarray, scores: bool = False) -> Evaluation:
        """Log-likelihood and its analytic gradient (and per-individual scores)."""
        if self.utility is not None:
            raise SpecificationError("The analytic gradient needs the linear utility; use gradient='autograd'.")
        t = self._theta(theta)
        with torch.no_grad():
            work = self.workspace()
            results = [
                kernels.analytic_loglikelihood(t, self.map, c, b, self.log_weights, False, work)
                for c, b in self.chunks("analytic")
            ]
            finite = torch.stack([torch.isfinite(ll).all() & torch.isfinite(s).all() for ll, s in results])
            redo = np.flatnonzero(~finite.cpu().numpy())
            for index in redo:
                chunk, base = self._chunk("analytic", int(index)), self._base_draws("analytic", int(index))
                results[index] = kernels.analytic_loglikelihood(t, self.map, chunk, base, self.log_weights, True, work)
            lls = [ll for ll, _ in results]
            per_individual = [s for _, s in results]
            total = torch.stack([ll.sum() for ll in lls]).sum()
            gradient = torch.stack([s.sum(0) for s in per_individual]).sum(0)
        summed = self._sum(np.concatenate([[float(total)], gradient.cpu().numpy().astype(np.float64)]))
        return Evaluation(float(summed[0]), summed[1:], self._scatter("analytic", per_individual) if scores else None)

    def autograd(self, theta: np.ndarray, scores: bool = False) -> Evaluation:
        """Log-likelihood and its gradient by autograd (per-individual scores by one backward pass per chunk)."""
        t = self._theta(theta)
        P = t.numel()
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        gradient = torch.zeros(P, dtype=self.dtype, device=self.device)
        per_individual = []
        for chunk, base in self.chunks("autograd"):
            n = chunk.X.shape[0]
            with torch.enable_grad():
                rows = t.expand(n, P).clone().requires_grad_(True) if scores else t.clone().requires_grad_(True)
                draws = kernels.draw_loglikelihoods(rows, self.map, chunk, base, self.utility, self.names)
                ll = kernels.simulated_loglikelihood(draws, self.log_weights).sum()
                (g,) = torch.autograd.grad(ll, rows)
            total = total + ll.detach()
            if scores:
                per_individual.append(g)
                g = g.sum(0)
            gradient = gradient + g
        summed = self._sum(np.concatenate([[float(total)], gradient.cpu().numpy().astype(np.float64)]))
        return Evaluation(float(summed[0]), summed[1:], self._scatter("autograd", per_individual) if scores else None)

    def evaluate(self, theta: np.ndarray, method: str, scores: bool = False) -> Evaluation:
        """Dispatch to :meth:`analytic` (which always keeps the scores) or :meth:`autograd`.

        The last evaluation is remembered, so asking again at the same :math:`\\theta` (the optimizer's first and
        last points, the scores for the covariance) costs nothing.
        """
        theta = np.asarray(theta, dtype=np.float64)
        if self.shard is not None:  # every process evaluates rank 0's theta, bit for bit
            theta = self.shard.broadcast(theta)
        last = self._last
        if last is not None and last[0] == method and np.array_equal(last[1], theta):
            if last[2].scores is not None or not scores:
                return last[2]
        if method == "analytic":
            evaluation = self.analytic(theta, scores=True)
        else:
            evaluation = self.autograd(theta, scores)
        self._last = (method, theta.copy(), evaluation)
        return evaluation

    def loglikelihood(self, theta: np.ndarray) -> float:
        """The simulated log-likelihood alone."""
        t = self._theta(theta)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for chunk, base in self.chunks("autograd"):
                draws = kernels.draw_loglikelihoods(t, self.map, chunk, base, self.utility, self.names)
                total = total + kernels.simulated_loglikelihood(draws, self.log_weights).sum()
        return float(self._sum(np.array([float(total)]))[0])

    def hessian(self, theta: np.ndarray, method: str = "analytic") -> np.ndarray:
        """The Hessian of the simulated log-likelihood, ``[P, P]``.

        ``'analytic'`` (the linear utility) uses :func:`~demandkit.mixed_logit.kernels.analytic_hessian`;
        ``'autograd'`` differentiates the autograd gradient once more (reverse over reverse).
        """
        if method == "analytic" and self.utility is None:
            t = self._theta(theta)
            total = torch.zeros((t.numel(), t.numel()), dtype=self.dtype, device=self.device)
            with torch.no_grad():
                for chunk, base in self.chunks("hessian"):
                    total = total + kernels.analytic_hessian(t, self.map, chunk, base, self.log_weights)
            return self._sum(total.cpu().numpy().astype(np.float64))
        return self._sum(self._autograd_hessian(theta))

    def _autograd_hessian(self, theta: np.ndarray) -> np.ndarray:
        """The Hessian of the simulated log-likelihood by autograd (reverse over reverse), ``[P, P]``.

        Each chunk's gradient is built with a graph and differentiated once more, one backward pass per parameter
        (a batched backward pass would load ``torch.func`` machinery that costs seconds on first use).
        """
        t = self._theta(theta)
        P = t.numel()
        total = torch.zeros((P, P), dtype=self.dtype, device=self.device)
        for chunk, base in self.chunks("autograd_hessian"):
            with torch.enable_grad():
                leaf = t.clone().requires_grad_(True)
                draws = kernels.draw_loglikelihoods(leaf, self.map, chunk, base, self.utility, self.names)
                ll = kernels.simulated_loglikelihood(draws, self.log_weights).sum()
                (g,) = torch.autograd.grad(ll, leaf, create_graph=True)
                rows = [torch.autograd.grad(g[p], leaf, retain_graph=p < P - 1)[0] for p in range(P)]
            total = total + torch.stack(rows).detach()
        hessian = total.cpu().numpy().astype(np.float64)
        return (hessian + hessian.T) / 2

    # ------------------------------------------------------------------ post-estimation
    def posterior(self, theta: np.ndarray) -> Iterator[tuple[FullChunk, Tensor, Tensor]]:
        """Per chunk: the chunk, posterior weights ``[n, R]`` and coefficients ``[n, K, R]`` (internal order)."""
        t = self._theta(theta)
        with torch.no_grad():
            for chunk, base in self.chunks("autograd"):
                draws = kernels.draw_loglikelihoods(t, self.map, chunk, base, self.utility, self.names)
                yield chunk, kernels.posterior_weights(draws, self.log_weights), self.map.coefficients(t, base)

    def individual_order(self, kind: str) -> np.ndarray:
        """Panel individual index of each row of the concatenated chunks of ``kind``."""
        return self.plan(kind).order

    def covariate_column(self, name: str) -> int:
        """Internal column of the covariate ``name`` (``'gamma'`` means the lagged choice)."""
        name = STATE_VARIABLE if name == STATE_COEFFICIENT else name
        return self.names["covariates"].index(name)
