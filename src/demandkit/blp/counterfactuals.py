"""Supply-side post-estimation and counterfactuals, batched over markets.

Marginal costs :math:`c = p - \\eta(p)`, markups (Lerner indices :math:`(p - c)/p`), profits
:math:`(p - c)s`, HHI, passthrough :math:`\\Upsilon = \\partial p/\\partial c' = (I - \\partial\\eta/\\partial p')^{-1}`
(with :math:`\\partial\\eta/\\partial p` by autograd, no hand-written share Hessians), approximate
equilibrium prices :math:`c + \\eta(p; O^{new})`, equilibrium prices by the zeta-markup fixed point
(Morrow and Skerlos 2011) iterated for all markets at once, long-run diversion ratios and a one-call
merger simulation. Counterfactual prices move utilities through the designs, which must be linear in
prices (the derivative matrices are checked once).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..construction.ownership import ownership_from_firms
from ..exceptions import ConvergenceWarning, InvalidDataError, SpecificationError
from ..kernels.equilibrium import iterate_prices
from ..kernels.markups import bertrand_markups, equilibrium_zeta
from ..kernels.shares import agent_utilities, compute_probabilities, share_jacobian


@dataclass(frozen=True)
class MergerResults:
    """Outcomes of a merger (or any change of ownership or costs): one row per product and per market."""

    products: pd.DataFrame  # market_ids, product ids, firm ids before/after, prices, shares, markups, profits
    markets: pd.DataFrame  # market_ids, HHI, consumer surplus and profits before/after, converged

    def __str__(self) -> str:
        changes = self.products["price_change_percent"]
        lines = [
            "Merger Simulation:",
            f"  markets: {len(self.markets)}, products: {len(self.products)}, equilibria converged in "
            f"{int(self.markets.converged.sum())} of {len(self.markets)} markets",
            f"  price change (%): mean {changes.mean():+.3f}, median {changes.median():+.3f}, max {changes.max():+.3f}",
            f"  HHI change: mean {self.markets.hhi_change.mean():+.1f}",
            f"  consumer surplus change: total {self.markets.consumer_surplus_change.sum():+.6g}",
        ]
        return "\n".join(lines)


class SupplyPostEstimation:
    """Mixin for :class:`~demandkit.blp.results.ProblemResults` with the supply-side computations."""

    problem: Any
    model: Any

    # ------------------------------------------------------------- internals
    def _check_linear_prices(self) -> None:
        if getattr(self, "_linear_prices_checked", False):
            return
        p = self.problem
        if p.prices_padded is None:
            raise InvalidDataError("Supply-side computations need a prices column in product_data.")
        shifted = p.products.assign(prices=p.products["prices"] * 1.7 + 0.3)
        for formulation, derivative in ((p.product_formulations[0], p.dX1), (p.product_formulations[1], p.dX2)):
            if formulation is not None and not np.allclose(
                formulation.derivative_matrix(shifted, "prices"), derivative, rtol=1e-7, atol=1e-9
            ):
                raise SpecificationError(
                    f"Counterfactual prices need {formulation.formula!r} to be linear in prices (e.g. 'prices', not "
                    "'log(prices)'); evaluate such counterfactuals by building a new Problem at the new prices."
                )
        self._linear_prices_checked = True

    def _ownership_tensor(self, firm_ids: Any = None, ownership: Any = None) -> Tensor:
        p = self.problem
        if ownership is not None:
            matrix = np.asarray(ownership, dtype=np.float64)
            width = p.layout.mask.shape[1]
            if matrix.shape != (p.N, width) and not (
                matrix.ndim == 2 and matrix.shape[0] == p.N and matrix.shape[1] >= width
            ):
                raise InvalidDataError(f"ownership must be N x J_max = {p.N} x {width}; received {matrix.shape}.")
            padded = p.layout.pad(np.nan_to_num(matrix[:, :width]))
            both = p.layout.mask[:, :, None] & p.layout.mask[:, None, :]
            return p._tensor(np.where(both, padded, 0.0))
        if firm_ids is not None:
            ids = np.asarray(firm_ids).reshape(-1)
            if ids.shape[0] != p.N:
                raise InvalidDataError(f"firm_ids must have one entry per product ({p.N}); received {ids.shape[0]}.")
            return p._tensor(ownership_from_firms(p.layout, ids))
        if p.ownership_padded is None:
            raise InvalidDataError("Supply-side computations need firm_ids (or ownership columns) in product_data.")
        return p.ownership_padded

    def _pad(self, values: Any, name: str) -> Tensor:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.shape[0] != self.problem.N or not np.isfinite(array).all():
            raise InvalidDataError(f"{name} must hold {self.problem.N} finite values, one per product.")
        return self.problem._tensor(self.problem.layout.pad(array))

    def _demand_at(self, prices: Tensor) -> tuple[Any, Tensor, Tensor | None]:
        """Probabilities, price derivatives of utility and coefficients at ``prices`` (differentiable)."""
        self._check_linear_prices()
        p, model = self.problem, self.model
        sigma, pi, rho, beta, delta = self._tensors()
        change = torch.where(p.product_mask, prices - p.prices_padded, 0.0)
        delta = delta + (p.dX1_padded @ beta) * change
        coefficients = model.coefficients(sigma, pi)
        mu = None
        if coefficients is not None:
            X2 = model.X2 + p.dX2_padded * change.unsqueeze(-1)
            mu = torch.einsum("tjk,tik->tji", X2, coefficients)
        nested_rho = rho if model.nesting is not None else None
        probabilities = compute_probabilities(agent_utilities(delta, mu, model.mask), model.nesting, nested_rho)
        derivatives = (p.dX1_padded @ beta).unsqueeze(-1)
        if coefficients is not None:
            derivatives = derivatives + torch.einsum("tjk,tik->tji", p.dX2_padded, coefficients)
        return probabilities, derivatives.expand(-1, -1, model.weights.shape[1]), coefficients

    def _markups_at(self, prices: Tensor, ownership: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\eta(p)` and shares at ``prices``."""
        probabilities, derivatives, _ = self._demand_at(prices)
        model = self.model
        jacobian = share_jacobian(probabilities, model.weights, model.mask, model.nesting, derivatives)
        shares = (torch.exp(probabilities.log_probabilities) * model.weights.unsqueeze(1)).sum(-1)
        return bertrand_markups(jacobian, ownership, shares, model.mask), shares

    def _costs(self, firm_ids: Any = None, ownership: Any = None) -> Tensor:
        prices = self.problem.prices_padded
        return prices - self._markups_at(prices, self._ownership_tensor(firm_ids, ownership))[0]

    def _rows(self, padded: Tensor) -> np.ndarray:
        return self._stack_vector(torch.where(self.problem.product_mask, padded, 0.0))

    # --------------------------------------------------------------- public
    def compute_costs(self, firm_ids: Any = None, ownership: Any = None) -> np.ndarray:
        """Marginal costs :math:`c = p - \\eta` under the data's (or the given) ownership, ``N x 1``."""
        with torch.no_grad():
            return self._rows(self._costs(firm_ids, ownership))

    def compute_markups(self, prices: Any = None, costs: Any = None) -> np.ndarray:
        """Markups as Lerner indices :math:`(p - c)/p`, ``N x 1`` (PyBLP's definition)."""
        prices_array = self.problem.products["prices"].to_numpy() if prices is None else np.asarray(prices)
        costs_array = self.compute_costs() if costs is None else np.asarray(costs)
        prices_array, costs_array = prices_array.reshape(-1, 1), costs_array.reshape(-1, 1)
        return (prices_array - costs_array) / prices_array

    def compute_profits(self, prices: Any = None, shares: Any = None, costs: Any = None) -> np.ndarray:
        """Profits per unit of market size :math:`(p - c)s`, ``N x 1``.

        As in PyBLP, ``shares`` default to the observed shares even when ``prices`` are given; pass
        ``shares=results.compute_shares(prices)`` for profits at a new equilibrium (``compute_merger`` does).
        """
        prices_array = self.problem.products["prices"].to_numpy() if prices is None else np.asarray(prices)
        if shares is None:
            shares = self.problem.shares  # PyBLP's default: the observed shares, even at new prices
        costs_array = self.compute_costs() if costs is None else np.asarray(costs)
        return (prices_array.reshape(-1, 1) - costs_array.reshape(-1, 1)) * np.asarray(shares).reshape(-1, 1)

    def compute_hhi(self, firm_ids: Any = None, shares: Any = None) -> np.ndarray:
        """Herfindahl-Hirschman indices :math:`10{,}000\\sum_f(\\sum_{j\\in J_f}s_j / \\sum_j s_j)^2`, ``T x 1``.

        Shares are of the inside goods (firm sales over the market's inside sales), as antitrust practice
        and PyBLP's computation have it.
        """
        p = self.problem
        ids = p.products["firm_ids"].to_numpy() if firm_ids is None else np.asarray(firm_ids).reshape(-1)
        values = p.shares if shares is None else np.asarray(shares, dtype=np.float64).reshape(-1)
        frame = pd.DataFrame({"t": p.layout.market_of_row, "f": ids, "s": values})
        frame["s"] = frame["s"] / frame.groupby("t")["s"].transform("sum")
        firm_shares = frame.groupby(["t", "f"], sort=True)["s"].sum()
        return (1e4 * (firm_shares**2).groupby(level=0).sum()).to_numpy().reshape(-1, 1)

    def compute_passthrough(self, firm_ids: Any = None, ownership: Any = None) -> np.ndarray:
        """Passthrough of costs to prices, stacked ``N x J_max``.

        :math:`\\Upsilon_{jk} = \\partial p_j/\\partial c_k = [(I - \\partial\\eta/\\partial p')^{-1}]_{jk}`.
        """
        p = self.problem
        own = self._ownership_tensor(firm_ids, ownership)
        prices = p.prices_padded.clone().requires_grad_(True)
        markups = self._markups_at(prices, own)[0]
        J = prices.shape[1]
        eye = torch.eye(J, dtype=prices.dtype, device=prices.device)
        # one reverse pass per product slot, all markets at once: row j of each market's d eta / d p
        rows = torch.autograd.grad(
            markups, prices, grad_outputs=eye.unsqueeze(1).expand(J, *markups.shape), is_grads_batched=True
        )[0]  # [J, T, J]
        derivative = rows.permute(1, 0, 2)
        both = p.product_mask.unsqueeze(-1) & p.product_mask.unsqueeze(-2)
        inverse = torch.where(both, eye - derivative, eye.expand_as(derivative))
        passthrough = torch.linalg.inv(inverse).detach()
        return self._stack_matrices(passthrough)

    def compute_approximate_prices(self, firm_ids: Any = None, ownership: Any = None, costs: Any = None) -> np.ndarray:
        """:math:`c + \\eta(p; O)`: prices after a change of ownership or costs holding shares and their
        derivatives fixed (in the spirit of Hausman, Leonard and Zona 1994), ``N x 1``."""
        with torch.no_grad():
            costs_padded = self._costs() if costs is None else self._pad(costs, "costs")
            markups = self._markups_at(self.problem.prices_padded, self._ownership_tensor(firm_ids, ownership))[0]
            return self._rows(costs_padded + markups)

    def _equilibrium(
        self, firm_ids: Any, ownership: Any, costs: Any, prices: Any, iteration: Iteration | None
    ) -> tuple[Tensor, Tensor]:
        p, model = self.problem, self.model
        iteration = iteration or Iteration("simple", {"atol": 1e-12})
        with torch.no_grad():
            costs_padded = self._costs() if costs is None else self._pad(costs, "costs")
            start = p.prices_padded if prices is None else self._pad(prices, "prices")
            own = self._ownership_tensor(firm_ids, ownership)
            mask = model.mask

            def markups(current: Tensor) -> Tensor:
                probabilities, derivatives, _ = self._demand_at(current)
                margins = current - costs_padded
                return equilibrium_zeta(probabilities, model.weights, derivatives, own, margins, mask, model.nesting)[0]

            result = iterate_prices(markups, costs_padded, start, mask, iteration.method, iteration.options)
        if not bool(result.converged.all()):
            failed = [p.layout.market_ids[t] for t in torch.nonzero(~result.converged).flatten().tolist()]
            warnings.warn(
                f"Equilibrium prices did not converge in {len(failed)} market(s): {failed[:10]}. Their prices are "
                "the last iterate; see the 'converged' column of compute_merger or pass a different iteration.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return result.values, result.converged

    def compute_prices(
        self,
        firm_ids: Any = None,
        ownership: Any = None,
        costs: Any = None,
        prices: Any = None,
        iteration: Iteration | None = None,
    ) -> np.ndarray:
        """Equilibrium prices :math:`p = c + \\zeta(p)` under new ownership and/or costs, ``N x 1``.

        All markets iterate together; each stops on its own (default ``Iteration('simple', {'atol': 1e-12})``).
        Markets that do not converge raise a :class:`~demandkit.exceptions.ConvergenceWarning` naming them.
        """
        return self._rows(self._equilibrium(firm_ids, ownership, costs, prices, iteration)[0])

    def compute_long_run_diversion_ratios(self) -> np.ndarray:
        """Long-run diversion :math:`(s_k^{(-j)} - s_k)/s_j` when product :math:`j` leaves the market, stacked
        ``N x J_max``; the diagonal holds diversion to the outside good. Logit-kernel models."""
        model = self.model
        if model.nesting is not None:
            raise SpecificationError("Long-run diversion ratios are implemented for (random-coefficients) logit only.")
        with torch.no_grad():
            delta, mu, _, _ = self._state()
            utilities = agent_utilities(delta, mu, model.mask)
            peak = utilities.amax(dim=1, keepdim=True).clamp_min(0)
            exp_u = torch.exp(utilities - peak) * model.mask.unsqueeze(-1)  # [T, J, I]
            denominator = torch.exp(-peak) + exp_u.sum(1, keepdim=True)  # [T, 1, I]
            w = model.weights.unsqueeze(1)
            shares = (exp_u * w / denominator).sum(-1)  # [T, J]
            outside = (torch.exp(-peak) * w / denominator).sum(-1).squeeze(1)  # [T]
            without = w / (denominator - exp_u)  # [T, J(removed), I]
            new_shares = torch.einsum("tji,tki->tjk", without, exp_u)  # s_k without j
            new_outside = (without * torch.exp(-peak)).sum(-1)  # [T, J]
            safe = torch.where(model.mask, shares, torch.ones_like(shares))
            ratios = (new_shares - shares.unsqueeze(1)) / safe.unsqueeze(-1)
            outside_ratio = (new_outside - outside.unsqueeze(-1)) / safe
            eye = torch.eye(ratios.shape[-1], dtype=torch.bool, device=ratios.device)
            ratios = torch.where(eye, outside_ratio.unsqueeze(-1).expand_as(ratios), ratios)
        return self._stack_matrices(ratios)

    def compute_merger(self, firm_ids: Any, costs: Any = None, iteration: Iteration | None = None) -> MergerResults:
        """Simulate a merger: new ``firm_ids`` (one per product) in; prices, shares, markups, profits, HHI and
        consumer surplus before and after out, with per-market convergence of the new equilibrium."""
        p = self.problem
        new_ids = np.asarray(firm_ids).reshape(-1)
        if new_ids.shape[0] != p.N:
            raise InvalidDataError(f"firm_ids must have one entry per product ({p.N}); received {new_ids.shape[0]}.")
        costs_rows = self.compute_costs() if costs is None else np.asarray(costs, dtype=np.float64).reshape(-1, 1)
        prices_padded, converged = self._equilibrium(new_ids, None, costs_rows, None, iteration)
        new_prices = self._rows(prices_padded)
        old_prices = p.products["prices"].to_numpy(dtype=np.float64).reshape(-1, 1)
        new_shares = self.compute_shares(prices=new_prices)
        old_shares = p.shares.reshape(-1, 1)
        products = pd.DataFrame({"market_ids": p.market_ids_of_rows})
        if "product_ids" in p.products.columns:
            products["product_ids"] = p.products["product_ids"].to_numpy()
        products["firm_ids"] = p.products["firm_ids"].to_numpy()
        products["merged_firm_ids"] = new_ids
        products["costs"] = costs_rows[:, 0]
        products["prices"], products["merged_prices"] = old_prices[:, 0], new_prices[:, 0]
        products["price_change_percent"] = 100 * (new_prices[:, 0] / old_prices[:, 0] - 1)
        products["shares"], products["merged_shares"] = old_shares[:, 0], new_shares[:, 0]
        products["profits"] = ((old_prices - costs_rows) * old_shares)[:, 0]
        products["merged_profits"] = ((new_prices - costs_rows) * new_shares)[:, 0]
        old_cs = self.compute_consumer_surpluses()[:, 0]
        new_cs = self.compute_consumer_surpluses(prices=new_prices)[:, 0]
        old_hhi = self.compute_hhi()[:, 0]
        new_hhi = self.compute_hhi(firm_ids=new_ids, shares=new_shares)[:, 0]
        markets = pd.DataFrame(
            {
                "market_ids": p.layout.market_ids,
                "hhi": old_hhi,
                "merged_hhi": new_hhi,
                "hhi_change": new_hhi - old_hhi,
                "consumer_surplus": old_cs,
                "merged_consumer_surplus": new_cs,
                "consumer_surplus_change": new_cs - old_cs,
                "converged": converged.cpu().numpy(),
            }
        )
        return MergerResults(products, markets)
