"""PyBLP parity of covariance restrictions and AR(1) unobservables (issue 13).

Data: PyBLP's ``Simulation`` of 30 periods (markets) of the same 6 products of 3 firms, a random coefficient on ``x``
and a linear supply side, with AR(1) unobservables along ``lag_indices`` (each product's row in the previous
period). Covariance moments :math:`E[(\\xi\\omega - m)Z_C] = 0` use ``covariance_instruments`` ``(1, x)``; the AR(1)
problems use ``phi`` and ``'innovations'``/``'differenced_innovations'`` moment types.

At identical parameters (``Optimization('return')``) the objective, gradient, moments, weighting matrices, moment
covariances and Jacobian, parameter covariances and standard errors equal PyBLP's to ``1e-8``; estimation reaches
PyBLP's estimates to ``1e-6``.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.blp.extended_objective import check_distributed
from demandkit.exceptions import SpecificationError

pyblp = pytest.importorskip("pyblp")

pytestmark = pytest.mark.pyblp
pyblp.options.verbose = False

RTOL = 1e-8
SIGMA = 1.2
BETA = [np.nan, -1.8, np.nan]
COVARIANCE = {"covariance_moments_mean": 0.05}
AR1 = {
    "phi": [[0.3, 0.0], [0.1, 0.2]],
    "demand_moment_types": "innovations",
    "supply_moment_types": [("levels", 1), ("innovations", 4)],
}
DIFFERENCED = {
    "phi": [[0.3, 0.1], [0.0, 0.2]],
    "demand_moment_types": [("levels", 1), ("innovations", 2), ("differenced_innovations", 2)],
    "supply_moment_types": "innovations",
}
COMPARED = (
    "objective gradient moments W updated_W beta gamma xi omega moments_jacobian moments_covariances "
    "parameter_covariances sigma_se beta_se gamma_se phi phi_se"
).split()


@cache
def product_data() -> pd.DataFrame:
    """Simulated products with instruments, covariance instruments and lag indices."""
    T, J = 30, 6
    rng = np.random.default_rng(0)
    market_ids = np.repeat(np.arange(T), J)
    rows = np.arange(T * J)
    data = {
        "market_ids": market_ids,
        "firm_ids": np.tile(np.arange(J), T) % 3,
        "clustering_ids": np.tile(np.arange(J), T),
        "lag_indices": np.where(market_ids > 0, rows - J, rows),
        "x": rng.uniform(size=T * J),
        "w": rng.uniform(size=T * J),
    }
    simulation = pyblp.Simulation(
        product_formulations=formulations(pyblp),
        product_data=data,
        beta=[1, -2, 1],
        sigma=1,
        gamma=[1, 1, 2],
        phi=[[0.5, 0], [0, 0.4]],
        integration=pyblp.Integration("product", 5),
        xi_variance=0.3,
        omega_variance=0.3,
        correlation=0.0,
        seed=0,
    )
    simulated = simulation.replace_endogenous().product_data
    frame = pd.DataFrame({key: np.asarray(simulated[key]).ravel() for key in ("shares", "prices")})
    frame = frame.assign(**{key: value for key, value in data.items()})
    x, w = frame["x"], frame["w"]
    instruments = {"demand_instruments0": w, "demand_instruments1": w**2, "demand_instruments2": x**2}
    instruments |= {"supply_instruments0": x**2, "supply_instruments1": w**2}
    return frame.assign(**instruments)


def formulations(library: Any) -> tuple:
    return (library.Formulation("1 + prices + x"), library.Formulation("0 + x"), library.Formulation("1 + x + w"))


@cache
def problems(kind: str, supply: bool = True) -> tuple[Any, Any]:
    """PyBLP's and demandkit's problems: ``'covariance'`` (covariance instruments, no lags) or ``'ar1'`` (lags)."""
    data = product_data()
    if kind == "covariance":
        data = data.drop(columns="lag_indices").assign(covariance_instruments0=1.0, covariance_instruments1=data["x"])
    forms = lambda library: formulations(library) if supply else formulations(library)[:2]  # noqa: E731
    arguments = {"costs_type": "linear"} if supply else {}
    return (
        pyblp.Problem(forms(pyblp), data, integration=pyblp.Integration("product", 5), **arguments),
        dk.Problem(forms(dk), data, integration=dk.Integration("product", 5), **arguments),
    )


def solve_both(kind: str, supply: bool = True, **arguments: Any) -> tuple[Any, Any]:
    ours, theirs = problems(kind, supply)[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs.solve(**arguments)
        if "optimization" in arguments:
            arguments["optimization"] = dk.Optimization("return")
        actual = ours.solve(**arguments)
    return actual, expected


def assert_close(actual: Any, expected: Any, name: str, rtol: float = RTOL) -> None:
    """``|a - e| <= rtol * max|e|`` elementwise, NaN where PyBLP has NaN."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != PyBLP's {expected.shape}"
    assert (np.isnan(actual) == np.isnan(expected)).all(), f"{name}: NaNs differ"
    scale = np.nanmax(np.abs(expected)) if np.isfinite(expected).any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * max(scale, 1e-300), err_msg=name)


