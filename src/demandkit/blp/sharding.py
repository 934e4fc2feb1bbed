"""A BLP problem's markets sharded across the processes of a ``torch.distributed`` group.

Markets are independent inside one evaluation of the GMM objective: the inversion for :math:`\\delta(\\theta)`,
markups and marginal costs, and the micro moments' sums are all per market. Each process (rank) takes a contiguous
block of markets, balanced by :math:`J_t I_t`, and evaluates them; the objective needs only sums over markets,

.. math::

    Z'y(\\theta) = \\sum_r Z_r'y_r(\\theta), \\qquad
    \\sum_t \\sum_i \\sum_j q_{ijt}\\,v_{pijt} \\text{ and } \\sum_t \\sum_i \\sum_j q_{ijt} \\text{ (micro parts)},

from which every rank computes the same concentrated :math:`(\\hat\\beta, \\hat\\gamma)`,
:math:`\\bar g = (Z'y - Z'X\\hat\\beta)/N` and :math:`q = N\\bar g'W\\bar g`. The gradient is summed the same way:
each sum enters as :math:`x_r + \\text{stop}(\\sum_s x_s - x_r)`, so that one backward pass on each rank gives its
markets' share of :math:`\\nabla q`, and one more all-reduce adds them. Every rank runs the same optimizer on the
same numbers; the parameters are broadcast from rank 0 at each evaluation so that they stay bit-identical.

Each rank loads the whole problem (the data, for the weighting matrix, the standard errors and the results, which
are computed once per step on the whole problem) and evaluates only its markets during the optimization, where
the time goes; the moments' Jacobian for the standard errors is summed over ranks as well. Fixed effects absorbed
into X1 or X3 span markets: their within projection adds each group's sums over ranks (one all-reduce per
projection; alternating projections for several also agree on the largest change). Resampled agents are not
sharded (an error says so).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..distributed import Shard
from ..kernels.absorption import Absorb
from ..kernels.gmm import LinearIV
from .economy import GMM_DTYPE
from .objective import Evaluation, GMMObjective

MARKET_TENSORS = (
    "product_mask",
    "log_market_shares",
    "logit_delta",
    "X2_padded",
    "nesting_codes",
    "agent_mask",
    "agent_weights",
    "nodes_padded",
    "demographics_padded",
    "availability_padded",
    "product_demographics_padded",
    "prices_padded",
    "dX1_padded",
    "dX2_padded",
    "ownership_padded",
)
ROW_TENSORS = ("X1_tensor", "ZD_tensor", "X3_tensor", "ZS_tensor", "clustering_codes")


def market_block(problem: Any, shard: Shard) -> tuple[int, int]:
    """This rank's markets ``[start, stop)``, balanced by the work of each market (products times agents)."""
    products = problem.layout.sizes.astype(np.float64)
    agents = problem.agent_layout.sizes.astype(np.float64) if problem.agent_layout is not None else 1.0
    return shard.block(products * agents)


def shard_economy(problem: Any, start: int, stop: int) -> Any:
    """A shallow copy of ``problem`` whose tensors hold markets ``[start, stop)`` and their rows only.

    ``N`` stays the whole problem's (the moments are averages over all products); everything NumPy (the layouts,
    the data) is the whole problem's.
    """
    sharded = copy.copy(problem)
    rows = torch.nonzero((problem.rows_market >= start) & (problem.rows_market < stop)).flatten()
    # absorbed fixed effects: this shard's rows' group codes; the counts stay the whole problem's
    sharded.absorb_codes = [codes[rows] for codes in problem.absorb_codes]
    sharded.supply_absorb_codes = [codes[rows] for codes in getattr(problem, "supply_absorb_codes", [])]
    for name in MARKET_TENSORS:
        value = getattr(problem, name, None)
        if isinstance(value, Tensor):
            setattr(sharded, name, value[start:stop])
    for name in ROW_TENSORS:
        value = getattr(problem, name, None)
        if isinstance(value, Tensor):
            setattr(sharded, name, value[rows])
    sharded.rows_market = problem.rows_market[rows] - start
    sharded.rows_slot = problem.rows_slot[rows]
    sharded.shard_rows = rows
    sharded.shard_markets = (start, stop)
    return sharded


