"""Tests of ``demandkit.configurations.integration``: rules, reproducibility, stacking, validation, PyBLP oracle."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import get_args

import numpy as np
import pytest
from scipy.stats import norm, qmc

from demandkit.configurations.integration import SPECIFICATIONS, Integration, IntegrationSpecification

RANDOM = ("monte_carlo", "halton", "sobol", "lhs", "mlhs")
DETERMINISTIC = ("product", "grid", "nested_product", "nested_grid")


def sort_rows(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort nodes lexicographically (first column first) and weights alongside."""
    order = np.lexsort(nodes[:, ::-1].T)
    return nodes[order], weights[order]


def make(specification: str, size: int, seed: int | None = 0, **options) -> Integration:
    if specification in RANDOM:
        options["seed"] = seed
    return Integration(specification, size, options)


@pytest.fixture(scope="module")
def pyblp():
    return pytest.importorskip("pyblp")


# ---------------------------------------------------------------------------------------------- oracle


@pytest.mark.pyblp
@pytest.mark.parametrize("specification", DETERMINISTIC)
@pytest.mark.parametrize("dimensions", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7])
def test_quadrature_matches_pyblp(pyblp, specification, dimensions, size):
    nodes, weights = sort_rows(*Integration(specification, size).build(dimensions))
    expected_nodes, expected_weights = sort_rows(*pyblp.Integration(specification, size)._build(dimensions))
    assert nodes.shape == expected_nodes.shape
    np.testing.assert_allclose(nodes, expected_nodes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-12)


@pytest.mark.pyblp
@pytest.mark.parametrize(("dimensions", "size"), [(5, 6), (5, 8), (6, 5), (8, 4)])
def test_large_sparse_grid_matches_pyblp(pyblp, dimensions, size):
    # high-level grids have weights of order 10-100 that cancel; PyBLP's tabulated rules and NumPy's
    # computed ones differ by a few ulp, so compare relative to the largest weight
    nodes, weights = sort_rows(*Integration("grid", size).build(dimensions))
    expected_nodes, expected_weights = sort_rows(*pyblp.Integration("grid", size)._build(dimensions))
    assert nodes.shape == expected_nodes.shape
    np.testing.assert_allclose(nodes, expected_nodes, rtol=0, atol=1e-12)
    scale = max(1.0, np.abs(expected_weights).max())
    np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-13 * scale)


