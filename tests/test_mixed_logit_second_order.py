"""The mixed logit's second-order check (issue 17): the Hessian's eigenvalues at the estimates, and a warning when
the Hessian of the log-likelihood is not negative definite.

The saddle is built, not hoped for: with strong taste heterogeneity (spreads 1.5 and 1), the point with the logit's
coefficients and both spreads at zero is stationary in the coefficients (the logit's first-order conditions) and
nearly so in the spreads (their derivative is a mean of draws times a score, small), while the log-likelihood rises
in both spreads away from zero: two negative and two positive eigenvalues. ``Optimization('return')`` reports it as
an optimum, which the check must catch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import demandkit as dk
from demandkit.exceptions import ConvergenceWarning
from demandkit.mixed_logit import MixedLogit, MixedLogitResults, SimulatedPanel, simulate_panel
from demandkit.mixed_logit.covariance import covariances, hessian_eigenvalues, second_order

RANDOM = {"price": "normal", "quality": "normal"}


@pytest.fixture(scope="module")
def panel() -> SimulatedPanel:
    return simulate_panel(200, 6, 3, {"price": ("normal", -1.0, 1.5), "quality": ("normal", 1.0, 1.0)}, seed=4)


def _model(panel: SimulatedPanel, random: dict[str, str]) -> MixedLogit:
    return MixedLogit(
        dk.Formulation("0 + price + quality"),
        panel.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random=random,
        integration=dk.Integration("halton", 100, {"seed": 0}),
    )


def test_eigenvalues_are_those_of_the_hessian_the_covariances_use(panel: SimulatedPanel) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a proper maximum: no warning
        results = _model(panel, RANDOM).fit(progress=False)
    eigenvalues = results.hessian_eigenvalues
    assert results.converged and eigenvalues.shape == (4,)
    np.testing.assert_allclose(eigenvalues, np.linalg.eigvalsh(results.hessian), rtol=1e-12, atol=0)
    # the classical covariance is the inverse of minus that Hessian: its eigenvalues are -1 / the Hessian's
    classical = results.covariances["classical"].to_numpy()
    np.testing.assert_allclose(np.sort(-1 / np.linalg.eigvalsh(classical)), eigenvalues, rtol=1e-8)
    assert (eigenvalues < 0).all() and np.all(np.diff(eigenvalues) >= 0)
    assert "Hessian eigenvalues: min" in results.summary() and "all negative: a local maximum" in results.summary()
    again = MixedLogitResults.from_dict(results.to_dict())
    np.testing.assert_array_equal(again.hessian_eigenvalues, eigenvalues)


def test_a_saddle_reported_as_an_optimum_warns(panel: SimulatedPanel) -> None:
    logit = _model(panel, {}).fit(progress=False)
    initial = {**logit.params.to_dict(), "sd.price": 0.0, "sd.quality": 0.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = _model(panel, RANDOM).fit(dk.Optimization("return"), initial=initial, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(messages) == 1, messages  # the second-order check only, not also a note on the inverse
    assert "not negative definite (2 of 4 eigenvalues are not negative" in messages[0]
    assert "the estimate is a saddle point" in messages[0]
    assert results.converged  # 'return' reports the start as an optimum
    eigenvalues = results.hessian_eigenvalues
    np.testing.assert_allclose(eigenvalues, np.linalg.eigvalsh(results.hessian), rtol=1e-12, atol=0)
    assert (eigenvalues[:2] < -100).all() and (eigenvalues[2:] > 100).all()
    # stationary, or nearly: the coefficients' derivatives vanish, the spreads' are small next to the curvature
    gradient = results.gradient.to_numpy()
    assert np.abs(gradient[:2]).max() < 1e-6 and np.abs(gradient).max() < 1e-2 * np.abs(eigenvalues).min()
    np.testing.assert_allclose(results.covariances["classical"].to_numpy(), np.linalg.pinv(-results.hessian))
    assert "(of both signs: a saddle point)" in results.summary()


@pytest.mark.parametrize(
    ("diagonal", "kind", "message"),
    [
        ([-3.0, -1.0, -0.5], "maximum", None),
        ([-3.0, 2.0, -0.5], "saddle point", "1 of 3 eigenvalues are not negative.*a saddle point"),
        ([-3.0, 0.0, -0.5], "not negative definite", "1 of 3 eigenvalues .*not a strict maximum"),
        ([3.0, 1.0, 0.5], "not negative definite", "3 of 3 eigenvalues .*not a strict maximum"),
    ],
)
def test_second_order_check_of_constructed_hessians(diagonal: list[float], kind: str, message: str | None) -> None:
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    hessian = rotation @ np.diag(diagonal) @ rotation.T
    scores = np.random.default_rng(1).normal(size=(50, 3))
    np.testing.assert_allclose(hessian_eigenvalues(hessian), np.sort(diagonal), atol=1e-12)
    assert second_order(hessian_eigenvalues(hessian)) == kind
    if message is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            found = covariances(hessian, scores)
        np.testing.assert_allclose(found["classical"], np.linalg.inv(-hessian), rtol=1e-10)
    else:
        with pytest.warns(ConvergenceWarning, match=message):
            found = covariances(hessian, scores)
        np.testing.assert_allclose(found["classical"], np.linalg.pinv(-hessian), rtol=1e-8, atol=1e-12)
