"""Markets bucketed by size, so that the per-market work of an evaluation does not run over empty padded slots.

Every market of a problem is padded to the largest one, :math:`J = \\max_t J_t` products and :math:`I = \\max_t I_t`
agents. The inversion's contraction costs :math:`O(J I)` per market and iteration, the implicit derivative's and
the markups' matrices :math:`O(J^2 I)` and their factorizations :math:`O(J^3)`, all on padded slots too: in the
BLP (1995) data, where :math:`J_t` runs from 72 to 150, a quarter of the slots and more than half of the
:math:`J^2 I` work are padding. Markets are therefore grouped into a few *buckets* of similar size, each padded
only to its own largest market, and the per-market work (the inversion, its implicit derivative, the markups and
their backward pass) runs once per bucket, batched over the bucket's markets. Results are put back into the
problem's ``[T, J]`` layout, so everything after them (absorption, the linear IV step, the moments) is unchanged.

Padded slots are inert in every kernel (exact zeros in sums, the identity in matrices), so a market's numbers do
not depend on its bucket; the fixed point's iterations are per market as well (SQUAREM's steps and stopping).

The plan (:func:`plan_buckets`) sorts markets by :math:`J_t` and splits the sorted list where it saves the most
work, by dynamic programming over the split points with the cost model

.. math::

    \\text{cost} = \\sum_b \\Big( T_b\\, J_b I_b (c + J_b) + \\kappa \\Big),

where :math:`T_b` markets of bucket :math:`b` are padded to :math:`J_b` products and :math:`I_b` agents, :math:`c`
weighs the linear passes against the quadratic ones and :math:`\\kappa` is the fixed cost of one more batch (a
bucket runs its own sequence of small tensor operations). A bucket is added only where it pays for itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.fixed_point import FixedPointResult
from ..kernels.shares import Nesting
from .demand import DemandModel, Inversion
from .supply import SupplyModel, firm_codes

LINEAR_WEIGHT = 32.0
""":math:`c`, the weight of the passes over ``[T, J, I]`` against those over ``[T, J, J, I]``-sized work."""

BATCH_COST = 2.0e6
""":math:`\\kappa`, the fixed cost of one more batch, in the cost model's units (multiply-adds)."""

MAX_BUCKETS = 8

# the DemandModel's and SupplyModel's per-market tensors, by the kind of their dimension 1 (and 2)
DEMAND_PRODUCT_TENSORS = ("mask", "log_market_shares", "logit_delta", "X2")
DEMAND_AGENT_TENSORS = ("nodes", "demographics", "weights", "log_weights")
SUPPLY_PRODUCT_TENSORS = ("mask", "prices", "dX1", "dX2")


@dataclass(frozen=True)
class Bucket:
    """Markets ``markets`` (indices into the problem's sorted markets) padded to ``products`` and ``agents``."""

    markets: Tensor  # [T_b] int64
    products: int
    agents: int


@dataclass(frozen=True)
class MarketBuckets:
    """A partition of a problem's markets into buckets, and the order that puts their results back."""

    buckets: tuple[Bucket, ...]
    order: Tensor  # [T]: row of each market in the buckets' concatenation
    width: int  # J of the whole problem

    def __len__(self) -> int:
        return len(self.buckets)

    def gather(self, values: Tensor, bucket: Bucket) -> Tensor:
        """A bucket's markets of ``[T, J, ...]`` values, cut to its width."""
        return values.index_select(0, bucket.markets)[:, : bucket.products]

    def scatter(self, pieces: list[Tensor]) -> Tensor:
        """``[T, J]`` (or ``[T]``) from one piece per bucket (``[T_b, J_b]`` or ``[T_b]``), padded with zeros."""
        if pieces[0].dim() > 1:
            pieces = [F.pad(piece, (0, self.width - piece.shape[1])) for piece in pieces]
        return torch.cat(pieces).index_select(0, self.order)

    def scatter_result(self, results: list[FixedPointResult]) -> FixedPointResult:
        """One :class:`FixedPointResult` for all markets from the buckets'."""
        return FixedPointResult(
            self.scatter([r.values for r in results]),
            self.scatter([r.converged for r in results]),
            self.scatter([r.iterations for r in results]),
            self.scatter([r.evaluations for r in results]),
        )


def bucket_cost(markets: int, products: int, agents: int) -> float:
    """The cost model's work for ``markets`` markets padded to ``products`` and ``agents`` (without :math:`\\kappa`)."""
    return markets * products * agents * (LINEAR_WEIGHT + products)


