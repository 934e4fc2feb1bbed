"""Demand-side post-estimation on estimated parameters, batched over markets.

Outputs follow PyBLP's stacking: product-level vectors are ``N x 1`` in the user's row order,
product-by-product matrices are ``N x J_max`` with each market's ``J_t x J_t`` block in its rows and
NaN beyond ``J_t``, market-level values are ``T x 1`` in sorted market order. ``frame=True`` returns a
tidy pandas DataFrame indexed by the user's own ids instead. ``market_id`` keeps one market's part, as PyBLP
does (``J_t x 1``, ``J_t x J_t``, ``1 x 1``; see :mod:`demandkit.blp.markets`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..configurations.iteration import Iteration
from ..exceptions import InvalidDataError, SpecificationError
from ..kernels.shares import agent_utilities, heterogeneity, log_inclusive_values, share_jacobian
from .demand_derivatives import DemandDerivatives
from .markets import MarketSelection, select_market
from .other_agents import economy_with_agents, invert_shares


class DemandPostEstimation(DemandDerivatives):
    """Mixin for :class:`~demandkit.blp.results.ProblemResults`: elasticities, diversion, surplus, shares."""

    problem: Any
    model: Any

    # ------------------------------------------------------------- internals
    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        p = self.problem
        kwargs = {"dtype": p.dtype, "device": p.device}
        return (
            torch.as_tensor(self.sigma, **kwargs),
            torch.as_tensor(self.pi, **kwargs),
            torch.as_tensor(self.rho.reshape(-1), **kwargs) if self.rho.size else torch.zeros(0, **kwargs),
            torch.as_tensor(self.beta.reshape(-1), **kwargs),
            self._delta_padded,
        )

    def _coefficients(self, sigma: Tensor, pi: Tensor, model: Any = None) -> Tensor | None:
        if not self.problem.K2:
            return None
        return (model or self.model).coefficients(sigma, pi)

    def _state(
        self, prices: Any = None, delta: Tensor | None = None, model: Any = None, columns: dict | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Mean utilities, mu, rho and the coefficients, optionally at new prices or other product ``columns``.

        Changed columns move the estimated :math:`\\delta` through X1 (and mu through X2); a given ``delta``
        (``[T, J]``) is used as it is, the changed columns then moving mu only (PyBLP's convention). ``model`` is
        the demand model of other agents (:mod:`.other_agents`).
        """
        p = self.problem
        model = model or self.model
        sigma, pi, rho, _, estimated = self._tensors()
        coefficients = self._coefficients(sigma, pi, model)
        changes = dict(columns or {})
        if prices is not None:
            changes["prices"] = prices
        X2 = model.X2
        if changes:
            updates = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in changes.items()}
            frame = p.product_frame.assign(**updates)
            if delta is None:
                X1_new = p.product_formulations[0].build_matrix(frame)[0]
                estimated = estimated + p.padded((X1_new - p.design.X1_raw) @ self.beta.reshape(-1))
            if p.K2:
                X2 = p.padded(p.product_formulations[1].build_matrix(frame)[0])
        delta = estimated if delta is None else delta
        mu = None if coefficients is None else model.heterogeneity(coefficients, X2)
        return delta, mu, rho, coefficients

    def _utility_derivatives(
        self, name: str | None, coefficients: Tensor | None, frame: pd.DataFrame | None = None
    ) -> Tensor:
        """:math:`\\partial u_{ijt}/\\partial x_{jt}`, ``[T, J, I]`` (ones for ``name=None``, :math:`x = \\delta`)."""
        p = self.problem
        agents = self.model.weights.shape[1]
        if name is None:
            return torch.ones((p.T, p.product_mask.shape[1], agents), dtype=p.dtype, device=p.device)
        frame = p.product_frame if frame is None else frame
        dX1 = p.product_formulations[0].derivative_matrix(frame, name) @ self.beta.reshape(-1)
        derivatives = p.padded(dX1).unsqueeze(-1)
        if p.K2:
            dX2 = p.padded(p.product_formulations[1].derivative_matrix(frame, name))
            derivatives = derivatives + heterogeneity(dX2, coefficients)
        return derivatives.expand(-1, -1, agents)

    def _jacobian(self, name: str | None) -> tuple[Tensor, Tensor]:
        """Share derivatives :math:`\\partial s_j/\\partial x_k` ``[T, J, J]`` and shares ``[T, J]``."""
        delta, mu, rho, coefficients = self._state()
        probabilities = self.model.probabilities(delta, mu, rho)
        derivatives = self._utility_derivatives(name, coefficients)
        jacobian = share_jacobian(probabilities, self.model.weights, self.model.mask, self.model.nesting, derivatives)
        shares = (torch.exp(probabilities.log_probabilities) * self.model.weights.unsqueeze(1)).sum(-1)
        return jacobian, shares

    def _delta_of(self, delta: Any, market: MarketSelection | None) -> Tensor | None:
        """Given mean utilities (``N``, or ``J_t`` with ``market_id``) as ``[T, J]``, the estimated elsewhere."""
        if delta is None:
            return None
        values = np.asarray(delta, dtype=np.float64).reshape(-1)
        if market is not None:
            values = market.expand(values, self.delta, "delta")
        if values.shape[0] != self.problem.N or not np.isfinite(values).all():
            raise InvalidDataError(f"delta must hold {self.problem.N} finite values, one per product.")
        return self.problem.padded(values)

    def _stack_matrices(self, matrices: Tensor) -> np.ndarray:
        mask = self.problem.product_mask
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        values = torch.where(both, matrices, torch.nan)
        return self.problem.layout.unpad(values.cpu().numpy())

    def _stack_vector(self, values: Tensor) -> np.ndarray:
        return self.problem.layout.unpad(values.cpu().numpy()).reshape(-1, 1)

    def _frame_vector(self, values: np.ndarray, name: str) -> pd.DataFrame:
        p = self.problem
        frame = pd.DataFrame({"market_ids": p.market_ids_of_rows})
        if "product_ids" in p.product_frame.columns:
            frame["product_ids"] = p.product_frame["product_ids"].to_numpy()
        frame[name] = values.reshape(-1)
        return frame

    def _frame_matrices(self, stacked: np.ndarray, name: str) -> pd.DataFrame:
        """Long table: one row per market and ordered pair of products ``(j, k)``."""
        p = self.problem
        layout = p.layout
        ids = p.product_frame["product_ids"].to_numpy() if "product_ids" in p.product_frame.columns else np.arange(p.N)
        padded_ids = layout.pad(ids.astype(object), None)
        t, j, k = np.nonzero(layout.mask[:, :, None] & layout.mask[:, None, :])
        values = layout.pad(stacked, np.nan)[t, j, k]
        return pd.DataFrame(
            {
                "market_ids": layout.market_ids[t],
                "product_ids": padded_ids[t, j],
                "other_product_ids": padded_ids[t, k],
                name: values,
            }
        )

    def _prices_of(self, prices: Any, market: MarketSelection | None) -> Any:
        """``prices`` for all products: one market's ``J_t`` prices widened with the data's elsewhere."""
        if prices is None or market is None:
            return prices
        return market.expand(prices, self.problem.product_frame["prices"].to_numpy(dtype=np.float64), "prices")

    def _vector_output(
        self, stacked: np.ndarray, name: str, market: MarketSelection | None, frame: bool
    ) -> np.ndarray | pd.DataFrame:
        if frame:
            table = self._frame_vector(stacked, name)
            return table if market is None else market.frame(table)
        return stacked if market is None else market.vector(stacked)

    def _matrix_output(
        self, stacked: np.ndarray, name: str, market: MarketSelection | None, frame: bool
    ) -> np.ndarray | pd.DataFrame:
        if frame:
            table = self._frame_matrices(stacked, name)
            return table if market is None else market.frame(table)
        return stacked if market is None else market.matrices(stacked)

    # --------------------------------------------------------------- public
    def compute_probabilities(
        self,
        prices: Any = None,
        delta: Any = None,
        agent_data: Any = None,
        integration: Any = None,
        market_id: Any = None,
    ) -> np.ndarray:
        """Choice probabilities :math:`P_{ijt}`.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate them (``N``, or ``J_t`` with ``market_id``); by default the data's.
        delta : array-like, optional
            Mean utilities (``N``, or ``J_t`` with ``market_id``), such as from :meth:`compute_delta`; by default the
            estimated :math:`\\delta`, moved by any ``prices``. A given ``delta`` is used as it is (``prices`` then
            move only the agent-specific utilities).
        agent_data : DataFrame or mapping, optional
            Other agents (``market_ids``, ``weights``, ``nodes0, ...``, demographics); the problem's by default.
        integration : Integration, optional
            Builds other agents' nodes and weights (replacing any nodes of ``agent_data``).
        market_id : object, optional
            One market's id: its ``J_t x I_t`` block only.

        Returns
        -------
        ndarray
            ``N x I_max`` (agents in columns, NaN beyond ``I_t``), or ``J_t x I_t`` for one market.
        """
        economy, model = economy_with_agents(self, agent_data, integration)
        market = select_market(economy, market_id)
        with torch.no_grad():
            delta, mu, rho, _ = self._state(self._prices_of(prices, market), self._delta_of(delta, market), model)
            probabilities = torch.exp(model.probabilities(delta, mu, rho).log_probabilities)
            if economy.K2:
                probabilities = torch.where(economy.agent_mask.unsqueeze(1), probabilities, torch.nan)
        stacked = economy.layout.unpad(probabilities.cpu().numpy())
        return stacked if market is None else market.agent_matrix(stacked)

    def compute_shares(
        self,
        prices: Any = None,
        delta: Any = None,
        agent_data: Any = None,
        integration: Any = None,
        market_id: Any = None,
        frame: bool = False,
    ) -> np.ndarray | pd.DataFrame:
        """Market shares :math:`s_{jt}`, optionally at new ``prices``, mean utilities or agents.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate shares (``N``, or ``J_t`` with ``market_id``); by default the data's.
        delta : array-like, optional
            Mean utilities (``N``, or ``J_t`` with ``market_id``), such as from :meth:`compute_delta`; by default the
            estimated :math:`\\delta`, moved by any ``prices``. A given ``delta`` is used as it is (``prices`` then
            move only the agent-specific utilities).
        agent_data : DataFrame or mapping, optional
            Other agents (``market_ids``, ``weights``, ``nodes0, ...``, demographics); the problem's by default.
        integration : Integration, optional
            Builds other agents' nodes and weights (replacing any nodes of ``agent_data``).
        market_id : object, optional
            One market's id: its ``J_t`` shares only.
        frame : bool, optional
            Return a tidy DataFrame instead.

        Returns
        -------
        ndarray or DataFrame
            ``N x 1`` shares (``J_t x 1`` for one market).
        """
        economy, model = economy_with_agents(self, agent_data, integration)
        market = select_market(economy, market_id)
        with torch.no_grad():
            delta, mu, rho, _ = self._state(self._prices_of(prices, market), self._delta_of(delta, market), model)
            shares = torch.exp(model.log_shares(delta, mu, rho))
        stacked = self._stack_vector(torch.where(self.problem.product_mask, shares, 0.0))
        return self._vector_output(stacked, "shares", market, frame)

    def compute_delta(
        self,
        agent_data: Any = None,
        integration: Any = None,
        iteration: Iteration | None = None,
        fp_type: str = "safe_linear",
        shares_bounds: Any = (1e-300, None),
        market_id: Any = None,
    ) -> np.ndarray:
        """Mean utilities :math:`\\delta` that reproduce the observed shares at the estimated parameters, with other
        agents or another fixed-point configuration than in estimation (starting at the estimated :math:`\\delta`).

        Parameters
        ----------
        agent_data : DataFrame or mapping, optional
            Other agents (``market_ids``, ``weights``, ``nodes0, ...``, demographics); the problem's by default.
        integration : Integration, optional
            Builds other agents' nodes and weights (replacing any nodes of ``agent_data``).
        iteration : Iteration, optional
            How to solve the fixed point; ``Iteration('squarem', {'atol': 1e-14})`` by default.
        fp_type : {'safe_linear', 'linear', 'safe_nonlinear', 'nonlinear'}, optional
            PyBLP's choice of contraction. Every choice has the same fixed point; demandkit always iterates its
            log-space contraction (see :func:`~demandkit.blp.other_agents.invert_shares`).
        shares_bounds : tuple, optional
            PyBLP's bounds on simulated shares in the contraction; accepted, not needed by the log-space contraction.
        market_id : object, optional
            One market's id: its ``J_t`` mean utilities only.

        Returns
        -------
        ndarray
            ``N x 1`` mean utilities (``J_t x 1`` for one market).

        Warns
        -----
        ConvergenceWarning
            When the inversion does not converge in some markets (named).
        """
        market = select_market(self.problem, market_id)
        model = economy_with_agents(self, agent_data, integration)[1]
        stacked = self._stack_vector(invert_shares(self, model, iteration, fp_type, shares_bounds))
        return stacked if market is None else market.vector(stacked)

    def compute_elasticities(
        self, name: str | None = "prices", market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Elasticities :math:`\\varepsilon_{jk} = (\\partial s_j/\\partial x_k)(x_k/s_j)`.

        Parameters
        ----------
        name : str or None, optional
            The product characteristic :math:`x` (default ``'prices'``); None for the mean utility :math:`\\delta`.
        market_id : object, optional
            One market's id: its ``J_t x J_t`` matrix only.
        frame : bool, optional
            Return a long DataFrame of ``(market, j, k)`` instead.

        Returns
        -------
        ndarray or DataFrame
            Stacked ``N x J_max`` matrices (``J_t x J_t`` for one market).
        """
        market = select_market(self.problem, market_id)
        with torch.no_grad():
            jacobian, shares = self._jacobian(name)
            if name is None:
                x = self._state()[0]
            else:
                x = self.problem.padded(self.problem.product_frame[name].to_numpy(dtype=np.float64))
            elasticities = jacobian * x.unsqueeze(-2) / shares.unsqueeze(-1)
        return self._matrix_output(self._stack_matrices(elasticities), "elasticity", market, frame)

    def compute_diversion_ratios(
        self, name: str | None = "prices", market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Diversion :math:`D_{jk} = -(\\partial s_k/\\partial x_j)/(\\partial s_j/\\partial x_j)`.

        The diagonal holds diversion to the outside good,
        :math:`D_{j0} = \\sum_k (\\partial s_k/\\partial x_j)/(\\partial s_j/\\partial x_j)`.

        Parameters
        ----------
        name : str or None, optional
            The product characteristic :math:`x` (default ``'prices'``); None for the mean utility :math:`\\delta`.
        market_id : object, optional
            One market's id: its ``J_t x J_t`` matrix only.
        frame : bool, optional
            Return a long DataFrame of ``(market, j, k)`` instead.

        Returns
        -------
        ndarray or DataFrame
            Stacked ``N x J_max`` matrices (``J_t x J_t`` for one market).
        """
        market = select_market(self.problem, market_id)
        with torch.no_grad():
            jacobian, _ = self._jacobian(name)
        own = torch.diagonal(jacobian, dim1=-2, dim2=-1)
        transposed = jacobian.transpose(-1, -2)
        ratios = -transposed / own.unsqueeze(-1)
        outside = transposed.sum(-1) / own
        ratios = ratios - torch.diag_embed(torch.diagonal(ratios, dim1=-2, dim2=-1)) + torch.diag_embed(outside)
        return self._matrix_output(self._stack_matrices(ratios), "diversion", market, frame)

    def compute_consumer_surpluses(
        self,
        prices: Any = None,
        keep_all: bool = False,
        eliminate_product_ids: Any = None,
        product_ids_index: int = 0,
        market_id: Any = None,
        frame: bool = False,
    ) -> np.ndarray | pd.DataFrame:
        """Expected consumer surplus :math:`CS_t = \\sum_i w_{it} CS_{it}`,
        :math:`CS_{it} = \\log(1 + \\sum_j e^{u_{ijt}}) / \\alpha_{it}` (with nests, the sum is over the nests'
        :math:`e^{(1-\\rho_h) IV_{iht}}`), :math:`\\alpha_{it} = -\\partial u_{i1t}/\\partial p_{1t}` as in PyBLP.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate utilities (``N``, or ``J_t`` with ``market_id``); by default the data's.
        keep_all : bool, optional
            Return every agent's :math:`CS_{it}` instead of the market's :math:`CS_t`.
        eliminate_product_ids : sequence, optional
            Product ids (of the ``product_ids`` column ``product_ids_index``) to remove from every choice set, e.g. to
            measure willingness to pay for them.
        product_ids_index : int, optional
            Which ``product_ids`` column ``eliminate_product_ids`` refers to (``product_ids`` or ``product_ids0`` for
            0, ``product_ids1`` for 1, ...).
        market_id : object, optional
            One market's id: its surplus only.
        frame : bool, optional
            Return a DataFrame of markets instead (a :class:`~demandkit.exceptions.SpecificationError` with
            ``keep_all``).

        Returns
        -------
        ndarray or DataFrame
            ``T x 1`` surpluses in sorted market order (``1 x 1`` for one market); with ``keep_all``, ``T x I_max``
            (NaN beyond ``I_t``), or ``1 x I_t`` for one market.
        """
        p = self.problem
        market = select_market(p, market_id)
        if keep_all and frame:
            raise SpecificationError("frame=True gives market-level surpluses; it cannot be combined with keep_all.")
        prices = self._prices_of(prices, market)
        frame_at = None
        if prices is not None:
            frame_at = p.product_frame.assign(prices=np.asarray(prices, dtype=np.float64).reshape(-1))
        with torch.no_grad():
            delta, mu, rho, coefficients = self._state(prices)
            available = self.model.mask & ~self._eliminated(eliminate_product_ids, product_ids_index)
            utilities = agent_utilities(delta, mu, available)
            nested_rho = rho if self.model.nesting is not None else None
            log_values = log_inclusive_values(utilities, self.model.nesting, nested_rho)
            alpha = -self._utility_derivatives("prices", coefficients, frame_at)[:, 0, :]
            if p.K2:  # padded agent slots have zero weight; keep 0 / alpha finite there
                alpha = torch.where(p.agent_mask, alpha, torch.ones_like(alpha))
            surpluses = log_values / alpha
        if keep_all:
            if p.K2:
                surpluses = torch.where(p.agent_mask, surpluses, torch.nan)
            values = surpluses.cpu().numpy()
            return values if market is None else market.market(values)[:, : market.agents]
        values = (self.model.weights * surpluses).sum(-1).cpu().numpy().reshape(-1, 1)
        if frame:
            table = pd.DataFrame({"market_ids": p.layout.market_ids, "consumer_surplus": values[:, 0]})
            return table if market is None else market.frame(table)
        return values if market is None else market.market(values)

    def _eliminated(self, product_ids: Any, index: int) -> Tensor:
        """``[T, J]`` booleans: the products whose ids (column ``index`` of the product ids) are in ``product_ids``."""
        p = self.problem
        if product_ids is None:
            return torch.zeros_like(p.product_mask)
        names = [f"product_ids{index}"] + (["product_ids"] if index == 0 else [])
        column = next((name for name in names if name in p.product_frame.columns), None)
        if column is None:
            raise InvalidDataError(
                f"eliminate_product_ids needs a {' or '.join(map(repr, names[::-1]))} column in product_data."
            )
        ids = np.asarray(product_ids, dtype=object).reshape(-1)
        eliminated = p.product_frame[column].isin(ids).to_numpy()
        return torch.as_tensor(p.layout.pad(eliminated, False), device=p.device)

    def extract_diagonals(self, matrices: Any, market_id: Any = None) -> np.ndarray:
        """Own effects (diagonals) of matrices such as elasticities or diversion ratios.

        Parameters
        ----------
        matrices : array-like
            Stacked ``N x J_max`` matrices, or with ``market_id`` that market's ``J_t x J_t`` matrix.
        market_id : object, optional
            One market's id: its ``J_t`` diagonal only.

        Returns
        -------
        ndarray
            ``N x 1`` diagonals (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        if market is not None:
            return np.diagonal(market.square(matrices)).reshape(-1, 1).copy()
        slots = self.problem.layout.slot_of_row
        return np.asarray(matrices)[np.arange(len(slots)), slots].reshape(-1, 1)

    def extract_diagonal_means(self, matrices: Any, market_id: Any = None) -> np.ndarray:
        """Market means of own effects (diagonals) of matrices such as elasticities or diversion ratios.

        Parameters
        ----------
        matrices : array-like
            Stacked ``N x J_max`` matrices, or with ``market_id`` that market's ``J_t x J_t`` matrix.
        market_id : object, optional
            One market's id: its mean only.

        Returns
        -------
        ndarray
            ``T x 1`` means in sorted market order (``1 x 1`` for one market).
        """
        if market_id is not None:
            return self.extract_diagonals(matrices, market_id).mean().reshape(1, 1)
        diagonals = self.extract_diagonals(matrices)[:, 0]
        codes = self.problem.layout.market_of_row
        totals = np.bincount(codes, weights=diagonals, minlength=self.problem.T)
        return (totals / np.bincount(codes, minlength=self.problem.T)).reshape(-1, 1)
