"""Batched fixed-point solvers for the Berry inversion, and their implicit adjoint.

Every market is iterated at once as a row of a ``[T, J]`` tensor; each market stops on its own
criterion (its rows are frozen once converged) and reports its own iteration and evaluation counts.
The only Python loop is over iterations. The adjoint differentiates the solution
:math:`\\delta^*(\\theta)` of :math:`F(\\delta, \\theta) = \\log s(\\delta, \\theta) - \\log S = 0` by the
implicit function theorem,
:math:`\\partial\\delta^*/\\partial\\theta = -(\\partial F/\\partial\\delta)^{-1}\\partial F/\\partial\\theta`, with
one batched linear solve per market in the backward pass; iterations are never unrolled.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class FixedPointResult:
    """Solution of a batched fixed point: values and per-market diagnostics."""

    values: Tensor  # [T, J]
    converged: Tensor  # [T] bool
    iterations: Tensor  # [T] int64
    evaluations: Tensor  # [T] int64


MIN_RESTRICTED = 8
"""Fewest markets in a batch that :func:`iterate_squarem` narrows to its markets still iterating."""

RESTRICT_SHARE = 0.5
"""The share of a batch's markets frozen at which :func:`iterate_squarem` narrows it to the others."""

# whether each callable norm could be batched with torch.vmap (a numpy norm cannot); weakly keyed by the norm
_VMAPPABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batched_norm(norm: Callable[[Any], Any], values: Tensor) -> Tensor:
    """``norm`` of each row of ``values`` (``[n, J]``, one market each): one ``torch.vmap`` call if ``norm`` is a
    torch function of a vector, else ``norm`` on each row as a NumPy vector."""
    try:
        known = _VMAPPABLE.get(norm)
    except TypeError:  # not weakly referenceable: try vmap every time
        known = None
    if known is not False:
        try:
            out = torch.vmap(norm)(values)
            if not isinstance(out, Tensor) or out.shape != values.shape[:1]:
                raise TypeError("not a scalar per vector")
            _remember(norm, True)
            return out.to(values.dtype)
        except Exception:  # a NumPy (or otherwise unbatchable) norm: the documented slow path below
            _remember(norm, False)
    rows = values.detach().cpu().numpy()
    return torch.tensor([float(norm(row)) for row in rows], dtype=values.dtype, device=values.device)


def _remember(norm: Callable[[Any], Any], vmappable: bool) -> None:
    try:
        _VMAPPABLE[norm] = vmappable
    except TypeError:
        pass


def _callable_norm(x: Tensor, norm: Callable[[Any], Any], mask: Tensor | None) -> Tensor:
    """A user's norm of each market's vector of real product slots, ``[T]``: markets with the same number of
    products go to :func:`_batched_norm` together (a loop over the distinct market sizes, not the markets)."""
    if mask is None:
        return _batched_norm(norm, x)
    counts = mask.sum(-1)
    out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for size in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == size).flatten()
        if size:
            out[rows] = _batched_norm(norm, x[rows][mask[rows]].reshape(len(rows), size))
    return out


def market_norm(x: Tensor, norm: str | Callable[[Any], Any], mask: Tensor | None = None) -> Tensor:
    """Per-market norm of ``x``, ``[T]``, over real product slots (``x`` is masked first when ``mask`` is given;
    without it, padded slots must already be zero).

    ``norm`` is ``'infinity'``, ``'l2'`` or a callable of one market's vector returning a scalar (PyBLP's
    contract). A callable is batched over markets with ``torch.vmap`` when it is a torch function; a norm that
    vmap cannot run (a NumPy function, say) is called on each market's NumPy vector, one Python call per market
    and evaluation: a slow path, for experiments rather than estimation. Under ``mask`` a callable sees only
    the market's real products."""
    if callable(norm):
        return _callable_norm(x, norm, mask)
    if mask is not None:
        x = torch.where(mask, x, torch.zeros_like(x))
    if norm == "infinity":
        return x.abs().amax(dim=-1)
    return torch.linalg.vector_norm(x, dim=-1)


