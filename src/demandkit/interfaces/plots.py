"""Plots of estimation results: substitution heat maps, merger price changes and optimizer convergence.

matplotlib is an optional dependency (``pip install demandkit[plots]``) imported only when a plot is drawn.
Every function draws on ``ax`` when one is given (or on a new figure), saves to ``path`` when one is given
(the format follows the suffix: ``.png``, ``.svg``, ...) and returns the :class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..blp.counterfactuals import MergerResults
    from ..blp.results import ProblemResults

_KINDS = {  # title, method, row axis label, column axis label
    "elasticities": ("Elasticities", "compute_elasticities", "Share of product", "Price of product"),
    "diversion": ("Diversion ratios", "compute_diversion_ratios", "From product (its price rises)", "To product"),
}


def _pyplot() -> Any:
    """Import pyplot, or explain how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Plotting requires matplotlib: pip install demandkit[plots]") from error
    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        return _pyplot().subplots(figsize=figsize)
    return ax.figure, ax


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig


def plot_elasticities(
    results: ProblemResults,
    market_id: Any,
    kind: str = "elasticities",
    ax: Axes | None = None,
    path: str | Path | None = None,
    labels: Sequence[Any] | None = None,
) -> Figure:
    """Heat map of one market's matrix of price elasticities or diversion ratios.

    Parameters
    ----------
    results : ProblemResults
        Estimates whose ``compute_elasticities`` or ``compute_diversion_ratios`` is drawn.
    market_id : object
        The market to draw, one of ``results.problem.layout.market_ids``.
    kind : {'elasticities', 'diversion'}
        Element ``(j, k)`` is the elasticity of product ``j``'s share with respect to product ``k``'s price,
        or the diversion from ``j`` to ``k`` when ``j``'s price rises (the diagonal holds diversion to the
        outside good).
    ax : Axes, optional
        Axes to draw on; by default a new figure.
    path : str or Path, optional
        Where to save the figure; the suffix picks the format.
    labels : sequence, optional
        One label per product of the market, in its row order. By default ``product_ids`` when the products
        have them, else slot numbers ``0, 1, ...``.

    Returns
    -------
    Figure
        The figure holding the heat map and its colorbar. Values with both signs use a diverging colormap
        centered at zero.

    Raises
    ------
    ValueError
        If ``market_id`` is not a market of the problem, ``kind`` is unknown or ``labels`` has the wrong length.
    """
    _pyplot()
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}; received {kind!r}.")
    name, method, row_label, column_label = _KINDS[kind]
    layout = results.problem.layout
    t = int(pd.Index(layout.market_ids).get_indexer([market_id])[0])
    if t < 0:
        raise ValueError(f"Market {market_id!r} is not one of the problem's markets.")
    rows = np.flatnonzero(layout.market_of_row == t)
    rows = rows[np.argsort(layout.slot_of_row[rows])]
    block = getattr(results, method)()[rows, : rows.size]
    if labels is None:
        products = results.problem.product_frame
        labels = products["product_ids"].to_numpy()[rows] if "product_ids" in products else np.arange(rows.size)
    labels = [str(label) for label in labels]
    if len(labels) != rows.size:
        raise ValueError(f"labels must have one entry per product of market {market_id!r} ({rows.size}).")

    from matplotlib.colors import Normalize, TwoSlopeNorm

    low, high = float(np.nanmin(block)), float(np.nanmax(block))
    if low < 0 < high:
        cmap, norm = "RdBu_r", TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    else:
        cmap, norm = "viridis", Normalize(vmin=low, vmax=high)
    size = min(max(4.0, 0.3 * rows.size + 2.0), 16.0)
    fig, ax = _axes(ax, (size + 1.0, size))
    image = ax.imshow(block, cmap=cmap, norm=norm, interpolation="nearest")
    positions = np.arange(rows.size)
    ax.set_xticks(positions, labels=labels, rotation=90)
    ax.set_yticks(positions, labels=labels)
    ax.set_xlabel(column_label)
    ax.set_ylabel(row_label)
    ax.set_title(f"{name} in market {market_id}")
    fig.colorbar(image, ax=ax, label=name)
    return _finish(fig, path)


