"""``IntegratedResults``: estimates of the integrated model, their standard errors, the solved mean utilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..persistence import Persistent


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
