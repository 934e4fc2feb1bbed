"""Fixed-effect absorption on tensors: the within projection :math:`M_D x = x - D(D'D)^{-1}D'x`.

One fixed effect is demeaned exactly by group means; several are handled by alternating projections
(the method of alternating projections, as pyhdfe's ``'map'``) until the largest change is below a
tolerance. The projection is linear and symmetric, so its backward pass is the same projection.

Rows split across processes (a sharded problem, :mod:`demandkit.blp.sharding`) demean with the group sums and the
largest change added up over processes: ``totals`` is a function that sums a tensor over processes (an all-reduce)
and ``largest`` one that takes the maximum; the counts are the whole problem's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]


def _demean_once(x: Tensor, codes: Tensor, counts: Tensor, totals: Reduce | None = None) -> Tensor:
    sums = torch.zeros((counts.shape[0],) + x.shape[1:], dtype=x.dtype, device=x.device).index_add_(0, codes, x)
    if totals is not None:
        sums = totals(sums)
    means = sums / counts.view((-1,) + (1,) * (x.dim() - 1))
    return x - means[codes]


def within(
    x: Tensor,
    codes: list[Tensor],
    counts: list[Tensor],
    tol: float = 1e-14,
    max_iterations: int = 10000,
    totals: Reduce | None = None,
    largest: Reduce | None = None,
) -> Tensor:
    """Residualize ``x`` (``[N]`` or ``[N, K]``) on the fixed effects ``codes`` (one ``[N]`` tensor each); with
    ``totals`` and ``largest``, this process's rows of a problem split across processes (module docstring)."""
    if len(codes) == 1:
        return _demean_once(x, codes[0], counts[0], totals)
    y = x
    for _ in range(max_iterations):
        previous = y
        for c, n in zip(codes, counts, strict=True):
            y = _demean_once(y, c, n, totals)
        change = (y - previous).abs().max() if y.numel() else y.new_zeros(())
        if largest is not None:
            change = largest(change)
        if bool(change <= tol):
            break
    return y


class Absorb(torch.autograd.Function):
    """Differentiable within projection whose backward pass is the projection itself."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        codes: list[Tensor],
        counts: list[Tensor],
        totals: Reduce | None = None,
        largest: Reduce | None = None,
    ) -> Tensor:
        ctx.codes, ctx.counts, ctx.reduce = codes, counts, (totals, largest)
        return within(x, codes, counts, totals=totals, largest=largest)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        totals, largest = ctx.reduce
        return within(grad, ctx.codes, ctx.counts, totals=totals, largest=largest), None, None, None, None
