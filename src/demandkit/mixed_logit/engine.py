"""The evaluation loop: kernels applied chunk by chunk and accumulated, on one device.

An :class:`Engine` owns the device-side state of one model on one device: the chunk plans, the padded chunk
tensors and the base draws (cached on the device when they fit in a quarter of its free memory, regenerated
chunk by chunk otherwise). It turns a parameter vector into the log-likelihood, its gradient (analytic or by
autograd), per-individual scores and the Hessian (by autograd), and serves post-estimation with per-chunk
probabilities and posterior weights. Parameters come in and results go out as NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import kernels
from .chunks import (
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
from .distributions import base_draws
from .draws import DrawSource
from .specification import STATE_COEFFICIENT, STATE_VARIABLE, ParameterSpace

#: live ``[n, T, J, R]``-sized tensors per chunk, by kind of work (sets the chunk size from free memory)
_COPIES = {"analytic": 3, "autograd": 12, "hessian": 24}


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
    ) -> None:
        self.panel, self.space, self.draws = panel, space, draws
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
        self._chunks: dict[tuple[str, int], DifferenceChunk | FullChunk] = {}
        itemsize = torch.empty(0, dtype=dtype).element_size()
        total = panel.n_individuals * max(space.n_random, 1) * draws.size * itemsize
        self._cache_draws = total <= available_memory(device) // 4
        self._base: dict[tuple[str, int], Tensor] = {}
        self._workspace: Tensor | None = None

    def workspace(self) -> Tensor:
        """A flat buffer as large as the largest analytic chunk's utilities, reused by every evaluation."""
        if self._workspace is None:
            sizes = [len(m) * int(self.panel.n_situations[m].max()) * max(int(self.panel.n_alternatives[m].max()) - 1, 1)
                     for m in self.plan("analytic").members]
            self._workspace = torch.empty(max(sizes) * self.draws.size, dtype=self.dtype, device=self.device)
        return self._workspace

    # ------------------------------------------------------------------ chunks
    def plan(self, kind: str) -> ChunkPlan:
        """The chunk plan for a kind of work (``'analytic'``, ``'autograd'`` or ``'hessian'``)."""
        if kind not in self._plans:
            budget = element_budget(self.device, self.dtype, _COPIES[kind])
            self._plans[kind] = plan_chunks(self.panel, self.draws.size, budget, self.chunk_size)
        return self._plans[kind]

    def _chunk(self, kind: str, index: int) -> DifferenceChunk | FullChunk:
        key = (kind, index)
        if key not in self._chunks:
            members = self.plan(kind).members[index]
            build = difference_chunk if kind == "analytic" else full_chunk
            self._chunks[key] = build(self.panel, members, self.columns, self.dtype, self.device)
        return self._chunks[key]

    def _base_draws(self, kind: str, index: int) -> Tensor:
        key = (kind, index)
        if key in self._base:
            return self._base[key]
        members = self.plan(kind).members[index]
        normals = torch.as_tensor(self.draws.take(members), dtype=self.dtype, device=self.device)
        base = base_draws(self.space.random_distributions, normals)
        if self._cache_draws:
            self._base[key] = base
        return base

    def chunks(self, kind: str) -> Iterator[tuple[DifferenceChunk | FullChunk, Tensor]]:
        """Each chunk of a kind with its base draws ``[n, Kr, R]``."""
        for index in range(len(self.plan(kind))):
            yield self._chunk(kind, index), self._base_draws(kind, index)

    def release(self) -> None:
        """Drop the cached device tensors (they are rebuilt on demand)."""
        self._chunks.clear()
        self._base.clear()

    def _theta(self, theta: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(theta, dtype=np.float64), dtype=self.dtype, device=self.device)

    def _scatter(self, kind: str, values: list[Tensor]) -> np.ndarray:
        """Per-chunk per-individual values back to the panel's individual order."""
        stacked = torch.cat(values).detach().cpu().numpy().astype(np.float64)
        order = np.concatenate(self.plan(kind).members)
        out = np.empty_like(stacked)
        out[order] = stacked
        return out

    # ------------------------------------------------------------------ objective
    def analytic(self, theta: np.ndarray, scores: bool = False) -> Evaluation:
        """Log-likelihood and its analytic gradient (and per-individual scores)."""
        if self.utility is not None:
            raise RuntimeError("the analytic gradient needs the linear utility")
        t = self._theta(theta)
        lls, per_individual = [], []
        with torch.no_grad():
            work = self.workspace()
            results = [kernels.analytic_loglikelihood(t, self.space, c, b, self.log_weights, False, work)
                       for c, b in self.chunks("analytic")]
            finite = torch.stack([torch.isfinite(ll).all() & torch.isfinite(s).all() for ll, s in results])
            redo = np.flatnonzero(~finite.cpu().numpy())
            for index in redo:
                chunk, base = self._chunk("analytic", int(index)), self._base_draws("analytic", int(index))
                results[index] = kernels.analytic_loglikelihood(t, self.space, chunk, base, self.log_weights, True, work)
            lls = [ll for ll, _ in results]
            per_individual = [s for _, s in results]
            total = torch.stack([ll.sum() for ll in lls]).sum()
            gradient = torch.stack([s.sum(0) for s in per_individual]).sum(0)
        return Evaluation(
            float(total),
            gradient.cpu().numpy().astype(np.float64),
            self._scatter("analytic", per_individual) if scores else None,
        )

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
                draws = kernels.draw_loglikelihoods(rows, self.space, chunk, base, self.utility, self.names)
                ll = kernels.simulated_loglikelihood(draws, self.log_weights).sum()
                (g,) = torch.autograd.grad(ll, rows)
            total = total + ll.detach()
            if scores:
                per_individual.append(g)
                g = g.sum(0)
            gradient = gradient + g
        return Evaluation(
            float(total),
            gradient.cpu().numpy().astype(np.float64),
            self._scatter("autograd", per_individual) if scores else None,
        )

    def evaluate(self, theta: np.ndarray, method: str, scores: bool = False) -> Evaluation:
        """Dispatch to :meth:`analytic` or :meth:`autograd`."""
        return self.analytic(theta, scores) if method == "analytic" else self.autograd(theta, scores)

    def loglikelihood(self, theta: np.ndarray) -> float:
        """The simulated log-likelihood alone."""
        t = self._theta(theta)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for chunk, base in self.chunks("autograd"):
                draws = kernels.draw_loglikelihoods(t, self.space, chunk, base, self.utility, self.names)
                total = total + kernels.simulated_loglikelihood(draws, self.log_weights).sum()
        return float(total)

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """The Hessian of the simulated log-likelihood by autograd (reverse over reverse), ``[P, P]``.

        Each chunk's gradient is built with a graph and differentiated once more for all parameters at once
        (a batched backward pass); where an operation does not support batching, one pass per parameter.
        """
        t = self._theta(theta)
        P = t.numel()
        total = torch.zeros((P, P), dtype=self.dtype, device=self.device)
        eye = torch.eye(P, dtype=self.dtype, device=self.device)
        for chunk, base in self.chunks("hessian"):
            with torch.enable_grad():
                leaf = t.clone().requires_grad_(True)
                draws = kernels.draw_loglikelihoods(leaf, self.space, chunk, base, self.utility, self.names)
                ll = kernels.simulated_loglikelihood(draws, self.log_weights).sum()
                (g,) = torch.autograd.grad(ll, leaf, create_graph=True)
                try:
                    (h,) = torch.autograd.grad(g, leaf, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
                except RuntimeError:
                    rows = [torch.autograd.grad(g[p], leaf, retain_graph=True)[0] for p in range(P)]
                    h = torch.stack(rows)
            total = total + h.detach()
        hessian = total.cpu().numpy().astype(np.float64)
        return (hessian + hessian.T) / 2

    # ------------------------------------------------------------------ post-estimation
    def posterior(self, theta: np.ndarray) -> Iterator[tuple[FullChunk, Tensor, Tensor]]:
        """Per chunk: the chunk, posterior weights ``[n, R]`` and coefficients ``[n, K, R]`` (internal order)."""
        t = self._theta(theta)
        from .distributions import coefficients

        with torch.no_grad():
            for chunk, base in self.chunks("autograd"):
                draws = kernels.draw_loglikelihoods(t, self.space, chunk, base, self.utility, self.names)
                yield chunk, kernels.posterior_weights(draws, self.log_weights), coefficients(t, self.space, base)

    def individual_order(self, kind: str) -> np.ndarray:
        """Panel individual index of each row of the concatenated chunks of ``kind``."""
        return np.concatenate(self.plan(kind).members)

    def covariate_column(self, name: str) -> int:
        """Internal column of the covariate ``name`` (``'gamma'`` means the lagged choice)."""
        name = STATE_VARIABLE if name == STATE_COEFFICIENT else name
        return self.names["covariates"].index(name)


def log_of(value: float) -> float:
    """``math.log`` that maps 0 to -inf (for reporting)."""
    return math.log(value) if value > 0 else -math.inf
