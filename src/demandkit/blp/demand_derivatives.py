"""Derivatives of demand and profits on estimated parameters, batched over markets (PyBLP's methods).

:class:`DemandDerivatives` adds to :class:`~demandkit.blp.postestimation.DemandPostEstimation` the share Jacobians
:math:`\\partial s_j/\\partial x_k` and Hessians :math:`\\partial^2 s_j/\\partial x_k\\partial x_\\ell`, the Hessians of
each product's profits :math:`\\pi_j = (p_j - c_j)s_j` in prices and aggregate elasticities.

Hessians are the forward-mode derivative of the closed-form share Jacobian: :math:`x` moves product :math:`\\ell`'s
utilities by :math:`\\alpha_{i\\ell} = \\partial u_{i\\ell}/\\partial x_\\ell`, and one Jacobian-vector product per
product slot :math:`\\ell` (the same slot of every market at once, vectorized with ``torch.func.vmap``) gives the
column :math:`\\ell` of every market's Hessian. They hold for the logit and nested logit kernels alike. Where
:math:`x` enters the designs nonlinearly (``log(prices)``), the utilities' own second derivatives add a term on the
diagonal :math:`k = \\ell`. Outputs are stacked as in PyBLP: ``N x J_max x J_max`` arrays with NaN beyond each
market's ``J_t``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..exceptions import InvalidDataError
from ..kernels.shares import agent_utilities, compute_probabilities, heterogeneity, share_jacobian
from .markets import MarketSelection, select_market

CHUNK_ELEMENTS = 2**24
"""Largest ``[slots, T, J, I]`` block the vectorized Hessian forms at once (about 130 MB in float64)."""


def second_derivative_matrix(formulation: Any, frame: pd.DataFrame, name: str) -> np.ndarray:
    """Second derivatives of the design columns with respect to the data column ``name`` (``N x K``).

    The five-point central stencil, with the step of :meth:`Formulation.derivative_matrix
    <demandkit.configurations.formulation.Formulation.derivative_matrix>`; columns that are linear in ``name`` (their
    stencil is rounding noise against their first derivative) are exactly zero.
    """
    base = np.asarray(frame[name], dtype=np.float64)
    scale = max(float(np.nanmax(np.abs(base))), 1e-8)
    h = 1e-3 * scale
    d = [formulation.build_matrix(frame.assign(**{name: base + k * h}))[0] for k in (-2, -1, 0, 1, 2)]
    second = (-d[0] + 16 * d[1] - 30 * d[2] + 16 * d[3] - d[4]) / (12 * h**2)
    first = (d[0] - 8 * d[1] + 8 * d[3] - d[4]) / (12 * h)
    curved = np.abs(second).max(axis=0, initial=0.0) * scale > 1e-6 * np.abs(first).max(axis=0, initial=0.0)
    return np.where(curved, second, 0.0)


def share_hessians(
    model: Any, delta: Tensor, mu: Tensor | None, rho: Tensor, derivatives: Tensor, curvature: Tensor | None = None
) -> Tensor:
    """:math:`\\partial^2 s_{jt}/\\partial x_{kt}\\partial x_{\\ell t}`, ``[T, J, J, J]`` indexed ``(t, j, k, l)``.

    Parameters
    ----------
    model : DemandModel
        The demand model (mask, agent weights, nesting).
    delta, mu, rho : Tensor
        Mean utilities ``[T, J]``, agent-specific utilities ``[T, J, I]`` (None for the logit) and :math:`\\rho`.
    derivatives : Tensor
        :math:`\\alpha_{ijt} = \\partial u_{ijt}/\\partial x_{jt}`, ``[T, J, I]``.
    curvature : Tensor, optional
        :math:`\\partial^2 u_{ijt}/\\partial x_{jt}^2`, ``[T, J, I]``, where :math:`x` enters nonlinearly; it adds
        :math:`\\sum_i w_i (\\partial P_{ij}/\\partial u_{ik})\\,\\partial^2 u_{ik}/\\partial x_k^2` where
        :math:`k = \\ell`.

    Returns
    -------
    Tensor
        ``[T, J, J, J]``; zero where a product is padded.
    """
    nesting, mask, weights = model.nesting, model.mask, model.weights
    nested_rho = rho if nesting is not None else None
    base = agent_utilities(delta, mu, mask)

    def jacobian_at(step: Tensor) -> Tensor:
        """The share Jacobian with each product's :math:`x` moved by ``step`` (``[T, J]``)."""
        utilities = base + derivatives * step.unsqueeze(-1)
        probabilities = compute_probabilities(utilities, nesting, nested_rho)
        return share_jacobian(probabilities, weights, mask, nesting, derivatives)

    T, J, I = derivatives.shape
    zero = delta.new_zeros((T, J))
    tangents = torch.eye(J, dtype=delta.dtype, device=delta.device).unsqueeze(1).expand(J, T, J)

    def column(tangent: Tensor) -> Tensor:
        return torch.func.jvp(jacobian_at, (zero,), (tangent,))[1]

    chunk = max(1, CHUNK_ELEMENTS // max(T * J * I, 1))
    columns = torch.func.vmap(column, chunk_size=chunk)(tangents)  # [J(l), T, J(j), J(k)]
    hessians = columns.permute(1, 2, 3, 0)
    if curvature is None:
        return hessians
    probabilities = compute_probabilities(base, nesting, nested_rho)
    return hessians + torch.diag_embed(share_jacobian(probabilities, weights, mask, nesting, curvature))


class DemandDerivatives:
    """Mixin of :class:`~demandkit.blp.postestimation.DemandPostEstimation`: Jacobians, Hessians, aggregate
    elasticities (the helpers ``_state``, ``_utility_derivatives``, ... are the host's)."""

    problem: Any
    model: Any

    # ------------------------------------------------------------- internals
    def _stack_cubes(self, cubes: Tensor, market: MarketSelection | None) -> np.ndarray:
        """``[T, J, J, J]`` as PyBLP stacks it: ``N x J_max x J_max`` (NaN beyond ``J_t``), or ``J_t x J_t x J_t``."""
        mask = self.problem.product_mask
        valid = mask[:, :, None, None] & mask[:, None, :, None] & mask[:, None, None, :]
        stacked = self.problem.layout.unpad(torch.where(valid, cubes, torch.nan).detach().cpu().numpy())
        if market is None:
            return stacked
        return stacked[market.rows][:, : market.size, : market.size]

    def _derivatives_at(self, name: str | None, prices: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """Share Jacobian ``[T, J, J]``, Hessian ``[T, J, J, J]`` and shares ``[T, J]`` at ``prices`` (all products)."""
        delta, mu, rho, coefficients = self._state(prices)
        frame = None if prices is None else self.problem.product_frame.assign(prices=np.asarray(prices).reshape(-1))
        derivatives = self._utility_derivatives(name, coefficients, frame)
        curvature = None if name is None else self._utility_curvature(name, coefficients, frame)
        model = self.model
        probabilities = model.probabilities(delta, mu, rho)
        jacobian = share_jacobian(probabilities, model.weights, model.mask, model.nesting, derivatives)
        shares = (torch.exp(probabilities.log_probabilities) * model.weights.unsqueeze(1)).sum(-1)
        return jacobian, share_hessians(model, delta, mu, rho, derivatives, curvature), shares

    def _utility_curvature(self, name: str, coefficients: Tensor | None, frame: pd.DataFrame | None) -> Tensor | None:
        """:math:`\\partial^2 u_{ijt}/\\partial x_{jt}^2`, ``[T, J, I]``, or None where :math:`x` enters linearly."""
        p = self.problem
        frame = p.product_frame if frame is None else frame
        d2X1 = second_derivative_matrix(p.product_formulations[0], frame, name)
        d2X2 = second_derivative_matrix(p.product_formulations[1], frame, name) if p.K2 else None
        if not d2X1.any() and (d2X2 is None or not d2X2.any()):
            return None
        curvature = p.padded(d2X1 @ self.beta.reshape(-1)).unsqueeze(-1)
        if d2X2 is not None:
            curvature = curvature + heterogeneity(p.padded(d2X2), coefficients)
        return curvature.expand(-1, -1, self.model.weights.shape[1])

    # --------------------------------------------------------------- public
    def compute_demand_jacobians(
        self, name: str | None = "prices", market_id: Any = None, frame: bool = False
    ) -> np.ndarray:
        """Derivatives of demand :math:`\\partial s_{jt}/\\partial x_{kt}` (row :math:`j`, column :math:`k`).

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
            Stacked ``N x J_max`` matrices (NaN beyond ``J_t``), or ``J_t x J_t`` for one market.
        """
        market = select_market(self.problem, market_id)
        with torch.no_grad():
            jacobian, _ = self._jacobian(name)
        return self._matrix_output(self._stack_matrices(jacobian), "jacobian", market, frame)

    def compute_demand_hessians(self, name: str | None = "prices", market_id: Any = None) -> np.ndarray:
        """Second derivatives of demand :math:`\\partial^2 s_{jt}/\\partial x_{kt}\\partial x_{\\ell t}`, indexed
        :math:`(j, k, \\ell)`.

        Parameters
        ----------
        name : str or None, optional
            The product characteristic :math:`x` (default ``'prices'``); None for the mean utility :math:`\\delta`.
        market_id : object, optional
            One market's id: its ``J_t x J_t x J_t`` array only.

        Returns
        -------
        ndarray
            Stacked ``N x J_max x J_max`` arrays (NaN beyond ``J_t``), or ``J_t x J_t x J_t`` for one market.
        """
        market = select_market(self.problem, market_id)
        with torch.no_grad():
            _, hessian, _ = self._derivatives_at(name)
        return self._stack_cubes(hessian, market)

    def compute_profit_hessians(self, prices: Any = None, costs: Any = None, market_id: Any = None) -> np.ndarray:
        """Second derivatives of each product's profits :math:`\\pi_{jt} = (p_{jt} - c_{jt})s_{jt}` in prices,
        :math:`\\partial^2 \\pi_{jt}/\\partial p_{kt}\\partial p_{\\ell t}`, indexed :math:`(j, k, \\ell)`.

        A firm's profit Hessian (for second-order conditions) sums these over its products, weighted by ownership.

        Parameters
        ----------
        prices : array-like, optional
            Prices (``N``, or ``J_t`` with ``market_id``), such as equilibrium prices from ``compute_prices``; by
            default the data's.
        costs : array-like, optional
            Marginal costs (``N``, or ``J_t`` with ``market_id``); by default :meth:`compute_costs`.
        market_id : object, optional
            One market's id: its ``J_t x J_t x J_t`` array only.

        Returns
        -------
        ndarray
            Stacked ``N x J_max x J_max`` arrays (NaN beyond ``J_t``), or ``J_t x J_t x J_t`` for one market.
        """
        p = self.problem
        market = select_market(p, market_id)
        prices = self._prices_of(prices, market)
        prices_rows = p.product_frame["prices"].to_numpy(dtype=np.float64) if prices is None else np.asarray(prices)
        if costs is None:
            costs_rows = self.compute_costs()
        elif market is None:
            costs_rows = np.asarray(costs, dtype=np.float64)
        else:
            costs_rows = market.expand(costs, self.compute_costs(), "costs")
        margins = self._pad(prices_rows.reshape(-1) - np.asarray(costs_rows, dtype=np.float64).reshape(-1), "margins")
        with torch.no_grad():
            jacobian, hessian, _ = self._derivatives_at("prices", prices)
            eye = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
            own = eye[None, :, :, None] * jacobian[:, :, None, :] + eye[None, :, None, :] * jacobian[:, :, :, None]
            profits = own + margins[:, :, None, None] * hessian
        return self._stack_cubes(profits, market)

    def compute_aggregate_elasticities(
        self, factor: float = 0.1, name: str | None = "prices", market_id: Any = None
    ) -> np.ndarray:
        """Aggregate elasticities :math:`\\sum_{j} (s_{jt}(x + \\Delta x) - s_{jt})/\\Delta` of each market.

        Parameters
        ----------
        factor : float, optional
            The scalar :math:`\\Delta` by which every product's :math:`x` is scaled up (default 0.1).
        name : str or None, optional
            The product characteristic :math:`x` (default ``'prices'``); None for the mean utility :math:`\\delta`.
        market_id : object, optional
            One market's id: its value only.

        Returns
        -------
        ndarray
            ``T x 1`` in sorted market order (``1 x 1`` for one market).
        """
        p = self.problem
        market = select_market(p, market_id)
        with torch.no_grad():
            delta, mu, rho, _ = self._state()
            if name is None:
                changed = self._state(delta=delta * (1 + factor))
            else:
                if name not in p.product_frame.columns:
                    raise InvalidDataError(f"Cannot scale {name!r}: not a column of the product data.")
                x = p.product_frame[name].to_numpy(dtype=np.float64)
                changed = self._state(columns={name: x * (1 + factor)})
            before = torch.exp(self.model.log_shares(delta, mu, rho))
            after = torch.exp(self.model.log_shares(*changed[:3]))
            values = (torch.where(p.product_mask, after - before, 0.0).sum(-1) / factor).cpu().numpy()
        values = values.reshape(-1, 1)
        return values if market is None else market.market(values)
