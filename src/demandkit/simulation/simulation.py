"""``Simulation``: synthetic BLP data with equilibrium prices and shares, batched over markets.

PyBLP's ``Simulation`` and ``SimulationResults`` with their names and semantics. Variables the formulations
use but the data lack are drawn from the standard uniform distribution, placeholder shares are uniform
draws divided by the number of products of the market, and :math:`(\\xi, \\omega)` are drawn from a mean-zero
bivariate normal, all from one ``numpy.random.RandomState(seed)`` in PyBLP's order (shares, prices, product
variables by name, demographics by name, then the errors), so that a seed gives the same data every time.

The data are laid out once as a :class:`~demandkit.blp.problem.Problem` on the placeholder shares (it owns the
padded ``[T, J]`` designs, their price derivatives, ownership, nests and agents), and
:meth:`Simulation.replace_endogenous` solves the Bertrand-Nash equilibrium of every market at once by the
:math:`\\zeta`-markup fixed point of Morrow and Skerlos (2011),

.. math::

    p \\leftarrow c + \\zeta(p), \\qquad
    \\zeta(p) = \\Lambda(p)^{-1}\\big[(O \\odot \\Gamma(p))'(p - c) - s(p)\\big],

where :math:`\\partial s/\\partial p' = \\Lambda - \\Gamma` with :math:`\\Lambda` diagonal, iterated with the batched
kernels of :mod:`demandkit.kernels.fixed_point`. Each market stops on its own criterion. The first-order
conditions :math:`s + (O \\odot D')(p - c) = 0` are evaluated at the solution and reported per product.

Deviations from PyBLP: a simulation without a supply side draws :math:`\\xi` with variance ``xi_variance``
when it is not given (PyBLP requires it); costs that depend on shares are held at their initial values
(``constant_costs=True``); the price iteration stops on the change in prices (PyBLP weights the change by
:math:`|\\Lambda|`); ``epsilon_scale``, agent-specific availability and
profit Hessians are not implemented.

Why this module is long: it is one class, PyBLP's ``Simulation``, whose drawing of the data (in PyBLP's order
of the random state, which a seed must reproduce) and whose two solvers (``replace_endogenous``,
``replace_exogenous``) share the same private state; the model's pieces live elsewhere
(:mod:`demandkit.blp.equilibrium`, :mod:`demandkit.simulation.results`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..blp.demand import DemandModel
from ..blp.economy import check_epsilon_scale, first_agent_rows
from ..blp.equilibrium import PriceDemand, linear_in_prices, solve_equilibrium
from ..blp.extended_moments import lag_indices
from ..blp.problem import Problem
from ..blp.records import cached_product_records
from ..blp.supply import SupplyModel
from ..configurations.formulation import Formulation
from ..configurations.integration import Integration
from ..configurations.iteration import Iteration
from ..configurations.options import check_choice
from ..exceptions import ConvergenceWarning, DemandkitError, InvalidDataError, SpecificationError
from ..kernels.fixed_point import FixedPointResult
from ..layout.validation import as_frame, numbered_columns, require_columns
from .results import SimulationResults

ErrorBehavior = Literal["raise", "warn"]

_RESERVED_PRODUCT = {
    "market_ids",
    "firm_ids",
    "nesting_ids",
    "product_ids",
    "clustering_ids",
    "lag_indices",
    "ownership",
    "shares",
    "prices",
}
_RESERVED_AGENT = {"market_ids", "agent_ids", "nodes", "weights", "availability"}


class SimulationError(DemandkitError, RuntimeError):
    """A simulation whose equilibrium (or inversion) did not converge in some markets.

    Raised by :meth:`Simulation.replace_endogenous` and :meth:`Simulation.replace_exogenous` with
    ``error_behavior='raise'``. The price coefficient may be too small relative to the random coefficients
    on prices for an equilibrium to exist; try a more negative price coefficient, more iterations
    (``Iteration('simple', {'max_evaluations': ...})``) or ``error_behavior='warn'`` to keep the last iterate.
    """


# ----------------------------------------------------------------------------------------- simulation


class Simulation:
    """Simulation of data in BLP-type models (PyBLP's ``Simulation``).

    Parameters
    ----------
    product_formulations : Formulation or sequence of Formulation
        ``(X1, X2, X3)``; X2 and X3 may be omitted or None. No fixed effect absorption.
    product_data : DataFrame or mapping
        ``market_ids`` and ``firm_ids`` (see :func:`~demandkit.construction.instruments.build_id_data`), optionally
        ``nesting_ids``, ``product_ids``, ``clustering_ids``, ``ownership0..``, ``prices``, ``shares`` and any
        characteristics. Variables the formulations use but the data lack are drawn from :math:`U(0, 1)`.
    beta, sigma, pi, gamma, rho : array-like
        True parameters: :math:`\\beta` (``K1``), lower-triangular :math:`\\Sigma` (``K2 x K2``; the upper triangle
        is ignored), :math:`\\Pi` (``K2 x D``), :math:`\\gamma` (``K3``) and :math:`\\rho` (scalar or ``H``).
    phi : float or array-like, optional
        AR(1) parameters of the unobservables: a scalar :math:`\\phi_\\xi` without a supply side, otherwise
        ``[[phi_xi, phi_xi_omega], [phi_omega_xi, phi_omega]]``. When neither ``xi`` nor ``omega`` is given, the
        bivariate normal draws are the innovations of
        :math:`\\xi_{jt} = \\phi_\\xi L\\xi_{jt} + \\phi_{\\xi\\omega} L\\omega_{jt} + \\tilde\\xi_{jt}` and
        :math:`\\omega_{jt} = \\phi_\\omega L\\omega_{jt} + \\phi_{\\omega\\xi} L\\xi_{jt} + \\tilde\\omega_{jt}`,
        with the lag operator :math:`L` of ``product_data``'s ``lag_indices`` (a row's own index marks a first
        period, drawn from the stationary distribution). Ignored for drawing when ``xi`` or ``omega`` is given.
    agent_formulation : Formulation, optional
        Demographics :math:`d`; missing variables are drawn from :math:`U(0, 1)`.
    agent_data : DataFrame or mapping, optional
        ``market_ids``, ``weights``, ``nodes0..`` (unless ``integration`` is given) and demographics; a
        product-specific demographic as ``name0, name1, ...`` (:class:`~demandkit.Problem`'s ``agent_data``).
    integration : Integration, optional
        Builds ``K2``-dimensional nodes and weights for every market.
    xi, omega : array-like, optional
        Structural errors. When neither is given they are drawn from a mean-zero bivariate normal with
        variances ``xi_variance``, ``omega_variance`` and correlation ``correlation`` (only :math:`\\xi` without a
        supply side).
    rc_types : sequence of {'linear', 'log', 'logit'}, optional
        How each random coefficient enters utility.
    epsilon_scale : float
        PyBLP's scale of the logit error, in PyBLP's position; only 1 (the default).
    costs_type : {'linear', 'log'}
        Marginal costs :math:`c = X_3\\gamma + \\omega` or :math:`\\log c = X_3\\gamma + \\omega`.
    seed : int, optional
        Seeds ``numpy.random.RandomState`` for every draw.
    device, dtype
        Where and in which precision the equilibrium is computed.
    """

    def __init__(
        self,
        product_formulations: Formulation | Any,
        product_data: Any,
        beta: Any,
        sigma: Any = None,
        pi: Any = None,
        gamma: Any = None,
        rho: Any = None,
        phi: Any = None,
        agent_formulation: Formulation | None = None,
        agent_data: Any = None,
        integration: Integration | None = None,
        xi: Any = None,
        omega: Any = None,
        xi_variance: float = 1.0,
        omega_variance: float = 1.0,
        correlation: float = 0.9,
        rc_types: Any = None,
        epsilon_scale: float = 1.0,
        costs_type: str = "linear",
        seed: int | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.epsilon_scale = check_epsilon_scale(epsilon_scale)
        formulations = (
            [product_formulations] if isinstance(product_formulations, Formulation) else list(product_formulations)
        )
        if not 1 <= len(formulations) <= 3 or formulations[0] is None:
            raise SpecificationError("product_formulations must be a Formulation or a sequence of up to three.")
        formulations += [None] * (3 - len(formulations))
        for formulation in formulations + [agent_formulation]:
            if formulation is not None and not isinstance(formulation, Formulation):
                raise SpecificationError(f"Formulations must be demandkit Formulations; received {formulation!r}.")
            if formulation is not None and formulation.absorb:
                raise SpecificationError("Simulations do not absorb fixed effects; include them in the formula.")
        if integration is not None and not isinstance(integration, Integration):
            raise SpecificationError(f"integration must be an Integration; received {integration!r}.")
        self.product_formulations = tuple(formulations)
        self.agent_formulation = agent_formulation
        self.integration = integration
        self.costs_type = costs_type
        self.seed = seed
        state = np.random.RandomState(seed)

        self.product_data = self._products(as_frame(product_data, "product_data"), state)
        K2 = self.product_formulations[1].build_matrix(self.product_data)[0].shape[1] if formulations[1] else 0
        self.agent_data = self._agents(agent_data, K2, state) if K2 else None
        self.problem = Problem(
            self.product_formulations,
            self.product_data,
            agent_formulation if K2 else None,
            self.agent_data,
            rc_types=rc_types,
            costs_type=costs_type,
            add_exogenous=False,
            device=device,
            dtype=dtype,
        )
        p = self.problem
        self.T, self.N, self.K1, self.K2, self.K3, self.D, self.H = p.T, p.N, p.K1, p.K2, p.K3, p.D, p.H
        self.rc_types = p.rc_types
        self._parameters(beta, sigma, pi, gamma, rho)
        self._errors(state, xi, omega, xi_variance, omega_variance, correlation, phi)

    @property
    def products(self) -> np.recarray:
        """PyBLP's ``Simulation.products``: the record array of the simulated product data
        (:mod:`demandkit.blp.records`) with the drawn prices and shares, without instruments (``ZD``, ``ZS`` and
        ``ZC`` have no columns)."""
        return cached_product_records(self, self.problem, instruments=False)

    # ------------------------------------------------------------------ data
    def _products(self, frame: pd.DataFrame, state: np.random.RandomState) -> pd.DataFrame:
        require_columns(frame, ["market_ids", "firm_ids"], "product_data")
        frame = frame.copy()
        N = len(frame)
        codes = np.unique(frame["market_ids"].to_numpy(), return_inverse=True)[1].reshape(-1)
        if "shares" not in frame.columns:
            frame["shares"] = state.uniform(size=N) / np.bincount(codes)[codes]
        if "prices" not in frame.columns:
            frame["prices"] = state.uniform(size=N)
        known = set(_RESERVED_PRODUCT) | set(numbered_columns(frame, "ownership"))
        for formulation in self.product_formulations:
            if formulation is None:
                continue
            for name in sorted(formulation.variables - known):
                if name not in frame.columns:
                    frame[name] = state.uniform(size=N)
                known.add(name)
        return frame

    def _agents(self, agent_data: Any, K2: int, state: np.random.RandomState) -> pd.DataFrame:
        markets = np.unique(self.product_data["market_ids"].to_numpy())
        loaded = as_frame(agent_data, "agent_data") if agent_data is not None else None
        if self.integration is not None:
            agent_markets, nodes, weights = self.integration.build_many(K2, markets)
        elif loaded is not None:
            require_columns(loaded, ["market_ids", "weights"], "agent_data")
            names = numbered_columns(loaded, "nodes")
            if not names:
                raise InvalidDataError("agent_data needs nodes0, nodes1, ... columns (or pass an integration).")
            agent_markets = loaded["market_ids"].to_numpy()
            nodes = loaded[names].to_numpy(dtype=np.float64)
            weights = loaded["weights"].to_numpy(dtype=np.float64)
        else:
            raise SpecificationError("A simulation with X2 needs agent_data with nodes and weights or an integration.")
        frame = pd.DataFrame({"market_ids": agent_markets, "weights": weights})
        for k in range(nodes.shape[1]):
            frame[f"nodes{k}"] = nodes[:, k]
        if self.agent_formulation is not None:
            for name in sorted(self.agent_formulation.variables - _RESERVED_AGENT):
                # a product-specific demographic comes as name0, name1, ... (PyBLP's), never drawn
                given = [] if loaded is None else [name] if name in loaded.columns else numbered_columns(loaded, name)
                for column in given:
                    values = loaded[column].to_numpy()
                    if self.integration is not None:
                        values = first_agent_rows(values, loaded["market_ids"].to_numpy(), agent_markets, repr(column))
                    frame[column] = values
                if not given:
                    frame[name] = state.uniform(size=len(frame))
        return frame

    def _parameters(self, beta: Any, sigma: Any, pi: Any, gamma: Any, rho: Any) -> None:
        self.beta = _vector("beta", beta, self.K1, required=True)
        sigma_matrix = _matrix("sigma", sigma, (self.K2, self.K2))
        self.sigma = np.tril(sigma_matrix)
        self.pi = _matrix("pi", pi, (self.K2, self.D))
        self.gamma = _vector("gamma", gamma, self.K3, required=self.K3 > 0)
        if self.H:
            if rho is None:
                raise SpecificationError("rho must be given when product_data has nesting_ids.")
            values = np.asarray(rho, dtype=np.float64).reshape(-1)
            if values.size not in (1, self.H) or not np.isfinite(values).all():
                raise SpecificationError(f"rho must be a scalar or have {self.H} finite elements, one per nest.")
            self.rho = np.broadcast_to(values, (self.H,)).reshape(-1, 1).copy()
        elif rho is not None and np.asarray(rho).size:
            raise SpecificationError("rho was given, but product_data has no nesting_ids.")
        else:
            self.rho = np.zeros((0, 1))

    def _errors(
        self,
        state: np.random.RandomState,
        xi: Any,
        omega: Any,
        xi_variance: float,
        omega_variance: float,
        rho: float,
        phi: Any,
    ) -> None:
        size = 2 if self.K3 else 1
        self.phi = None if phi is None else _matrix("phi", phi, (size, size))
        self.xi = None if xi is None else _vector("xi", xi, self.N, required=True).reshape(-1, 1)
        self.omega = None if omega is None else _vector("omega", omega, self.N, required=True).reshape(-1, 1)
        if self.xi is None and self.omega is None:
            if not (xi_variance > 0 and omega_variance > 0 and -1 <= rho <= 1):
                raise SpecificationError(
                    "xi_variance and omega_variance must be positive and correlation in [-1, 1]; received "
                    f"{xi_variance}, {omega_variance} and {rho}."
                )
            if self.K3:
                covariance = rho * np.sqrt(xi_variance * omega_variance)
                matrix = np.array([[xi_variance, covariance], [covariance, omega_variance]])
                draws = state.multivariate_normal([0, 0], matrix, self.N, check_valid="ignore")
            else:
                matrix = np.array([[xi_variance]])
                draws = state.normal(0, np.sqrt(xi_variance), (self.N, 1))
            if self.phi is not None:
                draws = self._autoregress(draws, matrix)
            self.xi = draws[:, [0]].copy()
            self.omega = draws[:, [1]].copy() if self.K3 else None
        if self.xi is None:
            raise SpecificationError("xi must be given when omega is given.")
        if self.K3 and self.omega is None:
            raise SpecificationError("omega must be given with a supply side (X3) when xi is given.")

    def _autoregress(self, innovations: np.ndarray, covariance: np.ndarray) -> np.ndarray:
        """PyBLP's AR(1) unobservables :math:`u_{jt} = \\phi L u_{jt} + \\tilde u_{jt}` along ``lag_indices``, with
        :math:`u = (\\xi, \\omega)`; first periods are the innovations rescaled by :math:`C_s C^{-1}` (Cholesky
        factors of the stationary and innovation covariances) so that they follow the stationary distribution."""
        lags = lag_indices(self.problem)
        if lags is None:
            raise SpecificationError("phi was given, but product_data has no lag_indices to define the lag operator.")
        phi = self.phi
        if np.abs(np.linalg.eigvals(phi)).max() >= 1:
            raise SpecificationError(f"phi must be stable, with spectral radius less than 1; received {phi.tolist()}.")
        if not phi.any():
            return innovations
        size = phi.shape[0]
        vector = np.linalg.solve(np.eye(size * size) - np.kron(phi, phi), covariance.reshape(-1))
        stationary = vector.reshape(size, size)
        try:
            scale = np.linalg.cholesky(stationary) @ np.linalg.inv(np.linalg.cholesky(covariance))
        except np.linalg.LinAlgError as exception:
            raise SpecificationError("phi needs a positive definite innovation covariance (|correlation| < 1).") from (
                exception
            )
        rows = np.arange(self.N)
        depth = np.where(lags == rows, 0, -1)
        level = 0
        while (depth == level).any():
            depth[(depth < 0) & (depth[lags] == level)] = level + 1
            level += 1
        if (depth < 0).any():
            raise InvalidDataError("lag_indices in product_data must not form cycles; each chain needs a first period.")
        values = innovations.copy()
        values[depth == 0] = innovations[depth == 0] @ scale.T
        for current in range(1, level):
            selected = depth == current
            values[selected] = values[lags[selected]] @ phi.T + innovations[selected]
        return values

    # ----------------------------------------------------------------- model
    def _tensor(self, values: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(values), dtype=self.problem.dtype, device=self.problem.device)

    def _demand(self) -> PriceDemand:
        p = self.problem
        model = DemandModel(p)
        sigma, pi = self._tensor(self.sigma), self._tensor(self.pi)
        beta = self._tensor(self.beta)
        base = p.design.X1_raw @ self.beta + self.xi[:, 0]
        return PriceDemand(
            problem=p,
            model=model,
            coefficients=model.coefficients(sigma, pi),
            rho=self._tensor(self.rho.reshape(-1)),
            beta=beta,
            base_delta=p.padded(base),
            base_prices=p.prices_padded,
            linear=linear_in_prices(p),
        )

    def _ownership(self) -> Tensor:
        if self.problem.ownership_padded is None:
            raise InvalidDataError("Equilibrium prices need firm_ids (or ownership columns) in product_data.")
        return self.problem.ownership_padded

    def _rows(self, padded: Tensor) -> np.ndarray:
        return self.problem.layout.unpad(padded.detach().cpu().numpy()).reshape(-1, 1)

    def _true_costs(self) -> np.ndarray:
        if not self.K3:
            raise SpecificationError("costs must be given when X3 was not formulated.")
        tilde = self.problem.X3_raw @ self.gamma + self.omega[:, 0]
        return np.exp(tilde) if self.costs_type == "log" else tilde

    # -------------------------------------------------------------- solving
    def replace_endogenous(
        self,
        costs: Any = None,
        prices: Any = None,
        iteration: Iteration | None = None,
        constant_costs: bool = True,
        error_behavior: str = "raise",
    ) -> SimulationResults:
        """Replace prices and shares with the Bertrand-Nash equilibrium at the true parameters.

        Every market iterates :math:`p \\leftarrow c + \\zeta(p)` at once (each stops on its own) until the change
        in prices is at most ``atol``; shares, mean utilities and the first-order conditions are then evaluated at
        the solution.

        Parameters
        ----------
        costs : array-like, optional
            Marginal costs :math:`c` (``N``); by default :math:`X_3\\gamma + \\omega` (exponentiated if
            ``costs_type='log'``). Required without X3.
        prices : array-like, optional
            Starting prices; ``costs`` by default.
        iteration : Iteration, optional
            ``'simple'`` or ``'squarem'`` iteration of the zeta-markup equation (default
            ``Iteration('simple', {'atol': 1e-12})``); ``'return'`` keeps the starting prices.
        constant_costs : bool
            Only ``True`` (costs held fixed) is supported.
        error_behavior : {'raise', 'warn'}
            Raise :class:`SimulationError` or warn when some market does not converge.
        """
        check_choice("error_behavior", error_behavior, ErrorBehavior)
        if not constant_costs and any("shares" in label for label in self.problem.X3_labels):
            raise SpecificationError("constant_costs=False (costs that move with shares) is not supported.")
        start_time = time.perf_counter()
        costs_rows = self._true_costs() if costs is None else _vector("costs", costs, self.N, required=True)
        start_rows = costs_rows if prices is None else _vector("prices", prices, self.N, required=True)
        iteration = iteration or Iteration("simple", {"atol": 1e-12})
        demand = self._demand()
        ownership = self._ownership()
        c = self.problem.padded(costs_rows)
        start = self.problem.padded(start_rows)
        with torch.no_grad():
            result = solve_equilibrium(demand, c, start, ownership, iteration)
            prices_padded = result.values
            probabilities, _, delta = demand.state(prices_padded)
            shares = demand.shares(probabilities)
            gradients = demand.profit_gradients(prices_padded, c, ownership)
        self._check(result, error_behavior, "Equilibrium prices")
        override = {"prices": self._rows(prices_padded)[:, 0], "shares": self._rows(shares)[:, 0]}
        return SimulationResults(
            self,
            override,
            delta=self._rows(delta),
            costs=costs_rows.reshape(-1, 1),
            result=result,
            seconds=time.perf_counter() - start_time,
            profit_gradients=self._rows(gradients),
            profit_gradient_norms=gradients.abs().amax(dim=1).cpu().numpy().reshape(-1, 1),
        )

    def replace_exogenous(
        self,
        X1_name: str,
        X3_name: str | None = None,
        delta: Any = None,
        iteration: Iteration | None = None,
        error_behavior: str = "raise",
    ) -> SimulationResults:
        """Replace one exogenous characteristic in X1 (and one in X3) so that the data's prices and shares are an
        equilibrium at the true parameters.

        :math:`\\delta` solves :math:`s(\\delta) = S` in every market and :math:`v \\leftarrow v + (\\delta - \\xi -
        X_1\\beta)/\\beta_v`; with a supply side :math:`\\tilde c = f(p - \\eta)` and :math:`w \\leftarrow w +
        (\\tilde c - \\omega - X_3\\gamma)/\\gamma_w`.

        Parameters
        ----------
        X1_name : str
            An untransformed variable that appears once in X1 and nowhere else (not ``prices``).
        X3_name : str, optional
            The same for X3 (not ``shares``); required with a supply side.
        delta : array-like, optional
            Starting mean utilities (the logit solution by default).
        iteration : Iteration, optional
            How the inversion is solved (default ``Iteration('squarem', {'atol': 1e-14})``).
        error_behavior : {'raise', 'warn'}
            Raise :class:`SimulationError` or warn when some market's inversion does not converge.
        """
        check_choice("error_behavior", error_behavior, ErrorBehavior)
        p = self.problem
        start_time = time.perf_counter()
        X1_index = self._replaceable(X1_name, 0, self.beta, "X1_name", "prices")
        X3_index = None
        if self.K3:
            X3_index = self._replaceable(X3_name, 2, self.gamma, "X3_name", "shares")
        iteration = iteration or Iteration("squarem", {"atol": 1e-14})
        model = DemandModel(p)
        sigma, pi, rho = self._tensor(self.sigma), self._tensor(self.pi), self._tensor(self.rho.reshape(-1))
        start = p.logit_delta if delta is None else p.padded(_vector("delta", delta, self.N, required=True))
        with torch.no_grad():
            inversion = model.invert(sigma, pi, rho, start, iteration.method, iteration.options)
            delta_rows = self._rows(inversion.delta)[:, 0]
            override = {}
            X1 = p.design.X1_raw
            override[X1_name] = X1[:, X1_index] + (delta_rows - self.xi[:, 0] - X1 @ self.beta) / self.beta[X1_index]
            costs_rows = None
            if X3_index is not None:
                markups = SupplyModel(p, model).markups(inversion.delta, sigma, pi, rho, self._tensor(self.beta))
                costs_rows = self._rows(p.prices_padded - markups)[:, 0]
                with np.errstate(all="ignore"):
                    tilde = np.log(costs_rows) if self.costs_type == "log" else costs_rows
                X3 = p.X3_raw
                override[X3_name] = (
                    X3[:, X3_index] + (tilde - self.omega[:, 0] - X3 @ self.gamma) / self.gamma[X3_index]
                )
        self._check(inversion.result, error_behavior, "The inversion for delta")
        return SimulationResults(
            self,
            override,
            delta=delta_rows.reshape(-1, 1),
            costs=None if costs_rows is None else costs_rows.reshape(-1, 1),
            result=inversion.result,
            seconds=time.perf_counter() - start_time,
        )

    def _replaceable(self, name: Any, which: int, parameters: np.ndarray, argument: str, endogenous: str) -> int:
        """Column of ``name`` in X1 (``which=0``) or X3 (``2``), checked as PyBLP checks it."""
        p = self.problem
        labels = p.design.X1_labels if which == 0 else p.X3_labels
        matrix = "X1" if which == 0 else "X3"
        if not isinstance(name, str) or name not in labels:
            raise SpecificationError(f"{argument} must be an untransformed variable in the formulation for {matrix}.")
        if name == endogenous:
            raise SpecificationError(f"{argument} must be an exogenous variable, not {endogenous!r}.")
        depends = np.any(self.product_formulations[which].derivative_matrix(p.product_frame, name) != 0, axis=0)
        if int(depends.sum()) > 1:
            raise SpecificationError(f"{argument} {name!r} must appear only once in the formulation for {matrix}.")
        others = [f for k, f in enumerate(self.product_formulations) if k != which and f is not None]
        if any(name in f.variables for f in others):
            raise SpecificationError(f"{argument} {name!r} must appear only in the formulation for {matrix}.")
        index = labels.index(name)
        if parameters[index] == 0:
            raise SpecificationError(f"The parameter on {argument} {name!r} cannot be zero.")
        return index

    def _check(self, result: FixedPointResult, error_behavior: str, what: str) -> None:
        failed = ~result.converged
        if not bool(failed.any()):
            return
        markets = [self.problem.layout.market_ids[t] for t in torch.nonzero(failed).flatten().tolist()]
        message = (
            f"{what} did not converge in {len(markets)} market(s): {markets[:10]}. Try more iterations or a more "
            "negative price coefficient."
        )
        if error_behavior == "raise":
            raise SimulationError(message)
        warnings.warn(message + " The last iterate is kept.", ConvergenceWarning, stacklevel=3)

    def __str__(self) -> str:
        lines = [
            "Simulation:",
            f"  T = {self.T}, N = {self.N}, K1 = {self.K1}, K2 = {self.K2}, K3 = {self.K3}, D = {self.D}, H = {self.H}",
            f"  X1: {self.product_formulations[0]}  beta = {np.array2string(self.beta, precision=4)}",
        ]
        if self.K2:
            lines.append(f"  X2: {self.product_formulations[1]}  sigma = {self.sigma.tolist()}")
            if self.D:
                lines.append(f"  d: {self.agent_formulation}  pi = {self.pi.tolist()}")
        if self.K3:
            lines.append(f"  X3: {self.product_formulations[2]}  gamma = {np.array2string(self.gamma, precision=4)}")
        if self.H:
            lines.append(f"  rho = {self.rho.reshape(-1).tolist()}")
        return "\n".join(lines)


def _vector(name: str, value: Any, size: int, required: bool) -> np.ndarray:
    if value is None:
        if required and size:
            raise SpecificationError(f"{name} must be given as a vector with {size} elements.")
        return np.zeros(size)
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.size != size:
        raise SpecificationError(f"{name} must have {size} elements; received {vector.size}.")
    if not np.isfinite(vector).all():
        raise SpecificationError(f"{name} has NaN or infinite values.")
    return vector


def _matrix(name: str, value: Any, shape: tuple[int, int]) -> np.ndarray:
    if value is None:
        if shape[0] * shape[1]:
            raise SpecificationError(f"{name} must be given as a {shape[0]} by {shape[1]} matrix.")
        return np.zeros(shape)
    matrix = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if shape[0] * shape[1] == 0:
        if matrix.size:
            raise SpecificationError(f"{name} was given, but the simulation has no parameters of that kind.")
        return np.zeros(shape)
    if matrix.shape != shape:
        raise SpecificationError(f"{name} must be {shape[0]} by {shape[1]}; received shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise SpecificationError(f"{name} has NaN or infinite values.")
    return matrix
