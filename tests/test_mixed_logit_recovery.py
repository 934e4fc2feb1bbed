"""Mixed logit: parameter recovery on synthetic panels with known truth (estimates within sampling error).

The coverage of the confidence intervals is checked by a Monte Carlo in ``benchmarks/mixed_logit.py``.
"""

import numpy as np
import pandas as pd
import pytest
import torch

import demandkit as dk
from demandkit.mixed_logit import MixedLogit, simulate_panel

COLUMNS = dict(choice="chosen", situation_ids="situation", individual_ids="individual", alternative_ids="alternative")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread avoids thread hand-offs on a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recover(coefficients, individuals=500, situations=8, draws=100, seed=0, cholesky=None, state=None, **options):
    sim = simulate_panel(individuals, situations, 3, coefficients, cholesky=cholesky, state_dependence=state, seed=seed)
    model = MixedLogit(
        dk.Formulation("0 + " + " + ".join(coefficients)),
        sim.data,
        **COLUMNS,
        random={name: d for name, d in sim.random.items() if name != "gamma"},
        integration=dk.Integration("halton", draws, {"seed": 0}),
        **options,
    )
    results = model.fit(progress=False)
    assert results.converged
    truth = sim.truth[results.names]
    z = (results.params - truth) / results.se
    assert np.all(results.se > 0), results.se
    assert z.abs().max() < 4, pd.DataFrame({"truth": truth, "estimate": results.params, "se": results.se, "z": z})
    return results


def test_normal_and_fixed_coefficients():
    results = _recover({"price": ("normal", -1.0, 0.8), "quality": ("normal", 1.0, 0.5), "x": (None, 0.5, 0.0)})
    assert results.names == ["price", "quality", "x", "sd.price", "sd.quality"]


def test_lognormal_coefficient():
    _recover({"cost": ("lognormal", 0.0, 0.5), "quality": ("normal", 1.0, 0.5)})


def test_correlated_normal_coefficients():
    results = _recover(
        {"price": ("normal", -1.0, 0.0), "quality": ("normal", 1.0, 0.0)},
        individuals=700,
        cholesky=np.array([[0.8, 0.0], [0.4, 0.6]]),
        correlated=True,
    )
    covariance = results.random_covariance
    assert covariance.loc["price", "quality"] == pytest.approx(0.8 * 0.4, abs=0.1)


def test_state_dependence_with_burn_in():
    results = _recover(
        {"price": ("normal", -1.0, 0.5), "quality": (None, 1.0, 0.0)},
        situations=12,
        state=(None, 1.0, 0.0),
        state_dependence=dict(burn_in=3),
    )
    assert results.statistics["situations"] == 500 * 9  # burn-in situations only form the state