def plan_buckets(
    products: np.ndarray, agents: np.ndarray, max_buckets: int = MAX_BUCKETS, batch_cost: float = BATCH_COST
) -> list[np.ndarray]:
    """Split markets into at most ``max_buckets`` buckets that minimize the cost model (module docstring).

    Parameters
    ----------
    products, agents : ndarray
        :math:`J_t` and :math:`I_t` of every market (``[T]``; agents all one without random coefficients).
    max_buckets : int
        The most buckets; 1 keeps every market in one batch.
    batch_cost : float
        :math:`\\kappa`.

    Returns
    -------
    list of ndarray
        The market indices of each bucket, largest markets first; one bucket when splitting does not pay.
    """
    products, agents = np.asarray(products, dtype=np.int64), np.asarray(agents, dtype=np.int64)
    order = np.argsort(-products, kind="stable")
    if len(products) == 0 or max_buckets <= 1 or products.min() == products.max():
        return [order]
    # the dynamic program runs over the distinct sizes (at most max J_t of them), largest first
    sizes, inverse, counts = np.unique(-products, return_inverse=True, return_counts=True)
    sizes = -sizes
    U = len(sizes)
    people = np.zeros(U, dtype=np.int64)
    np.maximum.at(people, inverse, agents)
    # cost[a, b]: sizes a..b in one bucket (markets summed, padded to sizes[a] and the most agents among them)
    a_index, b_index = np.triu_indices(U)
    markets = np.concatenate([[0], np.cumsum(counts)])
    most = np.maximum.accumulate(np.triu(np.broadcast_to(people, (U, U))), axis=1)
    cost = np.full((U, U), np.inf)
    cost[a_index, b_index] = bucket_cost(
        markets[b_index + 1] - markets[a_index], sizes[a_index], most[a_index, b_index]
    )
    cost += batch_cost
    # best[k, b]: the least cost of sizes 0..b in at most k + 1 buckets; split[k, b]: where the last one begins
    # (-1: no better than with k buckets)
    best = np.full((max_buckets, U), np.inf)
    split = np.full((max_buckets, U), -1, dtype=np.int64)
    best[0] = cost[0]
    for k in range(1, max_buckets):  # a loop over the number of buckets, at most MAX_BUCKETS
        candidates = best[k - 1][:-1, None] + cost[1:]  # row a - 1: the last bucket begins at size a >= 1
        cheapest = candidates.min(axis=0)
        better = cheapest < best[k - 1]
        split[k] = np.where(better, np.argmin(candidates, axis=0) + 1, -1)
        best[k] = np.where(better, cheapest, best[k - 1])
    groups: list[tuple[int, int]] = []
    stop, k = U, max_buckets - 1
    while stop > 0:  # a loop over buckets, back from the last
        while k > 0 and split[k, stop - 1] == -1:
            k -= 1
        start = int(split[k, stop - 1]) if k > 0 else 0
        groups.append((start, stop))
        stop, k = start, k - 1
    size_of_market = inverse  # each market's index among the distinct sizes
    return [order[(size_of_market[order] >= a) & (size_of_market[order] < b)] for a, b in groups[::-1]]


def build_buckets(problem: Any) -> MarketBuckets | None:
    """The buckets of ``problem``'s markets (from its padded masks, so a sharded problem is bucketed too), or None
    when one batch is best. ``problem.buckets``: None chooses by the cost model; ``k`` asks for up to ``k`` buckets
    without the fixed cost of a batch."""
    requested = getattr(problem, "buckets", None)
    max_buckets, batch_cost = (MAX_BUCKETS, BATCH_COST) if requested is None else (requested, 0.0)
    products = problem.product_mask.sum(1).cpu().numpy()
    agent_mask = getattr(problem, "agent_mask", None) if problem.K2 else None
    agents = agent_mask.sum(1).cpu().numpy() if agent_mask is not None else np.ones_like(products)
    plan = plan_buckets(products, agents, max_buckets, batch_cost)
    if len(plan) < 2:
        return None
    device = problem.product_mask.device
    buckets = tuple(
        Bucket(torch.as_tensor(markets, device=device), int(products[markets].max()), int(agents[markets].max()))
        for markets in plan
    )
    order = np.empty(len(products), dtype=np.int64)
    order[np.concatenate(plan)] = np.arange(len(products))
    return MarketBuckets(buckets, torch.as_tensor(order, device=device), int(problem.product_mask.shape[1]))