class ShardedGMMObjective(GMMObjective):
    """:class:`~demandkit.blp.objective.GMMObjective` on one rank's markets, with the sums over ranks.

    ``problem`` is the whole problem; the objective evaluates its shard (:func:`shard_economy`). Evaluations hold
    this rank's rows and markets; :meth:`complete` gathers them into the whole problem's for the weighting matrix,
    the standard errors and the results.
    """

    def __init__(self, problem: Any, model: Any, *args: Any, shard: Shard, micro: Any = None, **kwargs: Any) -> None:
        from .demand import DemandModel

        start, stop = market_block(problem, shard)
        self.whole, self.shard, self.block = problem, shard, (start, stop)
        local = shard_economy(problem, start, stop)
        local_model = DemandModel(local).fix_nodes(args[0].sigma0)
        space, iteration, W, delta_start = args[0], args[1], args[2], args[3]
        local_micro = None if micro is None else micro.restricted(start, stop)
        super().__init__(
            local, local_model, space, iteration, W, delta_start[start:stop], *args[4:], micro=local_micro, **kwargs
        )
        self.reduce = self._shared

    def _linear_iv(self, W: Tensor) -> LinearIV:
        """The operator from the sums over ranks: :math:`(\\hat\\beta, \\hat\\gamma) = P\\,Z'y` with
        :math:`P = (X'ZWZ'X)^{-1}X'ZW` and :math:`Z'X` summed once."""
        aggregate = self.system.Z.shape[1]
        self.ZX = self._sum(self.system.Z.T @ self.system.X)
        W_aggregate = W[:aggregate, :aggregate]
        if self.ZX.shape[1]:
            self.projector = torch.linalg.solve(self.ZX.T @ W_aggregate @ self.ZX, self.ZX.T @ W_aggregate)
        else:
            self.projector = self.ZX.new_zeros((0, aggregate))
        return LinearIV(self.projector, self.system.X, self.system.Z, W_aggregate)

    # ------------------------------------------------------------------ collectives
    def _sum(self, tensor: Tensor) -> Tensor:
        total = tensor.detach().clone().to(self.shard.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def _largest(self, tensor: Tensor) -> Tensor:
        largest = tensor.detach().clone().to(self.shard.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return largest.to(tensor.device)

    def _absorb(self, rows: Tensor, codes: list, counts: list) -> Tensor:
        """The within projection of this rank's rows, with group sums over ranks (fixed effects span markets)."""
        return Absorb.apply(rows, codes, counts, self._sum, self._largest) if codes else rows

    def _shared(self, local: Tensor) -> Tensor:
        """:math:`\\sum_r x_r` in value, differentiable through this rank's :math:`x_r` only."""
        return local + (self._sum(local) - local.detach())

    # ------------------------------------------------------------------ evaluation
    def moments(self, residuals: Tensor, micro: Tensor | None) -> Tensor:
        aggregate = self._shared(self.system.Z.T @ residuals) / self.problem.N
        if micro is None:
            return aggregate
        return torch.cat([aggregate, self.micro.observed - micro])

    def _agreed(self, theta_values: np.ndarray) -> np.ndarray:
        return self.shard.broadcast(theta_values)

    def _total(self, value: Tensor) -> Tensor:
        return self._sum(value)

    def _objective(self, y: Tensor, micro: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """:math:`q` from :math:`Z'y` summed over ranks; this rank's residuals."""
        p = self.problem
        ZY = self._shared(self.system.Z.T @ y)
        eliminated = self.projector @ ZY
        aggregate = (ZY - self.ZX @ eliminated) / p.N
        g = aggregate if micro is None else torch.cat([aggregate, self.micro.observed - micro])
        residuals = (y - self.system.X @ eliminated).detach()
        return eliminated, residuals, p.N * g @ self.W @ g

    def moments_jacobian(self, evaluation: Evaluation) -> Tensor:
        """:math:`\\bar G`, each rank differentiating its own markets' share of every moment, summed over ranks.

        ``evaluation`` is the whole problem's (:meth:`complete`). The moments' values are the sums over ranks; their
        gradients flow through this rank's markets only (:meth:`_shared`), so the rows of the ranks' Jacobians add up
        to the whole problem's with one all-reduce. The concentrated block is :math:`-Z'X/N` from the summed
        :math:`Z'X`.
        """
        p = self.problem
        concentrated = -self.ZX / p.N
        if self.micro is not None:
            concentrated = torch.cat([concentrated, concentrated.new_zeros((self.micro.M, concentrated.shape[1]))])
        if evaluation.theta.size == 0:
            return concentrated
        start, stop = self.block
        self.start = torch.where(p.product_mask, evaluation.delta[start:stop], 0.0)
        theta = torch.as_tensor(evaluation.theta, dtype=GMM_DTYPE, device=p.device).clone().requires_grad_(True)
        structural = self.structural(theta)
        moments = self.moments(structural.y, structural.micro)
        rows = [
            torch.autograd.grad(moments[m], theta, retain_graph=m + 1 < moments.shape[0], allow_unused=True)[0]
            for m in range(moments.shape[0])  # a loop over moments (post-estimation only)
        ]
        local = torch.stack([torch.zeros_like(theta) if row is None else row for row in rows])
        return torch.cat([self._sum(local), concentrated], dim=1)

    def complete(self, evaluation: Evaluation) -> Evaluation:
        """The evaluation on the whole problem: every rank's markets and rows gathered in order."""
        whole, (start, stop) = self.whole, self.block
        pieces = self.shard.gather(
            {
                "block": (start, stop),
                "rows": self.problem.shard_rows.cpu().numpy(),
                "delta": evaluation.delta.cpu().numpy(),
                "delta_rows": evaluation.delta_rows.cpu().numpy(),
                "xi": evaluation.xi.cpu().numpy(),
                "omega": None if evaluation.omega is None else evaluation.omega.cpu().numpy(),
                "costs": None if evaluation.costs is None else evaluation.costs.cpu().numpy(),
                "converged": evaluation.converged.cpu().numpy(),
                "iterations": evaluation.iterations.cpu().numpy(),
                "evaluations": evaluation.evaluations.cpu().numpy(),
                "clipped": evaluation.clipped_costs,
            }
        )
        kwargs = {"device": whole.device}
        delta = np.zeros(tuple(whole.product_mask.shape))
        N = whole.N
        rows_of = {name: np.zeros(N) for name in ("delta_rows", "xi", "omega", "costs")}
        converged = np.zeros(whole.T, dtype=bool)
        iterations = np.zeros(whole.T, dtype=np.int64)
        evaluations = np.zeros(whole.T, dtype=np.int64)
        for piece in pieces:  # a loop over ranks
            a, b = piece["block"]
            delta[a:b] = piece["delta"]
            converged[a:b], iterations[a:b], evaluations[a:b] = (
                piece["converged"],
                piece["iterations"],
                piece["evaluations"],
            )
            for name in rows_of:
                if piece[name] is not None:
                    rows_of[name][piece["rows"]] = piece[name]
        tensor = lambda a: torch.as_tensor(a, dtype=whole.dtype, **kwargs)  # noqa: E731
        return dataclasses.replace(
            evaluation,
            delta=tensor(delta),
            delta_rows=tensor(rows_of["delta_rows"]),
            xi=tensor(rows_of["xi"]),
            omega=None if evaluation.omega is None else tensor(rows_of["omega"]),
            costs=None if evaluation.costs is None else tensor(rows_of["costs"]),
            clipped_costs=sum(piece["clipped"] for piece in pieces),
            converged=torch.as_tensor(converged, **kwargs),
            iterations=torch.as_tensor(iterations, **kwargs),
            evaluations=torch.as_tensor(evaluations, **kwargs),
        )
