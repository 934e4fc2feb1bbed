"""Specification tests on BLP estimates: Hansen's :math:`J`, Wald, Lagrange multiplier and distance statistics.

With :math:`N` products, the averaged moments :math:`\\bar g(\\hat\\theta) = \\frac{1}{N}
\\begin{pmatrix} Z_D'\\hat\\xi \\\\ Z_S'\\hat\\omega \\end{pmatrix}` (``moments``, ``M x 1``), their Jacobian
:math:`\\bar G` (``moments_jacobian``, ``M x P``) with respect to the estimated parameters, the weighting matrix
:math:`W` of the last GMM step (``W``) and the covariance :math:`V` of :math:`\\sqrt N(\\hat\\theta - \\theta)`
(``parameter_covariances``, ``P x P``), the statistics follow PyBLP's definitions (Hansen 1982; Newey and West
1987). The estimated parameters, in the order of ``parameter_covariances``, are the elements of :math:`\\theta`
(``theta_labels``) less those fixed by equal bounds, then the concentrated-out elements of :math:`\\beta` and then
those of :math:`\\gamma`.

Each statistic is asymptotically :math:`\\chi^2` under its null hypothesis only if :math:`W` is an optimal
weighting matrix (the inverse of the moments' covariance): after two-step GMM, or after one-step GMM with such a
``W`` given to ``solve``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import SpecificationError


def mean_moments(problem: Any, xi: np.ndarray, omega: np.ndarray | None) -> np.ndarray:
    """The averaged moments :math:`\\bar g = \\frac{1}{N}(Z_D'\\xi, Z_S'\\omega)`, ``M x 1``.

    Parameters
    ----------
    problem : Problem
        The problem whose instruments (fixed effects absorbed, as in estimation) form the moments.
    xi : ndarray
        ``N x 1`` structural errors of demand, in the rows of the product data.
    omega : ndarray or None
        ``N x 1`` structural errors of marginal costs, or None without a supply side.

    Returns
    -------
    ndarray
        ``(M_D + M_S) x 1``.
    """
    parts = [problem.design.ZD.T @ np.asarray(xi).reshape(-1)]
    if omega is not None and problem.MS:
        parts.append(problem.ZS.T @ np.asarray(omega).reshape(-1))
    return (np.concatenate(parts) / problem.N).reshape(-1, 1)


class SpecificationTests:
    """Mixin for :class:`~demandkit.blp.results.ProblemResults`: Hansen, Wald, LM and distance tests (PyBLP's)."""

    problem: Any
    W: np.ndarray
    moments: np.ndarray
    moments_jacobian: np.ndarray
    parameter_covariances: np.ndarray

    def run_hansen_test(self) -> float:
        """Hansen's :math:`J` test of the overidentifying restrictions.

        .. math:: J = N\\bar g(\\hat\\theta)'W\\bar g(\\hat\\theta),

        the GMM objective at the estimates (``objective``, which is scaled by :math:`N`). With :math:`W` the inverse
        of the moments' covariance and valid overidentifying restrictions, :math:`J` is asymptotically
        :math:`\\chi^2` with :math:`M - P` degrees of freedom (moments less estimated parameters).

        Returns
        -------
        float
            The :math:`J` statistic.

        Notes
        -----
        As PyBLP, :math:`W` is the weighting matrix of the last step, whatever it is: after one-step GMM that is the
        initial :math:`W = (Z'Z/N)^{-1}` (or the ``W`` given to ``solve``), not :math:`S^{-1}` (``updated_W``), so
        the statistic is a valid :math:`J` only if that matrix was optimal. Run it after two-step GMM, or after a
        one-step solve given an optimal ``W``.
        """
        g = self.moments
        return float(self.problem.N * (g.T @ self.W @ g).item())

    def run_wald_test(self, restrictions: Any, restrictions_jacobian: Any) -> float:
        """Wald test of the restrictions :math:`r(\\theta) = 0`.

        .. math:: \\text{Wald} = N r(\\hat\\theta)'[R(\\hat\\theta) V R(\\hat\\theta)']^{-1} r(\\hat\\theta)

        with :math:`R = \\partial r/\\partial\\theta'` and :math:`V` the covariance of
        :math:`\\sqrt N(\\hat\\theta - \\theta)` (``parameter_covariances``). With valid restrictions it is
        asymptotically :math:`\\chi^2` with as many degrees of freedom as restrictions.

        Parameters
        ----------
        restrictions : array-like
            :math:`r(\\hat\\theta)`: ``Q`` restrictions evaluated at the estimates (a vector, ``Q`` or ``Q x 1``).
        restrictions_jacobian : array-like
            :math:`R(\\hat\\theta)`, ``Q x P``: one column per estimated parameter, in the order of
            ``parameter_covariances`` (``theta`` less elements fixed by equal bounds, then the concentrated
            :math:`\\beta`, then :math:`\\gamma`). A vector of ``P`` is read as one row when ``Q = 1``.

        Returns
        -------
        float
            The Wald statistic.

        Raises
        ------
        SpecificationError
            The restrictions are not a non-empty vector, the Jacobian is not ``Q x P``, either holds values that are
            not finite numbers, or :math:`RVR'` is singular (restrictions that repeat each other, or that involve
            only parameters with zero variance).
        """
        P = self.parameter_covariances.shape[0]
        r = _finite("restrictions", restrictions)
        if r.ndim == 2 and r.shape[1] == 1:
            r = r[:, 0]
        if r.ndim != 1 or r.size == 0:
            raise SpecificationError(
                f"restrictions must be a non-empty vector (Q or Q x 1) of r(theta) at the estimates; received shape "
                f"{r.shape}."
            )
        Q = r.size
        R = _finite("restrictions_jacobian", restrictions_jacobian)
        if R.ndim == 1 and Q == 1:
            R = R.reshape(1, -1)
        if R.shape != (Q, P):
            raise SpecificationError(
                f"restrictions_jacobian must be a {Q} by {P} matrix (one row per restriction, one column per "
                f"estimated parameter in the order of parameter_covariances); received shape {R.shape}."
            )
        middle = R @ self.parameter_covariances @ R.T
        if np.linalg.matrix_rank(middle) < Q:
            raise SpecificationError(
                "R V R' is singular: the restrictions repeat each other, or involve only parameters whose estimates "
                "have no variance. Drop the redundant rows of restrictions_jacobian."
            )
        return float(self.problem.N * (r @ np.linalg.solve(middle, r)))

    def run_lm_test(self) -> float:
        """Lagrange multiplier (score) test of the model's restrictions.

        .. math::

            \\text{LM} = N\\bar g(\\hat\\theta)'W\\bar G(\\hat\\theta) V \\bar G(\\hat\\theta)'W\\bar g(\\hat\\theta)

        where :math:`\\bar G'W\\bar g` is the gradient of the objective divided by :math:`2N` (with respect to the
        estimated parameters) and :math:`V` is ``parameter_covariances``. At an interior optimum it is near zero.
        To test restrictions imposed in an estimation, evaluate the unrestricted model at the restricted estimates
        (``optimization=Optimization('return')``, ``method='1s'`` and the restricted results' ``W``) and run the test
        on those results: it is then asymptotically :math:`\\chi^2` with as many degrees of freedom as restrictions.

        Returns
        -------
        float
            The Lagrange multiplier statistic.
        """
        score = self.moments_jacobian.T @ self.W @ self.moments
        return float(self.problem.N * (score.T @ self.parameter_covariances @ score).item())

    def run_distance_test(self, unrestricted: SpecificationTests) -> float:
        """Distance (likelihood-ratio-like) test of the restrictions imposed on these results.

        .. math:: \\text{LR} = J(\\hat\\theta^r) - J(\\hat\\theta^u) = N[q(\\hat\\theta^r) - q(\\hat\\theta^u)]

        with :math:`J` Hansen's statistic (:meth:`run_hansen_test`) of these restricted results and of the
        ``unrestricted`` ones (restrictions are elements fixed at zero or by equal bounds). With valid restrictions
        it is asymptotically :math:`\\chi^2` with as many degrees of freedom as restrictions (the difference in the
        number of estimated parameters).

        Parameters
        ----------
        unrestricted : ProblemResults
            Results of the unrestricted model on the same problem (the same products and instruments).

        Returns
        -------
        float
            The distance statistic. When the two estimations used different weighting matrices (two-step GMM), it
            can be negative in a sample, as PyBLP's.

        Raises
        ------
        TypeError
            ``unrestricted`` is not a :class:`~demandkit.blp.results.ProblemResults`.
        SpecificationError
            The two results come from problems of different dimensions or instruments; ``unrestricted`` does not
            estimate more parameters than these results (the arguments look swapped); or, under the same weighting
            matrix, its objective exceeds this one, so that its estimation did not reach the minimum.
        """
        if not isinstance(unrestricted, SpecificationTests):
            raise TypeError(f"unrestricted must be ProblemResults; received {type(unrestricted).__name__}.")
        _check_same_problem(self.problem, unrestricted.problem)
        restricted_count, unrestricted_count = (
            results.parameter_covariances.shape[0] for results in (self, unrestricted)
        )
        if unrestricted_count <= restricted_count:
            raise SpecificationError(
                f"The unrestricted results estimate {unrestricted_count} parameters and these restricted ones "
                f"{restricted_count}: the unrestricted model must estimate more (are the results swapped? Call "
                "restricted.run_distance_test(unrestricted))."
            )
        restricted_J, unrestricted_J = self.run_hansen_test(), unrestricted.run_hansen_test()
        statistic = restricted_J - unrestricted_J
        same_W = self.W.shape == unrestricted.W.shape and np.allclose(self.W, unrestricted.W, rtol=1e-12, atol=0)
        if same_W and statistic < -1e-8 * max(1.0, abs(unrestricted_J)):
            raise SpecificationError(
                f"Under the same weighting matrix, the unrestricted objective ({unrestricted_J:.10g}) exceeds the "
                f"restricted one ({restricted_J:.10g}), which cannot happen at the unrestricted minimum: its "
                "estimation stopped short of it (see its converged and projected_gradient)."
            )
        return float(statistic)


def _finite(name: str, value: Any) -> np.ndarray:
    """``value`` as a float array, or a :class:`SpecificationError` naming ``name`` if it is not finite numbers."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SpecificationError(f"{name} must hold numbers ({error}).") from error
    if not np.isfinite(array).all():
        raise SpecificationError(f"{name} has NaN or infinite values.")
    return array


def _check_same_problem(restricted: Any, unrestricted: Any) -> None:
    """Raise if two problems differ in their products, markets or instruments (the moments of a distance test)."""
    if restricted is unrestricted:
        return
    for name in ("N", "T", "MD", "MS"):
        mine, theirs = getattr(restricted, name), getattr(unrestricted, name)
        if mine != theirs:
            raise SpecificationError(
                f"The unrestricted results come from another problem: {name} is {theirs} there and {mine} here. The "
                "distance test compares two estimations of the same problem."
            )
    for name, mine, theirs in (
        ("demand instruments", restricted.design.ZD, unrestricted.design.ZD),
        ("supply instruments", restricted.ZS, unrestricted.ZS),
        ("market shares", restricted.shares, unrestricted.shares),
    ):
        if not np.allclose(mine, theirs, rtol=1e-12, atol=0):
            raise SpecificationError(
                f"The unrestricted results come from another problem: its {name} differ from these results'. The "
                "distance test compares two estimations of the same problem."
            )
