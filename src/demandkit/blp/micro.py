"""Micro moments on a problem's tensors: survey weights and values laid out once, part values for every market at
once, the micro statistics, their gradients and covariances (Conlon and Gortmaker 2025; PyBLP's definitions).

Set-up calls each dataset's ``compute_weights`` and each part's ``compute_values`` once per market (the only
per-market Python, outside estimation) and pads the results to ``[T_d, I, 1 + J]`` tensors, the outside option in
column 0, or ``[T_d, I, 1 + J, 1 + J]`` with second choices. With choice probabilities :math:`s_{ijt}(\\theta)`
and agent weights :math:`w_{it}`, the joint sampling weights of dataset :math:`d` are
:math:`q_{ijt} = w_{it} s_{ijt} w_{dijt}` (with second choices
:math:`q_{ijkt} = w_{it} s_{ijt} s_{ik(-h(j))t} w_{dijkt}`), and every part is one contraction,

.. math::

    v_p = \\frac{\\sum q\\, v_p}{\\sum q}, \\qquad
    S_{P,pq} = \\frac{N}{N_d} \\frac{\\sum q\\,(v_{p\\cdot} - v_p)(v_{q\\cdot} - v_q)}{\\sum q}
    \\quad (d_p = d_q = d),

differentiable in :math:`\\theta` through :math:`s(\\delta(\\theta), \\theta)` and the implicit function theorem.
A micro statistic :math:`f_m(v)` is evaluated in float64 NumPy with the user's ``compute_value``; its gradient
:math:`F = \\partial f/\\partial v` comes from ``compute_gradient`` or, if not given, from autograd through
``compute_value`` on a tensor. The objective uses the first-order surrogate :math:`f_m(v) + F_m(v - \\text{stop}(v))`,
exact in value and gradient. The micro moments' covariance is :math:`S_M = F S_P F'`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..configurations.micro import MicroDataset, MicroMoment, MicroPart, PanelMicroDataset
from ..exceptions import SpecificationError
from ..kernels.gmm import invert
from ..layout.validation import numbered_columns
from .micro_layout import (
    DatasetLayout,
    agent_invariant,
    checked_array,
    checked_covariances,
    choice_axes,
    linked_agents,
    market_agents,
    market_products,
    outer_factors,
    pad_choices,
    panel_choice_axes,
    unique_names,
)


class MicroMoments:
    """The micro moments of a problem: observed values, parts and datasets laid out as tensors.

    Parameters
    ----------
    problem : Economy
        The problem whose products and agents the callbacks see.
    moments : sequence of MicroMoment
        The micro moments, in order.
    sample_covariances : array-like, optional
        ``M_M x M_M`` covariance of the observed statistics :math:`f(\\bar v)` (say, bootstrapped from the micro
        data); :math:`S_M` is then :math:`N` times it instead of :math:`F S_P F'` (PyBLP's scaling).
    """

    def __init__(self, problem: Any, moments: Sequence[MicroMoment], sample_covariances: Any = None) -> None:
        moments = list(moments)
        if not moments:
            raise SpecificationError("micro_moments is empty.")
        for moment in moments:
            if not isinstance(moment, MicroMoment):
                raise SpecificationError(f"micro_moments must hold MicroMoment instances; received {moment!r}.")
        unique_names([m.name for m in moments], "micro moment")
        self.problem = problem
        self.moments = moments
        self.names = [m.name for m in moments]
        self.M = len(moments)
        self.parts: list[MicroPart] = []
        for moment in moments:
            for part in moment.parts:
                if not any(part is known for known in self.parts):
                    self.parts.append(part)
        unique_names([p.name for p in self.parts], "micro part")
        self.datasets: list[MicroDataset] = []
        for part in self.parts:
            if not any(part.dataset is known for known in self.datasets):
                self.datasets.append(part.dataset)
        unique_names([d.name for d in self.datasets], "micro dataset")
        self.part_index = [[self._index(part) for part in moment.parts] for moment in moments]
        self.observed = torch.tensor([m.value for m in moments], dtype=torch.float64, device=problem.device)
        self.layouts = [self._lay_out(dataset) for dataset in self.datasets]
        self.nests = None  # [T, 1 + J, H] nest membership (the outside option in none) under nesting
        if problem.H:
            codes = torch.where(problem.product_mask, problem.nesting_codes, -1)
            members = torch.nn.functional.one_hot(codes.clamp(min=0), problem.H).to(problem.dtype)
            members = members * problem.product_mask.unsqueeze(-1)
            self.nests = torch.cat([torch.zeros_like(members[:, :1]), members], dim=1)
        self.sample_covariances = None
        if sample_covariances is not None:
            # the covariance of the sample statistics f(v-bar); S_M is that of sqrt(N) times them (PyBLP's scaling)
            self.sample_covariances = problem.N * checked_covariances(sample_covariances, self.M, problem)

    def _index(self, part: MicroPart) -> int:
        return next(k for k, known in enumerate(self.parts) if known is part)

    # ------------------------------------------------------------------ set-up
    def _markets(self, dataset: MicroDataset) -> np.ndarray:
        ids = self.problem.layout.market_ids
        if dataset.market_ids is None:
            return np.arange(len(ids))
        known = {market: t for t, market in enumerate(ids.tolist())}
        missing = [market for market in dataset.market_ids.tolist() if market not in known]
        if missing:
            raise SpecificationError(
                f"MicroDataset '{dataset.name}': market_ids {missing[:5]} are not markets of the problem."
            )
        return np.array(sorted(known[market] for market in dataset.market_ids.tolist()), dtype=np.int64)

    def _lay_out(self, dataset: MicroDataset) -> DatasetLayout:
        if isinstance(dataset, PanelMicroDataset):
            return self._lay_out_panel(dataset)
        p = self.problem
        markets = self._markets(dataset)
        parts = [k for k, part in enumerate(self.parts) if part.dataset is dataset]
        J = p.layout.mask.shape[1]
        I = 1 if p.agent_layout is None else p.agent_layout.mask.shape[1]
        shape: tuple[int, ...] | None = None
        kind: tuple[bool, ...] | None = None
        compact = True  # until an array differs across a market's agents
        weights_list, values_list = [], [[] for _ in parts]
        for t in markets.tolist():  # set-up only: the callbacks are per market by PyBLP's definition
            products, agents = market_products(p, t), market_agents(p, t)
            market = p.layout.market_ids[t]
            raw = checked_array(
                dataset.compute_weights(market, products, agents), f"MicroDataset '{dataset.name}'", market
            )
            this_kind = choice_axes(raw, agents.size, products.size, f"MicroDataset '{dataset.name}'", market)
            if kind is None:
                kind = this_kind
            elif this_kind != kind:
                raise SpecificationError(
                    f"MicroDataset '{dataset.name}': compute_weights returns shape {raw.shape} in market {market!r}, "
                    "a different kind (outside option or second choices) than in the dataset's earlier markets."
                )
            second = len(kind) == 2
            shape = (I, J + 1, J + 1) if second else (I, J + 1)
            compact = compact and agent_invariant(raw)
            weights_list.append(pad_choices(raw, kind, shape))
            for slot, k in enumerate(parts):
                part = self.parts[k]
                values = checked_array(
                    part.compute_values(market, products, agents), f"MicroPart '{part.name}'", market
                )
                if values.shape != raw.shape:
                    raise SpecificationError(
                        f"MicroPart '{part.name}': compute_values returns shape {values.shape} in market "
                        f"{market!r}, but its dataset '{dataset.name}' has weights of shape {raw.shape}."
                    )
                compact = compact and agent_invariant(values)
                values_list[slot].append(pad_choices(values, kind, shape))
        assert kind is not None and shape is not None
        weights = np.stack(weights_list)
        if compact:  # one row per market: every agent's row is the first's (padded agents' rows are zero)
            weights_list = [w[:1] for w in weights_list]
            values_list = [[v[:1] for v in market_values] for market_values in values_list]
            weights = np.stack(weights_list)
        if (weights < 0).any():
            raise SpecificationError(f"MicroDataset '{dataset.name}': survey weights must be non-negative.")
        values = np.stack([np.stack(v) for v in values_list]) if parts else np.zeros((0,) + weights.shape)
        groups = None
        if len(kind) == 2:
            groups = self._groups(dataset, markets)
        tensor = lambda a: torch.as_tensor(a, dtype=p.dtype, device=p.device)  # noqa: E731
        factors = None
        if len(kind) == 1 and not compact and parts:
            outer = outer_factors(values)
            factors = None if outer is None else (tensor(outer[0]), tensor(outer[1]))
        return DatasetLayout(
            dataset,
            torch.as_tensor(markets, device=p.device),
            tensor(weights),
            tensor(values),
            parts,
            kind[0],
            kind[-1] if len(kind) == 2 else False,
            groups,
            compact,
            None,
            factors,
        )

    def _lay_out_panel(self, dataset: PanelMicroDataset) -> DatasetLayout:
        """A panel dataset: one ``[I, 1 + J, 1 + J]`` slice per linked pair of markets."""
        p = self.problem
        if p.agent_layout is None:
            raise SpecificationError(f"PanelMicroDataset '{dataset.name}' needs agents (a random-coefficients model).")
        index = {market: t for t, market in enumerate(p.layout.market_ids.tolist())}
        missing = [pair for pair in dataset.market_pairs if pair[0] not in index or pair[1] not in index]
        if missing:
            raise SpecificationError(
                f"PanelMicroDataset '{dataset.name}': market pairs {missing[:3]} name markets that are not in the "
                "problem."
            )
        J = p.layout.mask.shape[1]
        I = p.agent_layout.mask.shape[1]
        parts = [k for k, part in enumerate(self.parts) if part.dataset is dataset]
        kind: tuple[bool, ...] | None = None
        compact = True
        weights_list, values_list = [], [[] for _ in parts]
        for pair in dataset.market_pairs:  # set-up only: one callback per pair of markets
            first, second = index[pair[0]], index[pair[1]]
            agents = linked_agents(p, first, second, dataset.name, pair)
            products = (market_products(p, first), market_products(p, second))
            raw = checked_array(
                dataset.compute_weights(pair, products, agents), f"PanelMicroDataset '{dataset.name}'", pair
            )
            this_kind = panel_choice_axes(raw, agents.size, products[0].size, products[1].size, dataset.name, pair)
            if kind is None:
                kind = this_kind
            elif this_kind != kind:
                raise SpecificationError(
                    f"PanelMicroDataset '{dataset.name}': compute_weights returns shape {raw.shape} for the pair "
                    f"{pair!r}, a different kind (outside options) than for the dataset's earlier pairs."
                )
            compact = compact and agent_invariant(raw)
            weights_list.append(pad_choices(raw, kind, (I, J + 1, J + 1)))
            for slot, k in enumerate(parts):
                part = self.parts[k]
                values = checked_array(part.compute_values(pair, products, agents), f"MicroPart '{part.name}'", pair)
                if values.shape != raw.shape:
                    raise SpecificationError(
                        f"MicroPart '{part.name}': compute_values returns shape {values.shape} for the pair {pair!r}, "
                        f"but its dataset '{dataset.name}' has weights of shape {raw.shape}."
                    )
                compact = compact and agent_invariant(values)
                values_list[slot].append(pad_choices(values, kind, (I, J + 1, J + 1)))
        assert kind is not None
        if compact:
            weights_list = [w[:1] for w in weights_list]
            values_list = [[v[:1] for v in pair_values] for pair_values in values_list]
        weights = np.stack(weights_list)
        if (weights < 0).any():
            raise SpecificationError(f"PanelMicroDataset '{dataset.name}': survey weights must be non-negative.")
        values = np.stack([np.stack(v) for v in values_list]) if parts else np.zeros((0,) + weights.shape)
        tensor = lambda a: torch.as_tensor(a, dtype=p.dtype, device=p.device)  # noqa: E731
        markets = [index[pair[0]] for pair in dataset.market_pairs]
        linked = [index[pair[1]] for pair in dataset.market_pairs]
        return DatasetLayout(
            dataset,
            torch.as_tensor(markets, device=p.device),
            tensor(weights),
            tensor(values),
            parts,
            kind[0],
            kind[1],
            None,
            compact,
            torch.as_tensor(linked, device=p.device),
        )

    def _groups(self, dataset: MicroDataset, markets: np.ndarray) -> Tensor:
        """Codes of the groups eliminated with each first choice, ``[T_d, 1 + J]`` (each product its own group by
        default; the outside option always alone, code 0)."""
        p = self.problem
        J = p.layout.mask.shape[1]
        index = dataset.eliminated_product_ids_index
        if index is None:
            codes = np.broadcast_to(np.arange(J + 1), (len(markets), J + 1)).copy()
        else:
            columns = numbered_columns(p.product_frame, "product_ids", "product_data")
            if index >= len(columns):
                raise SpecificationError(
                    f"MicroDataset '{dataset.name}': eliminated_product_ids_index {index} needs a product_ids column "
                    f"{index}; product_data has {len(columns)} product_ids column(s)."
                )
            ids = p.product_frame[columns[index]].to_numpy()
            _, codes_of_rows = np.unique(ids.astype(str), return_inverse=True)
            padded = p.layout.pad(codes_of_rows + 1, -1)[markets]
            codes = np.concatenate([np.zeros((len(markets), 1), dtype=np.int64), padded], axis=1)
        return torch.as_tensor(codes, device=p.device)

    # ------------------------------------------------------------------ evaluation
    def choice_probabilities(self, inside: Tensor) -> Tensor:
        """``[T, I, 1 + J]`` choice probabilities, the outside option first, from inside ones ``[T, J, I]``."""
        inside = inside.transpose(1, 2)
        outside = (1 - inside.sum(-1, keepdim=True)).clamp(min=0)
        return torch.cat([outside, inside], dim=-1)

    def nested_second_choices(self, layout: DatasetLayout, s: Tensor, rho: Tensor) -> Tensor:
        """:math:`s_{ik(-h(j))t}` under nesting, ``[T_d, I, 1 + J (j), 1 + J (k)]``, from the probabilities alone.

        With nest shares :math:`P_g`, within-nest probabilities :math:`P_{k|g}` and the within-nest mass that
        survives the removal of :math:`h(j)`, :math:`F_g = \\sum_{l \\in g \\setminus h(j)} P_{l|g}` (summed
        directly), the nests' inclusive values scale so that nest :math:`g` weighs :math:`P_g F_g^{1 - \\rho_g}`;
        then :math:`s_{ik(-h(j))} = P_{g(k)} F_{g(k)}^{1-\\rho} P_{k|g}/F_{g(k)} / D` for :math:`k \\notin h(j)`, the
        outside option :math:`s_{i0}/D`, with :math:`D` the sum of the remaining weights.
        """
        nests = self.nests[layout.markets]  # [T_d, 1 + J, H]
        H = nests.shape[-1]
        rho_h = rho.reshape(-1).expand(H) if rho.numel() == 1 else rho.reshape(-1)
        groups = layout.groups
        kept = (groups.unsqueeze(-1) != groups.unsqueeze(-2)).to(s.dtype)  # [T_d, j, l]: l survives removing h(j)
        nest_shares = torch.einsum("til,tlh->tih", s, nests)  # P_g
        within = torch.einsum("tih,tlh->til", 1 / nest_shares.clamp(min=torch.finfo(s.dtype).tiny), nests) * s
        surviving = torch.einsum("til,tlh,tjl->tijh", within, nests, kept)  # F_g after removing h(j)
        positive = surviving > 0
        safe = torch.where(positive, surviving, 1.0)
        weights = torch.where(positive, nest_shares.unsqueeze(2) * safe ** (1 - rho_h), 0.0)  # [T_d, I, j, H]
        outside = s[..., :1].unsqueeze(2) * kept[:, :, :1].unsqueeze(1)  # [T_d, I, j, 1]: zero when j = 0
        total = outside.squeeze(-1) + weights.sum(-1)  # D
        scale = torch.where(positive, weights / safe, 0.0)  # P_g F^(1 - rho) / F
        inside = torch.einsum("tijh,tkh->tijk", scale, nests) * within.unsqueeze(2) * kept.unsqueeze(1)
        second = torch.cat([outside, inside[..., 1:]], dim=-1)
        return second / total.clamp(min=torch.finfo(s.dtype).tiny).unsqueeze(-1)

    def sampling_weights(
        self, layout: DatasetLayout, probabilities: Tensor, agent_weights: Tensor, rho: Tensor | None = None
    ) -> Tensor:
        """:math:`q = w_{it} s_{ijt} (s_{ik(-h(j))t}) w_{dij(k)t}` over the dataset's markets."""
        s = probabilities[layout.markets]  # [T_d, I, 1 + J]
        w = agent_weights[layout.markets].unsqueeze(-1)
        if layout.linked is not None:  # the same individuals in a linked market: s_ijt s_ikt'
            later = probabilities[layout.linked]
            if layout.compact:
                return torch.bmm((w * s).transpose(1, 2), later).unsqueeze(1) * layout.weights
            return (w * s).unsqueeze(-1) * later.unsqueeze(-2) * layout.weights
        if not layout.second_choices:
            if layout.compact:  # summed over agents: [T_d, 1, 1 + J]
                return (w * s).sum(1, keepdim=True) * layout.weights
            return w * s * layout.weights
        if self.nests is not None:  # nesting: the probabilities after a removal need the nests' weights
            assert rho is not None
            q = (w * s).unsqueeze(-1) * self.nested_second_choices(layout, s, rho)
            return (q.sum(1, keepdim=True) if layout.compact else q) * layout.weights
        groups = layout.groups  # [T_d, 1 + J]
        same = groups.unsqueeze(-1) == groups.unsqueeze(-2)  # [T_d, 1 + J (j), 1 + J (k)]: k removed with j
        # 1 - sum of s_il over l in h(j), summed directly (no cancellation when the first choice is near certain)
        remaining = torch.einsum("tik,tjk->tij", s, (~same).to(s.dtype)).clamp(min=torch.finfo(s.dtype).tiny)
        if layout.compact:  # sum_i w_i s_ij s_ik / (1 - s_ih(j)) as one batched product: no [I, J, J] array
            joint = torch.bmm((w * s / remaining).transpose(1, 2), s)
            return torch.where(same, 0.0, joint).unsqueeze(1) * layout.weights
        second = torch.where(same.unsqueeze(1), 0.0, s.unsqueeze(-2) / remaining.unsqueeze(-1))
        return (w * s).unsqueeze(-1) * second * layout.weights

    def part_values(
        self,
        probabilities: Tensor,
        agent_weights: Tensor,
        rho: Tensor | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """:math:`v_p(\\theta)` for every part, ``[P]`` (differentiable; ``rho`` under nesting).

        ``reduce`` sums a dataset's numerators and denominator over the processes that hold its other markets (see
        :mod:`demandkit.blp.sharding`); by default this process holds every market.
        """
        reduce = reduce or (lambda x: x)
        values = probabilities.new_zeros(len(self.parts))
        for layout in self.layouts:  # a loop over datasets
            q = self.sampling_weights(layout, probabilities, agent_weights, rho)
            if layout.factors is not None:  # sum_t a_pt' q_t b_pt without the [P, T, I, 1 + J] values
                a, b = layout.factors
                weighted = torch.bmm(q, b.permute(1, 2, 0))  # [T_d, I, P_d]
                numerators = (weighted * a.permute(1, 2, 0)).sum((0, 1))
            else:
                numerators = layout.values.reshape(len(layout.parts), -1) @ q.reshape(-1)
            index = torch.as_tensor(layout.parts, device=values.device)
            sums = reduce(torch.cat([numerators, q.sum().reshape(1)]))
            values = values.index_put((index,), sums[:-1] / sums[-1])
        return values

    def statistics(self, parts: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:math:`f(v)` (``[M]``) and :math:`F = \\partial f/\\partial v` (``[M, P]``), in NumPy."""
        v = parts.detach().cpu().numpy().astype(np.float64)
        values = np.empty(self.M)
        F = np.zeros((self.M, len(self.parts)))
        for m, (moment, index) in enumerate(zip(self.moments, self.part_index, strict=True)):  # over moments
            values[m], F[m, index] = _statistic(moment, v[index])
        return values, F

    def surrogate(self, parts: Tensor) -> tuple[Tensor, np.ndarray, np.ndarray]:
        """Differentiable :math:`f(v)` with the exact value and first derivative, with the value and ``F``."""
        values, F = self.statistics(parts)
        F_tensor = torch.as_tensor(F, dtype=parts.dtype, device=parts.device)
        f = torch.as_tensor(values, dtype=parts.dtype, device=parts.device) + F_tensor @ (parts - parts.detach())
        return f, values, F

    def part_covariances(
        self, probabilities: Tensor, agent_weights: Tensor, parts: Tensor, rho: Tensor | None = None
    ) -> Tensor:
        """:math:`S_P`, ``[P, P]``: :math:`N/N_d` times the covariance of the values over the survey."""
        P = len(self.parts)
        S = probabilities.new_zeros((P, P))
        for layout in self.layouts:  # a loop over datasets
            q = self.sampling_weights(layout, probabilities, agent_weights, rho).reshape(-1)
            index = torch.as_tensor(layout.parts, device=S.device)
            centered = layout.values.reshape(len(layout.parts), -1) - parts[index].unsqueeze(-1)
            block = (centered * q) @ centered.T / q.sum()
            scale = self.problem.N / layout.dataset.observations
            S[index.unsqueeze(1), index.unsqueeze(0)] = scale * block
        return S

    def covariances(self, probabilities: Tensor, agent_weights: Tensor, rho: Tensor | None = None) -> Tensor:
        """:math:`S_M = F S_P F'` at the given probabilities (or the given sample covariances)."""
        if self.sample_covariances is not None:
            return self.sample_covariances
        with torch.no_grad():
            parts = self.part_values(probabilities, agent_weights, rho)
            _, F = self.statistics(parts)
            F_tensor = torch.as_tensor(F, dtype=parts.dtype, device=parts.device)
            S = F_tensor @ self.part_covariances(probabilities, agent_weights, parts, rho) @ F_tensor.T
        return (S + S.T) / 2

    def restricted(self, start: int, stop: int) -> MicroMoments:
        """The same micro moments on markets ``[start, stop)`` only, their indices from ``start`` (a shard's)."""
        restricted = copy.copy(self)
        layouts = []
        for layout in self.layouts:
            if layout.linked is not None:
                raise SpecificationError(
                    f"PanelMicroDataset '{layout.dataset.name}': panels are not sharded across processes yet."
                )
            keep = (layout.markets >= start) & (layout.markets < stop)
            factors = None if layout.factors is None else tuple(f[:, keep] for f in layout.factors)
            layouts.append(
                dataclasses.replace(
                    layout,
                    markets=layout.markets[keep] - start,
                    weights=layout.weights[keep],
                    values=layout.values[:, keep],
                    groups=None if layout.groups is None else layout.groups[keep],
                    factors=factors,
                )
            )
        restricted.layouts = layouts
        if self.nests is not None:
            restricted.nests = self.nests[start:stop]
        return restricted

    def weighting_block(
        self, probabilities: Tensor, agent_weights: Tensor, rho: Tensor | None = None
    ) -> tuple[Tensor, bool]:
        """:math:`S_M^{+}`, the micro block of an updated weighting matrix, and whether :math:`S_M` is singular."""
        return invert(self.covariances(probabilities, agent_weights, rho))


def _statistic(moment: MicroMoment, v: np.ndarray) -> tuple[float, np.ndarray]:
    """:math:`f_m(v)` and its gradient for one moment."""
    if moment.compute_value is None:
        return float(v[0]), np.ones(1)
    try:
        value = float(np.asarray(moment.compute_value(v.copy()), dtype=np.float64).reshape(()))
    except Exception as error:
        raise SpecificationError(f"MicroMoment '{moment.name}': compute_value failed ({error}).") from error
    if moment.compute_gradient is not None:
        try:
            gradient = np.asarray(moment.compute_gradient(v.copy()), dtype=np.float64).reshape(-1)
        except Exception as error:
            raise SpecificationError(f"MicroMoment '{moment.name}': compute_gradient failed ({error}).") from error
        if gradient.size != v.size:
            raise SpecificationError(
                f"MicroMoment '{moment.name}': compute_gradient returns {gradient.size} values for {v.size} parts."
            )
        return value, gradient
    tensor = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    try:
        with torch.enable_grad():  # callers evaluate S_M and compute_micro_values under no_grad
            output = moment.compute_value(tensor)
            (gradient_tensor,) = torch.autograd.grad(torch.as_tensor(output).reshape(()), tensor)
    except Exception as error:
        raise SpecificationError(
            f"MicroMoment '{moment.name}': without compute_gradient, the gradient of compute_value is taken by "
            f"autograd, calling it on a torch tensor, which failed ({error}). Write compute_value with operators "
            "or torch functions, or give compute_gradient."
        ) from error
    return value, gradient_tensor.numpy().astype(np.float64)
