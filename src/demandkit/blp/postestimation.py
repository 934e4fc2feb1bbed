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

from ..kernels.shares import agent_utilities, log_inclusive_values, random_coefficients, share_jacobian
from .markets import MarketSelection, select_market


class DemandPostEstimation:
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

    def _coefficients(self, sigma: Tensor, pi: Tensor) -> Tensor | None:
        if not self.problem.K2:
            return None
        return random_coefficients(
            self.model.nodes_for(sigma), self.model.demographics, sigma, pi, self.problem.rc_types
        )

    def _state(self, prices: Any = None) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Mean utilities, mu, rho and the coefficients, optionally at new prices."""
        p = self.problem
        sigma, pi, rho, beta, delta = self._tensors()
        coefficients = self._coefficients(sigma, pi)
        X2 = self.model.X2
        if prices is not None:
            frame = p.products.copy()
            frame["prices"] = np.asarray(prices, dtype=np.float64).reshape(-1)
            X1_new = p.product_formulations[0].build_matrix(frame)[0]
            change = (X1_new - p.design.X1_raw) @ self.beta.reshape(-1)
            delta = delta + p.padded(change)
            if p.K2:
                X2 = p.padded(p.product_formulations[1].build_matrix(frame)[0])
        mu = None if coefficients is None else torch.einsum("tjk,tik->tji", X2, coefficients)
        return delta, mu, rho, coefficients

    def _utility_derivatives(self, name: str, coefficients: Tensor | None) -> Tensor:
        """:math:`\\partial u_{ijt}/\\partial x_{jt}`, ``[T, J, I]``."""
        p = self.problem
        dX1 = p.product_formulations[0].derivative_matrix(p.products, name) @ self.beta.reshape(-1)
        derivatives = p.padded(dX1).unsqueeze(-1)
        if p.K2:
            dX2 = p.padded(p.product_formulations[1].derivative_matrix(p.products, name))
            derivatives = derivatives + torch.einsum("tjk,tik->tji", dX2, coefficients)
        return derivatives.expand(-1, -1, self.model.weights.shape[1])

    def _jacobian(self, name: str) -> tuple[Tensor, Tensor]:
        """Share derivatives :math:`\\partial s_j/\\partial x_k` ``[T, J, J]`` and shares ``[T, J]``."""
        delta, mu, rho, coefficients = self._state()
        probabilities = self.model.probabilities(delta, mu, rho)
        derivatives = self._utility_derivatives(name, coefficients)
        jacobian = share_jacobian(probabilities, self.model.weights, self.model.mask, self.model.nesting, derivatives)
        shares = (torch.exp(probabilities.log_probabilities) * self.model.weights.unsqueeze(1)).sum(-1)
        return jacobian, shares

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
        if "product_ids" in p.products.columns:
            frame["product_ids"] = p.products["product_ids"].to_numpy()
        frame[name] = values.reshape(-1)
        return frame

    def _frame_matrices(self, stacked: np.ndarray, name: str) -> pd.DataFrame:
        """Long table: one row per market and ordered pair of products ``(j, k)``."""
        p = self.problem
        layout = p.layout
        ids = p.products["product_ids"].to_numpy() if "product_ids" in p.products.columns else np.arange(p.N)
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
        return market.expand(prices, self.problem.products["prices"].to_numpy(dtype=np.float64), "prices")

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
    def compute_probabilities(self, prices: Any = None, market_id: Any = None) -> np.ndarray:
        """Choice probabilities :math:`P_{ijt}`.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate them (``N``, or ``J_t`` with ``market_id``); by default the data's.
        market_id : object, optional
            One market's id: its ``J_t x I_t`` block only.

        Returns
        -------
        ndarray
            ``N x I_max`` (agents in columns, NaN beyond ``I_t``), or ``J_t x I_t`` for one market.
        """
        market = select_market(self.problem, market_id)
        delta, mu, rho, _ = self._state(self._prices_of(prices, market))
        probabilities = torch.exp(self.model.probabilities(delta, mu, rho).log_probabilities)
        if self.problem.K2:
            probabilities = torch.where(self.problem.agent_mask.unsqueeze(1), probabilities, torch.nan)
        stacked = self.problem.layout.unpad(probabilities.cpu().numpy())
        return stacked if market is None else market.agent_matrix(stacked)

    def compute_shares(
        self, prices: Any = None, market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Market shares :math:`s_{jt}`, optionally at new ``prices``.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate shares (``N``, or ``J_t`` with ``market_id``); by default the data's.
        market_id : object, optional
            One market's id: its ``J_t`` shares only.
        frame : bool, optional
            Return a tidy DataFrame instead.

        Returns
        -------
        ndarray or DataFrame
            ``N x 1`` shares (``J_t x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        delta, mu, rho, _ = self._state(self._prices_of(prices, market))
        shares = torch.exp(self.model.log_shares(delta, mu, rho))
        stacked = self._stack_vector(torch.where(self.problem.product_mask, shares, 0.0))
        return self._vector_output(stacked, "shares", market, frame)

    def compute_elasticities(
        self, name: str = "prices", market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Elasticities :math:`\\varepsilon_{jk} = (\\partial s_j/\\partial x_k)(x_k/s_j)`.

        Parameters
        ----------
        name : str, optional
            The product characteristic :math:`x` (default ``'prices'``).
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
        jacobian, shares = self._jacobian(name)
        x = self.problem.padded(self.problem.products[name].to_numpy(dtype=np.float64))
        elasticities = jacobian * x.unsqueeze(-2) / shares.unsqueeze(-1)
        return self._matrix_output(self._stack_matrices(elasticities), "elasticity", market, frame)

    def compute_diversion_ratios(
        self, name: str = "prices", market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Diversion :math:`D_{jk} = -(\\partial s_k/\\partial x_j)/(\\partial s_j/\\partial x_j)`.

        The diagonal holds diversion to the outside good,
        :math:`D_{j0} = \\sum_k (\\partial s_k/\\partial x_j)/(\\partial s_j/\\partial x_j)`.

        Parameters
        ----------
        name : str, optional
            The product characteristic :math:`x` (default ``'prices'``).
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
        jacobian, _ = self._jacobian(name)
        own = torch.diagonal(jacobian, dim1=-2, dim2=-1)
        transposed = jacobian.transpose(-1, -2)
        ratios = -transposed / own.unsqueeze(-1)
        outside = transposed.sum(-1) / own
        ratios = ratios - torch.diag_embed(torch.diagonal(ratios, dim1=-2, dim2=-1)) + torch.diag_embed(outside)
        return self._matrix_output(self._stack_matrices(ratios), "diversion", market, frame)

    def compute_consumer_surpluses(
        self, prices: Any = None, market_id: Any = None, frame: bool = False
    ) -> np.ndarray | pd.DataFrame:
        """Expected consumer surplus :math:`CS_t = \\sum_i w_{it} \\log(1 + \\sum_j e^{u_{ijt}}) / \\alpha_{it}`
        with :math:`\\alpha_{it} = -\\partial u_{i1t}/\\partial p_{1t}` as in PyBLP.

        Parameters
        ----------
        prices : array-like, optional
            Prices at which to evaluate utilities (``N``, or ``J_t`` with ``market_id``); by default the data's.
        market_id : object, optional
            One market's id: its surplus only.
        frame : bool, optional
            Return a DataFrame of markets instead.

        Returns
        -------
        ndarray or DataFrame
            ``T x 1`` surpluses in sorted market order (``1 x 1`` for one market).
        """
        market = select_market(self.problem, market_id)
        delta, mu, rho, coefficients = self._state(self._prices_of(prices, market))
        utilities = agent_utilities(delta, mu, self.model.mask)
        nested_rho = rho if self.model.nesting is not None else None
        log_values = log_inclusive_values(utilities, self.model.nesting, nested_rho)
        alpha = -self._utility_derivatives("prices", coefficients)[:, 0, :]
        if self.problem.K2:  # padded agent slots have zero weight; keep 0 / alpha finite there
            alpha = torch.where(self.problem.agent_mask, alpha, torch.ones_like(alpha))
        surplus = (self.model.weights * log_values / alpha).sum(-1)
        values = surplus.cpu().numpy().reshape(-1, 1)
        if frame:
            table = pd.DataFrame({"market_ids": self.problem.layout.market_ids, "consumer_surplus": values[:, 0]})
            return table if market is None else market.frame(table)
        return values if market is None else market.market(values)

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
