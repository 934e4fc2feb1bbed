"""Set-up of micro moments: the records PyBLP's callbacks receive, and survey weights and values checked and laid
out as padded tensors (:class:`DatasetLayout`), once per problem.

The callbacks ``compute_weights(t, products, agents)`` and ``compute_values(t, products, agents)`` are called once
per market (by PyBLP's definition, the only per-market Python of micro moments) with the market's rows of
``Problem.products`` (:class:`~.records.MarketRecords`) and :class:`Records` of its agents; their arrays are
padded to ``[I, 1 + J(, 1 + J)]`` with the outside option at index 0 of each choice axis. Values that are the same
for every agent, or outer products of an agent and a product vector, are recognised here so that estimation can
contract them without the full array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..configurations.micro import MicroDataset
from ..exceptions import SpecificationError
from .records import MarketRecords, market_records


class Records:
    """One market's agents as PyBLP hands them to micro callbacks: attributes ``weights``, ``nodes``,
    ``demographics``, ... (matrices with one row per agent) and ``size``; ``records['column']`` reads any column of
    the user's table. (A market's products are rows of ``Problem.products``, :func:`market_products`.)"""

    def __init__(self, size: int, fields: dict[str, Any], frame: Any = None) -> None:
        self.size = size
        self._fields = fields
        self._frame = frame
        for key, value in fields.items():
            setattr(self, key, value)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._fields:
            return self._fields[name]
        if self._frame is not None and name in self._frame.columns:
            return self._frame[name].to_numpy()
        raise KeyError(f"No field or column {name!r}.")

    def __len__(self) -> int:
        return self.size


def _column(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    taken = values[rows]
    return taken.reshape(len(rows), -1) if taken.ndim == 1 else taken


def market_products(problem: Any, t: int) -> MarketRecords:
    """The products of market index ``t``: its rows of ``problem.products`` (PyBLP's record array, in the order of
    ``product_data``), as PyBLP hands them to micro callbacks; ``products['column']`` also reads other columns of
    ``product_data``."""
    layout = problem.layout
    rows = layout.rows[t, layout.mask[t]]
    return market_records(problem.products, rows, problem.product_frame.iloc[rows])


def market_agents(problem: Any, t: int) -> Records:
    """The agents of market index ``t`` (in the order of ``agent_data``, or of the built integration)."""
    if problem.agent_layout is None:  # the logit: one representative agent of weight one
        market = problem.layout.market_ids[t]
        return Records(
            1,
            {
                "market_ids": np.array([[market]], dtype=object),
                "weights": np.ones((1, 1)),
                "nodes": np.zeros((1, 0)),
                "demographics": np.zeros((1, 0)),
            },
        )
    layout = problem.agent_layout
    rows = layout.rows[t, layout.mask[t]]
    frame = getattr(problem, "agent_frame", None)
    fields = {
        "market_ids": _column(problem.agent_market_ids, rows),
        "weights": _column(problem.weights, rows),
        "nodes": _column(problem.nodes, rows),
        "demographics": _column(problem.demographics, rows) if problem.demographics is not None else None,
    }
    records = getattr(problem, "demographic_records", None)
    if records is not None and records.ndim == 3:  # product-specific demographics: PyBLP's I_t x D x J_t
        fields["demographics"] = records[rows][..., : int(problem.layout.sizes[t])]
    frame_rows = None
    if frame is not None and len(frame) == len(problem.agent_market_ids):
        frame_rows = frame.iloc[rows]
        if "agent_ids" in frame.columns:
            fields["agent_ids"] = frame_rows["agent_ids"].to_numpy().reshape(-1, 1)
    return Records(len(rows), fields, frame_rows)


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset's survey weights and its parts' values as padded tensors."""

    dataset: MicroDataset
    markets: Tensor  # [T_d] market indices
    weights: Tensor  # [T_d, I, 1 + J] or [T_d, I, 1 + J, 1 + J]
    values: Tensor  # [P_d, T_d, I, 1 + J(, 1 + J)]
    parts: list[int]  # global indices of the dataset's parts
    outside_first: bool  # the user's arrays include the outside option as a first choice
    outside_second: bool  # ... and as a second choice
    groups: Tensor | None  # [T_d, 1 + J] group codes of products removed with the first choice (second choices)
    compact: bool = False  # weights and values are the same for every agent: stored once, summed over agents
    linked: Tensor | None = None  # [T_d] the second market of each pair (PanelMicroDataset)
    factors: tuple[Tensor, Tensor] | None = None  # values a_pti b_ptj: ([P_d, T_d, I], [P_d, T_d, 1 + J])

    @property
    def second_choices(self) -> bool:
        return self.weights.dim() == 4


def checked_array(result: Any, owner: str, market: Any) -> np.ndarray:
    try:
        array = np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SpecificationError(f"{owner}: market {market!r} returned values that are not numeric.") from error
    if not np.isfinite(array).all():
        raise SpecificationError(f"{owner}: market {market!r} returned non-finite values (NaN or infinity).")
    return array


