"""``MixedLogitResults``: estimates, standard errors, fit statistics, a summary, post-estimation, round trips.

Results are read-only records. They keep the model's specification (not its data), so post-estimation works on
any long table with the same columns; the estimation data are the default while the model is at hand (it is
dropped by :meth:`MixedLogitResults.to_dict`, kept by pickling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm

from ..configurations.options import check_choice
from ..device import resolve_device
from ..exceptions import SpecificationError
from ..persistence import Persistent
from . import postestimation
from .covariance import hessian_eigenvalues, second_order
from .engine import Engine
from .specification import COVARIANCE_TYPES, STATE_VARIABLE, CovarianceType, ModelSpecification


class MixedLogitResults(Persistent):
    """Results of :meth:`MixedLogit.fit`.

    Attributes
    ----------
    params, se : Series
        Estimates and standard errors by parameter name (``'price'``, ``'sd.price'``, ``'chol.a.b'``,
        ``'gamma'``, ...). The sign of a spread is not identified (draws are symmetric); it is reported as
        estimated.
    covariance : DataFrame
        The covariance of the estimates chosen by ``covariance_type``; ``covariances`` holds all of
        ``'robust'`` (clustered by individual), ``'classical'`` (inverse negative Hessian) and ``'opg'``.
    loglikelihood, aic, bic : float
        Simulated log-likelihood at the estimates, :math:`2P - 2\\log L` and :math:`P \\log N - 2\\log L`
        (:math:`N` individuals, the independent units of a panel).
    gradient : Series
        Gradient of the log-likelihood at the estimates.
    hessian : ndarray
        Its Hessian, from which the ``'classical'`` and ``'robust'`` covariances are computed.
    converged : bool
        Whether the optimizer reported convergence.
    statistics : dict
        Counts (individuals, situations, observations, draws), iterations, evaluations, timings, methods.
    starts : DataFrame or None
        One row per start of a multi-start fit (``fit(starts=...)``); None after a single fit.
    """

    starts: pd.DataFrame | None = None

    def __init__(
        self,
        specification: ModelSpecification,
        names: list[str],
        theta: np.ndarray,
        covariances: dict[str, np.ndarray],
        covariance_type: CovarianceType,
        loglikelihood: float,
        gradient: np.ndarray,
        hessian: np.ndarray,
        statistics: dict[str, Any],
        model: Any = None,
    ) -> None:
        check_choice("covariance", covariance_type, CovarianceType)
        self.specification = specification
        self.names = list(names)
        self.theta = np.asarray(theta, dtype=np.float64)
        self.covariances = {
            key: pd.DataFrame(np.asarray(value, dtype=np.float64), index=self.names, columns=self.names)
            for key, value in covariances.items()
        }
        self.covariance_type = covariance_type
        self.loglikelihood = float(loglikelihood)
        self.gradient = pd.Series(np.asarray(gradient, dtype=np.float64), index=self.names, name="gradient")
        self.hessian = np.asarray(hessian, dtype=np.float64)
        self.statistics = dict(statistics)
        self.model = model

    # ------------------------------------------------------------------ estimates
    @property
    def params(self) -> pd.Series:
        return pd.Series(self.theta, index=self.names, name="estimate")

    @property
    def covariance(self) -> pd.DataFrame:
        return self.covariances[self.covariance_type]

    @property
    def se(self) -> pd.Series:
        return self.standard_errors(self.covariance_type)

    def standard_errors(self, covariance: CovarianceType = "robust") -> pd.Series:
        """Standard errors from one of the covariances."""
        check_choice("covariance", covariance, CovarianceType)
        values = np.sqrt(np.clip(np.diag(self.covariances[covariance].to_numpy()), 0, None))
        return pd.Series(values, index=self.names, name="se")

    @property
    def tvalues(self) -> pd.Series:
        return (self.params / self.se).rename("t")

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(2 * norm.sf(np.abs(self.tvalues.to_numpy())), index=self.names, name="p")

    def conf_int(self, level: float = 0.95) -> pd.DataFrame:
        """Wald confidence intervals."""
        z = norm.ppf(0.5 + level / 2)
        return pd.DataFrame({"lower": self.params - z * self.se, "upper": self.params + z * self.se})

    @property
    def n_parameters(self) -> int:
        return len(self.names)

    @property
    def aic(self) -> float:
        return 2 * self.n_parameters - 2 * self.loglikelihood

    @property
    def bic(self) -> float:
        return math.log(self.statistics["individuals"]) * self.n_parameters - 2 * self.loglikelihood

    @property
    def converged(self) -> bool:
        return bool(self.statistics["converged"])

    @property
    def hessian_eigenvalues(self) -> np.ndarray:
        """The eigenvalues of ``hessian`` (of its symmetric part), ascending: the second-order check, all negative at
        a strict local maximum. :meth:`MixedLogit.fit` warns (``ConvergenceWarning``) when they are not, a saddle
        point say; the summary prints the smallest and largest."""
        return hessian_eigenvalues(self.hessian)

    @property
    def random_covariance(self) -> pd.DataFrame:
        """Covariance :math:`LL'` of the correlated normal coefficients (empty without ``correlated=True``)."""
        names, matrix = self.specification.space().covariance_of_normals(self.theta)
        return pd.DataFrame(matrix, index=names, columns=names)

    # ------------------------------------------------------------------ post-estimation
    def _data(self, data: pd.DataFrame | None) -> pd.DataFrame:
        if data is not None:
            return data
        if self.model is None:
            raise SpecificationError("These results do not hold the estimation data; pass data=...")
        return self.model.data

    def _engine(self, data: pd.DataFrame | None, device: str | torch.device, require_choice: bool) -> Engine:
        """An engine on ``data``; the estimation engine (draws and chunks already built) when it lays out the same."""
        same_layout = require_choice or self.specification.state_dependence is None
        if data is None and self.model is not None and same_layout:
            return self.model._engine(device, torch.float64, None)
        return postestimation.engine_for(self.specification, self._data(data), resolve_device(device), require_choice)

    def predict(self, data: pd.DataFrame | None = None, device: str | torch.device = "cpu") -> pd.Series:
        """Simulated choice probabilities of every row of ``data`` (default: the estimation data).

        The probabilities integrate over the coefficient distribution with fresh draws per individual from the
        model's integration (the same draws for the estimation data). Under state dependence the choice
        column forms the lagged choice (the first situation of each individual has none) and no burn-in is
        dropped. With an outside alternative, its probability is one minus the sum within the situation
        (see :meth:`predict_outside`).
        """
        frame = self._data(data)
        engine = self._engine(data, device, require_choice=False)
        return postestimation.predict(engine, self.theta, frame)

    def predict_outside(self, data: pd.DataFrame | None = None, device: str | torch.device = "cpu") -> pd.Series:
        """Probability of the outside alternative in each situation (models with ``outside=True``)."""
        if not self.specification.outside:
            raise SpecificationError("The model has no outside alternative.")
        return postestimation.outside_probabilities(self._engine(data, device, False), self.theta)

    def conditional_means(self, data: pd.DataFrame | None = None, device: str | torch.device = "cpu") -> pd.DataFrame:
        """Each individual's posterior mean of every coefficient given its observed choices.

        :math:`E[\\beta_i \\mid y_i] \\approx \\sum_r \\omega_{ir} \\beta_{ir}` with the posterior weights
        :math:`\\omega_{ir} \\propto w_r \\prod_t P_{i y_{it} t}(\\beta_{ir})` (Revelt and Train 2000); rows are
        individuals (by id), columns coefficients. Needs the choice column.
        """
        engine = self._engine(data, device, require_choice=True)
        spec = self.specification
        return postestimation.conditional_means(engine, self.theta, spec.coefficients, spec.columns.individual_ids)

    def elasticities(
        self, variable: str | None = None, data: pd.DataFrame | None = None, device: str | torch.device = "cpu"
    ) -> pd.DataFrame:
        """Elasticities of choice probabilities with respect to covariate ``variable`` (default: every covariate).

        Entry (row :math:`(t, j)`, column :math:`l`) is
        :math:`\\varepsilon_{jl} = \\frac{x_l}{P_j} \\frac{\\partial P_j}{\\partial x_l}` in situation :math:`t`, with
        :math:`\\partial P_j / \\partial x_l = \\sum_r w_r P_{jr}(1\\{j = l\\} - P_{lr}) \\partial v_{lr} / \\partial
        x_l`; NaN where :math:`l` is not in the situation. Rows are indexed by (situation, alternative), columns
        by alternative; without ``variable`` the columns are (variable, alternative).
        """
        engine = self._engine(data, device, require_choice=False)
        if variable is not None:
            return postestimation.elasticities(engine, self.theta, variable)
        covariates = [c for c in self.specification.covariates if c != STATE_VARIABLE]
        frames = {name: postestimation.elasticities(engine, self.theta, name) for name in covariates}
        return pd.concat(frames, axis=1, names=["variable", "with respect to"])

    # ------------------------------------------------------------------ printing
    def summary(self) -> str:
        """A plain-text table of estimates, standard errors, z statistics and fit statistics."""
        stats = self.statistics
        se_name = {"robust": "robust (clustered by individual)", "classical": "classical (Hessian)", "opg": "OPG"}
        spec = self.specification
        lines = [
            "Mixed Logit Results",
            "=" * 78,
            f"Formula: {spec.formulation.formula}    Random: {spec.random or 'none'}"
            + ("    correlated" if spec.correlated else ""),
            f"Individuals: {stats['individuals']}    Situations: {stats['situations']}    "
            f"Draws: {stats['draws']} ({spec.integration.specification})",
            f"Log-likelihood: {self.loglikelihood:.6f}    AIC: {self.aic:.3f}    BIC: {self.bic:.3f}",
            f"Converged: {'Yes' if self.converged else 'No'} ({stats['message']})    Iterations: "
            f"{stats['iterations']}    Evaluations: {stats['evaluations']}    Time: {stats['seconds']:.2f} s",
            f"Gradient: {stats['gradient_method']}    Max |gradient|: {np.abs(self.gradient.to_numpy()).max():.2e}    "
            f"Standard errors: {se_name[self.covariance_type]}",
            self._second_order_line(),
            "-" * 78,
            f"{'Parameter':<28}{'Estimate':>12}{'Std. Err.':>12}{'z':>10}{'P>|z|':>10}",
            "-" * 78,
        ]
        for name, estimate, se, z, p in zip(self.names, self.params, self.se, self.tvalues, self.pvalues, strict=True):
            lines.append(f"{name[:28]:<28}{estimate:>12.6f}{se:>12.6f}{z:>10.3f}{p:>10.4f}")
        lines.append("=" * 78)
        return "\n".join(lines)

    def _second_order_line(self) -> str:
        """The summary's line on the Hessian's eigenvalues: the smallest, the largest and what they say."""
        eigenvalues = self.hessian_eigenvalues
        if not eigenvalues.size:
            return "Hessian eigenvalues: none (no parameters)"
        kind = second_order(eigenvalues)
        verdict = {"maximum": "all negative: a local maximum", "saddle point": "of both signs: a saddle point"}
        return (
            f"Hessian eigenvalues: min {eigenvalues.min():.3e}    max {eigenvalues.max():.3e}    "
            f"({verdict.get(kind, 'not all negative: not a strict maximum')})"
        )

    def to_frame(self) -> pd.DataFrame:
        """Estimates, standard errors, z statistics and p-values as a DataFrame."""
        return pd.DataFrame({"estimate": self.params, "se": self.se, "z": self.tvalues, "p": self.pvalues})

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<MixedLogitResults: log-likelihood {self.loglikelihood:.4f}, {self.n_parameters} parameters>"

    # ------------------------------------------------------------------ round trips
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dictionary (JSON-ready) from which :meth:`from_dict` rebuilds the results."""
        return {
            "names": list(self.names),
            "params": self.theta.tolist(),
            "covariances": {key: value.to_numpy().tolist() for key, value in self.covariances.items()},
            "covariance_type": self.covariance_type,
            "loglikelihood": self.loglikelihood,
            "gradient": self.gradient.tolist(),
            "hessian": self.hessian.tolist(),
            "statistics": dict(self.statistics),
            "specification": self.specification.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], utility: Callable[..., Any] | None = None) -> MixedLogitResults:
        """Rebuild results (without the estimation data) from :meth:`to_dict`."""
        covariances = {key: np.asarray(value) for key, value in values["covariances"].items()}
        if set(covariances) != set(COVARIANCE_TYPES):
            raise SpecificationError(f"covariances must hold {COVARIANCE_TYPES}; received {sorted(covariances)}.")
        return cls(
            specification=ModelSpecification.from_dict(values["specification"], utility),
            names=values["names"],
            theta=np.asarray(values["params"]),
            covariances=covariances,
            covariance_type=values["covariance_type"],
            loglikelihood=values["loglikelihood"],
            gradient=np.asarray(values["gradient"]),
            hessian=np.asarray(values["hessian"]),
            statistics=values["statistics"],
        )
