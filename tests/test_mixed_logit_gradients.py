"""Mixed logit: analytic gradient vs autograd vs finite differences, Hessians, and invariances."""

import numpy as np
import pytest
import torch

import demandkit as dk
from demandkit.mixed_logit import MixedLogit, simulate_panel

SPECIFICATIONS = {
    "normal": dict(coefficients={"a": ("normal", 1.0, 0.5), "b": ("normal", -1.0, 0.8), "c": (None, 0.5, 0.0)}),
    "other distributions": dict(
        coefficients={
            "a": ("lognormal", 0.0, 0.5),
            "b": ("triangular", -1.0, 0.8),
            "c": ("uniform", 0.5, 0.3),
            "d": ("truncated_normal", 0.5, 0.7),
            "e": (None, 1.0, 0.0),
        }
    ),
    "correlated": dict(
        coefficients={"a": ("normal", 1.0, 0.5), "b": ("normal", -1.0, 0.8), "c": ("lognormal", 0.5, 0.2)},
        cholesky=np.array([[0.5, 0.0], [0.3, 0.6]]),
        correlated=True,
    ),
    "state dependence, outside, unbalanced, unavailable": dict(
        coefficients={"a": ("normal", 1.0, 0.5), "b": (None, -1.0, 0.0)},
        state_dependence=("normal", 1.0, 0.5),
        outside=True,
        unbalanced=True,
        availability=0.6,
    ),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread avoids thread hand-offs on a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name, draws=30, chunk_size=None, individuals=40):
    spec = dict(SPECIFICATIONS[name])
    correlated = spec.pop("correlated", False)
    sim = simulate_panel(individuals, 6, 4, seed=2, **spec)
    state = None
    if "state_dependence" in spec:
        state = dict(burn_in=1, random=True)
    model = MixedLogit(
        dk.Formulation("0 + " + " + ".join(spec["coefficients"])),
        sim.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={k: v for k, v in sim.random.items() if k != "gamma"},
        correlated=correlated,
        state_dependence=state,
        outside=spec.get("outside", False),
        integration=dk.Integration("halton", draws, {"seed": 1}),
    )
    rng = np.random.default_rng(0)
    theta = model.space.starting_values() + 0.2 * rng.standard_normal(len(model.names))
    return model, theta