def linked_agents(problem: Any, first: int, second: int, name: str, pair: tuple) -> Records:
    """The individuals of a pair of linked markets (the first market's records), after checking that the second
    market's agents are the same individual types in the same order."""
    agents, later = market_agents(problem, first), market_agents(problem, second)
    where = f"PanelMicroDataset '{name}', markets {pair!r}"
    if agents.size != later.size:
        raise SpecificationError(
            f"{where}: {agents.size} and {later.size} agents; linked markets need the same agents."
        )
    for field in ("agent_ids", "weights", "nodes", "demographics"):
        a, b = agents._fields.get(field), later._fields.get(field)
        if a is None or b is None:
            continue
        same = np.array_equal(a, b) if field == "agent_ids" else np.allclose(a, b, rtol=1e-12, atol=1e-12)
        if not same:
            raise SpecificationError(
                f"{where}: the agents' {field} differ; agent i of the second market must be agent i of the first "
                "(same order, nodes, demographics and weights)."
            )
    return agents


def panel_choice_axes(weights: np.ndarray, I: int, J: int, J2: int, name: str, pair: tuple) -> tuple[bool, bool]:
    """Whether each market's axis of a panel dataset's weights includes the outside option."""
    for first in (False, True):
        for second in (False, True):
            if weights.shape == (I, J + first, J2 + second):
                return first, second
    raise SpecificationError(
        f"PanelMicroDataset '{name}': compute_weights returns shape {weights.shape} for the pair {pair!r}, whose "
        f"markets have {J} and {J2} products and {I} agents: expected ({I}, {J} or {J + 1}, {J2} or {J2 + 1})."
    )


def outer_factors(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, b)`` with ``values[p, t] = outer(a[p, t], b[p, t])`` for every part and market, or None.

    Values of the form :math:`v_{pijt} = y_{it} x_{jt}` (a demographic times a product characteristic, the usual
    kind) are rank one in each market; stored as factors they are contracted with the sampling weights by a
    batched product instead of being read as a ``[P, T, I, 1 + J]`` array at every evaluation.
    """
    P, T, I, J1 = values.shape
    flat = np.abs(values).reshape(P, T, -1).argmax(-1)
    rows, columns = np.unravel_index(flat, (I, J1))
    p_index, t_index = np.meshgrid(np.arange(P), np.arange(T), indexing="ij")
    pivot = values[p_index, t_index, rows, columns]
    safe = np.where(pivot == 0, 1.0, pivot)
    a = np.where((pivot == 0)[..., None], 0.0, values[p_index, t_index, :, columns] / safe[..., None])
    b = values[p_index, t_index, rows, :]
    scale = np.abs(values).max() if values.size else 0.0
    for p in range(P):  # a loop over parts, at set-up
        if not np.allclose(a[p, :, :, None] * b[p, :, None, :], values[p], rtol=1e-13, atol=1e-13 * scale):
            return None
    return a, b


def agent_invariant(array: np.ndarray) -> bool:
    """Whether every agent's (first-axis) slice of a market's array equals the first agent's."""
    return bool((array == array[:1]).all())


def choice_axes(weights: np.ndarray, I: int, J: int, owner: str, market: Any) -> tuple[bool, ...]:
    """Whether each choice axis includes the outside option, from the shape of the weights."""
    allowed = {(I, J): (False,), (I, J + 1): (True,)}
    for first in (False, True):
        for second in (False, True):
            allowed[(I, J + first, J + second)] = (first, second)
    if weights.shape not in allowed or (J == 0):
        raise SpecificationError(
            f"{owner}: compute_weights returns shape {weights.shape} in market {market!r}, which has {I} agents "
            f"and {J} products: expected ({I}, {J}) or ({I}, {J + 1}) (outside option first), or with second "
            f"choices ({I}, {J} or {J + 1}, {J} or {J + 1})."
        )
    return allowed[weights.shape]


def pad_choices(array: np.ndarray, kind: tuple[bool, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The user's array in the padded layout, outside option at index 0 of each choice axis (zero if absent)."""
    padded = np.zeros(shape)
    I = array.shape[0]
    index: list[slice] = [slice(0, I)]
    for axis, outside in enumerate(kind, start=1):
        size = array.shape[axis]
        index.append(slice(0, size) if outside else slice(1, 1 + size))
    padded[tuple(index)] = array
    return padded


def unique_names(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecificationError(f"Two different {what}s are named '{name}': names must be unique.")
        seen.add(name)


def checked_covariances(matrix: Any, M: int, problem: Any) -> Tensor:
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (M, M):
        raise SpecificationError(
            f"micro_sample_covariances must be {M} x {M}, one row and column per micro moment; received shape "
            f"{array.shape}."
        )
    if not np.isfinite(array).all():
        raise SpecificationError("micro_sample_covariances has non-finite values.")
    if not np.allclose(array, array.T, rtol=1e-10, atol=1e-14 * max(1.0, np.abs(array).max())):
        raise SpecificationError("micro_sample_covariances must be symmetric.")
    smallest = np.linalg.eigvalsh(array).min()
    if smallest < -1e-10 * max(1.0, np.abs(array).max()):
        raise SpecificationError(
            f"micro_sample_covariances must be positive semi-definite; its smallest eigenvalue is {smallest:.3g}."
        )
    return torch.as_tensor(array, dtype=problem.dtype, device=problem.device)
