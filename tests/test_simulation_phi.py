"""Simulation(phi=...): AR(1) unobservables along ``lag_indices``.

The innovations are drawn exactly as without ``phi`` and then transformed, so with ``phi = 0`` the draws are those
of a simulation without ``phi``, bit for bit, and otherwise they follow the recursion
:math:`u_{jt} = \\phi L u_{jt} + \\tilde u_{jt}` with first periods scaled to the stationary distribution. PyBLP
1.3.0 is the oracle for the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest

import demandkit as dk
from demandkit.exceptions import InvalidDataError, SpecificationError

PHI = np.array([[0.5, 0.1], [0.2, 0.3]])
DRAWS = {"xi_variance": 1.0, "omega_variance": 2.0, "correlation": 0.5, "seed": 3}


def panel(T: int, J: int, shuffle: bool = False) -> dict[str, np.ndarray]:
    """``T`` periods (markets) of the same ``J`` products, optionally in shuffled row order."""
    N = T * J
    markets = np.repeat(np.arange(T), J)
    products = np.tile(np.arange(J), T)
    order = np.random.default_rng(0).permutation(N) if shuffle else np.arange(N)
    markets, products = markets[order], products[order]
    row = {(t, j): i for i, (t, j) in enumerate(zip(markets, products, strict=True))}
    lags = np.array([row[t - 1, j] if t else row[t, j] for t, j in zip(markets, products, strict=True)])
    return {"market_ids": markets, "firm_ids": products, "product_ids": products, "lag_indices": lags}


def simulate(data: dict, supply: bool = True, **kwargs) -> dk.Simulation:
    formulations = (
        (dk.Formulation("1 + prices + x"), None, dk.Formulation("1 + w"))
        if supply
        else (dk.Formulation("1 + prices + x"),)
    )
    gamma = [1.0, 1.0] if supply else None
    return dk.Simulation(formulations, data, beta=[1.0, -2.0, 1.0], gamma=gamma, **{**DRAWS, **kwargs})


def recursion(innovations: np.ndarray, lags: np.ndarray, phi: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Manual AR(1) recursion, product by product in row order of the lag chains."""
    size = phi.shape[0]
    stationary = np.linalg.solve(np.eye(size * size) - np.kron(phi, phi), covariance.reshape(-1)).reshape(size, size)
    scale = np.linalg.cholesky(stationary) @ np.linalg.inv(np.linalg.cholesky(covariance))
    values = np.full_like(innovations, np.nan)

    def value(i: int) -> np.ndarray:
        if np.isnan(values[i]).any():
            values[i] = scale @ innovations[i] if lags[i] == i else phi @ value(lags[i]) + innovations[i]
        return values[i]

    for i in range(len(lags)):
        value(i)
    return values


@pytest.mark.parametrize("supply", [True, False])
def test_zero_phi_reproduces_draws_without_phi(supply: bool) -> None:
    data = panel(5, 3)
    phi = np.zeros((2, 2)) if supply else 0.0
    base, zero = simulate(data, supply), simulate(data, supply, phi=phi)
    np.testing.assert_array_equal(zero.xi, base.xi)
    if supply:
        np.testing.assert_array_equal(zero.omega, base.omega)
    assert zero.phi.shape == ((2, 2) if supply else (1, 1))


