"""Instrument builders: BLP sums of characteristics, differentiation instruments and id data.

PyBLP 1.3.0 is the oracle (relative 1e-8 on each array's scale); the chunked computation is also checked against
closed forms on one large market, and against itself with other chunk sizes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.construction.instruments import (
    _blocks,
    build_blp_instruments,
    build_differentiation_instruments,
    build_id_data,
)
from demandkit.exceptions import InvalidDataError, SpecificationError
from demandkit.layout import Layout

RTOL = 1e-8


def products(seed: int = 0, markets: int = 12) -> pd.DataFrame:
    """Unequal markets (one product up to eleven), three firms, rows shuffled, an integer characteristic."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, markets)
    market_ids = np.repeat([f"m{t:02d}" for t in range(markets)], sizes)
    N = market_ids.size
    frame = pd.DataFrame(
        {
            "market_ids": market_ids,
            "firm_ids": rng.integers(0, 3, N),
            "x": rng.normal(size=N),
            "y": rng.uniform(size=N),
            "k": rng.integers(0, 3, N).astype(float),
        }
    )
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def assert_close(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def quadratic_closed_form(x: np.ndarray, firms: np.ndarray) -> np.ndarray:
    """One market, one characteristic: :math:`\\sum_k (x_j - x_k)^2 = n x_j^2 - 2 x_j S + Q` over each group."""
    centered = x - x.mean()

    def sums(mask: np.ndarray) -> np.ndarray:
        n, S, Q = mask.sum(1), mask @ centered, mask @ centered**2
        return n * centered**2 - 2 * centered * S + Q

    same = firms[:, None] == firms[None, :]
    return np.column_stack([sums(same.astype(float)), sums((~same).astype(float))])


# ----------------------------------------------------------------------------------------------- id data


def test_build_id_data_structure() -> None:
    data = build_id_data(3, 5, 2)
    assert data.market_ids.shape == (15, 1) and data.market_ids.dtype == object
    assert data.firm_ids.ravel().tolist() == [0, 0, 0, 1, 1] * 3
    assert data.market_ids.ravel().tolist() == [0] * 5 + [1] * 5 + [2] * 5


@pytest.mark.parametrize("arguments", [(0, 3, 1), (2, 1, 2), (2.0, 3, 1), (2, 3, True)])
def test_build_id_data_errors(arguments: tuple) -> None:
    with pytest.raises(SpecificationError):
        build_id_data(*arguments)


# ------------------------------------------------------------------------------------------ PyBLP oracle


@pytest.mark.pyblp
def test_id_data_matches_pyblp() -> None:
    pyblp = pytest.importorskip("pyblp")
    for T, J, F in [(3, 5, 2), (2, 7, 7), (4, 6, 4)]:
        ours, theirs = build_id_data(T, J, F), pyblp.build_id_data(T, J, F)
        assert ours.dtype == theirs.dtype
        for field in ("market_ids", "firm_ids"):
            assert np.array_equal(getattr(ours, field), getattr(theirs, field))


@pytest.mark.pyblp
@pytest.mark.parametrize("formula", ["1 + x + y", "0 + x + k", "0 + I(x ** 2) + y"])
def test_blp_instruments_match_pyblp(formula: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    data = products(1)
    ours = build_blp_instruments(dk.Formulation(formula), data)
    assert_close(ours, pyblp.build_blp_instruments(pyblp.Formulation(formula), data), formula)


@pytest.mark.pyblp
@pytest.mark.parametrize("version", ["local", "quadratic"])
@pytest.mark.parametrize("interact", [False, True])
@pytest.mark.parametrize("formula", ["1 + x + y", "0 + x + k"])
def test_differentiation_instruments_match_pyblp(version: str, interact: bool, formula: str) -> None:
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    data = products(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pyblp.build_differentiation_instruments(pyblp.Formulation(formula), data, version, interact)
    for chunk_elements in (2**22, 1, 97):  # whole markets, one row at a time, odd-sized chunks
        ours = build_differentiation_instruments(
            dk.Formulation(formula), data, version, interact, chunk_elements=chunk_elements
        )
        assert_close(ours, expected, f"{version} interact={interact} chunk={chunk_elements}")


@pytest.mark.pyblp
def test_local_threshold_is_exact_on_ties() -> None:
    """Integer characteristics make pairwise differences equal the standard deviation exactly (here 1): the strict
    inequality must exclude them, as PyBLP does."""
    pyblp = pytest.importorskip("pyblp")
    data = pd.DataFrame({"market_ids": [0, 0, 1, 1], "firm_ids": [0, 1, 0, 1], "x": [0.0, 1.0, 5.0, 6.0]})
    ours = build_differentiation_instruments(dk.Formulation("0 + x"), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pyblp.build_differentiation_instruments(pyblp.Formulation("0 + x"), data)
    assert np.array_equal(ours, expected) and not ours.any()


# ------------------------------------------------------------------------------------ chunking and memory


def test_large_market_is_chunked_and_exact() -> None:
    """A 3000-product market never forms its 3000 x 3000 matrix, and the chunked sums equal the closed form."""
    rng = np.random.default_rng(3)
    N = 3000
    data = pd.DataFrame({"market_ids": 0, "firm_ids": rng.integers(0, 40, N), "x": rng.normal(size=N)})
    budget = 2**16
    layout = Layout.build(data["market_ids"].to_numpy())
    blocks = list(_blocks(layout, per_pair=3, chunk_elements=budget))
    assert len(blocks) > 1
    assert all(len(m) * (stop - start) * width * 3 <= budget for m, width, start, stop in blocks)
    ours = build_differentiation_instruments(dk.Formulation("0 + x"), data, "quadratic", chunk_elements=budget)
    expected = quadratic_closed_form(data["x"].to_numpy(), data["firm_ids"].to_numpy())
    assert_close(ours, expected, "quadratic closed form")


def test_markets_are_batched_by_size() -> None:
    """Small markets go together in a block; padding never crosses into a much larger market."""
    sizes = np.array([2] * 50 + [40])
    layout = Layout.build(np.repeat(np.arange(sizes.size), sizes))
    blocks = list(_blocks(layout, per_pair=1, chunk_elements=4096))
    assert blocks[0][1] == 2 and len(blocks[0][0]) > 1
    assert all(width == 40 for markets, width, *_ in blocks if 50 in markets)


def test_blp_instruments_by_hand() -> None:
    data = pd.DataFrame({"market_ids": [0, 0, 0, 1, 1], "firm_ids": [0, 0, 1, 0, 1], "x": [1.0, 2.0, 4.0, 8.0, 16.0]})
    expected = np.array([[2, 4], [1, 4], [0, 3], [0, 16], [0, 8]], dtype=float)
    assert np.array_equal(build_blp_instruments(dk.Formulation("0 + x"), data), expected)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_ids_are_named() -> None:
    data = products(0).drop(columns=["firm_ids"])
    with pytest.raises(InvalidDataError, match="firm_ids"):
        build_blp_instruments(dk.Formulation("0 + x"), data)
    with pytest.raises(InvalidDataError, match="firm_ids"):
        build_differentiation_instruments(dk.Formulation("0 + x"), data)


def test_bad_options_are_named() -> None:
    data = products(0)
    with pytest.raises(SpecificationError, match="version"):
        build_differentiation_instruments(dk.Formulation("0 + x"), data, version="global")
    with pytest.raises(SpecificationError, match="interact"):
        build_differentiation_instruments(dk.Formulation("0 + x"), data, interact="yes")
    with pytest.raises(SpecificationError, match="chunk_elements"):
        build_differentiation_instruments(dk.Formulation("0 + x"), data, chunk_elements=0)
    with pytest.raises(SpecificationError, match="Formulation"):
        build_blp_instruments("0 + x", data)