def _close(change: Tensor, x: Tensor, options: dict[str, Any], mask: Tensor | None = None) -> Tensor:
    """Whether each market's change meets ``atol + rtol * ||x||`` (see :func:`market_norm` for ``mask``); a
    change with a NaN or an infinity never does."""
    if options["rtol"] == 0:
        return market_norm(change, options["norm"], mask) <= options["atol"]
    tolerance = options["atol"] + options["rtol"] * market_norm(x, options["norm"], mask)
    return market_norm(change, options["norm"], mask) <= tolerance


def iterate_simple(
    contraction: Callable[[Tensor], Tensor], x0: Tensor, mask: Tensor, options: dict
) -> FixedPointResult:
    """Plain iteration of ``x <- contraction(x)``."""
    x = x0
    T = x0.shape[0]
    done = torch.zeros(T, dtype=torch.bool, device=x0.device)
    counts = torch.zeros(T, dtype=torch.int64, device=x0.device)
    for _ in range(int(options["max_evaluations"])):
        new = contraction(x)
        counts = counts + (~done)
        finite = torch.isfinite(torch.where(mask, new, 0)).all(-1)
        step_done = _close(new - x, x, options, mask) & finite
        x = torch.where(done.unsqueeze(-1), x, new)
        done = done | step_done
        if bool(done.all()):
            break
    return FixedPointResult(x, done, counts, counts.clone())