@pytest.mark.pyblp
@pytest.mark.parametrize("specification", DETERMINISTIC)
def test_quadrature_build_many_matches_pyblp(pyblp, specification):
    ids = np.array([3, 1, 2])
    ours = Integration(specification, 3).build_many(2, ids)
    theirs = pyblp.Integration(specification, 3)._build_many(2, ids)
    np.testing.assert_array_equal(ours[0], theirs[0])
    for market in ids:
        mine, expected = (
            sort_rows(ours[1][ours[0] == market], ours[2][ours[0] == market]),
            sort_rows(theirs[1][theirs[0] == market], theirs[2][theirs[0] == market]),
        )
        np.testing.assert_allclose(mine[0], expected[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(mine[1], expected[1], rtol=0, atol=1e-12)


@pytest.mark.pyblp
def test_monte_carlo_reproduces_pyblp_bit_for_bit(pyblp):
    ids = np.array(["a", "b", "c", "d"])
    ours = Integration("monte_carlo", 6, {"seed": 11}).build_many(3, ids)
    theirs = pyblp.Integration("monte_carlo", 6, {"seed": 11})._build_many(3, ids)
    for mine, expected in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, expected)
    np.testing.assert_array_equal(
        Integration("monte_carlo", 6, {"seed": 11}).build(3)[0],
        pyblp.Integration("monte_carlo", 6, {"seed": 11})._build(3)[0],
    )


@pytest.mark.pyblp
@pytest.mark.parametrize("specification", ["lhs", "mlhs", "halton"])
def test_seeded_draws_reproduce_pyblp_bit_for_bit(pyblp, specification):
    """Seeded Latin hypercube and scrambled Halton draws equal PyBLP's, for one market and for several (one stream,
    market after market; Halton digits re-permuted for each market), so that published PyBLP results with these
    draws can be reproduced. Twelve dimensions reach the primes whose digit counts differ from a rounding rule."""
    ids = np.array([4, 7, 9])
    for size, dimensions, seed in ((6, 3, 11), (50, 2, 0), (7, 12, 5)):
        ours = Integration(specification, size, {"seed": seed}).build_many(dimensions, ids)
        theirs = pyblp.Integration(specification, size, {"seed": seed})._build_many(dimensions, ids)
        for mine, expected in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(np.asarray(mine).reshape(np.shape(expected)), expected)
        np.testing.assert_array_equal(
            Integration(specification, size, {"seed": seed}).build(dimensions)[0],
            pyblp.Integration(specification, size, {"seed": seed})._build(dimensions)[0],
        )


def test_unscrambled_halton_build_many_matches_pyblp(pyblp):
    # PyBLP gives market t points discard + t * size, ..., discard + (t + 1) * size - 1 of one sequence
    options = {"discard": 17, "scramble": False}
    ids = np.arange(4)
    ours = Integration("halton", 5, options).build_many(3, ids)
    theirs = pyblp.Integration("halton", 5, options)._build_many(3, ids)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("specification", SPECIFICATIONS)
@pytest.mark.parametrize("dimensions", [1, 3])
def test_shapes_and_weights_sum_to_one(specification, dimensions):
    size = 4
    nodes, weights = make(specification, size).build(dimensions)
    assert nodes.ndim == 2 and nodes.shape[1] == dimensions
    assert weights.shape == (nodes.shape[0],)
    assert nodes.dtype == np.float64 and weights.dtype == np.float64
    assert np.all(np.isfinite(nodes))
    assert math.isclose(weights.sum(), 1.0, abs_tol=1e-13)
    if specification in RANDOM:
        assert nodes.shape[0] == size
        np.testing.assert_array_equal(weights, np.full(size, 1 / size))
    elif specification == "product":
        assert nodes.shape[0] == size**dimensions


def test_product_rule_is_tensor_of_gauss_hermite():
    x, w = np.polynomial.hermite.hermgauss(3)
    nodes, weights = Integration("product", 3).build(2)
    expected_nodes = np.array(list(itertools.product(x * np.sqrt(2), repeat=2)))
    expected_weights = np.kron(w, w) / np.pi
    np.testing.assert_allclose(nodes, expected_nodes, atol=1e-14)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-15)


@pytest.mark.parametrize("specification", DETERMINISTIC)
@pytest.mark.parametrize("level", [3, 4])
def test_quadrature_integrates_normal_moments_exactly(specification, level):
    # level L is exact for total degree 2L - 1: E[x^2] = 1, E[x^4] = 3, E[x^2 y^2] = 1, odd moments 0
    nodes, weights = Integration(specification, level).build(3)
    x, y, z = nodes.T
    assert math.isclose(weights @ x**2, 1.0, rel_tol=1e-12)
    assert math.isclose(weights @ (x * y * z), 0.0, abs_tol=1e-12)
    assert math.isclose(weights @ y**3, 0.0, abs_tol=1e-12)
    if 2 * level - 1 >= 4:
        assert math.isclose(weights @ z**4, 3.0, rel_tol=1e-12)
        assert math.isclose(weights @ (x**2 * y**2), 1.0, rel_tol=1e-12)


def test_sparse_grid_is_smaller_than_product_and_rows_are_distinct():
    nodes, weights = Integration("grid", 4).build(4)
    assert nodes.shape[0] < 4**4
    assert np.unique(nodes, axis=0).shape[0] == nodes.shape[0]
    assert (weights < 0).any()  # sparse grids combine rules with negative coefficients


@pytest.mark.parametrize("specification", RANDOM)
def test_draws_are_standard_normal(specification):
    nodes, weights = make(specification, 20_000, seed=2024).build(3)
    # a uniform (mean 0.5, variance 1/12) or any mis-scaled transform fails these by a wide margin, while
    # the sampling error of the mean (sd 0.007) and variance (sd 0.01) is far inside them
    np.testing.assert_allclose(weights @ nodes, 0.0, atol=0.05)
    np.testing.assert_allclose(weights @ nodes**2, 1.0, atol=0.08)
    np.testing.assert_allclose(weights @ nodes**4, 3.0, atol=0.4)
    assert np.abs(np.corrcoef(nodes.T) - np.eye(3)).max() < 0.05


@pytest.mark.parametrize("discard", [1, 1000, 4321])
def test_unscrambled_halton_equals_scipy_after_discard(discard):
    size, dimensions = 50, 4
    nodes, _ = Integration("halton", size, {"discard": discard, "scramble": False}).build(dimensions)
    engine = qmc.Halton(dimensions, scramble=False)
    engine.fast_forward(discard)
    np.testing.assert_allclose(nodes, norm.ppf(engine.random(size)), rtol=0, atol=1e-12)


