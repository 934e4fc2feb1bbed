"""Micro data after estimation: simulated surveys, the scores of micro observations and optimal micro moments
(PyBLP's ``simulate_micro_data``, ``compute_micro_scores`` and ``compute_agent_scores``; Conlon and Gortmaker 2025).

A micro dataset :math:`d` samples agent :math:`i` of market :math:`t` choosing :math:`j` (and second choice
:math:`k`) with probability proportional to :math:`q_{ijt} = w_{it} s_{ijt} w_{dijt}`
(:math:`q_{ijkt} = w_{it} s_{ijt} s_{ik(-h(j))t} w_{dijkt}`). An observation :math:`n` records its market
:math:`t_n`, its choices and its demographics, not its unobserved tastes: integrating over agents
:math:`i \\in I_n` (its demographics with integration nodes :math:`\\nu`), its probability is

.. math::

    \\mathscr{P}_n(\\theta) = \\frac{\\sum_{i \\in I_n} w_{it_n} s_{ij_nt_n} w_{dij_nt_n}}
                                 {\\sum_t \\sum_{i \\in I_t} \\sum_{j \\in J_t \\cup \\{0\\}} w_{it} s_{ijt} w_{dijt}},

the numerator over the observation's own agents and the denominator over the problem's agents, and its score is
:math:`\\mathscr{S}_n = \\partial \\log \\mathscr{P}_n / \\partial \\theta'`. Both depend on :math:`\\theta` directly
(through :math:`\\mu = X_2(\\Sigma\\nu + \\Pi d)` and :math:`\\rho`) and through :math:`\\delta(\\theta)`, whose
Jacobian follows from the implicit function theorem applied to :math:`\\log s(\\delta, \\theta) = \\log S`:

.. math::

    \\frac{\\partial\\delta}{\\partial\\theta'} = -\\left(\\frac{\\partial\\log s}{\\partial\\delta'}\\right)^{-1}
                                                   \\frac{\\partial\\log s}{\\partial\\theta'}.

Under the random-coefficients logit, the derivatives of first choices are closed-form, for every parameter at once
(:meth:`_Scores._logit_scores`); second choices and nesting take one forward-mode pass per element of
:math:`\\theta` (with :math:`\\dot\\delta = \\partial\\delta/\\partial\\theta_p`). Either way the observations are
batched as tensors with their agents padded to a common count; only the survey weights' callbacks run per market (of
each batch), as in :mod:`demandkit.blp.micro`. Second-choice probabilities divide by the sum of the probabilities
left after removing the first choice's group, not by one less the removed ones, which keeps their digits when the
first choice is nearly certain. (PyBLP 1.3.0 loses digits in the second-choice scores of agents whose purchase
probabilities are near 1e-16; the tests check those against 50-digit arithmetic.)

Why this module is long: the three public computations share the parsing and validation of micro data (two
forms, PyBLP's), the batched per-observation agents, and the two derivative paths (closed-form and forward-mode),
which belong together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from ..configurations.integration import Integration
from ..configurations.micro import MicroDataset, MicroMoment, MicroPart, PanelMicroDataset
from ..exceptions import DemandkitError, SpecificationError
from ..kernels.shares import Nesting, agent_utilities, compute_probabilities, heterogeneity, random_coefficients
from ..layout.validation import as_frame, label, numbered_columns
from .micro import MicroMoments
from .micro_layout import Records, checked_array, market_products, pad_choices
from .micro_results import estimated_probabilities

CHUNK_ELEMENTS = 2**21
"""About how many ``observation x agent x choice`` elements one batch of observations holds."""


class _Survey(MicroMoments):
    """One dataset laid out on the problem's agents (the survey weights of :class:`MicroMoments`, no parts)."""

    def __init__(self, problem: Any, dataset: MicroDataset) -> None:
        if not isinstance(dataset, MicroDataset):
            raise SpecificationError(f"dataset must be a MicroDataset; received {dataset!r}.")
        if isinstance(dataset, PanelMicroDataset):
            raise SpecificationError(
                f"PanelMicroDataset '{dataset.name}': micro data and scores of panels are not supported; use a "
                "MicroDataset."
            )
        self.problem = problem
        self.parts = []
        self.dataset = dataset
        self.layout = self._lay_out(dataset)
        if self.layout.second_choices and problem.H:
            raise SpecificationError(
                f"MicroDataset '{dataset.name}': simulating or scoring second-choice data is not supported with "
                "nesting (nesting_ids); second-choice micro moments are."
            )
        self.position = np.full(len(problem.layout.market_ids), -1)  # problem market -> dataset market
        self.position[self.layout.markets.cpu().numpy()] = np.arange(len(self.layout.markets))

    @property
    def second(self) -> bool:
        return self.layout.second_choices

    def offsets(self) -> tuple[int, int]:
        """What to add to user choice indices for padded ones (outside option at 0), first and second choices."""
        return int(not self.layout.outside_first), int(not self.layout.outside_second)


@dataclass(frozen=True)
class _Observations:
    """Observations sorted by market, their agents grouped by observation."""

    order: np.ndarray  # [N] position of each (sorted) observation in the user's order
    markets: np.ndarray  # [N] problem market index t_n
    first: np.ndarray | None  # [N] padded first choice (0: outside), None for every choice
    second: np.ndarray | None  # [N] padded second choice
    owner: np.ndarray  # [R] (sorted) observation of each agent row, non-decreasing
    weights: np.ndarray  # [R]
    nodes: np.ndarray  # [R, K2]
    demographics: np.ndarray | None  # [R, D]
    frame: pd.DataFrame | None  # [R] the user's columns of each agent row, for the callbacks

    @property
    def N(self) -> int:
        return len(self.markets)


# ----------------------------------------------------------------------------------------------- micro data
def _frame(micro_data: Any) -> pd.DataFrame:
    try:
        frame = as_frame(micro_data, "micro_data")
    except DemandkitError as error:
        raise SpecificationError(str(error)) from error
    if len(frame) == 0:
        raise SpecificationError("micro_data has no rows.")
    return frame


