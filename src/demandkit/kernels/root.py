"""The Berry inversion by :func:`scipy.optimize.root` or by a user's routine, on the stacked system of all markets.

PyBLP solves each market's fixed point :math:`\\delta = G(\\delta)` with its own call to the routine. Here every
market's real product slots are stacked, market after market, into one vector, and the routine is called once on
the stacked system :math:`F(\\delta) = G(\\delta) - \\delta = 0` (for the BLP contraction,
:math:`F = \\log S - \\log s(\\delta)`, damped by :math:`1 - \\rho` under nesting). Each evaluation of :math:`F`
runs the batched kernel on all markets at once, so there is no loop over markets; because markets do not interact,
:math:`\\partial F/\\partial\\delta` is block diagonal and the stacked solution is each market's solution. The price
is that convergence is judged on the stacked vector (with the default infinity norm, every market meets the
tolerance), and every market reports the same iteration and evaluation counts.

The stacked vector lives in NumPy on the CPU (scipy's routines, and PyBLP's callable contract, take arrays), so on
a GPU each evaluation copies ``N`` values each way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from ..configurations.options import IterationRootMethod
from .fixed_point import FixedPointResult

ROOT_METHODS: tuple[str, ...] = get_args(IterationRootMethod)
"""The :func:`scipy.optimize.root` methods that :func:`solve_root` runs."""

Contraction = Callable[[Tensor], Tensor]
"""``G``: ``[T, J]`` values to ``[T, J]`` values, padded slots zero."""
ContractionJacobian = Callable[[Tensor], Tensor]
""":math:`\\partial G/\\partial x`, ``[T, J, J]`` (padded rows and columns are ignored)."""

_VECTOR_NORMS = {
    "infinity": lambda x: float(np.max(np.abs(x))) if np.size(x) else 0.0,
    "l2": lambda x: float(np.linalg.norm(x)),
}
_NORM_KEYS = ("tol_norm", "fnorm")  # the nonlinear solvers' and df-sane's names for the convergence norm


class Stack:
    """Real product slots of ``[T, J]`` tensors as one vector, market after market (row-major order)."""

    def __init__(self, mask: Tensor, like: Tensor) -> None:
        self.mask = mask
        self.like = like
        self.size = int(mask.sum())
        self.widest = int(mask.sum(-1).max()) if mask.numel() else 0

    def flatten(self, x: Tensor) -> np.ndarray:
        """``[T, J]`` to the ``N`` stacked values (float64 NumPy)."""
        return x[self.mask].detach().to("cpu", torch.float64).numpy()

    def unflatten(self, vector: np.ndarray) -> Tensor:
        """The ``N`` stacked values to ``[T, J]``, padded slots zero."""
        out = torch.zeros_like(self.like)
        out[self.mask] = torch.as_tensor(np.asarray(vector, dtype=np.float64), device=out.device).to(out.dtype)
        return out

    def dense(self, blocks: Tensor) -> np.ndarray:
        """``[T, J, J]`` per-market blocks to the ``N x N`` block-diagonal matrix of the stacked system."""
        mask = self.mask
        position = (torch.cumsum(mask.flatten().long(), 0) - 1).reshape(mask.shape)
        pairs = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        rows = position.unsqueeze(-1).expand(pairs.shape)[pairs].cpu().numpy()
        columns = position.unsqueeze(-2).expand(pairs.shape)[pairs].cpu().numpy()
        out = np.zeros((self.size, self.size))
        out[rows, columns] = blocks[pairs].detach().to("cpu", torch.float64).numpy()
        return out


def _result(stack: Stack, values: np.ndarray, converged: bool, iterations: int, evaluations: int) -> FixedPointResult:
    """Per-market results of a stacked solve: the same counts for every market, which converged unless its
    values are not finite."""
    x = stack.unflatten(values)
    T = stack.mask.shape[0]
    finite = torch.isfinite(torch.where(stack.mask, x, 0.0)).all(-1)
    counts = torch.ones(T, dtype=torch.int64, device=x.device)
    return FixedPointResult(x, finite & converged, counts * iterations, counts * evaluations)


def _fallback(values: np.ndarray, last_finite: np.ndarray) -> np.ndarray:
    """``values``, or the last evaluated point with a finite contraction where they are not finite."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return values if np.isfinite(values).all() else last_finite


def scipy_options(method: str, options: dict[str, Any], stack: Stack, analytic: bool) -> dict[str, Any]:
    """The ``options`` of :func:`scipy.optimize.root`: a norm named ``'infinity'`` or ``'l2'`` becomes its
    function, and without an analytic Jacobian ``'hybr'`` is told that the stacked Jacobian is banded (markets
    are contiguous blocks), which cuts its finite differences from ``N`` evaluations to ``2 J_max - 1``."""
    out = dict(options)
    for key in _NORM_KEYS:
        if isinstance(out.get(key), str):
            out[key] = _VECTOR_NORMS[out[key]]
    if method == "hybr" and not analytic and "band" not in out and 2 * stack.widest - 1 < stack.size:
        out["band"] = (stack.widest - 1, stack.widest - 1)
    return out