def test_halton_default_discard_is_pyblps_1000():
    assert Integration("halton", 5).options["discard"] == 1000
    assert Integration("halton", 5).options["scramble"] is True
    assert Integration("sobol", 5).options == {"seed": None, "discard": 0, "scramble": True}


def test_halton_markets_take_consecutive_blocks_of_one_sequence():
    size, discard = 6, 20
    integration = Integration("halton", size, {"discard": discard, "scramble": False})
    _, nodes, _ = integration.build_many(2, np.arange(3))
    for market in range(3):
        options = {"discard": discard + market * size, "scramble": False}
        block, _ = Integration("halton", size, options).build(2)
        np.testing.assert_array_equal(nodes[market * size : (market + 1) * size], block)


def test_sobol_draws_any_size_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nodes, _ = Integration("sobol", 100, {"seed": 1}).build(5)
        Integration("sobol", 7, {"seed": 1, "discard": 3}).build_many(2, np.arange(5))
    assert np.all(np.isfinite(nodes))


def test_unscrambled_sobol_equals_scipy_after_discard():
    nodes, _ = Integration("sobol", 16, {"discard": 16, "scramble": False}).build(3)
    engine = qmc.Sobol(3, scramble=False)
    engine.fast_forward(16)
    np.testing.assert_allclose(nodes, norm.ppf(engine.random(16)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("specification", ["lhs", "mlhs"])
def test_latin_hypercube_has_one_point_per_stratum(specification):
    size, dimensions, markets = 37, 4, 5
    _, nodes, _ = make(specification, size, seed=5).build_many(dimensions, np.arange(markets))
    uniforms = norm.cdf(nodes).reshape(markets, size, dimensions)
    strata = np.floor(uniforms * size).astype(int)
    expected = np.broadcast_to(np.arange(size)[:, None], strata.shape)
    np.testing.assert_array_equal(np.sort(strata, axis=1), expected)
    offsets = uniforms * size - strata
    if specification == "mlhs":
        # one shift per dimension (and market): every point sits at the same place within its stratum
        np.testing.assert_allclose(offsets, offsets[:, :1, :].repeat(size, axis=1), atol=1e-9)
    else:
        assert offsets.std(axis=1).min() > 0.1


# ---------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("specification", RANDOM)
def test_same_seed_same_bits_different_seed_different_draws(specification):
    ids = np.arange(4)
    first = make(specification, 30, seed=7).build_many(2, ids)
    again = make(specification, 30, seed=7).build_many(2, ids)
    other = make(specification, 30, seed=8).build_many(2, ids)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    np.testing.assert_array_equal(make(specification, 30, seed=7).build(2)[0], first[1][:30])


@pytest.mark.parametrize("specification", ["monte_carlo", "lhs", "mlhs", "sobol"])
def test_unseeded_draws_differ(specification):
    integration = Integration(specification, 16)
    assert not np.array_equal(integration.build(2)[0], integration.build(2)[0])


# ---------------------------------------------------------------------------------------------- markets


@pytest.mark.parametrize("specification", SPECIFICATIONS)
def test_build_many_groups_agents_by_market_in_given_order(specification):
    ids = np.array(["z", "a", "m"])
    integration = make(specification, 3)
    single_nodes, single_weights = integration.build(2)
    agents = single_weights.size
    agent_ids, nodes, weights = integration.build_many(2, ids)
    np.testing.assert_array_equal(agent_ids, np.repeat(ids, agents))
    assert nodes.shape == (3 * agents, 2) and weights.shape == (3 * agents,)
    blocks = nodes.reshape(3, agents, 2)
    for market in range(3):
        assert math.isclose(weights[agent_ids == ids[market]].sum(), 1.0, abs_tol=1e-13)
    if specification in DETERMINISTIC:
        for block in blocks:
            np.testing.assert_array_equal(block, single_nodes)
        np.testing.assert_array_equal(weights, np.tile(single_weights, 3))
    else:
        np.testing.assert_array_equal(blocks[0], single_nodes)  # same seed: first market = build
        assert not np.array_equal(blocks[0], blocks[1]) and not np.array_equal(blocks[1], blocks[2])


@pytest.mark.parametrize("specification", ["monte_carlo", "halton", "product"])
def test_build_many_without_markets_is_empty(specification):
    agent_ids, nodes, weights = make(specification, 3).build_many(2, np.array([], dtype=int))
    assert agent_ids.shape == (0,) and nodes.shape == (0, 2) and weights.shape == (0,)


def test_build_outputs_are_writable_copies():
    nodes, weights = Integration("grid", 3).build(2)
    nodes[0, 0] = 99.0
    weights[:] = 0.0
    fresh_nodes, fresh_weights = Integration("grid", 3).build(2)
    assert fresh_nodes[0, 0] != 99.0 and math.isclose(fresh_weights.sum(), 1.0)


# ---------------------------------------------------------------------------------------------- configuration


def test_specifications_are_derived_from_the_literal():
    assert SPECIFICATIONS == get_args(IntegrationSpecification)
    assert set(SPECIFICATIONS) == {
        "monte_carlo",
        "halton",
        "sobol",
        "lhs",
        "mlhs",
        "product",
        "nested_product",
        "grid",
        "nested_grid",
    }


def test_configuration_is_frozen_and_compares_by_effective_options():
    integration = Integration("halton", 200, {"seed": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        integration.size = 5  # type: ignore[misc]
    assert integration == Integration("halton", 200, {"seed": 3, "discard": 1000})
    assert integration != Integration("halton", 200, {"seed": 4})
    assert hash(integration) == hash(Integration("halton", 200, {"seed": 3}))
    assert Integration("grid", 3) == Integration("grid", 3, {})


def test_str_describes_the_rule():
    text = str(Integration("halton", 200, {"seed": 0}))
    assert text.startswith("Configured to construct nodes and weights with scrambled Halton draws of size 200")
    assert "discard=1000" in text and "seed=0" in text
    assert "level-5 Gauss-Hermite product rule" in str(Integration("product", 5))
    assert "sparse grid" in str(Integration("grid", 2))
    assert "modified Latin hypercube" in str(Integration("mlhs", 10))


def test_bad_specification_names_parameter_allowed_values_and_value():
    with pytest.raises(ValueError, match="specification") as info:
        Integration("quasi", 10)  # type: ignore[arg-type]
    message = str(info.value)
    assert "'quasi'" in message
    assert all(repr(name) in message for name in SPECIFICATIONS)


@pytest.mark.parametrize("size", [0, -3, 2.0, True, "5", None])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        Integration("monte_carlo", size)  # type: ignore[arg-type]


def test_numpy_integer_size_is_accepted():
    integration = Integration("lhs", np.int64(4), {"seed": np.int32(1)})
    assert type(integration.size) is int and integration.options["seed"] == 1


@pytest.mark.parametrize(
    ("specification", "options", "named"),
    [
        ("halton", {"seeds": 1}, "seeds"),
        ("lhs", {"discard": 10}, "discard"),
        ("monte_carlo", {"scramble": False}, "scramble"),
        ("product", {"seed": 0}, "seed"),
        ("grid", {"level": 2}, "level"),
    ],
)
def test_unknown_option_key_is_named(specification, options, named):
    with pytest.raises(ValueError, match=named):
        Integration(specification, 3, options)


@pytest.mark.parametrize(
    ("specification", "options", "named"),
    [
        ("monte_carlo", {"seed": 1.5}, "seed"),
        ("mlhs", {"seed": "0"}, "seed"),
        ("halton", {"discard": -1}, "discard"),
        ("halton", {"discard": 2.0}, "discard"),
        ("sobol", {"scramble": "yes"}, "scramble"),
        ("halton", {"scramble": False, "discard": 0}, "discard"),
        ("sobol", {"scramble": False}, "discard"),
    ],
)
def test_bad_option_values_are_named(specification, options, named):
    with pytest.raises(ValueError, match=named):
        Integration(specification, 3, options)


def test_options_must_be_a_dict():
    with pytest.raises(ValueError, match="specification_options"):
        Integration("halton", 3, [("seed", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("dimensions", [0, -1, 1.0])
def test_bad_dimensions_raise(dimensions):
    with pytest.raises(ValueError, match="dimensions"):
        Integration("product", 3).build(dimensions)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimensions"):
        Integration("halton", 3).build_many(dimensions, np.arange(2))  # type: ignore[arg-type]


def test_market_ids_must_be_one_dimensional():
    with pytest.raises(ValueError, match="market_ids"):
        Integration("product", 3).build_many(2, np.zeros((2, 2)))