def _require(frame: pd.DataFrame, columns: Sequence[str], why: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SpecificationError(
            f"micro_data lacks the field(s) {missing} ({why}); it has {sorted(map(str, frame.columns))}."
        )


def _integers(values: np.ndarray, field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise SpecificationError(f"micro_data field {field!r} must hold integers.") from error
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all() or (array != np.round(array)).any():
        raise SpecificationError(f"micro_data field {field!r} must hold integers; received {array[:5].tolist()}.")
    return array.astype(np.int64)


def _market_index(results: Any, survey: _Survey, market_ids: np.ndarray) -> np.ndarray:
    known = {market: t for t, market in enumerate(results.problem.layout.market_ids.tolist())}
    index = np.array([known.get(market, -1) for market in market_ids.tolist()], dtype=np.int64)
    if (index < 0).any():
        raise SpecificationError(
            f"micro_data market_ids {label(market_ids[index < 0][0])} is not a market of the problem."
        )
    outside = survey.position[index] < 0
    if outside.any():
        raise SpecificationError(
            f"micro_data market_ids {label(market_ids[outside][0])} is not among the markets of MicroDataset "
            f"'{survey.dataset.name}'."
        )
    return index


def _choices(frame: pd.DataFrame, field: str, markets: np.ndarray, outside: bool, problem: Any) -> np.ndarray:
    """User choice indices checked against each market's products, as padded ones (outside option at 0)."""
    values = _integers(frame[field].to_numpy(), field)
    products = problem.layout.mask.sum(axis=1)[markets]
    lowest, highest = 0, products - (0 if outside else 1)
    bad = (values < lowest) | (values > highest)
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        market = problem.layout.market_ids[markets[n]]
        zero = "the outside option" if outside else "the first inside good"
        raise SpecificationError(
            f"micro_data {field} {values[n]} is out of range in market {label(market)}: it has {products[n]} products, "
            f"so indices run from 0 to {highest[n]} (0 is {zero}, following the shape of the dataset's weights)."
        )
    return values + (0 if outside else 1)


def _align_nodes(results: Any, nodes: np.ndarray) -> np.ndarray:
    """Nodes with ``K2`` columns: extra ones dropped; fewer fill the columns of nonzero :math:`\\Sigma` in order (the
    problem's convention, :meth:`DemandModel.nodes_for`), the others zero."""
    K2 = results.problem.K2
    nodes = nodes[:, :K2]
    if nodes.shape[1] == K2:
        return nodes
    used = np.flatnonzero((np.asarray(results._space.sigma0) != 0).any(axis=0))[: nodes.shape[1]]
    full = np.zeros((len(nodes), K2))
    full[:, used] = nodes[:, : len(used)]
    return full


def _demographics(results: Any, frame: pd.DataFrame) -> np.ndarray | None:
    formulation = results.problem.agent_formulation
    if formulation is None or results.problem.demographics is None:
        return None
    _require(frame, sorted(formulation.variables), "the demographics of the agent formulation")
    try:
        matrix, _ = formulation.build_matrix(frame)
    except DemandkitError as error:
        raise SpecificationError(f"micro_data: {error}") from error
    return matrix


def _parse(
    results: Any, survey: _Survey, micro_data: Any, integration: Integration | None, choices: bool
) -> _Observations:
    """Observations of ``micro_data``: one per row with ``integration``, else one per ``micro_ids``."""
    problem = results.problem
    frame = _frame(micro_data)
    fields = ["market_ids"]
    if choices:
        fields += ["choice_indices"] + (["second_choice_indices"] if survey.second else [])
    _require(frame, fields, "one value per observation")
    if integration is not None and not isinstance(integration, Integration):
        raise SpecificationError(f"integration must be an Integration; received {integration!r}.")
    if integration is None and problem.K2:
        _require(frame, ["micro_ids", "weights"], "the agents of each observation, or give integration")
        if not numbered_columns(frame, "nodes", "micro_data"):
            raise SpecificationError("micro_data lacks the field 'nodes' (nodes0, nodes1, ...); or give integration.")
        codes, _ = pd.factorize(frame["micro_ids"], use_na_sentinel=True)
        if (codes < 0).any():
            raise SpecificationError("micro_data micro_ids has missing values.")
    else:
        codes = np.arange(len(frame))
    _, first_rows = np.unique(codes, return_index=True)  # codes follow the order of first appearance
    for field in fields:  # one value per observation
        values = frame[field].to_numpy()
        differs = values != values[first_rows][codes]
        if differs.any():
            micro_id = frame["micro_ids"].to_numpy()[np.flatnonzero(differs)[0]]
            raise SpecificationError(f"micro_data {field} differs within the rows of micro_ids {label(micro_id)}.")
    observed = frame.iloc[first_rows]
    markets = _market_index(results, survey, observed["market_ids"].to_numpy())
    outside_first, outside_second = survey.layout.outside_first, survey.layout.outside_second
    first = _choices(observed, "choice_indices", markets, outside_first, problem) if choices else None
    second = (
        _choices(observed, "second_choice_indices", markets, outside_second, problem)
        if choices and survey.second
        else None
    )
    demographics = _demographics(results, frame)
    if not problem.K2:  # the (nested) logit: one agent per observation
        owner, weights, nodes, rows = np.arange(len(first_rows)), np.ones(len(first_rows)), None, first_rows
    elif integration is not None:
        dimensions = max(int((np.asarray(results._space.sigma0) != 0).any(axis=0).sum()), 1)
        _, built, weights = integration.build_many(dimensions, np.arange(len(frame)))
        owner = np.repeat(np.arange(len(frame)), len(weights) // len(frame))
        nodes, rows = built, owner
    else:
        columns = numbered_columns(frame, "nodes", "micro_data")
        values = frame[["weights"] + columns].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise SpecificationError("micro_data weights and nodes must be finite.")
        rows = np.argsort(codes, kind="stable")
        owner, weights, nodes = codes[rows], values[rows, 0], values[rows, 1:]
    nodes = np.zeros((len(owner), problem.K2)) if nodes is None else _align_nodes(results, nodes)
    return _sorted(
        markets,
        first,
        second,
        owner,
        weights,
        nodes,
        None if demographics is None else demographics[rows],
        frame.iloc[rows].reset_index(drop=True),
    )


def _problem_agents(results: Any, survey: _Survey, integration: Integration | None) -> _Observations:
    """Every agent of the problem in the dataset's markets as an observation (in the order the callbacks see)."""
    problem = results.problem
    if integration is not None and not isinstance(integration, Integration):
        raise SpecificationError(f"integration must be an Integration; received {integration!r}.")
    markets_d = survey.layout.markets.cpu().numpy()
    if not problem.K2:
        n = len(markets_d)
        return _sorted(markets_d, None, None, np.arange(n), np.ones(n), np.zeros((n, 0)), None, None)
    layout = problem.agent_layout
    rows = layout.rows[markets_d][layout.mask[markets_d]]
    markets = np.repeat(markets_d, layout.mask[markets_d].sum(axis=1))
    demographics = None if problem.demographics is None else problem.demographics[rows]
    frame = getattr(problem, "agent_frame", None)
    aligned = frame is not None and len(frame) == len(problem.agent_market_ids)
    frame = frame.iloc[rows].reset_index(drop=True) if aligned else None
    if integration is None:
        n = len(rows)
        return _sorted(
            markets,
            None,
            None,
            np.arange(n),
            problem.weights[rows],
            _align_nodes(results, problem.nodes[rows]),
            demographics,
            frame,
        )
    dimensions = max(int((np.asarray(results._space.sigma0) != 0).any(axis=0).sum()), 1)
    _, nodes, weights = integration.build_many(dimensions, np.arange(len(rows)))
    owner = np.repeat(np.arange(len(rows)), len(weights) // len(rows))
    return _sorted(
        markets,
        None,
        None,
        owner,
        weights,
        _align_nodes(results, nodes),
        None if demographics is None else demographics[owner],
        None if frame is None else frame.iloc[owner],
    )


def _sorted(
    markets: np.ndarray,
    first: np.ndarray | None,
    second: np.ndarray | None,
    owner: np.ndarray,
    weights: np.ndarray,
    nodes: np.ndarray,
    demographics: np.ndarray | None,
    frame: pd.DataFrame | None,
) -> _Observations:
    """Observations sorted by market (stable), agent rows by observation."""
    order = np.argsort(markets, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows = np.argsort(rank[owner], kind="stable")
    take = lambda a: None if a is None else a[order]  # noqa: E731
    return _Observations(
        order,
        markets[order],
        take(first),
        take(second),
        rank[owner][rows],
        np.asarray(weights, dtype=np.float64)[rows],
        np.asarray(nodes, dtype=np.float64)[rows],
        None if demographics is None else np.asarray(demographics, dtype=np.float64)[rows],
        None if frame is None else frame.iloc[rows].reset_index(drop=True),
    )


# ------------------------------------------------------------------------------------------------ batches
@dataclass(frozen=True)
class _Batch:
    """A batch of observations as padded tensors, ``R`` agents each."""

    markets: Tensor  # [n]
    first: Tensor | None  # [n]
    second: Tensor | None  # [n]
    weights: Tensor  # [n, R], zero on padded agents
    nodes: Tensor  # [n, R, K2]
    demographics: Tensor | None  # [n, R, D]
    survey: Tensor  # [n, R] survey weights at the observed choices, or [n, R or 1, 1 + J(, 1 + J)]
    groups: Tensor | None  # [n, 1 + J] (second choices)


def _batches(observations: _Observations, J: int, every_choice: bool, second: bool) -> list[tuple[int, int]]:
    """Consecutive observation ranges of about :data:`CHUNK_ELEMENTS` elements."""
    agents = np.bincount(observations.owner, minlength=observations.N)
    cost = agents * (1 + J) * ((1 + J) if second and every_choice else 1)
    batch = (np.cumsum(cost) - cost) // CHUNK_ELEMENTS  # where each observation starts, in batches
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(batch)) + 1, [observations.N]]).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _survey_weights(
    results: Any, survey: _Survey, observations: _Observations, start: int, stop: int, every_choice: bool
) -> np.ndarray:
    """Survey weights of the batch's agent rows from ``compute_weights``, called once per market of the batch with
    the agents of its observations stacked: ``[R_b]`` at the observed choices or ``[R_b, 1 + J(, 1 + J)]``."""
    problem, dataset = results.problem, survey.dataset
    J = problem.layout.mask.shape[1]
    rows = np.flatnonzero((observations.owner >= start) & (observations.owner < stop))
    owner = observations.owner[rows]
    markets = observations.markets[owner]
    kind = (survey.layout.outside_first,) + ((survey.layout.outside_second,) if survey.second else ())
    shape = (len(rows),) + ((1 + J,) * len(kind) if every_choice else ())
    result = np.zeros(shape)
    boundaries = np.flatnonzero(np.diff(markets)) + 1
    for piece in np.split(np.arange(len(rows)), boundaries):  # a loop over the batch's markets: the callbacks
        t = int(markets[piece[0]])
        market = problem.layout.market_ids[t]
        agent_rows = rows[piece]
        fields = {
            "market_ids": np.full((len(piece), 1), market, dtype=object),
            "weights": observations.weights[agent_rows].reshape(-1, 1),
            "nodes": observations.nodes[agent_rows],
            "demographics": None if observations.demographics is None else observations.demographics[agent_rows],
        }
        frame = None if observations.frame is None else observations.frame.iloc[agent_rows]
        products = market_products(problem, t)
        agents = Records(len(piece), fields, frame)
        raw = checked_array(dataset.compute_weights(market, products, agents), f"MicroDataset '{dataset.name}'", market)
        expected = (len(piece),) + tuple(products.size + int(outside) for outside in kind)
        if raw.shape != expected:
            raise SpecificationError(
                f"MicroDataset '{dataset.name}': compute_weights returns shape {raw.shape} in market {label(market)} "
                f"for {len(piece)} agents of micro observations; expected {expected}, as with the problem's agents."
            )
        if (raw < 0).any():
            raise SpecificationError(f"MicroDataset '{dataset.name}': survey weights must be non-negative.")
        if every_choice:
            result[piece] = pad_choices(raw, kind, (len(piece),) + shape[1:])
        else:
            first_offset, second_offset = survey.offsets()
            index = [np.arange(len(piece)), observations.first[owner[piece]] - first_offset]
            if survey.second:
                index.append(observations.second[owner[piece]] - second_offset)
            result[piece] = raw[tuple(index)]
    return result


def _batch(
    results: Any, survey: _Survey, observations: _Observations, start: int, stop: int, every_choice: bool
) -> _Batch:
    problem = results.problem
    tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=problem.dtype, device=problem.device)  # noqa: E731
    index = lambda a: None if a is None else torch.as_tensor(a[start:stop], device=problem.device)  # noqa: E731
    rows = np.flatnonzero((observations.owner >= start) & (observations.owner < stop))
    owner = observations.owner[rows] - start
    n = stop - start
    counts = np.bincount(owner, minlength=n)
    R = int(counts.max())
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)

    def padded(values: np.ndarray) -> np.ndarray:
        out = np.zeros((n, R) + values.shape[1:])
        out[owner, slot] = values
        return out

    weights = padded(_survey_weights(results, survey, observations, start, stop, every_choice))
    if every_choice and bool((weights == weights[:, :1])[np.arange(R) < counts[:, None]].all()):
        weights = weights[:, :1]  # the same for every agent of each observation: summed over agents first
    groups = None
    if survey.second:
        position = torch.as_tensor(survey.position[observations.markets[start:stop]], device=problem.device)
        groups = survey.layout.groups[position]
    return _Batch(
        index(observations.markets),
        index(observations.first),
        index(observations.second),
        tensor(padded(observations.weights[rows])),
        tensor(padded(observations.nodes[rows])),
        None if observations.demographics is None else tensor(padded(observations.demographics[rows])),
        tensor(weights),
        groups,
    )


