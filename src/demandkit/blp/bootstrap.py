"""The parametric bootstrap of PyBLP's ``ProblemResults.bootstrap``, batched over draws.

Draws :math:`b = 1, \\dots, B` of all parameters :math:`(\\theta, \\beta_c, \\gamma_c)` come from the estimated
normal distribution :math:`N(\\hat\\psi, \\hat V/N)` (``parameters`` and ``parameter_covariances``), drawn as PyBLP
draws them (``numpy.random.RandomState(seed).multivariate_normal``) and clipped to the optimization's bounds. Each
draw implies mean utilities :math:`\\delta_b = \\hat\\delta + X_1(\\beta_b - \\hat\\beta)` (the structural errors
and any absorbed fixed effects held at their estimates; without absorbed fixed effects this is PyBLP's
:math:`X_1\\beta_b + \\hat\\xi`) and shares :math:`s_b = s(\\delta_b, \\theta_b)` at the observed prices, computed
for a chunk of draws and every market at once as ``[B, T, J, I]`` tensors. With a supply side, each draw's
marginal costs :math:`\\tilde c_b = \\tilde c(\\hat c) + X_3(\\gamma_b - \\hat\\gamma)` (``log`` or levels) set new
equilibrium prices :math:`p_b = c_b + \\zeta_b(p_b)` (the :math:`\\zeta`-markup iteration, every market at once, one
draw at a time), and :math:`\\delta_b` and :math:`s_b` are those at :math:`p_b`. :class:`BootstrappedResults` gives
PyBLP's post-estimation methods with a leading axis of draws: each draw's statistic is the
:class:`~demandkit.blp.results.ProblemResults` method evaluated at that draw (batched over markets; with a supply
side, on the data with the draw's prices and shares).
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import SpecificationError
from ..kernels.shares import MASKED, random_coefficients
from ..persistence import Persistent
from .demand import DemandModel

CHUNK_ELEMENTS = 2**25
"""Largest ``[draws, T, J, I]`` block the batched shares form at once (about 270 MB in float64)."""

BOOTSTRAPPED_METHODS = (
    "compute_elasticities",
    "compute_diversion_ratios",
    "compute_long_run_diversion_ratios",
    "compute_probabilities",
    "compute_shares",
    "compute_consumer_surpluses",
    "extract_diagonals",
    "extract_diagonal_means",
    "compute_costs",
    "compute_markups",
    "compute_profits",
    "compute_hhi",
    "compute_prices",
    "compute_passthrough",
    "compute_approximate_prices",
    "compute_aggregate_elasticities",
    "compute_delta",
    "compute_demand_jacobians",
    "compute_demand_hessians",
    "compute_profit_hessians",
)


def draw_parameters(results: Any, draws: int, seed: int | None) -> np.ndarray:
    """``[draws, P + K_c]`` draws of :math:`(\\theta, \\beta_c, \\gamma_c)`, clipped to the bounds."""
    space = results._space
    mean = np.concatenate(
        [
            results.theta,
            results.beta.reshape(-1)[space.eliminated_beta],
            results.gamma.reshape(-1)[space.eliminated_gamma],
        ]
    )
    covariances = np.zeros((mean.size, mean.size))
    estimated = np.isfinite(results._standard_error_vector)
    index = np.flatnonzero(estimated)
    covariances[np.ix_(index, index)] = results.parameter_covariances / results.problem.N
    drawn = np.random.RandomState(seed).multivariate_normal(mean, covariances, size=draws)
    lower = np.concatenate([space.lower, np.full(mean.size - space.P, -np.inf)])
    upper = np.concatenate([space.upper, np.full(mean.size - space.P, np.inf)])
    # PyBLP's default bounds hold for the draws even after an optimizer without bounds: sigma's diagonal and rho
    for p, (r, c) in enumerate(zip(*space.sigma_index, strict=True)):
        if r == c and lower[p] == -np.inf:
            lower[p] = min(0.0, space.sigma0[r, c])
    offset = len(space.sigma_index[0]) + len(space.pi_index[0])
    for p, k in enumerate(space.rho_index):
        if lower[offset + p] == -np.inf and upper[offset + p] == np.inf:
            lower[offset + p], upper[offset + p] = min(0.0, space.rho0[k]), max(0.99, space.rho0[k])
    return np.clip(drawn, lower, upper)


def _unpack(results: Any, drawn: np.ndarray) -> dict[str, np.ndarray]:
    """Each draw's ``sigma``, ``pi``, ``rho``, ``beta`` and ``gamma`` in PyBLP's shapes, stacked over draws."""
    space = results._space
    P = space.P
    out: dict[str, list] = {name: [] for name in ("sigma", "pi", "rho", "beta", "gamma")}
    for row in drawn:  # a loop over draws to fill small matrices (the heavy work is batched below)
        theta = torch.as_tensor(row[:P], dtype=torch.float64)
        sigma, pi, rho = space.unpack(theta)
        beta, gamma = space.unpack_linear(theta)
        beta, gamma = beta.numpy().copy(), gamma.numpy().copy()
        beta[space.eliminated_beta] = row[P : P + len(space.eliminated_beta)]
        gamma[space.eliminated_gamma] = row[P + len(space.eliminated_beta) :]
        for name, value in (("sigma", sigma), ("pi", pi), ("rho", rho), ("beta", beta), ("gamma", gamma)):
            out[name].append(np.asarray(value, dtype=np.float64))
    return {
        "sigma": np.stack(out["sigma"]),
        "pi": np.stack(out["pi"]),
        "rho": np.stack(out["rho"]).reshape(len(drawn), -1, 1),
        "beta": np.stack(out["beta"]).reshape(len(drawn), -1, 1),
        "gamma": np.stack(out["gamma"]).reshape(len(drawn), -1, 1),
    }


def batched_shares(results: Any, delta: Tensor, sigma: Tensor, pi: Tensor, rho: Tensor) -> Tensor:
    """Shares ``[B, T, J]`` for draws of ``delta [B, T, J]``, ``sigma [B, K2, K2]``, ``pi [B, K2, D]``.

    The random-coefficients logit is batched over draws in chunks; under nesting (or with product-specific
    demographics, whose coefficients vary by product) each draw is one batched call of the demand model.
    """
    problem, model = results.problem, results.model
    if model.nesting is not None or not problem.K2 or model.product_demographics is not None:
        shares = []
        for b in range(delta.shape[0]):  # a loop over draws, each batched over markets
            mu = model.mu(sigma[b], pi[b]) if problem.K2 else None
            shares.append(torch.exp(model.log_shares(delta[b], mu, rho[b])))
        return torch.where(problem.product_mask, torch.stack(shares), 0.0)
    nodes = model.nodes_for(sigma[0])
    T, J = problem.product_mask.shape
    I = nodes.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(1, T * J * I))
    out = []
    for start in range(0, delta.shape[0], chunk):  # chunks of draws
        end = start + chunk
        coefficients = random_coefficients(
            nodes, model.demographics, sigma[start:end, None], pi[start:end, None], problem.rc_types
        )
        utilities = delta[start:end].unsqueeze(-1) + torch.einsum("tjk,btik->btji", model.X2, coefficients)
        utilities = torch.where(problem.product_mask.unsqueeze(-1), utilities, MASKED)
        zeros = torch.zeros_like(utilities[:, :, :1, :])
        log_probabilities = utilities - torch.logsumexp(torch.cat([zeros, utilities], dim=2), dim=2, keepdim=True)
        out.append((torch.exp(log_probabilities) * model.weights.unsqueeze(1)).sum(-1))
    return torch.where(problem.product_mask, torch.cat(out), 0.0)


def bootstrap(
    results: Any, draws: int = 1000, seed: int | None = None, iteration: Any = None, constant_costs: bool = True
) -> BootstrappedResults:
    """Parametric bootstrap (see the module's docstring); PyBLP's arguments.

    Parameters
    ----------
    results : ProblemResults
        Estimates with their covariances.
    draws : int
        Number of draws :math:`B`.
    seed : int, optional
        Seeds ``numpy.random.RandomState``: the same parameter draws as PyBLP's for the same seed.
    iteration : Iteration, optional
        With a supply side, how equilibrium prices are iterated; PyBLP's ``Iteration('simple', {'atol': 1e-12})``
        by default.
    constant_costs : bool
        Marginal costs stay as drawn while prices move (the only option here: costs do not depend on shares).

    Returns
    -------
    BootstrappedResults
    """
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise SpecificationError(f"draws must be a positive integer; received {draws!r}.")
    problem = results.problem
    if not constant_costs:
        raise SpecificationError("constant_costs=False (costs that move with shares) is not supported.")
    start = time.perf_counter()
    drawn = draw_parameters(results, int(draws), seed)
    unpacked = _unpack(results, drawn)
    kwargs = {"dtype": problem.dtype, "device": problem.device}
    beta_change = torch.as_tensor(unpacked["beta"][:, :, 0] - results.beta.reshape(1, -1), **kwargs)
    X1 = torch.as_tensor(np.asarray(problem.design.X1_raw), **kwargs)
    delta_rows = torch.as_tensor(results.delta.reshape(1, -1), **kwargs) + beta_change @ X1.T  # [B, N]
    layout = problem.layout
    rows_market = torch.as_tensor(layout.market_of_row, device=problem.device)
    rows_slot = torch.as_tensor(layout.slot_of_row, device=problem.device)
    delta = torch.zeros((len(drawn),) + tuple(problem.product_mask.shape), **kwargs)
    delta[:, rows_market, rows_slot] = delta_rows
    with torch.no_grad():
        shares = batched_shares(
            results,
            delta,
            torch.as_tensor(unpacked["sigma"], **kwargs),
            torch.as_tensor(unpacked["pi"], **kwargs),
            torch.as_tensor(unpacked["rho"][:, :, 0], **kwargs),
        )
    bootstrapped = BootstrappedResults(
        results,
        unpacked,
        delta,
        delta_rows.cpu().numpy()[..., None],
        shares[:, rows_market, rows_slot].cpu().numpy()[..., None],
        time.perf_counter() - start,
    )
    if problem.K3:
        _equilibrium(bootstrapped, iteration)
        bootstrapped.computation_time = time.perf_counter() - start
    return bootstrapped


def _equilibrium(bootstrapped: BootstrappedResults, iteration: Any) -> None:
    """Each draw's costs, equilibrium prices, and the shares and mean utilities at them (supply side)."""
    from ..configurations.iteration import Iteration

    results = bootstrapped.problem_results
    problem = results.problem
    iteration = iteration or Iteration("simple", {"atol": 1e-12})
    costs = results.compute_costs()[:, 0]
    transformed = np.log(costs) if problem.costs_type == "log" else costs
    prices, shares, deltas, converged = [], [], [], []
    for b in range(bootstrapped.draws):  # a loop over draws; each solves every market's equilibrium at once
        change = problem.X3_raw @ (bootstrapped.bootstrapped_gamma[b, :, 0] - results.gamma[:, 0])
        drawn_costs = np.exp(transformed + change) if problem.costs_type == "log" else transformed + change
        clone = bootstrapped.demand_draw(b)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            new_prices = clone.compute_prices(costs=drawn_costs, iteration=iteration)[:, 0]
        converged.append(not any("did not converge" in str(w.message) for w in caught))
        prices.append(new_prices)
        shares.append(clone.compute_shares(prices=new_prices)[:, 0])
        frame = problem.product_frame.assign(prices=new_prices)
        X1_new = problem.product_formulations[0].build_matrix(frame)[0]
        deltas.append(clone.delta[:, 0] + (X1_new - problem.design.X1_raw) @ clone.beta[:, 0])
    bootstrapped.bootstrapped_prices = np.stack(prices)[..., None]
    bootstrapped.bootstrapped_shares = np.stack(shares)[..., None]
    bootstrapped.bootstrapped_delta = np.stack(deltas)[..., None]
    bootstrapped.fp_converged = np.array(converged).reshape(-1, 1)


class BootstrappedResults(Persistent):
    """Bootstrapped results of a solved problem (PyBLP's ``BootstrappedResults``).

    The ``compute_*`` and ``extract_*`` methods of :class:`~demandkit.blp.results.ProblemResults` are available
    with an extra first axis over draws: each draw's output is the method evaluated at that draw's parameters and
    mean utilities. Array arguments with a first axis of length ``draws`` are split across the draws (as in
    PyBLP); other arguments are shared.

    Attributes
    ----------
    problem_results : ProblemResults
        The estimates that were bootstrapped.
    bootstrapped_sigma, bootstrapped_pi, bootstrapped_rho, bootstrapped_beta, bootstrapped_gamma : ndarray
        The parameter draws, stacked on a first axis of length ``draws``.
    bootstrapped_delta, bootstrapped_shares, bootstrapped_prices : ndarray
        ``draws x N x 1`` mean utilities, shares and (unchanged, demand side only) prices of each draw.
    draws : int
    computation_time : float
        Seconds spent drawing and computing the shares.
    """

    def __init__(
        self,
        results: Any,
        unpacked: dict[str, np.ndarray],
        delta_padded: Tensor,
        delta: np.ndarray,
        shares: np.ndarray,
        seconds: float,
    ) -> None:
        self.problem_results = results
        self.draws = int(delta.shape[0])
        for name, value in unpacked.items():
            setattr(self, f"bootstrapped_{name}", value)
        self.bootstrapped_delta = delta
        self.bootstrapped_shares = shares
        prices = results.problem.product_frame["prices"].to_numpy(dtype=np.float64).reshape(1, -1, 1)
        self.bootstrapped_prices = np.repeat(prices, self.draws, axis=0)
        self._delta_padded = delta_padded
        self.computation_time = seconds
        self.fp_converged = np.ones((self.draws, 1), dtype=bool)

    def demand_draw(self, b: int) -> Any:
        """The :class:`~demandkit.blp.results.ProblemResults` of draw ``b`` at the data's prices."""
        clone = copy.copy(self.problem_results)
        for name in ("sigma", "pi", "rho", "beta", "gamma"):
            setattr(clone, name, getattr(self, f"bootstrapped_{name}")[b])
        clone.sigma_squared = clone.sigma @ clone.sigma.T
        clone._delta_padded = self._delta_padded[b]
        clone.delta = self.problem_results.problem.layout.unpad(self._delta_padded[b].cpu().numpy()).reshape(-1, 1)
        return clone

    def draw(self, b: int) -> Any:
        """The :class:`~demandkit.blp.results.ProblemResults` of draw ``b``: its parameters and mean utilities, and
        with a supply side its equilibrium prices and shares (on a problem rebuilt with them)."""
        clone = self.demand_draw(b)
        results = self.problem_results
        problem = results.problem
        if not problem.K3:
            return clone
        frame = problem.product_frame.assign(
            prices=self.bootstrapped_prices[b, :, 0], shares=self.bootstrapped_shares[b, :, 0]
        )
        clone.problem = type(problem)(
            problem.product_formulations,
            frame,
            problem.agent_formulation,
            getattr(problem, "agent_frame", None),
            problem.integration,
            rc_types=problem.rc_types,
            costs_type=problem.costs_type,
            add_exogenous=problem.add_exogenous,
            device=str(problem.device),
            dtype=problem.dtype,
        )
        clone.model = DemandModel(clone.problem).fix_nodes(results._space.sigma0)
        clone._delta_padded = clone.problem.padded(self.bootstrapped_delta[b, :, 0])
        clone.delta = self.bootstrapped_delta[b]
        return clone

    def _stacked(self, method: str, *args: Any, **kwargs: Any) -> np.ndarray:
        outputs = []
        for b in range(self.draws):  # a loop over draws; each call is batched over markets
            split_args = [self._split(value, b) for value in args]
            split_kwargs = {key: self._split(value, b) for key, value in kwargs.items()}
            outputs.append(np.asarray(getattr(self.draw(b), method)(*split_args, **split_kwargs)))
        return np.stack(outputs)

    def _split(self, value: Any, b: int) -> Any:
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == self.draws and value.ndim > 1:
            return value[b]
        return value

    def __getattr__(self, name: str) -> Any:
        if name in BOOTSTRAPPED_METHODS:
            if not hasattr(self.problem_results, name):
                raise AttributeError(f"ProblemResults has no {name} to bootstrap.")

            def method(*args: Any, **kwargs: Any) -> np.ndarray:
                return self._stacked(name, *args, **kwargs)

            method.__doc__ = f"``ProblemResults.{name}`` for every draw, stacked on a first axis."
            return method
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """The draws as nested lists."""
        return {
            "draws": self.draws,
            "computation_time": self.computation_time,
            **{
                f"bootstrapped_{name}": getattr(self, f"bootstrapped_{name}").tolist()
                for name in ("sigma", "pi", "rho", "beta", "gamma", "delta", "shares", "prices")
            },
        }

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<BootstrappedResults draws={self.draws}>"
