"""The parametric bootstrap against PyBLP 1.3.0 on the Nevo data (demand side, no absorbed fixed effects).

With the same seed both libraries draw the same parameters (``RandomState(seed).multivariate_normal`` of the
estimates and their covariances over N, clipped to the bounds), so the bootstrapped parameters, mean utilities,
shares and elasticities agree to the precision of the estimates' covariances (measured 2e-10 to 7e-10; diversion
ratios 2e-6 and consumer surpluses 8e-7, where a draw of the price coefficient near zero magnifies differences).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.exceptions import SpecificationError

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])


def results_of(lib):
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    keep = products["market_ids"].unique()[:30]
    products = products[products["market_ids"].isin(keep)]
    agents = agents[agents["market_ids"].isin(keep)]
    formulations = (lib.Formulation("1 + prices + sugar"), lib.Formulation("1 + prices + sugar + mushy"))
    problem = lib.Problem(formulations, products, lib.Formulation("0 + income + income_squared + age + child"), agents)
    return problem.solve(SIGMA, PI, method="1s", optimization=lib.Optimization("return"))


def relative(actual, expected):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape
    return np.nanmax(np.abs(actual - expected)) / np.nanmax(np.abs(expected))


@pytest.mark.pyblp
def test_bootstrap_draws_and_outputs_match_pyblp():
    ours, theirs = results_of(dk).bootstrap(draws=25, seed=3), results_of(pyblp).bootstrap(draws=25, seed=3)
    assert ours.draws == 25
    for name in ("sigma", "pi", "beta", "delta", "shares"):
        assert relative(getattr(ours, f"bootstrapped_{name}"), getattr(theirs, f"bootstrapped_{name}")) < 1e-8, name
    assert relative(ours.compute_elasticities(), theirs.compute_elasticities()) < 1e-8
    # ratios of derivatives (and surpluses over the price coefficient) magnify the 1e-10 differences of the draws in
    # draws whose price coefficient is near zero
    assert relative(ours.compute_diversion_ratios(), theirs.compute_diversion_ratios()) < 1e-5
    assert relative(ours.compute_consumer_surpluses(), theirs.compute_consumer_surpluses()) < 1e-5
    # draws of sigma's diagonal are clipped at zero, as PyBLP does
    assert (np.diagonal(ours.bootstrapped_sigma, axis1=1, axis2=2) >= 0).all()


def test_bootstrap_centres_on_the_estimates_and_validates():
    results = results_of(dk)
    boot = results.bootstrap(draws=400, seed=0)
    spread = boot.bootstrapped_beta[:, 1, 0].std()
    np.testing.assert_allclose(spread, results.beta_se[1, 0], rtol=0.15)
    assert abs(boot.bootstrapped_beta[:, 1, 0].mean() - results.beta[1, 0]) < 4 * spread / np.sqrt(400)
    first = results.bootstrap(draws=3, seed=1).bootstrapped_shares
    np.testing.assert_array_equal(first, results.bootstrap(draws=3, seed=1).bootstrapped_shares)
    with pytest.raises(SpecificationError, match="draws must be a positive integer"):
        results.bootstrap(draws=0)


@pytest.mark.pyblp
def test_bootstrap_with_supply_matches_pyblps_equilibrium_prices():
    """Costs drawn through gamma set new equilibrium prices per draw (the log-cost design with Pi of the supply
    oracle tests, at the truth): prices, shares, mean utilities and elasticities at them agree to 1e-10."""
    import test_supply_oracle as oracle

    theirs, ours = (results.bootstrap(draws=5, seed=2) for results in oracle.solved("log_truth"))
    for name in ("gamma", "prices", "shares", "delta"):
        assert relative(getattr(ours, f"bootstrapped_{name}"), getattr(theirs, f"bootstrapped_{name}")) < 1e-10, name
    assert relative(ours.compute_elasticities(), theirs.compute_elasticities()) < 1e-10
    assert relative(ours.compute_costs(), theirs.compute_costs()) < 1e-10
    assert ours.fp_converged.all()