# -------------------------------------------------------------------------------------------- derivatives
def _summed(s: Tensor, weights: Tensor, survey: Tensor, groups: Tensor | None) -> Tensor:
    """:func:`_sampling` summed over agents, ``[n, 1 + J(, 1 + J)]``; survey weights the same for every agent
    (``survey [n, 1, ...]``) are applied after the sum, second choices as one batched product (no
    ``[n, R, 1 + J, 1 + J]`` array)."""
    if survey.shape[1] != 1 or s.shape[1] == 1:
        return _sampling(s, weights, survey, groups).sum(1)
    q = weights.unsqueeze(-1) * s  # [n, R, 1 + J]
    if groups is None:
        return q.sum(1) * survey[:, 0]
    same = groups.unsqueeze(-1) == groups.unsqueeze(-2)
    remaining = torch.einsum("nrk,njk->nrj", s, (~same).to(s.dtype)).clamp(min=torch.finfo(s.dtype).tiny)
    joint = torch.bmm((q / remaining).transpose(1, 2), s)  # sum_i w_i s_ij s_ik / (sum of s_il outside h(j))
    return torch.where(same, 0.0, joint) * survey[:, 0]


def _sampling(s: Tensor, weights: Tensor, survey: Tensor, groups: Tensor | None) -> Tensor:
    """:math:`q = w_i s_{ij} w_{dij}` (``[n, R, 1 + J]``), or with second choices
    :math:`w_i s_{ij} s_{ik(-h(j))} w_{dijk}` (``[n, R, 1 + J, 1 + J]``), for probabilities ``s [n, R, 1 + J]``,
    agent weights ``[n, R]``, survey weights and the groups ``[n, 1 + J]`` removed with each first choice. The
    probability left after removing :math:`h(j)` is summed over the choices outside :math:`h(j)` rather than taken
    as one less those in it, which would lose its digits when the first choice is nearly certain."""
    q = weights.unsqueeze(-1) * s
    if groups is None:
        return q * survey
    same = groups.unsqueeze(-1) == groups.unsqueeze(-2)  # [n, 1 + J (j), 1 + J (k)]: k removed with j
    remaining = torch.einsum("nrk,njk->nrj", s, (~same).to(s.dtype)).clamp(min=torch.finfo(s.dtype).tiny)
    second = torch.where(same.unsqueeze(1), 0.0, s.unsqueeze(-2) / remaining.unsqueeze(-1))
    return q.unsqueeze(-1) * second * survey