@pytest.mark.parametrize("se_type", ["robust", "unadjusted", "clustered"])
@pytest.mark.parametrize("case", ["covariance", "ar1", "differenced"])
def test_identical_parameters(case: str, se_type: str) -> None:
    kind, extra = {"covariance": ("covariance", COVARIANCE), "ar1": ("ar1", AR1), "differenced": ("ar1", DIFFERENCED)}[
        case
    ]
    actual, expected = solve_both(
        kind,
        sigma=SIGMA,
        beta=BETA,
        method="1s",
        W_type=se_type,
        se_type=se_type,
        optimization=pyblp.Optimization("return"),
        **extra,
    )
    for name in COMPARED:
        assert_close(getattr(actual, name), getattr(expected, name), name)
    assert list(actual.theta_labels) == [str(label) for label in expected.theta_labels]
    assert actual.phi_labels == list(expected.phi_labels)
    for ours, theirs in zip(actual.phi_bounds, expected.phi_bounds, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_demand_only_scalar_phi_and_second_step() -> None:
    """Without a supply side :math:`\\phi = \\phi_\\xi` is a scalar; the second step re-weights with :math:`S^{-1}`."""
    actual, expected = solve_both(
        "ar1",
        supply=False,
        sigma=SIGMA,
        phi=0.4,
        demand_moment_types="innovations",
        optimization=pyblp.Optimization("return"),
    )
    for name in COMPARED:
        assert_close(getattr(actual, name), getattr(expected, name), name)


def test_problem_counts_covariance_instruments() -> None:
    theirs, ours = problems("covariance")
    assert ours.MC == theirs.MC == 2
    assert problems("ar1")[1].MC == 0


def test_covariance_restricted_estimates() -> None:
    actual, expected = solve_both("covariance", sigma=SIGMA, beta=BETA, **COVARIANCE)
    for name in ("theta", "beta", "gamma", "sigma_se", "beta_se", "gamma_se"):
        assert_close(getattr(actual, name), getattr(expected, name), name, rtol=1e-6)
    assert abs(actual.objective - expected.objective) <= 1e-6 * max(1.0, abs(float(expected.objective)))


def test_ar1_innovations_estimates() -> None:
    actual, expected = solve_both("ar1", sigma=SIGMA, beta=BETA, **AR1)
    for name in ("theta", "beta", "gamma", "phi", "phi_se", "sigma_se", "beta_se", "gamma_se"):
        assert_close(getattr(actual, name), getattr(expected, name), name, rtol=1e-6)
    summary = str(actual)  # phi has its own table, each estimated element labelled and with its SE
    assert "Phi Estimates" in summary
    rows, columns = np.nonzero(actual.phi)
    labels = actual.phi_labels
    assert all(f"{labels[r]} on {labels[c]}" in summary for r, c in zip(rows, columns, strict=True))


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"phi": [[0.5, 0], [0, 0.5]]}, "lag_indices"),
        ({"demand_moment_types": "innovations"}, "lag_indices"),
        ({"demand_moment_types": [("levels", 1), ("differences", 4)]}, "demand_moment_types"),
        ({"supply_moment_types": [("levels", 1)]}, "sum to the number of supply instruments"),
        ({"covariance_moments_mean": "zero"}, "covariance_moments_mean"),
    ],
)
def test_invalid_arguments_are_named(arguments: dict, match: str) -> None:
    ours = problems("covariance")[1]
    with pytest.raises(SpecificationError, match=match):
        ours.solve(sigma=SIGMA, beta=BETA, optimization=dk.Optimization("return"), **arguments)


def test_distributed_estimation_is_refused() -> None:
    with pytest.raises(SpecificationError, match="distributed"):
        check_distributed(object(), shard=object(), resample=None)
    check_distributed(None, shard=object(), resample=None)
