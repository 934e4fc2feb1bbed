"""Supply-side post-estimation and counterfactuals, batched over markets.

Marginal costs :math:`c = p - \\eta(p)`, markups (Lerner indices :math:`(p - c)/p`), profits
:math:`(p - c)s`, HHI, passthrough :math:`\\Upsilon = \\partial p/\\partial c' = (I - \\partial\\eta/\\partial p')^{-1}`
(with :math:`\\partial\\eta/\\partial p` by autograd, no hand-written share Hessians), approximate
equilibrium prices :math:`c + \\eta(p; O^{new})`, equilibrium prices by the zeta-markup fixed point
(Morrow and Skerlos 2011) iterated for all markets at once, long-run diversion ratios and a one-call
merger simulation (``merger``). Counterfactual prices move utilities through the designs, which must be linear in
prices (the derivative matrices are checked once). Every method takes PyBLP's ``market_id`` (``markets``).
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
from ..kernels.shares import agent_utilities, compute_probabilities, heterogeneity, log_inclusive_values, share_jacobian
from .long_run_diversion import long_run_diversion_ratios
from .markets import MarketSelection, select_market
from .merger import simulate_merger
from .share_costs import share_dependent_costs


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
        shifted = p.product_frame.assign(prices=p.product_frame["prices"] * 1.7 + 0.3)
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
            mu = model.heterogeneity(coefficients, X2)
        nested_rho = rho if model.nesting is not None else None
        probabilities = compute_probabilities(agent_utilities(delta, mu, model.mask), model.nesting, nested_rho)
        derivatives = (p.dX1_padded @ beta).unsqueeze(-1)
        if coefficients is not None:
            derivatives = derivatives + heterogeneity(p.dX2_padded, coefficients)
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

    def _firm_ids(self) -> np.ndarray:
        """The data's firm ids, or one firm per product where there are none."""
        products = self.problem.product_frame
        return products["firm_ids"].to_numpy() if "firm_ids" in products.columns else np.arange(self.problem.N)

    def _widen(self, market: MarketSelection | None, firm_ids: Any = None, ownership: Any = None) -> tuple[Any, Any]:
        """``firm_ids`` and ``ownership`` given for one market widened to all products (other markets unchanged)."""
        if market is None:
            return firm_ids, ownership
        if ownership is not None:
            return firm_ids, market.expand_ownership(ownership, self.problem.layout.mask.shape[1])
        if firm_ids is not None:
            return market.expand_ids(firm_ids, self._firm_ids(), "firm_ids"), None
        return None, None

    def _widen_costs(self, market: MarketSelection | None, costs: Any) -> Any:
        """``costs`` given for one market widened to all products, other markets' at the estimated costs."""
        if market is None or costs is None:
            return costs
        with torch.no_grad():
            return market.expand(costs, self._rows(self._costs()), "costs")

    # --------------------------------------------------------------- public
    def compute_costs(self, firm_ids: Any = None, ownership: Any = None, market_id: Any = None) -> np.ndarray:
        """Marginal costs :math:`c = p - \\eta` under the data's (or the given) ownership.

        Parameters
        ----------
        firm_ids : array-like, optional
            Firm ids (``N``, or ``J_t`` with ``market_id``); by default the data's.
        ownership : array-like, optional
            Ownership matrices (``N x J_max``, or ``J_t x J_t`` with ``market_id``).
        market_id : object, optional
            One market's id: its costs only.

        Returns
        -------
        ndarray
            ``N x 1`` costs (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        firm_ids, ownership = self._widen(market, firm_ids, ownership)
        with torch.no_grad():
            stacked = self._rows(self._costs(firm_ids, ownership))
        return stacked if market is None else market.vector(stacked)

    def compute_markups(self, prices: Any = None, costs: Any = None, market_id: Any = None) -> np.ndarray:
        """Markups as Lerner indices :math:`(p - c)/p` (PyBLP's definition).

        Parameters
        ----------
        prices : array-like, optional
            Prices (``N``, or ``J_t`` with ``market_id``); by default the data's.
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default :meth:`compute_costs`.
        market_id : object, optional
            One market's id: its markups only.

        Returns
        -------
        ndarray
            ``N x 1`` markups (``J_t x 1`` for one market).
        """
        prices_array, costs_array = self._prices_and_costs(prices, costs, market_id)
        return (prices_array - costs_array) / prices_array

    def _prices_and_costs(self, prices: Any, costs: Any, market_id: Any) -> tuple[np.ndarray, np.ndarray]:
        """``J x 1`` prices (the data's by default) and costs (estimated by default) of all products or one market."""
        market = select_market(self.problem, market_id)
        prices_array = self.problem.product_frame["prices"].to_numpy() if prices is None else np.asarray(prices)
        costs_array = self.compute_costs(market_id=market_id) if costs is None else np.asarray(costs)
        if market is not None:
            prices_array = market.restrict(prices_array, "prices")
            costs_array = market.restrict(costs_array, "costs")
        return prices_array.reshape(-1, 1), costs_array.reshape(-1, 1)

    def compute_profits(
        self, prices: Any = None, shares: Any = None, costs: Any = None, market_id: Any = None
    ) -> np.ndarray:
        """Profits per unit of market size :math:`(p - c)s`.

        As in PyBLP, ``shares`` default to the observed shares even when ``prices`` are given; pass
        ``shares=results.compute_shares(prices)`` for profits at a new equilibrium (``compute_merger`` does).

        Parameters
        ----------
        prices : array-like, optional
            Prices (``N``, or ``J_t`` with ``market_id``); by default the data's.
        shares : array-like, optional
            Shares (``N``, or ``J_t`` with ``market_id``); by default the data's.
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default :meth:`compute_costs`.
        market_id : object, optional
            One market's id: its profits only.

        Returns
        -------
        ndarray
            ``N x 1`` profits (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        prices_array, costs_array = self._prices_and_costs(prices, costs, market_id)
        if shares is None:
            shares = self.problem.shares  # PyBLP's default: the observed shares, even at new prices
        shares_array = np.asarray(shares) if market is None else market.restrict(shares, "shares")
        return (prices_array - costs_array) * shares_array.reshape(-1, 1)

    def compute_hhi(self, firm_ids: Any = None, shares: Any = None, market_id: Any = None) -> np.ndarray:
        """Herfindahl-Hirschman indices :math:`10{,}000\\sum_f(\\sum_{j\\in J_f}s_j / \\sum_j s_j)^2`.

        Shares are of the inside goods (firm sales over the market's inside sales), as antitrust practice
        and PyBLP's computation have it.

        Parameters
        ----------
        firm_ids : array-like, optional
            Firm ids (``N``, or ``J_t`` with ``market_id``); by default the data's.
        shares : array-like, optional
            Shares (``N``, or ``J_t`` with ``market_id``); by default the data's.
        market_id : object, optional
            One market's id: its index only.

        Returns
        -------
        ndarray
            ``T x 1`` indices in sorted market order (``1 x 1`` for one market).
        """
        p = self.problem
        market = select_market(p, market_id)
        if market is not None:
            firm_ids = None if firm_ids is None else market.expand_ids(firm_ids, self._firm_ids(), "firm_ids")
            shares = None if shares is None else market.expand(shares, p.shares, "shares")
        ids = p.product_frame["firm_ids"].to_numpy() if firm_ids is None else np.asarray(firm_ids).reshape(-1)
        values = p.shares if shares is None else np.asarray(shares, dtype=np.float64).reshape(-1)
        frame = pd.DataFrame({"t": p.layout.market_of_row, "f": ids, "s": values})
        frame["s"] = frame["s"] / frame.groupby("t")["s"].transform("sum")
        firm_shares = frame.groupby(["t", "f"], sort=True)["s"].sum()
        indices = (1e4 * (firm_shares**2).groupby(level=0).sum()).to_numpy().reshape(-1, 1)
        return indices if market is None else market.market(indices)

    def compute_passthrough(self, firm_ids: Any = None, ownership: Any = None, market_id: Any = None) -> np.ndarray:
        """Passthrough of costs to prices,
        :math:`\\Upsilon_{jk} = \\partial p_j/\\partial c_k = [(I - \\partial\\eta/\\partial p')^{-1}]_{jk}`.

        Parameters
        ----------
        firm_ids : array-like, optional
            Firm ids (``N``, or ``J_t`` with ``market_id``); by default the data's.
        ownership : array-like, optional
            Ownership matrices (``N x J_max``, or ``J_t x J_t`` with ``market_id``).
        market_id : object, optional
            One market's id: its matrix only.

        Returns
        -------
        ndarray
            Stacked ``N x J_max`` matrices (``J_t x J_t`` for one market).
        """
        p = self.problem
        market = select_market(p, market_id)
        own = self._ownership_tensor(*self._widen(market, firm_ids, ownership))
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
        stacked = self._stack_matrices(passthrough)
        return stacked if market is None else market.matrices(stacked)

    def compute_approximate_prices(
        self, firm_ids: Any = None, ownership: Any = None, costs: Any = None, market_id: Any = None
    ) -> np.ndarray:
        """:math:`c + \\eta(p; O)`: prices after a change of ownership or costs holding shares and their
        derivatives fixed (in the spirit of Hausman, Leonard and Zona 1994).

        Parameters
        ----------
        firm_ids : array-like, optional
            New firm ids (``N``, or ``J_t`` with ``market_id``); by default the data's.
        ownership : array-like, optional
            New ownership matrices (``N x J_max``, or ``J_t x J_t`` with ``market_id``).
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default the estimated costs.
        market_id : object, optional
            One market's id: its prices only.

        Returns
        -------
        ndarray
            ``N x 1`` prices (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        firm_ids, ownership = self._widen(market, firm_ids, ownership)
        costs = self._widen_costs(market, costs)
        with torch.no_grad():
            costs_padded = self._costs() if costs is None else self._pad(costs, "costs")
            markups = self._markups_at(self.problem.prices_padded, self._ownership_tensor(firm_ids, ownership))[0]
            stacked = self._rows(costs_padded + markups)
        return stacked if market is None else market.vector(stacked)

    def _equilibrium(
        self,
        firm_ids: Any,
        ownership: Any,
        costs: Any,
        prices: Any,
        iteration: Iteration | None,
        market: MarketSelection | None = None,
        constant_costs: bool = True,
    ) -> tuple[Tensor, Tensor]:
        p, model = self.problem, self.model
        iteration = iteration or Iteration("simple", {"atol": 1e-12})
        with torch.no_grad():
            costs_padded = self._costs() if costs is None else self._pad(costs, "costs")
            start = p.prices_padded if prices is None else self._pad(prices, "prices")
            own = self._ownership_tensor(firm_ids, ownership)
            mask = model.mask

            moving = None if constant_costs else share_dependent_costs(self, costs_padded)

            def markups(current: Tensor) -> Tensor:
                """:math:`\\zeta(p)`, or :math:`c(s(p)) + \\zeta(p)` when costs move with shares."""
                probabilities, derivatives, _ = self._demand_at(current)
                costs_now = costs_padded
                if moving is not None:
                    shares = (torch.exp(probabilities.log_probabilities) * model.weights.unsqueeze(1)).sum(-1)
                    costs_now = moving(shares)
                margins = current - costs_now
                zeta = equilibrium_zeta(probabilities, model.weights, derivatives, own, margins, mask, model.nesting)[0]
                return zeta if moving is None else costs_now + zeta

            base = costs_padded if moving is None else torch.zeros_like(costs_padded)
            result = iterate_prices(markups, base, start, mask, iteration.method, iteration.options)
        converged = result.converged if market is None else result.converged[market.index : market.index + 1]
        if not bool(converged.all()):
            indices = torch.nonzero(~result.converged).flatten().tolist() if market is None else [market.index]
            failed = [p.layout.market_ids[t] for t in indices]
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
        constant_costs: bool = True,
        market_id: Any = None,
    ) -> np.ndarray:
        """Equilibrium prices :math:`p = c + \\zeta(p)` under new ownership and/or costs.

        All markets iterate together; each stops on its own (default ``Iteration('simple', {'atol': 1e-12})``).
        Markets that do not converge raise a :class:`~demandkit.exceptions.ConvergenceWarning` naming them.

        Parameters
        ----------
        firm_ids : array-like, optional
            New firm ids (``N``, or ``J_t`` with ``market_id``); by default the data's.
        ownership : array-like, optional
            New ownership matrices (``N x J_max``, or ``J_t x J_t`` with ``market_id``).
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default the estimated costs.
        prices : array-like, optional
            Starting prices (``N``, or ``J_t`` with ``market_id``); by default the data's.
        iteration : Iteration, optional
            How to iterate the fixed point.
        constant_costs : bool, optional
            Whether marginal costs stay at ``costs`` as prices and shares change (the default, as
            :meth:`compute_costs` assumes). With False and ``shares`` in the :math:`X_3` formulation, the costs follow
            the shares at each iterate, :math:`c(s) = c + [X_3(s) - X_3(S)]\\gamma` (times
            :math:`\\exp` of that change for ``costs_type='log'``; :mod:`~demandkit.blp.share_costs`), firms still
            pricing as if costs were constant; without shares in :math:`X_3` it changes nothing.
        market_id : object, optional
            One market's id: its prices only (and only its convergence is reported).

        Returns
        -------
        ndarray
            ``N x 1`` prices (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        firm_ids, ownership = self._widen(market, firm_ids, ownership)
        costs = self._widen_costs(market, costs)
        if market is not None and prices is not None:
            prices = market.expand(prices, self.problem.product_frame["prices"].to_numpy(dtype=np.float64), "prices")
        stacked = self._rows(
            self._equilibrium(firm_ids, ownership, costs, prices, iteration, market, constant_costs)[0]
        )
        return stacked if market is None else market.vector(stacked)

    def compute_long_run_diversion_ratios(self, market_id: Any = None) -> np.ndarray:
        """Long-run diversion :math:`(s_{k(-j)} - s_k)/s_j` when product :math:`j` leaves the market; the diagonal
        holds diversion to the outside good. Logit and nested logit kernels, in closed form
        (:mod:`~demandkit.blp.long_run_diversion`).

        Parameters
        ----------
        market_id : object, optional
            One market's id: its matrix only.

        Returns
        -------
        ndarray
            Stacked ``N x J_max`` matrices (``J_t x J_t`` for one market).
        """
        market = select_market(self.problem, market_id)
        model = self.model
        with torch.no_grad():
            delta, mu, rho, _ = self._state()
            nested_rho = rho if model.nesting is not None else None
            utilities = agent_utilities(delta, mu, model.mask)
            probabilities = compute_probabilities(utilities, model.nesting, nested_rho)
            log_outside = -log_inclusive_values(utilities, model.nesting, nested_rho)
            ratios = long_run_diversion_ratios(probabilities, log_outside, model.weights, model.mask, model.nesting)
        stacked = self._stack_matrices(ratios)
        return stacked if market is None else market.matrices(stacked)

    def compute_merger(
        self, firm_ids: Any, costs: Any = None, iteration: Iteration | None = None, market_id: Any = None
    ) -> MergerResults:
        """Simulate a merger: prices, shares, markups, profits, HHI and consumer surplus before and after, with
        per-market convergence of the new equilibrium.

        Parameters
        ----------
        firm_ids : array-like
            Firm ids after the merger (``N``, or ``J_t`` with ``market_id``).
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default the estimated costs.
        iteration : Iteration, optional
            How to iterate the new equilibrium (see :meth:`compute_prices`).
        market_id : object, optional
            One market's id: the merger in that market only (its rows of both tables).

        Returns
        -------
        MergerResults
            One row per product and one per market.
        """
        return MergerResults(*simulate_merger(self, firm_ids, costs, iteration, select_market(self.problem, market_id)))
