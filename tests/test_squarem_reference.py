"""The batched SQUAREM equals a plain per-market SQUAREM: values to rounding, per-market counts and flags exactly.

The reference below iterates one market at a time in NumPy, straight from Varadhan and Roland (2008) as the solver's
docstring states it (per-market steps, ``step_max`` growth, the plain step kept when the extrapolation is not
finite, each market stopped at the first evaluation whose change meets its tolerance), so the batched solver's
bookkeeping (frozen markets, tolerances, padded slots) is checked against an independent statement of the
algorithm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from demandkit.kernels.fixed_point import iterate_squarem


def reference(G, x0: np.ndarray, options: dict) -> tuple[np.ndarray, bool, int]:
    """SQUAREM on one market's vector: ``(x, converged, evaluations)``."""
    atol, rtol = options["atol"], options["rtol"]
    step_min, step_max, factor = options["step_min"], options["step_max"], options["step_factor"]
    norm = (lambda a: np.abs(a).max()) if options["norm"] == "infinity" else np.linalg.norm
    calls = 0

    def close(change, previous):
        with np.errstate(invalid="ignore"):
            return bool(norm(change) <= atol + rtol * norm(previous))

    x = x0.copy()
    while True:
        x1 = G(x)
        calls += 1
        if close(x1 - x, x):
            return x1, True, calls
        if calls >= options["max_evaluations"]:
            return x, False, calls
        x2 = G(x1)
        calls += 1
        if close(x2 - x1, x1):
            return x2, True, calls
        if calls >= options["max_evaluations"]:
            return x, False, calls
        r, v = x1 - x, x2 - 2 * x1 + x
        with np.errstate(all="ignore"):
            if options["scheme"] == 1:
                alpha = (r @ v) / (v @ v)
            elif options["scheme"] == 2:
                alpha = (r @ r) / (r @ v)
            else:
                alpha = np.linalg.norm(r) / np.linalg.norm(v)
        alpha = 1.0 if not np.isfinite(alpha) else alpha
        alpha = min(max(alpha, step_min), step_max)
        accelerated = x + 2 * alpha * r + alpha**2 * v
        x3 = G(accelerated)
        calls += 1
        if alpha == step_max:
            step_max *= factor
        if alpha == step_min and step_min < 0:
            step_min *= factor
        candidate, previous = (x3, accelerated) if np.isfinite(x3).all() else (x2, x1)
        x = candidate
        if close(candidate - previous, previous):
            return x, True, calls
        if calls >= options["max_evaluations"]:
            return x, False, calls


def markets(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contractions ``x <- tanh(A x) + b`` of different sizes and rates, padded to ``[T, J]``."""
    rng = np.random.default_rng(seed)
    T, J = 16, 6
    sizes = rng.integers(1, J + 1, T)
    sizes[0] = J
    A = rng.normal(size=(T, J, J))
    A *= rng.uniform(0.3, 0.97, (T, 1, 1)) / np.abs(np.linalg.eigvals(A)).max(-1)[:, None, None]
    b = rng.normal(size=(T, J))
    mask = np.arange(J)[None, :] < sizes[:, None]
    return A, b, mask, rng.normal(size=(T, J))


@pytest.mark.parametrize("scheme", [1, 2, 3])
@pytest.mark.parametrize(
    "settings",
    [
        {"atol": 1e-14, "rtol": 0.0, "norm": "infinity", "step_min": 1.0, "step_max": 1.0},
        {"atol": 1e-12, "rtol": 1e-10, "norm": "l2", "step_min": -1.0, "step_max": 2.0},
        {"atol": 1e-13, "rtol": 0.0, "norm": "infinity", "step_min": 1.0, "step_max": 1.0, "max_evaluations": 40},
    ],
)
def test_batched_squarem_equals_per_market_reference(scheme: int, settings: dict) -> None:
    options = {"step_factor": 4.0, "max_evaluations": 5000, "scheme": scheme, **settings}
    A, b, mask, x0 = markets(scheme)
    nan_market = 3  # its contraction returns NaN at extrapolated points far from the start: the plain step is kept

    def market_G(t: int, x: np.ndarray) -> np.ndarray:
        n = int(mask[t].sum())
        out = np.tanh(A[t, :n, :n] @ x) + b[t, :n]
        if t == nan_market and np.abs(x - x0[t, :n]).max() > 3:
            out = out * np.nan
        return out

    def on(markets: list[int]):
        def batched(x: torch.Tensor) -> torch.Tensor:
            values = x.numpy()
            out = np.zeros_like(values)
            for row, t in enumerate(markets):  # the test's oracle side: one market at a time
                n = int(mask[t].sum())
                out[row, :n] = market_G(t, values[row, :n])
            return torch.as_tensor(out)

        return batched

    restricted = []

    def restrict(markets: torch.Tensor):
        restricted.append(len(markets))
        return on(markets.tolist())

    mask_t = torch.as_tensor(mask)
    sizes = mask.sum(1)
    expected = [reference(lambda v, t=t: market_G(t, v), x0[t, : sizes[t]], options) for t in range(len(mask))]
    results = []
    for keeps_padding, narrowing in ((False, None), (True, None), (False, restrict), (True, restrict)):
        result = iterate_squarem(
            on(list(range(len(mask)))),
            torch.as_tensor(x0),
            mask_t,
            options,
            keeps_padding=keeps_padding,
            restrict=narrowing,
        )
        results.append(result)
        for t, (x, converged, calls) in enumerate(expected):
            n = int(mask[t].sum())
            assert bool(result.converged[t]) == converged
            assert int(result.evaluations[t]) == calls
            assert int(result.iterations[t]) == calls // 3
            if converged:  # a market that does not converge may wander anywhere on rounding
                np.testing.assert_allclose(result.values[t, :n].numpy(), x, rtol=1e-13, atol=1e-14)
            assert (result.values[t, n:] == 0).all()
    if settings["norm"] == "infinity" and "max_evaluations" not in settings:
        assert restricted, "the batch was never narrowed to the markets still iterating"
    done = results[0].converged
    for result in results[1:]:  # narrowing the batch and masking the output change no market's iterates (but for
        # rounding: a reduction over a row may sum in another order in a batch of another shape)
        assert torch.equal(result.converged, done)
        assert torch.equal(result.evaluations[done], results[0].evaluations[done])
        torch.testing.assert_close(result.values[done], results[0].values[done], rtol=1e-13, atol=1e-14)
