"""PyBLP's record arrays of a problem: ``Problem.products`` and ``Problem.agents``.

A record array holds one row per product (agent) and one field per quantity, each field two-dimensional (``N x k``,
``k = 0`` when the quantity is absent), so that ``problem.products.X1`` or ``products.prices`` read as in PyBLP.
The product fields come in PyBLP's order: the identifiers (``market_ids``, ``firm_ids``, ``demand_ids``,
``supply_ids``, ``nesting_ids``, ``product_ids``, ``clustering_ids``, ``lag_indices``), ``ownership``, ``shares``,
the instruments ``ZD``, ``ZS``, ``ZC``, the designs ``X1``, ``X2``, ``X3`` (their titles the column labels) and then
one field per variable that the formulations read, in the order in which the design columns first use them.
``X1``, ``ZD``, ``X3`` and ``ZS`` are the matrices after absorbing fixed effects, as estimation uses them. Micro
moments' callbacks receive the rows of one market (:class:`MarketRecords`).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np
import pandas as pd

from ..layout.validation import numbered_columns

IDENTIFIER_FIELDS = ("market_ids", "firm_ids", "nesting_ids", "clustering_ids")
_CATEGORICAL = re.compile(r"^C\((?P<name>[A-Za-z_][A-Za-z0-9_]*)[^)]*\)\[(?:T\.)?(?P<level>.*)\]$")


class MarketRecords(np.recarray):
    """One market's rows of ``Problem.products``, as micro moments' callbacks receive them.

    Fields read as in PyBLP (``products.X2``, ``products.prices``, ``products.size``); ``products['column']`` also
    reads a column of ``product_data`` that is no field (one value per product).
    """

    def __getitem__(self, key: Any) -> Any:
        frame = getattr(self, "_frame", None)
        if isinstance(key, str) and key not in (self.dtype.names or ()) and frame is not None:
            if key in frame.columns:
                return frame[key].to_numpy()
        return super().__getitem__(key)


def market_records(records: np.recarray, rows: np.ndarray, frame: pd.DataFrame | None) -> MarketRecords:
    """The ``rows`` of ``records`` as :class:`MarketRecords`, reading further columns of ``frame`` (those rows)."""
    market = records[rows].view(MarketRecords)
    market._frame = frame
    return market


def _ids(frame: pd.DataFrame, rows: int, names: list[str]) -> np.ndarray:
    """Columns ``names`` of ``frame`` as an ``N x len(names)`` object array."""
    values = np.empty((rows, len(names)), dtype=object)
    for k, name in enumerate(names):
        values[:, k] = frame[name].to_numpy()
    return values


def _absorbed_ids(frame: pd.DataFrame, formulation: Any) -> np.ndarray:
    """PyBLP's ``demand_ids``/``supply_ids``: one object column per absorbed term, the ids as given (tuples of
    them for an interaction such as ``C(firm_ids):C(market_ids)``); zero columns without absorption."""
    names = () if formulation is None else formulation.absorb_names
    values = np.empty((len(frame), len(names)), dtype=object)
    for k, term in enumerate(names):
        parts = [frame[part].to_numpy() for part in term.split(":")]
        values[:, k] = parts[0] if len(parts) == 1 else list(zip(*parts, strict=True))
    return values


def _numbered(frame: pd.DataFrame, prefix: str, limit: int | None = None) -> np.ndarray:
    columns = numbered_columns(frame, prefix, "product_data")[:limit]
    return frame[columns].to_numpy(dtype=np.float64) if columns else np.zeros((len(frame), 0))


def _factors(label: str) -> list[str]:
    """The factors of a design column label, split at the ``:`` of interactions outside parentheses."""
    factors, depth, start = [], 0, 0
    for k, character in enumerate(label):
        depth += character in "([{"
        depth -= character in ")]}"
        if character == ":" and depth == 0:
            factors.append(label[start:k])
            start = k + 1
    return factors + [label[start:]]


def _underlying(frame: pd.DataFrame, labels: list[str], variables: dict[str, np.ndarray]) -> None:
    """Add to ``variables`` the data under the design columns ``labels``: each continuous variable as given and each
    level of a categorical one (``C(x)``) as its indicator, named as PyBLP names it (``"x['a']"``)."""
    for label in labels:
        for factor in _factors(label):
            match = _CATEGORICAL.match(factor.strip())
            if match is not None and match.group("name") in frame.columns:
                column = np.asarray(frame[match.group("name")])
                level = next((v for v in pd.unique(column) if str(v) == match.group("level")), None)
                if level is not None:
                    variables.setdefault(f"{match.group('name')}[{level!r}]", (column == level).astype(np.float64))
                continue
            try:
                tree = ast.parse(factor.strip(), mode="eval")
            except SyntaxError:
                continue
            called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
            names = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and id(node) not in called]
            for node in sorted(names, key=lambda node: node.col_offset):
                if node.id in frame.columns and node.id not in variables:
                    variables[node.id] = frame[node.id].to_numpy(dtype=np.float64)


def product_records(economy: Any, instruments: bool = True) -> np.recarray:
    """PyBLP's ``Problem.products`` of ``economy`` (an :class:`~demandkit.blp.economy.Economy`).

    Parameters
    ----------
    economy : Economy
        The problem; its ``product_frame``, formulations and (absorbed) designs are read.
    instruments : bool, optional
        Fill ``ZD``, ``ZS`` and ``ZC``; PyBLP's ``Simulation.products`` leaves them empty (``False``).

    Returns
    -------
    numpy.recarray
        One row per product in the order of ``product_data``; the fields are described in the module docstring.
    """
    frame, design = economy.product_frame, economy.design
    N = len(frame)
    X3_formulation = economy.product_formulations[2]
    supply = X3_formulation is not None
    present = {name: [name] if name in frame.columns else [] for name in IDENTIFIER_FIELDS}
    fields: dict[Any, tuple[np.ndarray, Any]] = {
        "market_ids": (_ids(frame, N, present["market_ids"]), object),
        "firm_ids": (_ids(frame, N, present["firm_ids"]), object),
        "demand_ids": (_absorbed_ids(frame, economy.product_formulations[0]), object),
        "supply_ids": (_absorbed_ids(frame, X3_formulation), object),
        "nesting_ids": (_ids(frame, N, present["nesting_ids"]), object),
        "product_ids": (_ids(frame, N, numbered_columns(frame, "product_ids", "product_data")), object),
        "clustering_ids": (_ids(frame, N, present["clustering_ids"]), object),
        "lag_indices": (
            frame[["lag_indices"]].to_numpy() if "lag_indices" in frame.columns else np.zeros((N, 0)),
            np.int64,
        ),
        "ownership": (_numbered(frame, "ownership", economy.layout.mask.shape[1]), np.float64),
        "shares": (np.asarray(economy.shares, dtype=np.float64).reshape(N, 1), np.float64),
        "ZD": (design.ZD if instruments else np.zeros((N, 0)), np.float64),
        "ZS": (economy.ZS if instruments and supply else np.zeros((N, 0)), np.float64),
        "ZC": (_numbered(frame, "covariance_instruments") if instruments and supply else np.zeros((N, 0)), np.float64),
        (tuple(design.X1_labels), "X1"): (design.X1, np.float64),
        (tuple(design.X2_labels), "X2"): (design.X2, np.float64),
        (tuple(economy.X3_labels), "X3"): (economy.X3, np.float64),
    }
    variables: dict[str, np.ndarray] = {}
    for labels in (design.X1_labels, design.X2_labels, economy.X3_labels):
        _underlying(frame, labels, variables)
    reserved = {key if isinstance(key, str) else key[1] for key in fields}
    for name, values in variables.items():
        if name != "shares" and name not in reserved:
            fields[name] = (values, np.float64)
    arrays = {
        key: np.asarray(values).reshape(N, -1) if np.ndim(values) == 1 else values
        for key, (values, _) in fields.items()
    }
    records = np.recarray(N, dtype=[(key, kind, arrays[key].shape[1:]) for key, (_, kind) in fields.items()])
    for key, values in arrays.items():
        records[key if isinstance(key, str) else key[1]] = values
    return records


def cached_product_records(owner: Any, economy: Any, instruments: bool = True) -> np.recarray:
    """:func:`product_records` of ``economy``, built once and kept on ``owner`` until the product data, the designs
    or the supply matrices of ``economy`` are replaced (as :func:`~.optimal_instrument_results.with_instruments`
    replaces them on a copy)."""
    sources = (economy.product_frame, economy.design, economy.X3, economy.ZS, economy.shares, instruments)
    cached = owner.__dict__.get("_product_records")
    if cached is None or any(a is not b for a, b in zip(cached[0], sources, strict=True)):
        cached = (sources, product_records(economy, instruments))
        owner.__dict__["_product_records"] = cached
    return cached[1]


def agent_records(
    market_ids: np.ndarray,
    agent_ids: np.ndarray | None,
    weights: np.ndarray,
    nodes: np.ndarray,
    demographics: np.ndarray | None,
    availability: np.ndarray | None,
) -> np.recarray:
    """PyBLP's ``Problem.agents``: a record array with one row per agent and the fields ``market_ids``,
    ``agent_ids``, ``weights`` (``I x 1``), ``nodes`` (``I x K2``), ``demographics`` (``I x D``) and ``availability``
    (``I x J``, zero columns when not given), in the agents' row order. With product-specific demographics
    ``demographics`` is ``I x D x J`` (:mod:`.product_demographics`)."""
    rows = len(weights)
    fields = {
        "market_ids": np.asarray(market_ids, dtype=object).reshape(rows, 1),
        "agent_ids": np.empty((rows, 0), dtype=object) if agent_ids is None else np.asarray(agent_ids, object)[:, None],
        "weights": np.asarray(weights, dtype=np.float64).reshape(rows, 1),
        "nodes": np.asarray(nodes, dtype=np.float64).reshape(rows, -1),
        "demographics": np.zeros((rows, 0)) if demographics is None else np.asarray(demographics, np.float64),
        "availability": np.zeros((rows, 0)) if availability is None else np.asarray(availability, np.float64),
    }
    dtype = [(name, value.dtype, value.shape[1:]) for name, value in fields.items()]
    return np.rec.fromarrays(list(fields.values()), dtype=dtype)