class _Scores:
    """Derivatives of observations' :math:`\\log\\mathscr{P}_n` at the estimates: the Jacobian of :math:`\\delta`, the
    denominator's derivatives once, and the numerators' per batch of observations."""

    def __init__(self, results: Any, survey: _Survey) -> None:
        self.results, self.survey = results, survey
        self.problem, self.model, space = results.problem, results.model, results._space
        p = self.problem
        if getattr(p, "availability_padded", None) is not None:
            raise SpecificationError(
                "Micro scores integrate over each observation's own draws, which carry no availability columns: "
                "they are not supported with agent-specific availability."
            )
        if getattr(p, "product_demographics", None) is not None:
            raise SpecificationError(
                "Micro scores build each observation's demographics from its own row, which carries no "
                "product-specific demographics (name0, name1, ...): they are not supported with them."
            )
        theta = torch.as_tensor(results.theta, dtype=p.dtype, device=p.device)
        self.P = theta.numel()
        self.point = space.unpack(theta)
        base = space.unpack(torch.zeros_like(theta))
        # the parameters' tangents: unpack is affine in theta
        self.tangents = [
            tuple(a - b for a, b in zip(space.unpack(e), base, strict=True))
            for e in torch.eye(self.P, dtype=p.dtype, device=p.device)
        ]
        self.delta = torch.where(p.product_mask, results._delta_padded, 0.0)
        self.delta_jacobian = self._delta_jacobian()
        self.nesting = Nesting(p.nesting_codes, p.H) if p.H else None
        self.log_denominator, self.denominator_scores = self._denominator()

    def _duals(self, p: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``delta, sigma, pi, rho`` carrying their derivatives with respect to :math:`\\theta_p`."""
        sigma, pi, rho = (forward_ad.make_dual(x, dx) for x, dx in zip(self.point, self.tangents[p], strict=True))
        return forward_ad.make_dual(self.delta, self.delta_jacobian[..., p]), sigma, pi, rho

    def _delta_jacobian(self) -> Tensor:
        """:math:`\\partial\\delta/\\partial\\theta'`, ``[T, J, P]``, by the implicit function theorem."""
        p, model = self.problem, self.model
        sigma, pi, rho = self.point
        with torch.no_grad():
            mu = model.mu(sigma, pi) if p.K2 else None
            jacobian = model.log_share_jacobian(self.delta, mu, rho)
            columns = []
            for k in range(self.P):  # a loop over parameters
                with forward_ad.dual_level():
                    sigma_k, pi_k, rho_k = (
                        forward_ad.make_dual(x, dx) for x, dx in zip(self.point, self.tangents[k], strict=True)
                    )
                    mu_k = model.mu(sigma_k, pi_k) if p.K2 else None
                    tangent = forward_ad.unpack_dual(model.log_shares(self.delta, mu_k, rho_k)).tangent
                columns.append(torch.zeros_like(self.delta) if tangent is None else tangent)
            if not columns:
                return self.delta.new_zeros(self.delta.shape + (0,))
            right = torch.where(p.product_mask.unsqueeze(-1), torch.stack(columns, dim=-1), 0.0)
            return -torch.linalg.solve(jacobian, right)

    def _probabilities(self, delta: Tensor, mu: Tensor | None, rho: Tensor, mask: Tensor, nesting: Any) -> Tensor:
        """``[n, R, 1 + J]`` choice probabilities, the outside option first. Without nesting the outside option's is
        :math:`1/(1 + \\sum_j e^{u_{ij}})` itself, accurate in relative terms even when tiny (second choices divide by
        sums of probabilities that leave the first choice out); under nesting it is one less the inside ones."""
        utilities = agent_utilities(delta, mu, mask)
        if nesting is None:
            zeros = torch.zeros_like(utilities[:, :1])
            log = torch.cat([zeros, utilities], dim=1)
            log = log - torch.logsumexp(log, dim=1, keepdim=True)
            available = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).unsqueeze(-1)
            return torch.where(available, torch.exp(log), 0.0).transpose(1, 2)
        log = compute_probabilities(utilities, nesting, rho)
        inside = torch.where(mask.unsqueeze(-1), torch.exp(log.log_probabilities), 0.0)
        return self.survey.choice_probabilities(inside)

    def _denominator(self) -> tuple[float, np.ndarray]:
        """:math:`\\log\\sum q` over the problem's agents and its derivatives, ``[P]``."""
        p, model = self.problem, self.model

        def total(delta: Tensor, sigma: Tensor, pi: Tensor, rho: Tensor) -> Tensor:
            mu = model.mu(sigma, pi) if p.K2 else None
            s = self._probabilities(delta, mu, rho, p.product_mask, self.nesting)
            layout = self.survey.layout
            return _summed(s[layout.markets], model.weights[layout.markets], layout.weights, layout.groups).sum()

        with torch.no_grad():
            value = total(self.delta, *self.point)
            if not float(value) > 0:
                raise SpecificationError(
                    f"MicroDataset '{self.survey.dataset.name}' has no probability mass at the estimates (its survey "
                    "weights times the choice probabilities sum to zero)."
                )
            derivatives = np.zeros(self.P)
            for k in range(self.P):  # a loop over parameters
                with forward_ad.dual_level():
                    tangent = forward_ad.unpack_dual(total(*self._duals(k))).tangent
                derivatives[k] = 0.0 if tangent is None else float(tangent) / float(value)
        return float(torch.log(value)), derivatives

    def numerator(self, batch: _Batch, delta: Tensor, sigma: Tensor, pi: Tensor, rho: Tensor) -> Tensor:
        """:math:`\\sum_{i \\in I_n} q`, ``[n]`` at the observed choices or ``[n, 1 + J(, 1 + J)]`` for every one."""
        p = self.problem
        t = batch.markets
        mask = p.product_mask[t]
        mu = None
        if p.K2:
            coefficients = random_coefficients(batch.nodes, batch.demographics, sigma, pi, p.rc_types)
            mu = heterogeneity(p.X2_padded[t], coefficients)  # [n, J, R]
        nesting = Nesting(p.nesting_codes[t], p.H) if p.H else None
        s = self._probabilities(delta[t], mu, rho, mask, nesting)  # [n, R, 1 + J]
        if batch.first is None:  # every choice
            return _summed(s, batch.weights, batch.survey, batch.groups)
        R = s.shape[1]
        chosen = s.gather(-1, batch.first.view(-1, 1, 1).expand(-1, R, 1)).squeeze(-1)  # [n, R]
        q = batch.weights * chosen * batch.survey
        if batch.second is not None:
            groups = batch.groups  # [n, 1 + J]
            group = groups.gather(1, batch.first.view(-1, 1))  # [n, 1]
            remaining = (s * (groups != group).unsqueeze(1).to(s.dtype)).sum(-1)  # [n, R], outside h(j)
            remaining = remaining.clamp(min=torch.finfo(s.dtype).tiny)
            second = s.gather(-1, batch.second.view(-1, 1, 1).expand(-1, R, 1)).squeeze(-1)
            allowed = groups.gather(1, batch.second.view(-1, 1)) != group  # [n, 1]
            q = q * torch.where(allowed, second / remaining, 0.0)
        return q.sum(1)

    def scores(self, batch: _Batch) -> np.ndarray:
        """:math:`\\mathscr{S}_n`, ``[P, n(, ...)]``, NaN where :math:`\\mathscr{P}_n = 0`."""
        if batch.groups is None and self.nesting is None and self.problem.K2:
            return self._logit_scores(batch)
        return self._forward_scores(batch)

    def _forward_scores(self, batch: _Batch) -> np.ndarray:
        """:meth:`scores` by one forward-mode pass of :meth:`numerator` per parameter (any model and dataset)."""
        with torch.no_grad():
            value = self.numerator(batch, self.delta, *self.point)
            out = []
            for k in range(self.P):  # a loop over parameters
                with forward_ad.dual_level():
                    tangent = forward_ad.unpack_dual(self.numerator(batch, *self._duals(k))).tangent
                tangent = torch.zeros_like(value) if tangent is None else tangent
                score = tangent / value - self.denominator_scores[k]
                out.append(torch.where(value == 0, torch.nan, score))
        if not out:
            return np.zeros((0,) + tuple(value.shape))
        return torch.stack(out).cpu().numpy().astype(np.float64)

    def _logit_scores(self, batch: _Batch) -> np.ndarray:
        """:meth:`scores` of first choices under the random-coefficients logit, all parameters at once.

        With :math:`u_{ij} = \\delta_j + x_j' c_i` and :math:`c_i = f(\\Sigma\\nu_i + \\Pi d_i)`,

        .. math::

            \\frac{\\partial\\log s_{ij}}{\\partial\\theta_p} = \\dot\\delta_{jp} - \\sum_l s_{il}\\dot\\delta_{lp}
            + \\Big(x_j - \\sum_l s_{il} x_l\\Big)'\\dot c_{ip}

        (:math:`x_0 = 0`, :math:`\\delta_0 = 0`), and the derivative of :math:`\\log\\sum_i q_{ij}` is the
        :math:`q`-weighted mean of these over agents: a few batched products instead of a pass per parameter.
        """
        p = self.problem
        t = batch.markets
        sigma, pi, _ = self.point
        n, R = batch.weights.shape
        with torch.no_grad():
            z = batch.nodes @ sigma.T
            tangents = torch.einsum("nrl,pkl->nrkp", batch.nodes, torch.stack([d[0] for d in self.tangents]))
            if batch.demographics is not None and pi.numel():
                z = z + batch.demographics @ pi.T
                tangents = tangents + torch.einsum(
                    "nre,pke->nrkp", batch.demographics, torch.stack([d[1] for d in self.tangents])
                )
            coefficients = random_coefficients(batch.nodes, batch.demographics, sigma, pi, p.rc_types)
            slopes = torch.ones_like(z)  # f'(z) of each characteristic's transform
            for k, kind in enumerate(p.rc_types):  # a loop over characteristics
                if kind == "log":
                    slopes[..., k] = coefficients[..., k]
                elif kind == "logit":
                    slopes[..., k] = coefficients[..., k] * (1 - coefficients[..., k])
            tangents = tangents * slopes.unsqueeze(-1)  # dc_i/dtheta_p, [n, R, K2, P]
            X2 = p.X2_padded[t]  # [n, J, K2]
            s = self._probabilities(self.delta[t], heterogeneity(X2, coefficients), None, p.product_mask[t], None)
            jacobian = self.delta_jacobian[t]  # [n, J, P]
            padded = lambda a: torch.cat([a.new_zeros((n, 1, a.shape[-1])), a], dim=1)  # noqa: E731 (outside: 0)
            own_delta, own_x = padded(jacobian), padded(X2)  # [n, 1 + J, P], [n, 1 + J, K2]
            if batch.first is not None:  # the observed choice only
                first = batch.first.view(-1, 1, 1)
                q = (batch.weights * s.gather(-1, first.expand(-1, R, 1)).squeeze(-1) * batch.survey).unsqueeze(-1)
                own_delta = own_delta.gather(1, first.expand(-1, 1, self.P))
                own_x = own_x.gather(1, first.expand(-1, 1, X2.shape[-1]))
            else:
                q = batch.weights.unsqueeze(-1) * s * batch.survey  # [n, R, 1 + J]
            inside = s[..., 1:]
            mean = torch.bmm(inside, jacobian) + torch.einsum("nrk,nrkp->nrp", torch.bmm(inside, X2), tangents)
            value = q.sum(1)  # [n, C]
            qt = q.transpose(1, 2)  # [n, C, R]
            weighted = torch.bmm(qt, tangents.reshape(n, R, -1)).reshape(n, qt.shape[1], *tangents.shape[-2:])
            numerator = value.unsqueeze(-1) * own_delta - torch.bmm(qt, mean)
            numerator = numerator + torch.einsum("nck,nckp->ncp", own_x, weighted)
            scores = numerator / value.unsqueeze(-1)
            scores = scores - torch.as_tensor(self.denominator_scores, dtype=scores.dtype, device=scores.device)
            scores = torch.where((value == 0).unsqueeze(-1), torch.nan, scores).permute(2, 0, 1)  # [P, n, C]
        if batch.first is not None:
            scores = scores[..., 0]
        return scores.cpu().numpy().astype(np.float64)

    def all(self, observations: _Observations, every_choice: bool) -> np.ndarray:
        """Scores of every observation in the user's order, ``[P, N(, ...)]``."""
        J = self.problem.layout.mask.shape[1]
        pieces = [
            self.scores(_batch(self.results, self.survey, observations, start, stop, every_choice))
            for start, stop in _batches(observations, J, every_choice, self.survey.second)  # a loop over batches
        ]
        scores = np.concatenate(pieces, axis=1)
        unsorted = np.empty_like(scores)
        unsorted[:, observations.order] = scores
        return unsorted


# --------------------------------------------------------------------------------------------------- public
def simulate_micro_data(
    results: Any, dataset: MicroDataset, seed: int | np.random.Generator | None = None
) -> pd.DataFrame:
    """Simulate the observations :math:`n \\in N_d` of a micro dataset :math:`d` at the estimates.

    Each observation is an independent draw of a market, an agent and a choice (and a second choice) from

    .. math::

        \\Pr(t, i, j) = \\frac{w_{it} s_{ijt} w_{dijt}}{\\sum_t \\sum_i \\sum_{j \\in J_t \\cup \\{0\\}}
        w_{it} s_{ijt} w_{dijt}}, \\qquad
        \\Pr(t, i, j, k) \\propto w_{it} s_{ijt} s_{ik(-h(j))t} w_{dijkt},

    by inverting the cumulative distribution of these probabilities over every market, agent and choice of the
    dataset at once.

    Parameters
    ----------
    results : ProblemResults
        Estimates of a random-coefficients (or nested) logit problem.
    dataset : MicroDataset
        The dataset: its ``observations`` rows are drawn from its markets.
    seed : int or numpy.random.Generator, optional
        Seeds :func:`numpy.random.default_rng` (PyBLP seeds a ``RandomState``; the draws differ from PyBLP's, their
        distribution does not).

    Returns
    -------
    DataFrame
        ``observations`` rows, in the order drawn, with PyBLP's fields: ``micro_ids`` (``0, 1, ...``),
        ``market_ids``, ``agent_indices`` (within-market agent indices, ``0`` to ``I_t - 1``), ``choice_indices``
        (if ``compute_weights`` returns ``I_t x J_t`` weights, ``0`` is the first inside good; with
        ``I_t x (1 + J_t)`` weights, ``0`` is the outside option) and, for second-choice datasets,
        ``second_choice_indices`` (the same convention on the third axis). Demographics and nodes merge in on
        ``market_ids`` and ``agent_indices``, product characteristics on ``market_ids`` and ``choice_indices``.

    Raises
    ------
    SpecificationError
        ``dataset`` is not a :class:`MicroDataset`, or its sampling weights are negative (negative agent weights of
        a sparse grid) or all zero.
    """
    survey = _Survey(results.problem, dataset)
    layout = survey.layout
    with torch.no_grad():
        s = estimated_probabilities(results)[layout.markets]
        q = _sampling(s, results.model.weights[layout.markets], layout.weights, layout.groups)
    q = q.cpu().numpy().astype(np.float64)
    if (q < 0).any():
        raise SpecificationError(
            f"MicroDataset '{dataset.name}': negative sampling weights (agents with negative integration weights) "
            "cannot be simulated."
        )
    cumulative = np.cumsum(q.ravel())
    total = cumulative[-1]
    if not total > 0:
        raise SpecificationError(f"MicroDataset '{dataset.name}' has no probability mass at the estimates.")
    rng = np.random.default_rng(seed)
    draws = np.searchsorted(cumulative, rng.random(dataset.observations) * total, side="right")
    cells = np.unravel_index(np.minimum(draws, cumulative.size - 1), q.shape)
    markets = layout.markets.cpu().numpy()[cells[0]]
    first_offset, second_offset = survey.offsets()
    data = {
        "micro_ids": np.arange(dataset.observations),
        "market_ids": np.asarray(results.problem.layout.market_ids, dtype=object)[markets],
        "agent_indices": cells[1],
        "choice_indices": cells[2] - first_offset,
    }
    if survey.second:
        data["second_choice_indices"] = cells[3] - second_offset
    return pd.DataFrame(data)


def compute_micro_scores(
    results: Any, dataset: MicroDataset, micro_data: Any, integration: Integration | None = None
) -> list[np.ndarray]:
    """Scores :math:`\\mathscr{S}_n = \\partial\\log\\mathscr{P}_n/\\partial\\theta'` of micro observations.

    .. math::

        \\mathscr{P}_n = \\frac{\\sum_{i \\in I_n} w_{it_n} s_{ij_nt_n} w_{dij_nt_n}}
                               {\\sum_t \\sum_{i \\in I_t} \\sum_{j \\in J_t \\cup \\{0\\}} w_{it} s_{ijt} w_{dijt}}

    (with second choices, :math:`s_{ij_nt_n} s_{ik_n(-h(j_n))t_n} w_{dij_nk_nt_n}` in the numerator and the same
    sum over :math:`k` in the denominator), where :math:`i \\in I_n` integrates over the unobserved heterogeneity
    of observation :math:`n` (its demographics with integration nodes) and the denominator over the problem's
    agents. Both terms are differentiated directly and through :math:`\\delta(\\theta)` (implicit function
    theorem), at the estimates.

    Parameters
    ----------
    results : ProblemResults
        Estimates.
    dataset : MicroDataset
        The dataset the observations come from. ``compute_weights`` is called once per market with the agents of
        that market's observations stacked (PyBLP calls it once per observation): survey weights must depend on each
        agent's own row only, as :math:`w_{dijt}` does.
    micro_data : DataFrame, mapping or structured array
        ``market_ids`` and ``choice_indices`` (and ``second_choice_indices`` for second-choice datasets; the
        conventions of :func:`simulate_micro_data`), and the demographics the agent formulation names. Either each
        row is an observation and ``integration`` builds its nodes, or rows are the agents :math:`i \\in I_n` of
        observations identified by ``micro_ids`` (in their order of appearance), with integration ``weights`` and
        ``nodes`` (``nodes0, nodes1, ...``; extra columns beyond ``K2`` are dropped, fewer fill the columns of
        nonzero :math:`\\Sigma` in order). ``agent_indices`` is ignored, as in PyBLP.
    integration : Integration, optional
        Builds the nodes and weights of every observation (then ``micro_ids``, ``weights`` and ``nodes`` are
        ignored): one node dimension per column of :math:`\\Sigma` with a nonzero element.

    Returns
    -------
    list of ndarray
        One array of ``N`` scores per element of ``results.theta`` (in its order), the observations in the order of
        ``micro_data``. NaN where :math:`\\mathscr{P}_n = 0`: the observation cannot come from the dataset's sampling.
        The mean of a parameter's scores is the observed value of its optimal micro moment
        (:func:`build_optimal_micro_moments`).

    Raises
    ------
    SpecificationError
        A missing field, a market not in the problem or not in the dataset, choice indices out of range for their
        market, values that differ within one ``micro_ids``, or survey weights of an unexpected shape.
    """
    survey = _Survey(results.problem, dataset)
    observations = _parse(results, survey, micro_data, integration, choices=True)
    return list(_Scores(results, survey).all(observations, every_choice=False))


def compute_agent_scores(
    results: Any, dataset: MicroDataset, micro_data: Any = None, integration: Integration | None = None
) -> list[dict[Any, np.ndarray]]:
    """Scores of every agent-choice, each treated as an observation :math:`n` (:func:`compute_micro_scores`).

    Parameters
    ----------
    results : ProblemResults
        Estimates.
    dataset : MicroDataset
        The dataset.
    micro_data : DataFrame, mapping or structured array, optional
        By default every agent of the problem (in the dataset's markets, in the order its callbacks see them) is an
        observation with its demographics, integrated over ``integration``'s nodes (or, without ``integration``,
        over its own node alone). Otherwise observations as in :func:`compute_micro_scores`, without choices.
    integration : Integration, optional
        As in :func:`compute_micro_scores`.

    Returns
    -------
    list of dict
        Per element of ``results.theta``, a mapping from each market of the dataset to the scores of its
        observations, an array shaped like the dataset's weights there (observations by choices, and by second
        choices), NaN where :math:`\\mathscr{P}_n = 0`. With the default observations, ``np.nan_to_num`` of an array
        is ready as the ``compute_values`` of an optimal micro moment's part.
    """
    survey = _Survey(results.problem, dataset)
    if micro_data is None:
        observations = _problem_agents(results, survey, integration)
    else:
        observations = _parse(results, survey, micro_data, integration, choices=False)
    scores = _Scores(results, survey).all(observations, every_choice=True)
    problem = results.problem
    by_market = observations.order  # the user's rows, sorted by market (stable)
    counts = problem.layout.mask.sum(axis=1)
    first_offset, second_offset = survey.offsets()
    mapping: list[dict[Any, np.ndarray]] = [{} for _ in range(len(scores))]
    for t in survey.layout.markets.cpu().numpy().tolist():  # a loop over markets, to build the mapping
        start, stop = np.searchsorted(observations.markets, [t, t + 1])
        rows = by_market[start:stop]
        index: tuple[Any, ...] = (rows, slice(first_offset, 1 + counts[t]))
        if survey.second:
            index += (slice(second_offset, 1 + counts[t]),)
        market = problem.layout.market_ids[t]
        for k, parameter in enumerate(scores):
            mapping[k][market] = parameter[index]
    return mapping


class _MarketValues:
    """``compute_values`` of an optimal micro moment's part: the agent scores of market ``t``."""

    def __init__(self, name: str, values: dict[Any, np.ndarray]) -> None:
        self.name, self.values = name, values

    def __call__(self, t: Any, products: Any, agents: Any) -> np.ndarray:
        if t not in self.values:
            raise SpecificationError(f"MicroPart '{self.name}': no agent scores for market {label(t)}.")
        return self.values[t]


def build_optimal_micro_moments(
    results: Any,
    dataset: MicroDataset,
    micro_data: Any,
    integration: Integration | None = None,
    name_prefix: str = "Score",
    parameters: Sequence[int | str] | None = None,
) -> list[MicroMoment]:
    """Optimal micro moments (Conlon and Gortmaker 2025): match the mean score of each parameter.

    The score of the micro likelihood is the efficient use of micro data. For each parameter :math:`\\theta_p`,
    the moment matches the observed mean score with its model counterpart,

    .. math::

        \\bar g_{M,p} = \\frac{1}{N_d}\\sum_{n \\in N_d} \\mathscr{S}_{np}
        - \\frac{\\sum_t\\sum_i\\sum_j w_{it} s_{ijt}(\\theta) w_{dijt} \\mathscr{S}_{ijtp}}
               {\\sum_t\\sum_i\\sum_j w_{it} s_{ijt}(\\theta) w_{dijt}},

    where :math:`\\mathscr{S}_{np}` are the scores of the observations (:func:`compute_micro_scores`) and
    :math:`\\mathscr{S}_{ijtp}` those of every agent-choice of the problem (:func:`compute_agent_scores`), both at a
    first-step estimate :math:`\\hat\\theta`, with ``NaN`` (agent-choices the survey cannot sample) set to zero. At
    the true parameters the model's average score is zero (the score identity), so the moment holds there. Each
    moment has one :class:`MicroPart` on ``dataset`` whose values are the agent scores; pass the list to
    ``problem.solve(..., micro_moments=...)`` for an efficient second estimate.

    Parameters
    ----------
    results : ProblemResults
        First-step estimates :math:`\\hat\\theta`.
    dataset : MicroDataset
        The dataset of the micro data.
    micro_data : DataFrame, mapping or structured array
        The observations, as in :func:`compute_micro_scores`.
    integration : Integration, optional
        Integration over each observation's (and each agent's) unobserved heterogeneity, as in
        :func:`compute_micro_scores` and :func:`compute_agent_scores`.
    name_prefix : str
        Moments are named ``'{name_prefix} {label}'`` and their parts ``'{name_prefix} part {label}'`` after
        ``results.theta_labels``.
    parameters : sequence of int or str, optional
        The parameters (indices into ``results.theta`` or labels) to build moments for; all by default. Leave out
        parameters whose scores are mechanically zero (e.g. on a constant demographic): their moments carry no
        information and make the micro covariance singular.

    Returns
    -------
    list of MicroMoment
        One per selected parameter.

    Raises
    ------
    SpecificationError
        An unknown parameter, an observation with probability zero (a NaN score), and
        :func:`compute_micro_scores`'s errors.
    """
    labels = list(results.theta_labels)
    chosen = list(range(len(labels))) if parameters is None else [_parameter(p, labels) for p in parameters]
    micro_scores = compute_micro_scores(results, dataset, micro_data, integration)
    agent_scores = compute_agent_scores(results, dataset, integration=integration)
    moments = []
    for k in chosen:  # a loop over parameters
        if np.isnan(micro_scores[k]).any():
            n = int(np.flatnonzero(np.isnan(micro_scores[k]))[0])
            raise SpecificationError(
                f"Observation {n} of micro_data has probability zero under MicroDataset '{dataset.name}' (a NaN "
                "score): it cannot have been sampled by the dataset."
            )
        values = {market: np.nan_to_num(array) for market, array in agent_scores[k].items()}
        part_name = f"{name_prefix} part {labels[k]}"
        part = MicroPart(part_name, dataset, _MarketValues(part_name, values))
        moments.append(MicroMoment(f"{name_prefix} {labels[k]}", float(micro_scores[k].mean()), part))
    return moments


def _parameter(parameter: int | str, labels: list[str]) -> int:
    if isinstance(parameter, str):
        if parameter not in labels:
            raise SpecificationError(f"Unknown parameter {parameter!r}; theta_labels are {labels}.")
        return labels.index(parameter)
    if isinstance(parameter, bool) or not isinstance(parameter, int | np.integer) or not 0 <= parameter < len(labels):
        raise SpecificationError(f"Parameter {parameter!r} is not an index into theta (length {len(labels)}).")
    return int(parameter)