@pytest.mark.parametrize("name", SPECIFICATIONS)
def test_analytic_gradient_equals_autograd(name):
    model, theta = _model(name)
    value_a, gradient_a = model.loglikelihood(theta, gradient="analytic")
    value_b, gradient_b = model.loglikelihood(theta, gradient="autograd")
    assert value_a == pytest.approx(value_b, rel=1e-12)
    np.testing.assert_allclose(gradient_a.to_numpy(), gradient_b.to_numpy(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", SPECIFICATIONS)
def test_autograd_gradient_equals_finite_differences(name):
    model, theta = _model(name)
    _, gradient = model.loglikelihood(theta, gradient="autograd")
    step = 1e-6
    numeric = [
        (model.loglikelihood(theta + step * e) - model.loglikelihood(theta - step * e)) / (2 * step)
        for e in np.eye(len(theta))
    ]
    np.testing.assert_allclose(gradient.to_numpy(), numeric, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", SPECIFICATIONS)
def test_scores_and_hessians_agree(name):
    model, theta = _model(name, draws=10, individuals=15)
    engine = model._engine("cpu", torch.float64, None)
    analytic = engine.evaluate(theta, "analytic", scores=True)
    autograd = engine.evaluate(theta, "autograd", scores=True)
    np.testing.assert_allclose(analytic.scores, autograd.scores, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(analytic.scores.sum(0), analytic.gradient, rtol=1e-10, atol=1e-10)
    hessian_a = engine.hessian(theta, "analytic")
    hessian_b = engine.hessian(theta, "autograd")
    np.testing.assert_allclose(hessian_a, hessian_b, rtol=1e-8, atol=1e-8)
    step = 1e-6
    numeric = np.array(
        [
            (engine.analytic(theta + step * e).gradient - engine.analytic(theta - step * e).gradient) / (2 * step)
            for e in np.eye(len(theta))
        ]
    )
    np.testing.assert_allclose(hessian_a, (numeric + numeric.T) / 2, rtol=1e-5, atol=1e-4)


def test_chunking_does_not_change_anything():
    model, theta = _model("state dependence, outside, unbalanced, unavailable")
    whole = model.loglikelihood(theta, gradient="analytic", chunk_size=1000)
    for size in (1, 7):
        value, gradient = model.loglikelihood(theta, gradient="analytic", chunk_size=size)
        assert value == pytest.approx(whole[0], rel=1e-13)
        np.testing.assert_allclose(gradient.to_numpy(), whole[1].to_numpy(), rtol=1e-11, atol=1e-11)


def test_overflow_falls_back_to_the_shifted_kernel():
    """Huge utilities overflow the unshifted exponentials; the result must still equal autograd's."""
    from demandkit.mixed_logit import kernels

    model, theta = _model("normal")
    theta = theta * 4000
    engine = model._engine("cpu", torch.float64, None)
    fast = [
        kernels.analytic_loglikelihood(torch.tensor(theta), engine.map, chunk, base, engine.log_weights, False)[0]
        for chunk, base in engine.chunks("analytic")
    ]
    assert not all(torch.isfinite(ll).all() for ll in fast)  # the unshifted path did overflow
    value_a, gradient_a = model.loglikelihood(theta, gradient="analytic")
    value_b, gradient_b = model.loglikelihood(theta, gradient="autograd")
    assert np.isfinite(value_a) and value_a == pytest.approx(value_b, rel=1e-10)
    np.testing.assert_allclose(gradient_a.to_numpy(), gradient_b.to_numpy(), rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("rule", ["halton", "sobol", "monte_carlo", "mlhs"])
def test_draws_are_fixed_seeded_and_chunk_independent(rule):
    from demandkit.mixed_logit.draws import BLOCK, DrawSource

    source = DrawSource(dk.Integration(rule, 16, {"seed": 5}), 3)
    whole = source.normals(0, BLOCK + 40)
    assert whole.shape == (BLOCK + 40, 3, 16)
    np.testing.assert_array_equal(source.normals(BLOCK - 3, BLOCK + 7), whole[BLOCK - 3 : BLOCK + 7])
    np.testing.assert_array_equal(source.take(np.array([5, 2, BLOCK + 1])), whole[[5, 2, BLOCK + 1]])
    again = DrawSource(dk.Integration(rule, 16, {"seed": 5}), 3).normals(0, 10)
    np.testing.assert_array_equal(again, whole[:10])
    other = DrawSource(dk.Integration(rule, 16, {"seed": 6}), 3).normals(0, 10)
    assert not np.array_equal(other, whole[:10])
    assert abs(whole.mean()) < 0.2 and abs(whole.std() - 1) < 0.2


def test_unseeded_draws_are_fixed_within_a_model():
    sim = simulate_panel(30, 4, 3, {"a": ("normal", 1.0, 0.5)}, seed=0)
    model = MixedLogit(
        dk.Formulation("0 + a"),
        sim.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={"a": "normal"},
        integration=dk.Integration("halton", 20),
    )
    assert model.specification.integration.options["seed"] is not None
    assert model.loglikelihood([1.0, 0.5]) == model.loglikelihood([1.0, 0.5])


def test_chunk_plans_respect_the_memory_budget():
    from demandkit.mixed_logit.chunks import plan_chunks

    sim = simulate_panel(50, 6, 4, {"a": ("normal", 1.0, 0.5)}, unbalanced=True, availability=0.6, seed=0)
    model = MixedLogit(
        dk.Formulation("0 + a"),
        sim.data,
        "chosen",
        "situation",
        "individual",
        "alternative",
        random={"a": "normal"},
        integration=dk.Integration("halton", 10, {"seed": 0}),
    )
    panel = model.panel
    plan = plan_chunks(panel, draws=10, budget=3 * 10 * 6 * 4 * 5, copies=3)
    assert sorted(np.concatenate(plan.members).tolist()) == list(range(panel.n_individuals))
    for members in plan.members:
        periods, width = panel.n_situations[members].max(), panel.n_alternatives[members].max()
        assert len(members) * 3 * 10 * periods * width <= 3 * 10 * 6 * 4 * 5 or len(members) == 1
