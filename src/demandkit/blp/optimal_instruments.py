"""Feasible optimal instruments (Chamberlain 1987), PyBLP's ``ProblemResults.compute_optimal_instruments``.

The optimal instruments for the nonlinear parameters :math:`\\theta` (with the elements of :math:`\\beta` and
:math:`\\gamma` that were not concentrated out) are

.. math::

    \\begin{pmatrix} Z^{opt}_{D,jt} \\\\ Z^{opt}_{S,jt} \\end{pmatrix}
    = \\Sigma_{\\xi\\omega}^{-1}\\, E\\left[\\begin{matrix}
        \\partial \\xi_{jt}/\\partial\\theta' \\\\ \\partial \\omega_{jt}/\\partial\\theta'
    \\end{matrix} \\,\\middle|\\, Z\\right],

evaluated at the estimates. The expectation averages over realizations of :math:`(\\xi, \\omega)`: zero
(``'approximate'``), draws from a normal with their estimated covariance (``'normal'``) or from their
empirical distribution (``'empirical'``). For each realization, mean utilities are
:math:`\\hat\\delta - \\hat\\xi + \\xi^{(r)}`, costs :math:`f^{-1}(\\hat{\\tilde c} - \\hat\\omega + \\omega^{(r)})`,
and prices are the Bertrand-Nash equilibrium (every market at once, by the zeta-markup fixed point of
:mod:`demandkit.simulation`) with a supply side, or the fitted values of a regression of prices on the demand
instruments without one; shares follow from the prices.

The Jacobians at a realization come from autograd and the implicit function theorem: :math:`\\delta(\\theta)`
solves :math:`\\log s(\\delta, \\theta) = \\log s^{(r)}`, so for a direction :math:`v` in :math:`\\theta`,

.. math::

    \\dot\\delta = -\\left(\\frac{\\partial \\log s}{\\partial \\delta'}\\right)^{-1}
    \\frac{\\partial \\log s}{\\partial \\theta'} v, \\qquad
    \\dot\\xi = \\dot\\delta - X_1 \\dot\\beta, \\qquad
    \\dot\\omega = -\\frac{\\partial \\tilde c}{\\partial c}\\,
    \\dot\\eta(\\delta, \\theta)[\\dot\\delta, v] - X_3\\dot\\gamma,

with the directional derivatives of the log shares (through :class:`~demandkit.blp.demand.DemandModel`) and of the
markups :math:`\\eta` (through :class:`~demandkit.blp.supply.SupplyModel`) by autograd, the batched share Jacobian from
the same model (one solve per market); one pass per parameter, all markets at once. The Jacobians hold
:math:`\\beta` and :math:`\\gamma` fixed and are not residualized on absorbed fixed effects, as PyBLP's.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..configurations.formulation import absorb
from ..configurations.iteration import Iteration
from ..configurations.options import check_choice
from ..exceptions import InvalidDataError, SpecificationError
from .demand import DemandModel
from .equilibrium import PriceDemand, linear_in_prices, solve_equilibrium
from .optimal_instrument_results import OptimalInstrumentResults
from .supply import SupplyModel

OptimalMethod = Literal["approximate", "normal", "empirical"]


def compute_optimal_instruments(
    results: Any,
    method: str = "approximate",
    draws: int = 1,
    seed: int | None = None,
    expected_prices: Any = None,
    iteration: Iteration | None = None,
    constant_costs: bool = True,
    progress: bool = False,
) -> OptimalInstrumentResults:
    """Estimate feasible optimal instruments :math:`Z^{opt}_D` and :math:`Z^{opt}_S` for a solved problem.

    Parameters
    ----------
    results : ProblemResults
        Estimates of a :class:`~demandkit.blp.problem.Problem`.
    method : {'approximate', 'normal', 'empirical'}
        Evaluate the Jacobians at :math:`\\xi = \\omega = 0`, or average them over ``draws`` realizations drawn
        from a normal with the errors' sample covariance or from the errors' empirical distribution.
    draws : int
        Number of realizations (ignored, and 1, for ``'approximate'``).
    seed : int, optional
        Seeds ``numpy.random.RandomState`` for the draws (the same draws as PyBLP's for a seed).
    expected_prices : array-like, optional
        :math:`E[p \\mid Z]` (``N``). By default equilibrium prices with a supply side whose X3 does not involve
        shares, and otherwise the fitted values of a regression of prices on the demand instruments.
    iteration : Iteration, optional
        How equilibrium prices are solved (default ``Iteration('simple', {'atol': 1e-12})``).
    constant_costs : bool
        Only ``True`` is supported (costs do not move with shares).
    progress : bool
        Show a progress bar over draws.

    Returns
    -------
    OptimalInstrumentResults
    """
    start_time = time.perf_counter()
    check_choice("method", method, OptimalMethod)
    p = results.problem
    if not constant_costs and any("shares" in label for label in p.X3_labels):
        raise SpecificationError("constant_costs=False (costs that move with shares) is not supported.")
    if method == "approximate":
        draws = 1
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise SpecificationError(f"draws must be a positive int; received {draws!r}.")
    state = _State.build(results)
    sample = _sampler(method, seed, state.xi, state.omega)
    supply_equilibrium = p.K3 > 0 and not any("shares" in label for label in p.X3_labels)
    if expected_prices is not None:
        iteration = None
        expected = _vector(expected_prices, p.N, "expected_prices")
    elif supply_equilibrium:
        iteration = iteration or Iteration("simple", {"atol": 1e-12})
        if not isinstance(iteration, Iteration):
            raise SpecificationError(f"iteration must be an Iteration; received {iteration!r}.")
        expected = None
    else:
        iteration = None
        expected = _fitted_prices(p)

    N, P = p.N, state.space.P
    totals = {"prices": np.zeros(N), "shares": np.zeros(N), "xi": np.zeros((N, P)), "omega": np.zeros((N, P))}
    converged, iterations, evaluations = [], [], []
    rounds: Any = range(draws)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="optimal instruments", unit=" draws")
    for _ in rounds:
        xi_draw, omega_draw = sample()
        realization = state.realize(xi_draw, omega_draw, expected, iteration)
        for name in totals:
            totals[name] += realization[name] / draws
        converged.append(realization["converged"])
        iterations.append(realization["iterations"])
        evaluations.append(realization["evaluations"])

    xi_jacobian, omega_jacobian = totals["xi"], totals["omega"]
    if p.K3 == 0:
        inverse = np.array([[1 / np.var(state.xi)]])
        demand_instruments = inverse[0, 0] * xi_jacobian
        supply_instruments = np.full((N, 0), np.nan)
        omega_jacobian = np.full((N, P), np.nan)
    else:
        inverse = np.linalg.inv(np.cov(state.xi, state.omega))
        stacked = inverse @ np.stack([xi_jacobian, omega_jacobian], axis=1)  # [N, 2, P]
        demand_instruments, supply_instruments = stacked[:, 0, :], stacked[:, 1, :]
    return OptimalInstrumentResults(
        problem_results=results,
        demand_instruments=demand_instruments,
        supply_instruments=supply_instruments,
        inverse_covariance_matrix=inverse,
        expected_xi_by_theta_jacobian=xi_jacobian,
        expected_omega_by_theta_jacobian=omega_jacobian,
        expected_prices=totals["prices"].reshape(-1, 1),
        expected_shares=totals["shares"].reshape(-1, 1),
        computation_time=time.perf_counter() - start_time,
        draws=draws,
        fp_converged=np.stack(converged, axis=1),
        fp_iterations=np.stack(iterations, axis=1),
        contraction_evaluations=np.stack(evaluations, axis=1),
    )


# ------------------------------------------------------------------------------------------ internals


def _vector(values: Any, size: int, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.size != size or not np.isfinite(vector).all():
        raise InvalidDataError(f"{name} must hold {size} finite values, one per product.")
    return vector


def _sampler(method: str, seed: int | None, xi: np.ndarray, omega: np.ndarray | None) -> Any:
    """A function returning one realization ``(xi, omega)`` (``N`` each), drawn as PyBLP draws it."""
    N = xi.size
    zero_omega = None if omega is None else np.zeros(N)
    if method == "approximate":
        return lambda: (np.zeros(N), zero_omega)
    state = np.random.RandomState(seed)
    if method == "normal":
        if omega is None:
            deviation = np.std(xi)
            return lambda: (state.normal(0, deviation, N), None)
        covariance = np.cov(xi, omega)
        return lambda: tuple(state.multivariate_normal([0, 0], covariance, N).T)
    if omega is None:
        return lambda: (xi[state.choice(N, N)], None)
    joint = np.column_stack([xi, omega])
    return lambda: tuple(joint[state.choice(N, N)].T)


def _fitted_prices(problem: Any) -> np.ndarray:
    """Fitted values of prices regressed on the (absorbed) demand instruments, plus the absorbed part."""
    prices = problem.product_frame["prices"].to_numpy(dtype=np.float64)
    design = problem.design
    absorbed = absorb(
        prices[:, None],
        design.absorb_ids,
        problem.product_formulations[0].absorb_method,
        problem.product_formulations[0].absorb_options,
    )[:, 0]
    ZD = design.ZD
    covariances = ZD.T @ ZD
    try:
        parameters = np.linalg.solve(covariances, ZD.T @ absorbed)
    except np.linalg.LinAlgError:
        parameters = np.linalg.lstsq(covariances, ZD.T @ absorbed, rcond=None)[0]
    return ZD @ parameters + prices - absorbed


@dataclasses.dataclass
class _State:
    """The estimates as tensors, and how to compute one realization's prices, shares and Jacobians."""

    results: Any
    space: Any
    theta: Tensor  # [P]
    beta: Tensor  # [K1] all elements, at the estimates
    concentrated_beta: Tensor  # [K1] 1 where concentrated out
    sigma: Tensor
    pi: Tensor
    rho: Tensor
    delta: np.ndarray  # [N] rows, before absorption
    xi: np.ndarray
    omega: np.ndarray | None
    tilde_costs: np.ndarray | None
    linear: bool  # whether X1 and X2 are linear in prices

    @classmethod
    def build(cls, results: Any) -> _State:
        p = results.problem
        space = results._space
        kwargs = {"dtype": p.dtype, "device": p.device}
        theta = torch.as_tensor(np.asarray(results.theta, dtype=np.float64).reshape(-1), **kwargs)
        sigma, pi, rho = space.unpack(theta)
        beta = torch.as_tensor(np.asarray(results.beta, dtype=np.float64).reshape(-1), **kwargs)
        concentrated = torch.zeros_like(beta)
        concentrated[torch.as_tensor(space.eliminated_beta, dtype=torch.int64, device=p.device)] = 1.0
        delta = p.layout.unpad(results._delta_padded.detach().cpu().numpy()).astype(np.float64)
        omega = tilde = None
        if p.K3:
            omega = np.asarray(results.omega, dtype=np.float64).reshape(-1)
            costs = results._steps[-1].evaluation.costs.detach().cpu().numpy().astype(np.float64)
            lower, upper = results.costs_bounds
            costs = np.clip(costs, lower, upper)
            tilde = np.log(costs) if p.costs_type == "log" else costs
        xi = np.asarray(results.xi, dtype=np.float64).reshape(-1)
        linear = linear_in_prices(p)
        return cls(results, space, theta, beta, concentrated, sigma, pi, rho, delta, xi, omega, tilde, linear)

    def _rows(self, padded: Tensor) -> np.ndarray:
        return self.results.problem.layout.unpad(padded.detach().cpu().numpy()).astype(np.float64)

    def realize(
        self, xi: np.ndarray, omega: np.ndarray | None, expected: np.ndarray | None, iteration: Iteration | None
    ) -> dict[str, Any]:
        """Prices, shares and the Jacobians of :math:`\\xi` and :math:`\\omega` for one realization."""
        p = self.results.problem
        model = self.results.model
        delta = self.delta - self.xi + xi
        demand = PriceDemand(
            problem=p,
            model=model,
            coefficients=model.coefficients(self.sigma, self.pi),
            rho=self.rho,
            beta=self.beta,
            base_delta=self.results.problem.padded(delta),
            base_prices=p.prices_padded,
            linear=self.linear,
        )
        T = p.T
        converged, counts = np.ones(T, dtype=bool), np.zeros(T, dtype=np.int64)
        evaluations = counts.copy()
        costs = None
        with torch.no_grad():
            if p.K3:
                tilde = self.tilde_costs - self.omega + omega
                costs = np.exp(tilde) if p.costs_type == "log" else tilde
            if expected is not None:
                prices = self.results.problem.padded(expected)
            else:
                result = solve_equilibrium(
                    demand, self.results.problem.padded(costs), p.prices_padded, p.ownership_padded, iteration
                )
                prices = result.values
                converged = result.converged.cpu().numpy()
                counts, evaluations = result.iterations.cpu().numpy(), result.evaluations.cpu().numpy()
            probabilities, _, delta_padded = demand.state(prices)
            shares = demand.shares(probabilities)
        xi_jacobian, omega_jacobian = self._jacobians(demand, prices, shares, delta_padded, costs)
        return {
            "prices": self._rows(prices),
            "shares": self._rows(shares),
            "xi": xi_jacobian,
            "omega": omega_jacobian,
            "converged": converged,
            "iterations": counts,
            "evaluations": evaluations,
        }

    def _jacobians(
        self, demand: PriceDemand, prices: Tensor, shares: Tensor, delta: Tensor, costs: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``N x P`` Jacobians of :math:`\\xi` and :math:`\\omega` (holding :math:`\\beta`, :math:`\\gamma` fixed)."""
        p = self.results.problem
        space = self.space
        N, P = p.N, space.P
        xi_jacobian, omega_jacobian = np.zeros((N, P)), np.zeros((N, P))
        if P == 0:
            return xi_jacobian, omega_jacobian
        realized = _realized_problem(p, demand, prices, shares)
        model = DemandModel(realized).fix_nodes(space.sigma0)
        supply = SupplyModel(realized, model) if p.K3 else None
        X1 = realized.X1_realized
        X3 = realized.X3_realized
        mask = model.mask
        concentrated = self.concentrated_beta * self.beta

        def log_shares(theta: Tensor) -> Tensor:
            sigma, pi, rho = space.unpack(theta)
            return torch.where(mask, model.log_shares(delta, model.mu(sigma, pi), rho), 0.0)

        def markups(theta: Tensor, delta_: Tensor) -> Tensor:
            sigma, pi, rho = space.unpack(theta)
            beta = space.unpack_linear(theta)[0] + concentrated
            return torch.where(mask, supply.markups(delta_, sigma, pi, rho, beta), 0.0)

        with torch.no_grad():
            matrix = model.log_share_jacobian(delta, model.mu(self.sigma, self.pi), self.rho)
        eye = torch.eye(P, dtype=p.dtype, device=p.device)
        for k in range(P):  # one directional derivative per parameter, every market at once
            direction = eye[k]
            share_tangent = _jvp(log_shares, (self.theta,), (direction,))
            delta_tangent = -torch.linalg.solve(matrix, share_tangent.unsqueeze(-1)).squeeze(-1)
            delta_tangent = torch.where(mask, delta_tangent, 0.0)
            beta_tangent, gamma_tangent = space.unpack_linear(direction)
            xi_jacobian[:, k] = self._rows(delta_tangent) - X1 @ beta_tangent.cpu().numpy()
            if supply is not None:
                eta_tangent = _jvp(markups, (self.theta, delta), (direction, delta_tangent))
                costs_tangent = -self._rows(eta_tangent)
                if p.costs_type == "log":
                    costs_tangent = costs_tangent / costs
                omega_jacobian[:, k] = costs_tangent - X3 @ gamma_tangent.cpu().numpy()
        return xi_jacobian, omega_jacobian


def _jvp(function: Any, primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]) -> Tensor:
    """Directional derivative of ``function`` at ``primals`` along ``tangents`` by reverse-over-reverse autograd.

    With :math:`g(u) = J'u` from one backward pass (built with ``create_graph``), :math:`Jv = \\nabla_u (g(u)'v)`;
    this needs only reverse mode (no forward-mode decompositions to load) and is exact.
    """
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in primals]
        output = function(*inputs)
        u = torch.zeros_like(output, requires_grad=True)
        vjps = torch.autograd.grad(output, inputs, grad_outputs=u, create_graph=True, allow_unused=True)
        total = sum((g * v).sum() for g, v in zip(vjps, tangents, strict=True) if g is not None)
        if not isinstance(total, Tensor) or not total.requires_grad:
            return torch.zeros_like(output).detach()
        (derivative,) = torch.autograd.grad(total, u)
    return derivative.detach()


def _realized_problem(problem: Any, demand: PriceDemand, prices: Tensor, shares: Tensor) -> Any:
    """A shallow copy of ``problem`` whose prices, shares and price-dependent designs are the realization's."""
    realized = copy.copy(problem)
    layout = problem.layout
    price_rows = layout.unpad(prices.detach().cpu().numpy())
    share_rows = layout.unpad(shares.detach().cpu().numpy())
    frame = problem.product_frame.assign(prices=price_rows, shares=share_rows)
    mask = problem.product_mask
    realized.prices_padded = torch.where(mask, prices, 0.0)
    realized.log_market_shares = torch.log(torch.where(mask, shares, 1.0))
    X1_formulation, X2_formulation, X3_formulation = problem.product_formulations
    realized.X1_realized = X1_formulation.build_matrix(frame)[0]
    realized.X3_realized = X3_formulation.build_matrix(frame)[0] if X3_formulation is not None else None
    if problem.K2:
        realized.X2_padded = problem.padded(X2_formulation.build_matrix(frame)[0])
    if not demand.linear:
        realized.dX1_padded = problem.padded(X1_formulation.derivative_matrix(frame, "prices"))
        if problem.K2:
            derivative = X2_formulation.derivative_matrix(frame, "prices")
            realized.dX2_padded = problem.padded(derivative)
    return realized