@pytest.mark.parametrize("shuffle", [False, True])
def test_supply_phi_is_the_recursion_of_the_draws(shuffle: bool) -> None:
    data = panel(6, 4, shuffle)
    base, lagged = simulate(data), simulate(data, phi=PHI)
    covariance = np.array([[1.0, 0.5 * np.sqrt(2.0)], [0.5 * np.sqrt(2.0), 2.0]])
    expected = recursion(np.c_[base.xi, base.omega], data["lag_indices"], PHI, covariance)
    np.testing.assert_allclose(np.c_[lagged.xi, lagged.omega], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(lagged.phi, PHI)


def test_demand_phi_is_the_recursion_of_the_draws() -> None:
    data = panel(6, 4, shuffle=True)
    base, lagged = simulate(data, supply=False), simulate(data, supply=False, phi=0.6)
    expected = recursion(base.xi, data["lag_indices"], np.array([[0.6]]), np.array([[1.0]]))
    np.testing.assert_allclose(lagged.xi, expected, rtol=1e-12, atol=1e-12)
    assert lagged.omega is None


@pytest.mark.parametrize("shuffle", [False, True])
def test_matches_pyblp(shuffle: bool) -> None:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    data = panel(5, 3, shuffle)
    formulations = (pyblp.Formulation("1 + prices + x"), None, pyblp.Formulation("1 + w"))
    oracle = pyblp.Simulation(formulations, data, beta=[1.0, -2.0, 1.0], gamma=[1.0, 1.0], phi=PHI, **DRAWS)
    ours = simulate(data, phi=PHI)
    np.testing.assert_allclose(ours.xi, oracle.xi, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.omega, oracle.omega, rtol=1e-12, atol=1e-12)


def test_simulated_xi_has_the_ar1_autocorrelation() -> None:
    data = panel(40, 250)
    simulation = simulate(data, phi=PHI)
    lags = data["lag_indices"]
    later = lags != np.arange(lags.size)
    xi, omega = simulation.xi[:, 0], simulation.omega[:, 0]
    regressors = np.c_[xi[lags[later]], omega[lags[later]]]
    coefficients, *_ = np.linalg.lstsq(regressors, xi[later], rcond=None)
    residuals = xi[later] - regressors @ coefficients
    variance = residuals @ residuals / (later.sum() - 2) * np.linalg.inv(regressors.T @ regressors)
    errors = np.sqrt(np.diag(variance))
    assert np.all(np.abs(coefficients - PHI[0]) < 3 * errors)
    # first periods follow the stationary variance of xi
    covariance = np.array([[1.0, 0.5 * np.sqrt(2.0)], [0.5 * np.sqrt(2.0), 2.0]])
    stationary = np.linalg.solve(np.eye(4) - np.kron(PHI, PHI), covariance.reshape(-1)).reshape(2, 2)
    first = xi[~later]
    assert abs(first.var() - stationary[0, 0]) < 4 * stationary[0, 0] * np.sqrt(2 / first.size)


def test_demand_only_slope() -> None:
    data = panel(20, 500)
    xi = simulate(data, supply=False, phi=0.7).xi[:, 0]
    lags = data["lag_indices"]
    later = lags != np.arange(lags.size)
    x, y = xi[lags[later]], xi[later]
    slope = x @ y / (x @ x)
    residuals = y - slope * x
    error = np.sqrt(residuals @ residuals / (y.size - 1) / (x @ x))
    assert abs(slope - 0.7) < 3 * error


def test_given_xi_and_omega_ignore_phi() -> None:
    data = panel(3, 2)
    xi, omega = np.arange(6.0), -np.arange(6.0)
    simulation = simulate(data, phi=PHI, xi=xi, omega=omega)
    np.testing.assert_array_equal(simulation.xi[:, 0], xi)
    np.testing.assert_array_equal(simulation.omega[:, 0], omega)
    np.testing.assert_array_equal(simulation.phi, PHI)
    no_lags = {key: value for key, value in data.items() if key != "lag_indices"}
    np.testing.assert_array_equal(simulate(no_lags, phi=PHI, xi=xi, omega=omega).xi[:, 0], xi)


def test_errors() -> None:
    data = panel(3, 2)
    with pytest.raises(SpecificationError, match="phi must be 2 by 2"):
        simulate(data, phi=0.5)
    with pytest.raises(SpecificationError, match="phi must be 1 by 1"):
        simulate(data, supply=False, phi=PHI)
    with pytest.raises(SpecificationError, match="phi has NaN"):
        simulate(data, phi=[[np.nan, 0], [0, 0]])
    with pytest.raises(SpecificationError, match="phi must be stable"):
        simulate(data, phi=[[1.2, 0], [0, 0.1]])
    no_lags = {key: value for key, value in data.items() if key != "lag_indices"}
    with pytest.raises(SpecificationError, match="lag_indices"):
        simulate(no_lags, phi=PHI)
    with pytest.raises(InvalidDataError, match="lag_indices"):
        simulate({**data, "lag_indices": np.r_[-1, -1, 0, 1, 2, 3]}, phi=PHI)
    with pytest.raises(InvalidDataError, match="cycles"):
        simulate({**data, "lag_indices": np.array([0, 2, 3, 1, 4, 5])}, phi=PHI)
