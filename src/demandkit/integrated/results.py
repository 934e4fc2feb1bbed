"""``IntegratedResults``: estimates of the integrated model, their standard errors, the solved mean utilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..exceptions import InvalidDataError
from ..persistence import Persistent
from .engine import Engine


class IntegratedResults(Persistent):
    """Results of :meth:`IntegratedProblem.solve <demandkit.integrated.IntegratedProblem.solve>`.

    Attributes
    ----------
    sigma, pi : ndarray
        :math:`\\Sigma` (``K2 x K2``) and :math:`\\Pi` (``K2 x D``); elements fixed at zero are zero.
    sigma_se, pi_se : ndarray
        Their standard errors (NaN where fixed), clustered by household.
    gamma, gamma_se, sigma_gamma, sigma_gamma_se : float
        State dependence, its spread across households (NaN when fixed) and standard errors.
    beta, beta_se : ndarray
        Linear parameters from 2SLS of the mean utilities, with standard errors that add the first step's error.
    beta_labels : list of str
    theta, theta_labels, theta_covariance : the free nonlinear parameters, their names and covariance.
    delta : ndarray
        ``N x 1`` mean utilities in ``product_data``'s row order.
    xi : ndarray
        Structural errors of the rows past the burn-in (``xi_rows`` says which).
    loglikelihood : float
        :math:`LL(\\hat\\theta_2)` over households.
    gradient : ndarray
        Gradient of :math:`LL` at the estimates.
    converged : bool
        The optimizer's verdict.
    fp_converged : ndarray
        ``M x T`` booleans: whether each market and period's inversion converged (True on periods a market lacks).
    failed_inversions : DataFrame
        The market and time of every inversion that did not converge (empty when all did).
    households, situations : int
        Households and choice situations in the likelihood.
    """

    def __init__(self, problem: Any, **values: Any) -> None:
        self.problem = problem
        for name, value in values.items():
            setattr(self, name, value)

    @property
    def engine(self) -> Engine:
        """The whole problem's tensors (built on first use after a distributed solve, whose processes held shards)."""
        if self._engine is None:
            p = self.problem
            options, chunk_size = self.engine_options
            self._engine = Engine(
                p.aggregate, p.situations, p.population, p.household_draws, p.device, p.dtype, options, chunk_size,
                p.initial_state,
            )  # fmt: skip
        return self._engine

    # --------------------------------------------------------- counterfactuals
    def simulate(self, product_data: Any = None) -> pd.DataFrame:
        """Shares of every market and period under changed product characteristics (e.g. advertising set to zero).

        ``product_data`` has the rows of the estimation data (same ``market_ids``, ``time_ids``, ``product_ids`` in
        the same order) with some X1 or X2 columns changed. Mean utilities move by :math:`\\Delta X_1 \\hat\\beta`
        (fixed effects and :math:`\\xi` held at their estimates), random coefficients see the new X2, and the
        population's choices are rolled forward from the initial state, so that a change in one week carries
        into later weeks through state dependence. Returns one row per product, market and week with the fitted
        ``shares`` (equal to the observed shares) and the ``counterfactual_shares``.
        """
        problem = self.problem
        frame = problem.product_frame if product_data is None else pd.DataFrame(product_data).reset_index(drop=True)
        keys = ["market_ids", "time_ids", "product_ids"]
        if len(frame) != len(problem.product_frame) or not frame[keys].equals(problem.product_frame[keys]):
            raise InvalidDataError(
                "simulate's product_data must have the estimation data's rows (market_ids, time_ids, product_ids) "
                "in the same order; change only characteristics."
            )
        X1 = problem.product_formulations[0]
        change = (X1.build_matrix(frame)[0] - X1.build_matrix(problem.product_frame)[0]) @ self.beta
        a, engine = problem.aggregate, self.engine
        delta = torch.as_tensor(a.pad(self.delta[:, 0] + change), dtype=engine.dtype, device=engine.device)
        X2 = None
        if problem.K2:
            X2 = torch.as_tensor(
                a.pad(problem.product_formulations[1].build_matrix(frame)[0]), dtype=engine.dtype, device=engine.device
            )
        c = self.space.coefficients(torch.as_tensor(self.theta, dtype=engine.dtype, device=engine.device))
        fitted = engine.shares_path(c, delta.new_tensor(a.pad(self.delta[:, 0])))
        counterfactual = engine.shares_path(c, delta, X2)
        out = frame[keys].copy()
        out["shares"] = a.unpad(fitted.cpu().numpy())
        out["counterfactual_shares"] = a.unpad(counterfactual.cpu().numpy())
        return out

    def compute_elasticities(self, name: str = "prices") -> np.ndarray:
        """Short-run elasticities :math:`\\varepsilon_{jk} = \\partial s_j/\\partial x_k \\cdot x_k / s_j` of every
        market and week, ``N x J`` stacked as PyBLP stacks them: row ``n`` is product ``j`` of ``product_data`` and
        column ``k`` the ``k``-th product (by sorted ``product_ids``) of its market; NaN where ``k`` is not on sale that
        week.

        The population's distribution over last week's choices is held at its fitted path (a price change this
        week moves this week's choices; later weeks would move through the state, see :meth:`simulate`).
        """
        problem = self.problem
        frame = problem.product_frame
        if name not in frame.columns:
            raise InvalidDataError(f"compute_elasticities: {name!r} is not a column of product_data.")
        a, engine = problem.aggregate, self.engine

        def padded(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a.pad(values), dtype=engine.dtype, device=engine.device)

        dX1 = problem.product_formulations[0].derivative_matrix(frame, name) @ self.beta
        dX2 = None
        if problem.K2:
            dX2 = padded(problem.product_formulations[1].derivative_matrix(frame, name))
        c = self.space.coefficients(torch.as_tensor(self.theta, dtype=engine.dtype, device=engine.device))
        jacobians = engine.price_jacobians(c, padded(self.delta[:, 0]), padded(dX1), dX2).cpu().numpy()
        x = a.pad(frame[name].to_numpy(dtype=np.float64), np.nan)  # [M, T, J]
        shares = np.exp(a.log_shares)
        elasticities = jacobians * x[:, :, None, :] / shares[..., None]
        return elasticities[a.row_market, a.row_period, a.row_slot]

    # ---------------------------------------------------------------- tables
    def to_frame(self) -> pd.DataFrame:
        """One row per estimated parameter: name, estimate, standard error."""
        names = list(self.theta_labels) + [f"beta[{label}]" for label in self.beta_labels]
        estimates = np.concatenate([self.theta, self.beta])
        se = np.concatenate([np.sqrt(np.clip(np.diag(self.theta_covariance), 0, None)), self.beta_se])
        return pd.DataFrame({"parameter": names, "estimate": estimates, "se": se})

    def summary(self) -> str:
        """The estimates in the field's layout: estimates with standard errors in parentheses, then diagnostics."""
        width = max(12, *(len(name) for name in self.to_frame()["parameter"]))
        lines = [
            "Integrated Macro-Micro Results (Tuchman 2019):",
            f"  log-likelihood: {self.loglikelihood:.6f} over {self.households} households, "
            f"{self.situations} choice situations",
            f"  optimizer converged: {self.converged} ({self.message}), gradient norm "
            f"{np.max(np.abs(self.gradient), initial=0):.2e}, {self.evaluations} evaluations, "
            f"{self.seconds:.1f} s",
            f"  inversions not converged: {int((~self.fp_converged).sum())} of {self.fp_converged.size} market-periods",
            "",
            f"  {'parameter':<{width}}  {'estimate':>12}  {'(SE)':>12}",
        ]
        for row in self.to_frame().itertuples():
            lines.append(f"  {row.parameter:<{width}}  {row.estimate:>12.6f}  ({row.se:>10.6f})")
        lines.append("  SEs: theta clustered by household; beta 2SLS with the first step's error added (Murphy-Topel).")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<IntegratedResults: loglikelihood {self.loglikelihood:.4f}, {len(self.theta)} nonlinear parameters>"

    def to_dict(self) -> dict[str, Any]:
        """Estimates, standard errors and diagnostics as plain Python values (JSON-ready)."""

        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return np.where(np.isnan(value), None, value).tolist() if value.dtype.kind == "f" else value.tolist()
            if isinstance(value, float) and np.isnan(value):
                return None
            return value

        names = [
            "sigma", "sigma_se", "pi", "pi_se", "gamma", "gamma_se", "sigma_gamma", "sigma_gamma_se", "beta",
            "beta_se", "beta_labels", "theta", "theta_labels", "loglikelihood", "converged", "households",
            "situations", "evaluations", "seconds",
        ]  # fmt: skip
        out = {name: plain(getattr(self, name)) for name in names}
        out["converged"] = bool(self.converged)
        out["fp_converged"] = self.fp_converged.tolist()
        return out
