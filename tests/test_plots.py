"""Plots render headlessly, draw the right data and save to PNG and SVG."""

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import demandkit as dk  # noqa: E402
from demandkit.blp.counterfactuals import MergerResults  # noqa: E402
from demandkit.interfaces import plots  # noqa: E402


def _products(T=5, J=4, seed=0):
    """Logit data in shuffled row order with string product ids and two nests."""
    rng = np.random.default_rng(seed)
    market = np.repeat(np.arange(T), J)
    product = np.tile(np.arange(J), T)
    x = rng.uniform(0, 2, T * J)
    z = rng.normal(size=(T * J, 3))
    xi = 0.3 * rng.normal(size=T * J)
    prices = 2 + 0.6 * z[:, 0] + 0.3 * z[:, 1] + 0.5 * xi + 0.3 * x
    utility = np.exp(-1 - 2 * prices + x + xi)
    shares = utility / (1 + np.bincount(market, utility)[market])
    frame = pd.DataFrame(
        {
            "market_ids": market,
            "product_ids": [f"p{j}" for j in product],
            "firm_ids": product % 3,
            "nesting_ids": product % 2,
            "shares": shares,
            "prices": prices,
            "x": x,
            "demand_instruments0": z[:, 0],
            "demand_instruments1": z[:, 1],
            "demand_instruments2": z[:, 2],
        }
    )
    return frame.iloc[rng.permutation(T * J)].reset_index(drop=True)


@pytest.fixture(scope="module")
def logit():
    return dk.Problem(dk.Formulation("1 + prices + x"), _products().drop(columns="nesting_ids")).solve(method="1s")


@pytest.fixture(scope="module")
def nested():
    return dk.Problem(dk.Formulation("1 + prices + x"), _products()).solve(rho=0.3)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saves(draw, tmp_path):
    """Draw to PNG and SVG files and return the last figure."""
    for suffix in ("png", "svg"):
        path = tmp_path / f"plot.{suffix}"
        fig = draw(path)
        assert path.stat().st_size > 0
        plt.close(fig)
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig


def _labels(texts):
    return [text.get_text() for text in texts]


@pytest.mark.parametrize("kind", ["elasticities", "diversion"])
def test_heat_map_draws_the_market_block(logit, kind, tmp_path):
    fig = _saves(lambda path: plots.plot_elasticities(logit, 3, kind=kind, path=path), tmp_path)
    layout, products = logit.problem.layout, logit.problem.product_frame
    rows = np.flatnonzero(products.market_ids.to_numpy() == 3)
    rows = rows[np.argsort(layout.slot_of_row[rows])]
    matrix = logit.compute_elasticities() if kind == "elasticities" else logit.compute_diversion_ratios()
    heat_map, colorbar = fig.axes
    (image,) = heat_map.get_images()
    np.testing.assert_allclose(np.asarray(image.get_array()), matrix[rows, : rows.size])
    expected = list(products.product_ids.to_numpy()[rows])
    assert _labels(heat_map.get_xticklabels()) == expected
    assert _labels(heat_map.get_yticklabels()) == expected
    assert "market 3" in heat_map.get_title()
    assert ("Elasticities" if kind == "elasticities" else "Diversion") in heat_map.get_title()
    if kind == "elasticities":  # own elasticities are negative and cross ones positive: centered at zero
        assert isinstance(image.norm, matplotlib.colors.TwoSlopeNorm) and image.norm.vcenter == 0


def test_heat_map_labels_default_to_slots_and_can_be_given(logit):
    fig = plots.plot_elasticities(logit, 0, labels=["a", "b", "c", "d"])
    assert _labels(fig.axes[0].get_xticklabels()) == ["a", "b", "c", "d"]
    stripped = dk.Problem(dk.Formulation("1 + prices + x"), _products().drop(columns=["nesting_ids", "product_ids"]))
    fig = plots.plot_elasticities(stripped.solve(method="1s"), 0)
    assert _labels(fig.axes[0].get_yticklabels()) == ["0", "1", "2", "3"]


def test_heat_map_rejects_unknown_market_kind_and_labels(logit):
    with pytest.raises(ValueError, match="'nowhere'"):
        plots.plot_elasticities(logit, "nowhere")
    with pytest.raises(ValueError, match="99"):
        plots.plot_elasticities(logit, 99)
    with pytest.raises(ValueError, match="kind"):
        plots.plot_elasticities(logit, 0, kind="markups")
    with pytest.raises(ValueError, match="labels"):
        plots.plot_elasticities(logit, 0, labels=["a"])


