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


def test_narrowed_inversion_with_the_log_space_fallback_equals_the_whole_batch(monkeypatch) -> None:
    """Every market has a product whose exponentiated utility underflows for every agent, so each share evaluation
    falls back to the log-space kernel; once the batch is narrowed to the markets still iterating, the fallback runs
    on them alone. Narrowing or not gives the same mean utilities and counts, and the shares are matched."""
    import pandas as pd

    import demandkit as dk
    from demandkit.blp.demand import DemandModel
    from demandkit.kernels import fixed_point

    rng = np.random.default_rng(7)
    T, J, I = 16, 4, 20
    markets = np.repeat(np.arange(T), J)
    x = rng.uniform(-1, 1, T * J)
    x[::J] = -800.0  # mu = x * income with income in [1, 2]: exp(mu - max mu) underflows for every agent
    shares = rng.uniform(0.02, 0.2, T * J)
    products = pd.DataFrame({"market_ids": markets, "shares": shares, "prices": rng.uniform(1, 2, T * J), "x": x})
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), I),
            "weights": 1.0 / I,
            "nodes0": rng.normal(size=T * I),
            "income": rng.uniform(1, 2, T * I),
        }
    )
    problem = dk.Problem(
        (dk.Formulation("0 + prices"), dk.Formulation("0 + x")), products, dk.Formulation("0 + income"), agents
    )
    model = DemandModel(problem)
    sigma = torch.zeros((1, 1), dtype=torch.float64)
    pi = torch.ones((1, 1), dtype=torch.float64)
    rho = torch.zeros(0, dtype=torch.float64)
    options = dk.Iteration("squarem", {"atol": 1e-13}).options
    from demandkit.kernels.shares import ExpUtilities

    calls = {"select": 0, "fallback after narrowing": 0}
    select, log_shares = ExpUtilities.select, DemandModel.log_shares

    def counted_select(self, markets):
        calls["select"] += 1
        return select(self, markets)

    def counted_log_shares(self, *args):
        calls["fallback after narrowing"] += calls["select"] > 0
        return log_shares(self, *args)

    monkeypatch.setattr(ExpUtilities, "select", counted_select)
    monkeypatch.setattr(DemandModel, "log_shares", counted_log_shares)
    outcomes = []
    for share in (0.5, 2.0):  # narrowed once half the markets are frozen; never narrowed
        monkeypatch.setattr(fixed_point, "RESTRICT_SHARE", share)
        inversion = model.invert(sigma, pi, rho, model.logit_delta, "squarem", options)
        outcomes.append(inversion.result)
        if share < 1:
            assert calls["select"] > 0 and calls["fallback after narrowing"] > 0
    narrowed, whole = outcomes
    assert bool(whole.converged.all()) and torch.equal(narrowed.converged, whole.converged)
    assert torch.equal(narrowed.evaluations, whole.evaluations)
    assert len(set(whole.evaluations.tolist())) > 1  # markets stop at different evaluations: the batch narrows
    torch.testing.assert_close(narrowed.values, whole.values, rtol=1e-13, atol=1e-12)
    mu = model.mu(sigma, pi)
    fitted = model.log_shares(whole.values, mu, rho)
    torch.testing.assert_close(fitted[model.mask], model.log_market_shares[model.mask], rtol=0, atol=1e-10)
