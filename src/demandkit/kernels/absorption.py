"""Fixed-effect absorption on tensors: the within projection :math:`M_D x = x - D(D'D)^{-1}D'x`.

One fixed effect is demeaned exactly by group means; several are handled by alternating projections
(the method of alternating projections, as pyhdfe's ``'map'``) until the largest change is below a
tolerance. The projection is linear and symmetric, so its backward pass is the same projection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _demean_once(x: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
    sums = torch.zeros((counts.shape[0],) + x.shape[1:], dtype=x.dtype, device=x.device).index_add_(0, codes, x)
    means = sums / counts.view((-1,) + (1,) * (x.dim() - 1))
    return x - means[codes]


def within(
    x: Tensor, codes: list[Tensor], counts: list[Tensor], tol: float = 1e-14, max_iterations: int = 10000
) -> Tensor:
    """Residualize ``x`` (``[N]`` or ``[N, K]``) on the fixed effects ``codes`` (one ``[N]`` tensor each)."""
    if len(codes) == 1:
        return _demean_once(x, codes[0], counts[0])
    y = x
    for _ in range(max_iterations):
        previous = y
        for c, n in zip(codes, counts, strict=True):
            y = _demean_once(y, c, n)
        if bool((y - previous).abs().max() <= tol):
            break
    return y


class Absorb(torch.autograd.Function):
    """Differentiable within projection whose backward pass is the projection itself."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, codes: list[Tensor], counts: list[Tensor]) -> Tensor:
        ctx.codes, ctx.counts = codes, counts
        return within(x, codes, counts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        return within(grad, ctx.codes, ctx.counts), None, None
