"""Importance sampling of agents (Berry, Levinsohn and Pakes 1995), PyBLP's ``ProblemResults.importance_sampling``.

Most simulated agents of a market with a large outside share buy nothing and say little about the inside shares.
From many candidate agents (``agent_data`` and/or an ``integration``), candidate :math:`i` of market :math:`t` is
accepted with probability :math:`(1 - s_{i0t})/M`, its probability of buying an inside good at the estimates
:math:`(\\hat\\theta, \\delta(\\hat\\theta))` over an accept-reject constant :math:`M \\ge 1`; ``draws`` of the
accepted agents are kept in each market with weights

.. math::

    w_{it} = \\frac{1}{I_t} \\cdot \\frac{1 - s_{0t}}{1 - s_{i0t}},

which undo the oversampling of likely buyers (:math:`s_{0t}` is the market's outside share). The candidates'
probabilities are computed for every market at once; acceptance and selection are vectorized (random keys sorted
within markets). Owen's (2013) diagnostics summarize the weights of each market.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..exceptions import SpecificationError
from ..layout.validation import as_frame, numbered_columns
from ..persistence import Persistent
from .demand import DemandModel
from .economy import first_agent_rows


def _candidates(problem: Any, agent_data: Any, integration: Any) -> pd.DataFrame:
    """Candidate agents as an ``agent_data`` table (weights are placeholders: acceptance does not use them)."""
    frame = as_frame(agent_data, "agent_data") if agent_data is not None else getattr(problem, "agent_frame", None)
    if frame is None and integration is None:
        raise SpecificationError("importance_sampling needs candidate agents: give agent_data or an integration.")
    node_columns = [] if frame is None else numbered_columns(frame, "nodes", "agent_data")
    if integration is not None:
        built_markets, nodes, _ = integration.build_many(problem.K2, problem.layout.market_ids)
        out = pd.DataFrame({"market_ids": built_markets})
        if frame is not None:
            rows = first_agent_rows(
                np.arange(len(frame)), frame["market_ids"].to_numpy(), built_markets, "candidate agents"
            )
            others = frame.iloc[rows].drop(columns=["market_ids", "weights", *node_columns], errors="ignore")
            out = pd.concat([out, others.reset_index(drop=True)], axis=1)
        for k in range(nodes.shape[1]):
            out[f"nodes{k}"] = nodes[:, k]
    else:
        if not node_columns:
            raise SpecificationError(
                "The candidate agent_data have no nodes: add nodes0, nodes1, ... or an integration."
            )
        out = frame.drop(columns=["weights"], errors="ignore").reset_index(drop=True)
    counts = out.groupby("market_ids", sort=False)["market_ids"].transform("size").to_numpy()
    out["weights"] = 1.0 / counts
    return out


def importance_sampling(
    results: Any,
    draws: int,
    ar_constant: float = 1.0,
    seed: int | None = None,
    agent_data: Any = None,
    integration: Any = None,
    delta: Any = None,
) -> ImportanceSamplingResults:
    """Importance-sampled agents at the estimates (see the module's docstring); PyBLP's arguments.

    Parameters
    ----------
    results : ProblemResults
        Estimates of a random-coefficients problem.
    draws : int
        Agents kept in each market, :math:`I_t`.
    ar_constant : float
        The accept-reject constant :math:`M \\ge 1`.
    seed : int, optional
        Seeds ``numpy.random.RandomState`` (the draws are not PyBLP's: its order of random calls is its own).
    agent_data : DataFrame, optional
        Candidate agents (``market_ids``, ``nodes0, ...`` and the demographics); the problem's agent data by
        default. Their ``weights`` are ignored.
    integration : Integration, optional
        Builds the candidates' nodes (demographics from ``agent_data``'s first rows in each market).
    delta : array-like, optional
        ``N`` mean utilities at :math:`\\hat\\theta` more precise than ``results.delta`` (say, from many agents).

    Returns
    -------
    ImportanceSamplingResults
    """
    start = time.perf_counter()
    problem = results.problem
    if not problem.K2:
        raise SpecificationError("importance_sampling needs random coefficients (X2) and agents.")
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise SpecificationError(f"draws must be a positive integer; received {draws!r}.")
    if not np.isfinite(ar_constant) or ar_constant < 1:
        raise SpecificationError(f"ar_constant must be at least 1; received {ar_constant!r}.")
    candidates = _candidates(problem, agent_data, integration)
    economy = type(problem)(
        problem.product_formulations,
        problem.product_frame,
        problem.agent_formulation,
        candidates,
        rc_types=problem.rc_types,
        costs_type=problem.costs_type,
        add_exogenous=problem.add_exogenous,
        device=str(problem.device),
        dtype=problem.dtype,
    )
    if delta is None:
        padded_delta = results._delta_padded
    else:
        values = np.asarray(delta, dtype=np.float64).reshape(-1)
        if values.shape[0] != problem.N or not np.isfinite(values).all():
            raise SpecificationError(f"delta must hold {problem.N} finite values, one per product.")
        padded_delta = problem.padded(values)
    model = DemandModel(economy).fix_nodes(results._space.sigma0)
    kwargs = {"dtype": problem.dtype, "device": problem.device}
    with torch.no_grad():
        sigma = torch.as_tensor(results.sigma, **kwargs)
        pi = torch.as_tensor(results.pi, **kwargs)
        rho = torch.as_tensor(results.rho.reshape(-1), **kwargs)
        inside = torch.exp(model.probabilities(padded_delta, model.mu(sigma, pi), rho).log_probabilities)
        buying = torch.where(problem.product_mask.unsqueeze(-1), inside, 0.0).sum(1)  # [T, I]: 1 - s_i0t
    buying_rows = economy.agent_layout.unpad(buying.cpu().numpy())  # in the candidates' row order
    markets = economy.agent_layout.market_of_row
    state = np.random.RandomState(seed)
    accepted = state.uniform(size=len(candidates)) < buying_rows / ar_constant
    keys = np.where(accepted, state.uniform(size=len(candidates)), np.inf)
    order = np.lexsort((keys, markets))  # by market, then by random key (rejected last)
    rank = np.empty(len(order), dtype=np.int64)
    starts = np.searchsorted(markets[order], np.arange(problem.T))
    rank[order] = np.arange(len(order)) - starts[markets[order]]
    counts = np.bincount(markets[accepted], minlength=problem.T)
    short = np.flatnonzero(counts < draws)
    if short.size:
        t = short[0]
        outside = 1 - problem.shares[problem.layout.market_of_row == t].sum()
        raise SpecificationError(
            f"importance_sampling accepted {counts[t]} candidate agents in market {problem.layout.market_ids[t]!r}, "
            f"fewer than draws={draws}: give more candidates (at least about ar_constant x draws / (1 - s_0t) = "
            f"{ar_constant * draws / max(1 - outside, 1e-12):.0f} there)."
        )
    keep = accepted & (rank < draws)
    outside_shares = 1 - np.bincount(problem.layout.market_of_row, weights=problem.shares, minlength=problem.T)
    sampled = candidates.loc[keep].copy()
    sampled["weights"] = (1 - outside_shares[markets[keep]]) / (draws * buying_rows[keep])
    sampled = sampled.iloc[np.argsort(markets[keep], kind="stable")].reset_index(drop=True)
    return ImportanceSamplingResults(results, sampled, int(draws), float(ar_constant), time.perf_counter() - start)


class ImportanceSamplingResults(Persistent):
    """Agents drawn by importance sampling, with Owen's (2013) weight diagnostics (PyBLP's class).

    Attributes
    ----------
    problem_results : ProblemResults
    sampled_agents : DataFrame
        ``agent_data`` of the sampled agents: ``market_ids``, ``weights``, ``nodes0, ...`` and the candidates'
        other columns (demographics).
    draws : int
    ar_constant : float
    computation_time : float
    diagnostic_market_ids : ndarray
    weight_sums : ndarray
        :math:`\\sum_i w_{it}`, near one when the sampling worked.
    effective_draws, effective_draws_for_variance, effective_draws_for_skewness : ndarray
        By market: :math:`(\\sum w)^2/\\sum w^2`, :math:`(\\sum w^2)^2/\\sum w^4` and
        :math:`(\\sum w^2)^3/(\\sum w^3)^2`.
    """

    def __init__(self, results: Any, sampled: pd.DataFrame, draws: int, ar_constant: float, seconds: float) -> None:
        self.problem_results = results
        self.sampled_agents = sampled
        self.draws = draws
        self.ar_constant = ar_constant
        self.computation_time = seconds
        grouped = sampled.groupby("market_ids", sort=True)["weights"]
        power = {k: grouped.apply(lambda w, k=k: float((w**k).sum())).to_numpy() for k in (1, 2, 3, 4)}
        self.diagnostic_market_ids = np.asarray(sorted(sampled["market_ids"].unique()), dtype=object)
        self.weight_sums = power[1].reshape(-1, 1)
        self.effective_draws = (power[1] ** 2 / power[2]).reshape(-1, 1)
        self.effective_draws_for_variance = (power[2] ** 2 / power[4]).reshape(-1, 1)
        self.effective_draws_for_skewness = (power[2] ** 3 / power[3] ** 2).reshape(-1, 1)

    def to_problem(self) -> Any:
        """The problem again, with the sampled agents as its ``agent_data``."""
        problem = self.problem_results.problem
        return type(problem)(
            problem.product_formulations,
            problem.product_frame,
            problem.agent_formulation,
            self.sampled_agents,
            rc_types=problem.rc_types,
            costs_type=problem.costs_type,
            add_exogenous=problem.add_exogenous,
            device=str(problem.device),
            dtype=problem.dtype,
        )

    def to_dict(self) -> dict[str, Any]:
        """The diagnostics and the sampled agents as plain data."""
        return {
            "draws": self.draws,
            "ar_constant": self.ar_constant,
            "computation_time": self.computation_time,
            "diagnostic_market_ids": [str(m) for m in self.diagnostic_market_ids],
            "weight_sums": self.weight_sums.ravel().tolist(),
            "effective_draws": self.effective_draws.ravel().tolist(),
            "sampled_agents": self.sampled_agents.to_dict(orient="list"),
        }

    def __repr__(self) -> str:
        return f"<ImportanceSamplingResults draws={self.draws} markets={len(self.diagnostic_market_ids)}>"