def plot_merger(
    merger: MergerResults,
    ax: Axes | None = None,
    path: str | Path | None = None,
    top: int | None = 30,
) -> Figure:
    """Horizontal bars of the price change (%) of each product after a merger, colored by merged firm.

    Parameters
    ----------
    merger : MergerResults
        Output of ``compute_merger``. Changes are averaged over markets per ``product_ids`` when the products
        have them, else drawn per row; a product takes the merged firm of its first row.
    ax : Axes, optional
        Axes to draw on; by default a new figure.
    path : str or Path, optional
        Where to save the figure; the suffix picks the format.
    top : int or None
        Draw only the ``top`` products with the largest absolute changes (all of them with ``None``).

    Returns
    -------
    Figure
        The figure; bars run from the largest change at the top to the smallest at the bottom.
    """
    _pyplot()
    if top is not None and top < 1:
        raise ValueError(f"top must be a positive integer or None; received {top!r}.")
    products = merger.products
    if "product_ids" in products:
        grouped = products.groupby("product_ids", sort=False)
        changes = grouped["price_change_percent"].mean()
        firms = grouped["merged_firm_ids"].first()
        names = changes.index.astype(str).to_numpy()
    else:
        changes, firms = products["price_change_percent"], products["merged_firm_ids"]
        names = np.array([f"row {i} ({m})" for i, m in enumerate(products["market_ids"])])
    changes, firms = changes.to_numpy(dtype=np.float64), firms.to_numpy()
    keep = np.argsort(-np.abs(changes), kind="stable")[:top]
    keep = keep[np.argsort(changes[keep], kind="stable")]  # ascending from the bottom: the largest on top

    from matplotlib import colormaps
    from matplotlib.patches import Patch

    unique_firms = sorted(pd.unique(firms[keep]), key=str)
    palette = colormaps["tab10" if len(unique_firms) <= 10 else "tab20"]
    color_of = {firm: palette(i % palette.N) for i, firm in enumerate(unique_firms)}
    fig, ax = _axes(ax, (7.0, max(3.0, 0.25 * keep.size + 1.5)))
    positions = np.arange(keep.size)
    ax.barh(positions, changes[keep], color=[color_of[firm] for firm in firms[keep]])
    ax.set_yticks(positions, labels=list(names[keep]))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("Price change (%)")
    ax.set_ylabel("Product")
    ax.set_title("Merger price changes" if top is None else f"Merger price changes (top {keep.size})")
    handles = [Patch(color=color_of[firm], label=str(firm)) for firm in unique_firms]
    ax.legend(handles=handles, title="Merged firm", loc="best")
    return _finish(fig, path)


def plot_convergence(
    results: ProblemResults,
    ax: Axes | None = None,
    path: str | Path | None = None,
) -> Figure:
    """GMM objective and largest absolute gradient element at each optimizer evaluation, one line per step.

    Parameters
    ----------
    results : ProblemResults
        Estimates whose ``trace`` is drawn. Evaluations are numbered consecutively across GMM steps.
    ax : Axes, optional
        Axes for the objective (left axis, log scale when every value is positive); the gradient goes on a
        twin axis with a log scale (nonpositive values are left out).
    path : str or Path, optional
        Where to save the figure; the suffix picks the format.

    Returns
    -------
    Figure
        The figure; the objective lines are solid and the gradient lines dashed, in one color per step.
    """
    plt = _pyplot()
    fig, ax = _axes(ax, (7.0, 4.0))
    twin = ax.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    start, objectives, gradients = 1, [], []
    for step, trace in enumerate(results.trace, start=1):
        values = np.asarray(trace, dtype=np.float64).reshape(-1, 2)
        evaluations = np.arange(start, start + len(values))
        start += len(values)
        objectives.extend(values[:, 0])
        gradients.extend(values[:, 1])
        gradient = np.where(values[:, 1] > 0, values[:, 1], np.nan)
        color = colors[(step - 1) % len(colors)]
        ax.plot(evaluations, values[:, 0], color=color, marker=".", label=f"step {step} objective")
        twin.plot(evaluations, gradient, color=color, marker=".", linestyle="--", label=f"step {step} gradient")
    objective_log = bool(objectives) and min(objectives) > 0
    gradient_log = bool(gradients) and max(gradients) > 0
    for axis, log, label in ((ax, objective_log, "GMM objective"), (twin, gradient_log, "Max |gradient|")):
        axis.set_yscale("log" if log else "linear")
        axis.set_ylabel(f"{label} (log scale)" if log else label)
    ax.set_xlabel("Optimizer evaluation")
    ax.set_title("Optimizer convergence")
    handles = [*ax.get_lines(), *twin.get_lines()]
    ax.legend(handles=handles, labels=[line.get_label() for line in handles], loc="best")
    return _finish(fig, path)