def iterate_squarem(
    contraction: Callable[[Tensor], Tensor],
    x0: Tensor,
    mask: Tensor,
    options: dict,
    *,
    keeps_padding: bool = False,
    restrict: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = None,
) -> FixedPointResult:
    """SQUAREM (Varadhan and Roland 2008) with per-market step lengths.

    One cycle maps :math:`x_0` to :math:`x_1 = G(x_0)`, :math:`x_2 = G(x_1)`, with :math:`r = x_1 - x_0`,
    :math:`v = x_2 - 2x_1 + x_0`, a step :math:`\\alpha` (S1: :math:`r'v/v'v`, S2: :math:`r'r/r'v`,
    S3: :math:`\\sqrt{r'r/v'v}`) clipped to ``[step_min, step_max]``, and the stabilised update
    :math:`G(x_0 + 2\\alpha r + \\alpha^2 v)`. ``step_max`` grows by ``step_factor`` whenever it binds (and a
    negative ``step_min`` whenever it binds). Each market is frozen at the first evaluation whose change meets
    the tolerance; its counts are those at that evaluation (three evaluations to an iteration). Padded slots
    are held at zero, so the cycle's sums and norms need no further masking; ``keeps_padding`` says that
    ``contraction`` already returns zeros there (no mask is applied to its output).

    The cycle is written with few tensor operations: on the CPU their fixed cost is much of an inversion. A frozen
    market's tolerance is set to -1, which no norm meets, so one comparison tests the tolerance of the markets still
    iterating, and the frozen values are written only when a market freezes.

    Frozen markets would go on being evaluated with the others (a third of Nevo's share evaluations). Given
    ``restrict(markets)``, the contraction on the markets ``markets`` (indices into the ``T`` rows) alone, the
    solver drops the frozen markets from the batch whenever they are at least half of it (and the batch has at
    least :data:`MIN_RESTRICTED` markets), and iterates the rest on their own; each market's iterates are the same.
    """
    T = x0.shape[0]
    device = x0.device
    x = torch.where(mask, x0, 0.0)
    atol, rtol = float(options["atol"]), float(options["rtol"])
    tolerance = torch.full((T,), atol, dtype=x0.dtype, device=device)  # -1 once a market is frozen
    frozen_at = torch.zeros(T, dtype=torch.int64, device=device)  # the evaluation at which each market froze
    step_min = torch.full((T, 1), float(options["step_min"]), dtype=x0.dtype, device=device)
    step_max = torch.full((T, 1), float(options["step_max"]), dtype=x0.dtype, device=device)
    negative_min = float(options["step_min"]) < 0
    factor = float(options["step_factor"])
    scheme = options["scheme"]
    budget = int(options["max_evaluations"])
    norm = options["norm"]
    calls = frozen = 0
    frozen_rows = torch.zeros((T, 1), dtype=torch.bool, device=device)  # (tolerance < 0), kept as a column
    # the batch iterated: its markets (None: all T, in order) and their mask; the results of markets dropped from it
    rows: Tensor | None = None
    batch_mask = mask
    values, counts, converged = x.clone(), frozen_at.clone(), frozen_rows.squeeze(-1).clone()

    def G(value: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return contraction(value) if keeps_padding else torch.where(batch_mask, contraction(value), 0.0)

    def newly_met(change: Tensor, previous: Tensor) -> Tensor:
        """Markets still iterating whose ``change`` from ``previous`` meets ``atol + rtol * ||previous||`` (a NaN
        or an infinity never does)."""
        norm_mask = batch_mask if callable(norm) else None  # a user's norm sees only real products
        bound = tolerance
        if rtol != 0:
            bound = (atol + rtol * market_norm(previous, norm, norm_mask)).masked_fill_(tolerance < 0, -1.0)
        return market_norm(change, norm, norm_mask) <= bound

    def freeze(newly: Tensor, candidate: Tensor | None) -> bool:
        """Freeze the ``newly`` converged markets at ``candidate`` (None: ``x`` holds it already); whether every
        market is frozen."""
        nonlocal x, frozen
        if not bool(newly.any()):
            return False
        if candidate is not None:
            x = torch.where(newly.unsqueeze(-1), candidate, x)
        frozen_at.masked_fill_(newly, calls)
        tolerance.masked_fill_(newly, -1.0)
        frozen_rows.logical_or_(newly.unsqueeze(-1))
        frozen += int(newly.sum())
        return frozen == x.shape[0]

    def settle(keep: Tensor | None) -> None:
        """Write the batch's results into ``values``, ``counts`` and ``converged`` and keep only the batch's rows
        ``keep`` (None: all) iterating, on ``restrict``'s contraction."""
        nonlocal rows, x, tolerance, frozen_at, step_min, step_max, frozen_rows, batch_mask, contraction, frozen
        written = rows if rows is not None else torch.arange(x.shape[0], device=device)
        values.index_copy_(0, written, x)
        counts.index_copy_(0, written, frozen_at)
        converged.index_copy_(0, written, tolerance < 0)
        if keep is None:
            return
        rows = written.index_select(0, keep)
        x, tolerance, frozen_at, step_min, step_max, frozen_rows, batch_mask = (
            value.index_select(0, keep)
            for value in (x, tolerance, frozen_at, step_min, step_max, frozen_rows, batch_mask)
        )
        frozen = 0
        assert restrict is not None
        contraction = restrict(rows)

    while True:
        if restrict is not None and frozen >= RESTRICT_SHARE * x.shape[0] and x.shape[0] >= MIN_RESTRICTED:
            settle(torch.nonzero(~frozen_rows.squeeze(-1)).squeeze(-1))
        x_start = x
        x1 = G(x_start)
        r = x1 - x_start
        if freeze(newly_met(r, x_start), x1) or calls >= budget:
            break
        x2 = G(x1)
        change = x2 - x1
        if freeze(newly_met(change, x1), x2) or calls >= budget:
            break
        v = change - r
        if scheme == 1:
            alpha = torch.linalg.vecdot(r, v).unsqueeze(-1) / torch.linalg.vecdot(v, v).unsqueeze(-1)
        elif scheme == 2:
            alpha = torch.linalg.vecdot(r, r).unsqueeze(-1) / torch.linalg.vecdot(r, v).unsqueeze(-1)
        else:
            alpha = torch.linalg.vector_norm(r, dim=-1, keepdim=True) / torch.linalg.vector_norm(
                v, dim=-1, keepdim=True
            )
        alpha = torch.nan_to_num(alpha, nan=1.0, posinf=1.0, neginf=1.0).clamp_(step_min, step_max)
        accelerated = torch.addcmul(torch.addcmul(x_start, alpha, r, value=2), alpha * alpha, v)
        x3 = G(accelerated)
        step_max = torch.where(alpha == step_max, step_max * factor, step_max)
        if negative_min:
            step_min = torch.where((alpha == step_min) & (step_min < 0), step_min * factor, step_min)
        if math.isfinite(x3.sum().item()):  # a finite sum has no NaN or infinity in it (the cheap test)
            candidate, previous = x3, accelerated
        else:  # a market whose extrapolation failed keeps the plain step
            finite = torch.isfinite(x3).all(-1, keepdim=True)
            candidate, previous = torch.where(finite, x3, x2), torch.where(finite, accelerated, x1)
        newly = newly_met(candidate - previous, previous)
        x = torch.where(frozen_rows, x, candidate)  # markets still iterating move on
        if freeze(newly, None) or calls >= budget:
            break
    settle(None)
    evaluations = torch.where(converged, counts, calls)
    return FixedPointResult(values, converged, evaluations // 3, evaluations)


def iterate_newton(step: Callable[[Tensor], Tensor], x0: Tensor, mask: Tensor, options: dict) -> FixedPointResult:
    """Newton's method, ``x <- x + step(x)`` where ``step`` solves the linearised share equations."""
    x = x0
    T = x0.shape[0]
    done = torch.zeros(T, dtype=torch.bool, device=x0.device)
    counts = torch.zeros(T, dtype=torch.int64, device=x0.device)
    for _ in range(int(options["max_evaluations"])):
        change = step(x)
        counts = counts + (~done)
        new = x + change
        finite = torch.isfinite(torch.where(mask, new, 0)).all(-1)
        newly = _close(change, x, options, mask) & finite
        x = torch.where(done.unsqueeze(-1) | ~finite.unsqueeze(-1), x, new)
        done = done | newly
        if bool(done.all()):
            break
    return FixedPointResult(x, done, counts, counts.clone())


Pullback = Callable[[Tensor, Tensor, tuple, list], list]
"""``pullback(delta, grad, params, wanted)``: the gradients :math:`-(\\partial F/\\partial\\theta_i)'\\lambda` of the
parameters ``params[i]`` for ``i`` in ``wanted``, with :math:`\\lambda` solving
:math:`(\\partial F/\\partial\\delta)'\\lambda = ` ``grad``."""


class ImplicitInversion(torch.autograd.Function):
    """Attach :math:`\\partial\\delta^*/\\partial\\theta` to a solved fixed point by the implicit function theorem.

    ``apply(delta, pullback, *params)`` returns ``delta`` unchanged; the backward pass hands the incoming
    gradient to ``pullback`` (see :data:`Pullback`), built by :func:`residual_pullback` from any differentiable
    residual, or in closed form for a kernel that has one.
    """

    @staticmethod
    def forward(ctx: Any, delta: Tensor, pullback: Pullback, *params: Tensor) -> Tensor:
        ctx.pullback = pullback
        ctx.save_for_backward(delta, *params)
        return delta.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        delta, *params = ctx.saved_tensors
        wanted = [i for i in range(len(params)) if ctx.needs_input_grad[2 + i]]
        grads: list[Tensor | None] = [None] * len(params)
        if wanted:
            for i, g in zip(wanted, ctx.pullback(delta, grad, tuple(params), wanted), strict=True):
                grads[i] = g
        return (None, None, *grads)


def residual_pullback(residual: Callable, jacobian: Callable) -> Pullback:
    """The :data:`Pullback` of :math:`F` from its differentiable part and its Jacobian in :math:`\\delta`.

    ``residual(delta, *params)`` is the differentiable part of :math:`F` (log shares, ``[T, J]``) and
    ``jacobian(delta, *params)`` its derivative with respect to ``delta`` (``[T, J, J]``, identity on padded
    slots); one batched linear solve per market gives :math:`\\lambda`, one reverse pass through ``residual``
    the parameters' gradients.
    """

    def pullback(delta: Tensor, grad: Tensor, params: tuple, wanted: list) -> list:
        with torch.no_grad():
            matrix = jacobian(delta, *params)
            adjoint = torch.linalg.solve(matrix.transpose(-1, -2), grad.unsqueeze(-1)).squeeze(-1)
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(i in wanted) for i, p in enumerate(params)]
            output = residual(delta, *inputs)
            # the vector-Jacobian product as the gradient of a scalar: passing ``grad_outputs`` instead makes
            # torch import sympy on first use (about a second of every fresh process)
            pairing = -(output * adjoint).sum()
            return list(torch.autograd.grad(pairing, [inputs[i] for i in wanted], allow_unused=True))

    return pullback