def test_heat_map_draws_on_given_axes(logit):
    fig, (left, right) = plt.subplots(1, 2)
    assert plots.plot_elasticities(logit, 1, kind="diversion", ax=right) is fig
    assert not left.get_images() and len(right.get_images()) == 1


def _merger_frame():
    """Four products in two markets; p3 is absent from market 1; firm 9 is the merged 1 and 2."""
    return pd.DataFrame(
        {
            "market_ids": [0, 0, 0, 0, 1, 1, 1],
            "product_ids": ["p0", "p1", "p2", "p3", "p0", "p1", "p2"],
            "firm_ids": [1, 2, 3, 3, 1, 2, 3],
            "merged_firm_ids": [9, 9, 3, 3, 9, 9, 3],
            "price_change_percent": [4.0, -1.0, 0.5, 3.0, 2.0, -7.0, 1.5],
        }
    )


def test_merger_bars_average_sort_and_truncate(tmp_path):
    merger = MergerResults(_merger_frame(), pd.DataFrame({"market_ids": [0, 1]}))
    ax = _saves(lambda path: plots.plot_merger(merger, path=path), tmp_path).axes[0]
    # means: p0 3.0, p1 -4.0, p2 1.0, p3 3.0; bars go from the smallest at the bottom to the largest on top
    assert [bar.get_width() for bar in ax.patches] == [-4.0, 1.0, 3.0, 3.0]
    assert _labels(ax.get_yticklabels()) == ["p1", "p2", "p0", "p3"]
    colors = [bar.get_facecolor() for bar in ax.patches]
    assert colors[0] == colors[2] != colors[1] == colors[3]  # p1 and p0 are firm 9, p2 and p3 firm 3
    assert _labels(ax.get_legend().get_texts()) == ["3", "9"]
    assert ax.get_xlabel() == "Price change (%)" and ax.get_ylabel() == "Product"

    ax = plots.plot_merger(merger, top=2).axes[0]
    assert [bar.get_width() for bar in ax.patches] == [-4.0, 3.0]
    assert _labels(ax.get_yticklabels()) == ["p1", "p0"]
    with pytest.raises(ValueError, match="top"):
        plots.plot_merger(merger, top=0)


def test_merger_without_product_ids_draws_rows():
    merger = MergerResults(_merger_frame().drop(columns="product_ids"), pd.DataFrame())
    ax = plots.plot_merger(merger, top=None).axes[0]
    assert len(ax.patches) == 7
    assert [bar.get_width() for bar in ax.patches] == sorted(_merger_frame().price_change_percent)
    assert _labels(ax.get_yticklabels())[0] == "row 5 (1)"


def test_merger_of_a_solved_problem(logit, tmp_path):
    firm_ids = logit.problem.product_frame.firm_ids.replace(2, 1).to_numpy()
    merger = logit.compute_merger(firm_ids)
    ax = _saves(lambda path: plots.plot_merger(merger, path=path, top=3), tmp_path).axes[0]
    means = merger.products.groupby("product_ids").price_change_percent.mean()
    expected = means[means.abs().sort_values(ascending=False).index[:3]].sort_values()
    np.testing.assert_allclose([bar.get_width() for bar in ax.patches], expected.to_numpy())
    assert _labels(ax.get_yticklabels()) == list(expected.index)


def test_convergence_has_a_line_per_step(nested, tmp_path):
    fig = _saves(lambda path: plots.plot_convergence(nested, path=path), tmp_path)
    objective, gradient = fig.axes
    assert len(nested.trace) == 2
    assert len(objective.get_lines()) == len(gradient.get_lines()) == 2
    for line, step in zip(objective.get_lines(), nested.trace, strict=True):
        np.testing.assert_allclose(line.get_ydata(), [value for value, _ in step])
    assert gradient.get_yscale() == "log"
    assert _labels(objective.get_legend().get_texts()) == [
        "step 1 objective",
        "step 2 objective",
        "step 1 gradient",
        "step 2 gradient",
    ]
    assert objective.get_xlabel() == "Optimizer evaluation"


def test_convergence_of_logit_without_gradient(logit):
    fig = plots.plot_convergence(logit)
    assert len(fig.axes[0].get_lines()) == 1 and fig.axes[1].get_yscale() == "linear"


def test_missing_matplotlib_explains_install(logit, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for draw in (lambda: plots.plot_elasticities(logit, 0), lambda: plots.plot_convergence(logit)):
        with pytest.raises(ImportError, match=r"pip install demandkit\[plots\]"):
            draw()
