"""Mixed logit results: summary, covariances, predictions, posterior means, elasticities, round trips, user utility."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk
from demandkit.exceptions import SpecificationError
from demandkit.mixed_logit import MixedLogit, MixedLogitResults, simulate_panel

COLUMNS = dict(choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative")
COEFFICIENTS = {"price": ("normal", -1.0, 0.6), "quality": ("lognormal", 0.0, 0.3)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def simulated():
    return simulate_panel(150, 5, 3, COEFFICIENTS, outside=True, availability=0.8, seed=3)


def _model(data, **options):
    return MixedLogit(
        dk.Formulation("0 + price + quality"),
        data,
        **COLUMNS,
        random={"price": "normal", "quality": "lognormal"},
        outside=True,
        integration=dk.Integration("halton", 50, {"seed": 0}),
        **options,
    )


@pytest.fixture(scope="module")
def results(simulated):
    return _model(simulated.data).fit(progress=False)


def test_fit_statistics_and_summary(results):
    assert results.converged
    assert list(results.params.index) == ["price", "quality", "sd.price", "sd.quality"]
    assert list(results.se.index) == list(results.params.index)
    P, N = 4, 150
    assert results.aic == pytest.approx(2 * P - 2 * results.loglikelihood)
    assert results.bic == pytest.approx(np.log(N) * P - 2 * results.loglikelihood)
    assert np.abs(results.gradient).max() < 1e-3
    text = results.summary()
    for piece in ("Mixed Logit Results", "Log-likelihood", "AIC", "BIC", "sd.price", "robust"):
        assert piece in text
    assert str(results) == text
    frame = results.to_frame()
    assert list(frame.columns) == ["estimate", "se", "z", "p"]


def test_covariances(results):
    robust, classical, opg = (results.standard_errors(k) for k in ("robust", "classical", "opg"))
    np.testing.assert_allclose(results.se, robust)
    # at a correctly specified maximum the three agree roughly
    np.testing.assert_allclose(robust, classical, rtol=0.5)
    np.testing.assert_allclose(opg, classical, rtol=0.5)
    bread = np.linalg.inv(-results.hessian)
    np.testing.assert_allclose(results.covariances["classical"].to_numpy(), bread, rtol=1e-8, atol=1e-12)
    interval = results.conf_int()
    assert (interval["lower"] < results.params).all() and (results.params < interval["upper"]).all()


def test_covariance_choice(simulated):
    results = _model(simulated.data).fit(progress=False, covariance="classical", gradient="autograd")
    np.testing.assert_allclose(results.se, results.standard_errors("classical"))


def test_predictions_sum_to_one(results, simulated):
    data = simulated.data
    probabilities = results.predict()
    assert probabilities.index.equals(data.index)
    outside = results.predict_outside()
    total = probabilities.groupby(data["situation"]).sum() + outside.reindex(np.unique(data["situation"]))
    np.testing.assert_allclose(total.to_numpy(), 1.0, rtol=1e-12)
    # new data: a price cut raises the alternative's probability
    cheaper = data.copy()
    cheaper.loc[cheaper["alternative"] == 0, "price"] -= 1.0
    assert (results.predict(cheaper)[data["alternative"] == 0] > probabilities[data["alternative"] == 0]).all()


def test_prediction_needs_no_choices(results, simulated):
    data = simulated.data.drop(columns="chosen")
    np.testing.assert_allclose(results.predict(data).to_numpy(), results.predict().to_numpy(), rtol=1e-12)


def test_conditional_means(results, simulated):
    means = results.conditional_means()
    assert means.shape == (150, 2) and means.index.name == "individual"
    assert (means["quality"] > 0).all()  # a lognormal coefficient
    # posterior means average to about the population mean
    assert means["price"].mean() == pytest.approx(results.params["price"], abs=0.15)


def test_elasticities_match_finite_differences(results, simulated):
    data = simulated.data
    elasticities = results.elasticities("price")
    first = data[data["situation"] == data["situation"].iloc[0]]
    step = 1e-6
    base = results.predict(first)
    for _, row in first.iterrows():
        shifted = first.copy()
        shifted.loc[shifted["alternative"] == row["alternative"], "price"] += step
        derivative = (results.predict(shifted) - base) / step
        numeric = derivative * row["price"] / base
        analytic = elasticities.loc[row["situation"]][row["alternative"]]
        np.testing.assert_allclose(analytic.to_numpy(), numeric.to_numpy(), rtol=1e-4, atol=1e-6)
    every = results.elasticities()
    assert list(every.columns.get_level_values("variable").unique()) == ["price", "quality"]
    pd.testing.assert_frame_equal(every["price"], elasticities, check_names=False)


def test_round_trips(results, simulated):
    values = json.loads(json.dumps(results.to_dict()))
    rebuilt = MixedLogitResults.from_dict(values)
    pd.testing.assert_series_equal(rebuilt.params, results.params)
    pd.testing.assert_series_equal(rebuilt.se, results.se)
    assert rebuilt.loglikelihood == results.loglikelihood
    np.testing.assert_allclose(rebuilt.predict(simulated.data), results.predict(), rtol=1e-14)
    with pytest.raises(SpecificationError, match="pass data"):
        rebuilt.conditional_means()
    restored = pickle.loads(pickle.dumps(results))
    pd.testing.assert_series_equal(restored.params, results.params)
    pd.testing.assert_frame_equal(restored.conditional_means(), results.conditional_means())


def test_user_utility_plugs_in(simulated):
    def linear(beta, x):
        return beta["price"] * x["price"] + beta["quality"] * x["quality"]

    def saturating(beta, x):
        return beta["price"] * x["price"] + beta["quality"] * torch.tanh(x["quality"])  # the one changed line

    standard = _model(simulated.data)
    theta = np.array([-1.0, 0.1, 0.5, 0.3])
    custom = _model(simulated.data, utility=linear)
    assert custom.loglikelihood(theta) == pytest.approx(standard.loglikelihood(theta), rel=1e-13)
    _, gradient = custom.loglikelihood(theta, gradient="autograd")
    np.testing.assert_allclose(gradient, standard.loglikelihood(theta, gradient="analytic")[1], rtol=1e-9)
    results = _model(simulated.data, utility=saturating).fit(progress=False)
    assert results.converged and results.statistics["gradient_method"] == "autograd"
    assert results.loglikelihood != pytest.approx(standard.loglikelihood(results.params))
    elasticities = results.elasticities("quality")
    assert np.isfinite(elasticities.to_numpy()[~np.isnan(elasticities.to_numpy())]).all()
    with pytest.raises(SpecificationError, match="user-defined utility"):
        MixedLogitResults.from_dict(results.to_dict())
    assert MixedLogitResults.from_dict(results.to_dict(), utility=saturating).predict(simulated.data).notna().all()


def test_progress_bar_and_initial_values(simulated, capsys):
    model = _model(simulated.data)
    results = model.fit(progress=True, initial={"price": -0.5})
    assert results.converged
    assert "mixed logit" in capsys.readouterr().err
    quiet = model.fit(progress=False, initial=results.params.to_numpy())
    assert quiet.statistics["iterations"] <= 3
    assert capsys.readouterr().err == ""


def test_float32_accuracy_bound(results, simulated):
    """float32 (a GPU option) converges to within a few hundredths of a standard error of the float64 fit."""
    single = _model(simulated.data).fit(progress=False, dtype=torch.float32)
    assert single.converged
    assert abs(single.loglikelihood - results.loglikelihood) < 1e-3
    assert ((single.params - results.params) / results.se).abs().max() < 0.05
    assert (single.se / results.se - 1).abs().max() < 0.05
    with pytest.raises(SpecificationError, match="dtype"):
        _model(simulated.data).fit(progress=False, dtype=torch.float16)