def _cut(value: Tensor | None, markets: Tensor, products: int | None = None, agents: int | None = None) -> Any:
    if value is None:
        return None
    value = value.index_select(0, markets)
    if products is not None:
        value = value[:, :products]
    if agents is not None and value.dim() > 1 and value.shape[1] > 1:
        value = value[:, :agents]
    return value


def bucket_demand(model: DemandModel, bucket: Bucket) -> DemandModel:
    """``model`` restricted to a bucket's markets, products and agents."""
    local = copy.copy(model)
    markets = bucket.markets
    for name in DEMAND_PRODUCT_TENSORS:
        setattr(local, name, _cut(getattr(model, name), markets, products=bucket.products))
    for name in DEMAND_AGENT_TENSORS:
        setattr(local, name, _cut(getattr(model, name), markets, agents=bucket.agents))
    if model.log_availability is not None:  # [T, J, I]
        local.log_availability = _cut(model.log_availability, markets, products=bucket.products)[..., : bucket.agents]
    if model.product_demographics is not None:  # [T, J, I, D_P]
        product = _cut(model.product_demographics, markets, products=bucket.products)
        local.product_demographics = product[:, :, : bucket.agents]
    if model.nesting is not None:
        local.nesting = Nesting(_cut(model.nesting.ids, markets, products=bucket.products), model.nesting.count)
    _check_cut(model, local, markets)
    return local


def bucket_supply(supply: SupplyModel, demand: DemandModel, bucket: Bucket) -> SupplyModel:
    """``supply`` restricted to a bucket, on the bucket's ``demand``."""
    local = copy.copy(supply)
    markets, J = bucket.markets, bucket.products
    local.demand = demand
    for name in SUPPLY_PRODUCT_TENSORS:
        setattr(local, name, _cut(getattr(supply, name), markets, products=J))
    if supply.ownership is not None:
        local.ownership = supply.ownership.index_select(0, markets)[:, :J, :J]
        local.firms = firm_codes(local.ownership, local.mask) if supply.firms is not None else None
    _check_cut(supply, local, markets)
    return local


def _check_cut(whole: Any, local: Any, markets: Tensor) -> None:
    """Every per-market tensor was restricted (a new one added to the models must be listed above)."""
    T = whole.mask.shape[0]
    for name, value in vars(whole).items():
        if isinstance(value, Tensor) and value.dim() > 1 and value.shape[0] == T and T != len(markets):
            if getattr(local, name).shape[0] != len(markets):
                raise AssertionError(f"bucketing does not restrict the model's per-market tensor {name!r}")


class BucketedMarkets:
    """The per-market work of an objective evaluation, one bucket at a time.

    Holds each bucket's :class:`~demandkit.blp.demand.DemandModel` and :class:`~demandkit.blp.supply.SupplyModel`
    (built once) and returns what the whole problem's models would: the inversion's :math:`\\delta` and its
    diagnostics, and the markups, in the problem's ``[T, J]`` layout and differentiable in :math:`\\theta`.
    """

    def __init__(self, buckets: MarketBuckets, model: DemandModel, supply: SupplyModel | None, shares: Tensor) -> None:
        self.buckets = buckets
        self.models = [bucket_demand(model, bucket) for bucket in buckets.buckets]
        self.supplies = (
            None
            if supply is None
            else [
                bucket_supply(supply, local, bucket) for local, bucket in zip(self.models, buckets.buckets, strict=True)
            ]
        )
        self.shares = [buckets.gather(shares, bucket) for bucket in buckets.buckets]

    def solve(
        self,
        sigma: Tensor,
        pi: Tensor,
        rho: Tensor,
        beta: Tensor,
        start: Tensor,
        method: str,
        options: dict,
    ) -> tuple[Inversion, Tensor | None]:
        """The inversion from ``start`` (``[T, J]``) and, with a supply side, the Bertrand-Nash markups at the
        observed shares, ``[T, J]`` each."""
        inversions, markups = [], []
        for b, bucket in enumerate(self.buckets.buckets):  # a loop over buckets, a few
            inversion = self.models[b].invert(sigma, pi, rho, self.buckets.gather(start, bucket), method, options)
            inversions.append(inversion)
            if self.supplies is not None:
                markups.append(
                    self.supplies[b].markups(
                        inversion.delta, sigma, pi, rho, beta, shares=self.shares[b], inversion=inversion
                    )
                )
        delta = self.buckets.scatter([inversion.delta for inversion in inversions])
        result = self.buckets.scatter_result([inversion.result for inversion in inversions])
        return Inversion(delta, result), (self.buckets.scatter(markups) if markups else None)
