"""Mixed logit oracle tests against xlogit 0.2.7 (a dev dependency; skipped when it is missing).

xlogit's public API takes no custom draws, so three comparisons:

1. xlogit's own log-likelihood function fed demandkit's draws: the same log-likelihood and gradient to
   rounding (with and without panels, unavailable alternatives, four distributions);
2. each library's own Halton draws, many of them: the same log-likelihood up to simulation noise;
3. both estimators end to end: estimates a small fraction of a standard error apart.

xlogit's ``'tn'`` is a *censored* normal, not demandkit's truncated one, so it is not compared.
"""

import warnings

import numpy as np
import pytest
import torch

import demandkit as dk
from demandkit.mixed_logit import MixedLogit, simulate_panel
from demandkit.mixed_logit.distributions import base_draws

xlogit = pytest.importorskip("xlogit")

COLUMNS = dict(choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative")
CODES = {"normal": "n", "lognormal": "ln", "triangular": "t", "uniform": "u"}
COEFFICIENTS = {
    "price": ("normal", -1.0, 0.8),
    "quality": ("lognormal", 0.0, 0.5),
    "size": ("triangular", 0.5, 0.6),
    "x": ("uniform", 0.5, 0.4),
    "z": (None, -0.5, 0.0),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _xlogit_setup(data, names, random, panel, draws, available=None):
    """xlogit's internal inputs: differenced covariates, panel index and its own draws."""
    from xlogit._choice_model import diff_nonchosen_chosen

    model = xlogit.MixedLogit()
    X = data[names].to_numpy()
    alternatives, situations = data["alternative"].to_numpy(), data["situation"].to_numpy()
    model._pre_fit(alternatives, names, None, None, False, 100)
    setup = model._setup_input_data(
        X,
        data["chosen"].to_numpy(),
        names,
        alternatives,
        situations,
        {name: CODES[d] for name, d in random.items()},
        panels=data["individual"].to_numpy() if panel else None,
        avail=available,
        n_draws=draws,
        verbose=0,
    )
    _, X3, y3, panels, own_draws, _, avail, _, scale, addit = setup
    differences, _, _, avail = diff_nonchosen_chosen(X3, y3, scale, addit, avail)
    return model, differences, panels, own_draws, avail


@pytest.mark.parametrize("panel", [True, False], ids=["panel", "cross-section"])
def test_loglikelihood_and_gradient_equal_xlogit_with_the_same_draws(panel):
    sim = simulate_panel(120 if panel else 400, 4 if panel else 1, 3, COEFFICIENTS, seed=3)
    full = sim.data
    available = np.random.default_rng(0).uniform(size=len(full)) < 0.85
    available |= full["chosen"].to_numpy() == 1
    names = list(COEFFICIENTS)
    columns = dict(COLUMNS, individual_ids="individual" if panel else "situation")
    model = MixedLogit(
        dk.Formulation("0 + " + " + ".join(names)),
        full[available],
        **columns,
        random=sim.random,
        integration=dk.Integration("halton", 64, {"seed": 4}),
    )
    theta = sim.truth[model.names].to_numpy() + 0.05
    value, gradient = model.loglikelihood(theta, gradient="analytic")
    oracle, differences, panels, _, avail = _xlogit_setup(
        full, names, sim.random, panel, 64, available=available.astype(float)
    )
    # demandkit's draws of each situation's individual, in xlogit's [situations, coefficients, draws] layout, mapped
    # to the base draws xlogit's likelihood takes (normal quantiles, triangular and uniform variates on [-1, 1])
    normals = torch.as_tensor(model.draws.normals(0, model.panel.n_individuals))
    draws = base_draws(model.space.random_distributions, normals).numpy()
    owner = full.groupby("situation", sort=False)[columns["individual_ids"]].first().to_numpy()
    index = np.searchsorted(model.panel.individual_ids, owner)
    negative, negative_gradient, _ = _quiet(
        oracle._loglik_gradient, theta, differences, panels, draws[index], None, avail, None, None, None
    )
    assert value == pytest.approx(-negative, rel=1e-12)
    np.testing.assert_allclose(gradient.to_numpy(), -negative_gradient, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("panel", [True, False], ids=["panel", "cross-section"])
def test_loglikelihood_equals_xlogit_with_its_own_halton_draws(panel):
    random = {"price": "normal", "quality": "normal"}
    coefficients = {"price": ("normal", -1.0, 0.8), "quality": ("normal", 1.0, 0.5), "x": (None, 0.5, 0.0)}
    sim = simulate_panel(60 if panel else 200, 5 if panel else 1, 3, coefficients, seed=5)
    names = list(coefficients)
    draws = 4000
    model = MixedLogit(
        dk.Formulation("0 + price + quality + x"),
        sim.data,
        **dict(COLUMNS, individual_ids="individual" if panel else "situation"),
        random=random,
        integration=dk.Integration("halton", draws, {"seed": 0}),
    )
    theta = sim.truth[model.names].to_numpy()
    oracle, differences, panels, own_draws, avail = _xlogit_setup(sim.data, names, random, panel, draws)
    negative = _quiet(
        oracle._loglik_gradient, theta, differences, panels, own_draws, None, avail, None, None, None, False
    )
    assert model.loglikelihood(theta) == pytest.approx(-negative, rel=2e-4)


@pytest.mark.parametrize("panel", [True, False], ids=["panel", "cross-section"])
def test_estimates_equal_xlogit_up_to_simulation_noise(panel):
    coefficients = {"price": ("normal", -1.0, 0.8), "quality": ("normal", 1.0, 0.5), "x": (None, 0.5, 0.0)}
    sim = simulate_panel(300 if panel else 1500, 5 if panel else 1, 3, coefficients, seed=1)
    data = sim.data
    model = MixedLogit(
        dk.Formulation("0 + price + quality + x"),
        data,
        **dict(COLUMNS, individual_ids="individual" if panel else "situation"),
        random=sim.random,
        integration=dk.Integration("halton", 200, {"seed": 0}),
    )
    results = model.fit(progress=False)
    oracle = xlogit.MixedLogit()
    names = list(coefficients)
    _quiet(
        oracle.fit,
        data[names],
        data["chosen"],
        names,
        data["alternative"],
        data["situation"],
        {"price": "n", "quality": "n"},
        panels=data["individual"] if panel else None,
        n_draws=200,
        verbose=0,
    )
    assert list(oracle.coeff_names) == results.names
    theirs = np.where(np.char.startswith(oracle.coeff_names.astype(str), "sd."), np.abs(oracle.coeff_), oracle.coeff_)
    distance = np.abs(results.params.to_numpy() - theirs) / results.se.to_numpy()
    assert distance.max() < 0.5, distance
    assert results.loglikelihood == pytest.approx(oracle.loglikelihood, abs=1.0)
    if not panel:  # both report the outer-product (BHHH) covariance
        np.testing.assert_allclose(results.standard_errors("opg").to_numpy(), oracle.stderr, rtol=0.1)
