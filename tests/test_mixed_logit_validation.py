"""Mixed logit: clear errors for bad data and bad specifications."""

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk
from demandkit.exceptions import InvalidDataError, SpecificationError
from demandkit.mixed_logit import MixedLogit, simulate_panel

COLUMNS = dict(choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread avoids thread hand-offs on a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return simulate_panel(20, 4, 3, {"price": ("normal", -1.0, 0.5), "quality": (None, 1.0, 0.0)}, seed=0).data


def _build(frame, **kwargs):
    options = dict(random={"price": "normal"}, integration=dk.Integration("halton", 10, {"seed": 0}))
    options.update(kwargs)
    return MixedLogit(dk.Formulation("0 + price + quality"), frame, **COLUMNS, **options)


def test_valid_data_builds(data):
    model = _build(data)
    assert model.names == ["price", "quality", "sd.price"]
    assert model.panel.n_individuals == 20 and model.panel.n_choice_situations == 80


def test_no_chosen_alternative(data):
    frame = data.copy()
    frame.loc[frame["situation"] == 5, "chosen"] = 0
    with pytest.raises(InvalidDataError, match="situation 5 has no chosen alternative"):
        _build(frame)
    _build(frame, outside=True)  # with an outside alternative, no row chosen is valid


def test_several_chosen_alternatives(data):
    frame = data.copy()
    frame.loc[frame["situation"] == 6, "chosen"] = 1
    with pytest.raises(InvalidDataError, match="situation 6 has 3 chosen alternatives"):
        _build(frame)


def test_non_binary_choice(data):
    frame = data.copy()
    frame.loc[0, "chosen"] = 2
    with pytest.raises(InvalidDataError, match="0/1"):
        _build(frame)


def test_situation_split_across_individuals(data):
    frame = data.copy()
    rows = frame.index[frame["situation"] == 9]
    frame.loc[rows[0], "individual"] = 0
    with pytest.raises(InvalidDataError, match="situation 9 is split across individuals 0, 2"):
        _build(frame)


def test_repeated_alternative(data):
    frame = data.copy()
    rows = frame.index[frame["situation"] == 3]
    frame.loc[rows[1], "alternative"] = frame.loc[rows[0], "alternative"]
    with pytest.raises(InvalidDataError, match="appears more than once in choice situation 3"):
        _build(frame)


def test_unknown_distribution(data):
    with pytest.raises(SpecificationError, match="'price'.*'normal', 'lognormal'.*received 'gamma_dist'"):
        _build(data, random={"price": "gamma_dist"})


def test_unknown_random_variable(data):
    with pytest.raises(SpecificationError, match=r"random names \['cost'\].*coefficients are \['price', 'quality'\]"):
        _build(data, random={"cost": "normal"})


def test_nan_covariate(data):
    frame = data.copy()
    frame.loc[frame.index[frame["situation"] == 7][1], "quality"] = np.nan
    with pytest.raises(InvalidDataError, match="'quality' has 1 missing or infinite value.*situation 7"):
        _build(frame)


def test_infinite_covariate(data):
    frame = data.copy()
    frame.loc[4, "price"] = np.inf
    with pytest.raises(InvalidDataError, match="'price'"):
        _build(frame)


def test_missing_column_and_ids(data):
    with pytest.raises(InvalidDataError, match="no column"):
        _build(data.drop(columns="alternative"))
    frame = data.copy()
    frame["individual"] = frame["individual"].astype(float)
    frame.loc[3, "individual"] = np.nan
    with pytest.raises(InvalidDataError, match="'individual' has missing values"):
        _build(frame)


def test_fewer_situations_than_burn_in(data):
    frame = data[~((data["individual"] == 4) & (data["situation"] % 4 > 1))]
    with pytest.raises(InvalidDataError, match="Individual 4 has 2 choice situation.*burn_in=2"):
        _build(frame, state_dependence=dict(burn_in=2))
    _build(data, state_dependence=dict(burn_in=2))


def test_bad_state_dependence_and_options(data):
    with pytest.raises(SpecificationError, match="burn_in"):
        _build(data, state_dependence=dict(burn_in=-1))
    with pytest.raises(SpecificationError, match="unknown keys"):
        _build(data, state_dependence=dict(lag=1))
    with pytest.raises(SpecificationError, match="'gamma'"):
        _build(data, state_dependence=dict(random="cauchy"))
    model = _build(data)
    with pytest.raises(SpecificationError, match="gradient must be one of 'analytic', 'autograd'"):
        model.fit(gradient="numeric", progress=False)
    with pytest.raises(SpecificationError, match="covariance must be one of"):
        model.fit(covariance="sandwich", progress=False)
    with pytest.raises(SpecificationError, match="Unknown parameter names"):
        model.loglikelihood({"beta": 1.0})


def test_unidentified_intercept(data):
    with pytest.raises(SpecificationError, match=r"\['1'\] do not vary"):
        MixedLogit(dk.Formulation("1 + price"), data, **COLUMNS)
    MixedLogit(dk.Formulation("1 + price"), data, **COLUMNS, outside=True)


def test_analytic_gradient_needs_linear_utility(data):
    model = _build(data, utility=lambda beta, x: beta["price"] * x["price"] + beta["quality"] * x["quality"])
    with pytest.raises(SpecificationError, match="analytic gradient needs the linear utility"):
        model.fit(gradient="analytic", progress=False)


def test_data_must_be_a_frame():
    with pytest.raises(InvalidDataError, match="DataFrame"):
        MixedLogit(dk.Formulation("0 + price"), {"price": [1.0]}, **COLUMNS)
    with pytest.raises(InvalidDataError, match="no rows"):
        MixedLogit(dk.Formulation("0 + price"), pd.DataFrame(columns=list(COLUMNS.values()) + ["price"]), **COLUMNS)


def test_state_dependence_name_clash(data):
    frame = data.rename(columns={"quality": "gamma"})
    with pytest.raises(SpecificationError, match="repeat"):
        MixedLogit(dk.Formulation("0 + price + gamma"), frame, **COLUMNS, state_dependence=dict(burn_in=1))