def solve_root(
    contraction: Contraction,
    x0: Tensor,
    mask: Tensor,
    method: str,
    options: dict[str, Any],
    jacobian: ContractionJacobian | None = None,
) -> FixedPointResult:
    """Solve :math:`G(x) - x = 0` for every market at once with :func:`scipy.optimize.root`.

    Parameters
    ----------
    contraction : callable
        :math:`G`, batched over markets.
    x0 : Tensor
        ``[T, J]`` starting values (padded slots ignored).
    mask : Tensor
        ``[T, J]``, true on real product slots.
    method : str
        A :func:`scipy.optimize.root` method (``'broyden1'``, ``'hybr'``, ...).
    options : dict
        Its ``options`` (see :func:`scipy_options`).
    jacobian : callable, optional
        :math:`\\partial G/\\partial x` per market, given to ``'hybr'`` and ``'lm'`` as the dense block-diagonal
        Jacobian of the stacked system (``N x N``: memory grows with the square of the number of products).

    Returns
    -------
    FixedPointResult
        Every market reports scipy's iterations (its function evaluations where it counts no iterations) and the
        evaluations of :math:`G`; a market converged when scipy did and its values are finite. Non-finite final
        values are replaced by the last point at which :math:`G` was finite.
    """
    stack = Stack(mask, torch.where(mask, x0, 0.0))
    evaluations = 0
    start = stack.flatten(x0)
    last_finite = start.copy()

    def residual(vector: np.ndarray) -> np.ndarray:
        nonlocal evaluations, last_finite
        evaluations += 1
        value = stack.flatten(contraction(stack.unflatten(vector))) - vector
        if np.isfinite(value).all():
            last_finite = np.array(vector, dtype=np.float64)
        return value

    analytic = jacobian is not None and method in ("hybr", "lm")
    jac = None
    if analytic:
        identity = np.eye(stack.size)

        def jac(vector: np.ndarray) -> np.ndarray:
            return stack.dense(jacobian(stack.unflatten(vector))) - identity

    # scipy's quasi-Newton updates divide by the change in F, which is exactly zero once F is: 0/0 there is benign
    with np.errstate(divide="ignore", invalid="ignore"):
        solved = scipy.optimize.root(
            residual, start, method=method, jac=jac, options=scipy_options(method, options, stack, analytic)
        )
    values = _fallback(solved.x, last_finite)
    iterations = int(getattr(solved, "nit", evaluations))
    return _result(stack, values, bool(solved.success) and values is not last_finite, iterations, evaluations)


def iterate_custom(
    method: Callable[..., Any],
    contraction: Contraction,
    x0: Tensor,
    mask: Tensor,
    options: dict[str, Any],
    jacobian: ContractionJacobian | None = None,
) -> FixedPointResult:
    """Run a user's fixed-point routine with PyBLP's contract, once, on the stacked markets.

    The routine is called as ``method(initial, contraction, callback, **options) -> (final, converged)``:
    ``initial`` is the ``N`` stacked starting values, ``contraction(x) -> (G(x), weights, jacobian)`` with
    ``weights`` None and ``jacobian`` the ``N x N`` block-diagonal :math:`\\partial G/\\partial x` when
    ``jacobian`` is given (else None), and ``callback()`` counts a major iteration. Every market reports those
    counts; a market converged when the routine says so and its values are finite (otherwise they are the last
    point at which :math:`G` was finite).
    """
    stack = Stack(mask, torch.where(mask, x0, 0.0))
    evaluations = iterations = 0
    start = stack.flatten(x0)
    last_finite = start.copy()

    def stacked(vector: Any) -> tuple[np.ndarray, None, np.ndarray | None]:
        nonlocal evaluations, last_finite
        evaluations += 1
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.size != stack.size:
            raise ValueError(f"The iteration routine's contraction takes {stack.size} values; received {vector.size}.")
        x = stack.unflatten(vector)
        value = stack.flatten(contraction(x))
        if np.isfinite(value).all():
            last_finite = vector.copy()
        return value, None, None if jacobian is None else stack.dense(jacobian(x))

    def callback() -> None:
        nonlocal iterations
        iterations += 1

    output = method(start.copy(), stacked, callback, **options)
    try:
        final, converged = output
    except (TypeError, ValueError) as error:
        raise TypeError("A custom iteration method must return (final, converged).") from error
    final = np.asarray(final, dtype=np.float64).reshape(-1)
    if final.size != stack.size:
        raise ValueError(f"The custom iteration method returned {final.size} values for {stack.size} products.")
    values = _fallback(final, last_finite)
    return _result(stack, values, bool(converged) and values is not last_finite, iterations, evaluations)
