"""The batched demand model: mean utilities to shares for every market at once, and its inversion.

:class:`DemandModel` holds the tensors of a :class:`~demandkit.blp.problem.Problem` (no pandas, no
formulas) and composes the kernels: random coefficients, choice probabilities, shares, the Berry
inversion by a fixed-point method, and its implicit derivative with respect to
:math:`\\theta = (\\Sigma, \\Pi, \\rho)`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..kernels.fixed_point import (
    FixedPointResult,
    ImplicitInversion,
    Pullback,
    iterate_newton,
    iterate_simple,
    iterate_squarem,
    residual_pullback,
)
from ..kernels.linalg import lu_factor_transposed
from ..kernels.product_coefficients import ProductCoefficients
from ..kernels.shares import (
    MASKED,
    ExpUtilities,
    LogitProbabilities,
    Nesting,
    Probabilities,
    agent_utilities,
    compute_probabilities,
    heterogeneity,
    identity_padded,
    log_shares,
    random_coefficients,
    share_jacobian,
)
from .contraction import ShareClipping, exponentiated


@dataclass(frozen=True)
class Inversion:
    """Mean utilities that solve the share equations, with the solver's per-market diagnostics."""

    delta: Tensor  # [T, J], differentiable in theta through the implicit function theorem
    result: FixedPointResult
    mu: Tensor | None = None  # [T, J, I], differentiable in theta (random-coefficients logit only)
    probabilities: Tensor | None = None  # [T, J, I] at delta + mu, detached (random-coefficients logit only)
    weighted: Tensor | None = None  # [T, J, I], w_i P_ij, detached (random-coefficients logit only)


class DemandModel:
    """Shares and their inversion for all markets of a problem as padded tensors."""

    def __init__(self, problem: object) -> None:
        p = problem
        self.mask = p.product_mask
        self.log_market_shares = p.log_market_shares
        self.logit_delta = p.logit_delta
        self.K2 = p.K2
        self.rc_types = p.rc_types
        self.X2 = p.X2_padded
        self.nesting = Nesting(p.nesting_codes, p.H) if p.H else None
        if self.K2:
            self.nodes = p.nodes_padded
            self.demographics = p.demographics_padded
            self.log_availability = getattr(p, "availability_padded", None)  # [T, J, I] log a_ijt (.availability)
            # [T, J, I, D_P] product-specific demographics d_ijt and their columns of Pi (.product_demographics)
            self.product_demographics = getattr(p, "product_demographics_padded", None)
            self.product_columns = list(getattr(p, "product_demographic_columns", []))
            self.weights = p.agent_weights
            # log-space sums need positive weights; sparse grids have negative ones, summed directly instead
            self.signed_weights = bool((p.agent_weights[p.agent_mask] <= 0).any())
            self.log_weights = torch.where(
                p.agent_mask, torch.log(torch.where(p.agent_mask, p.agent_weights.abs(), 1.0)), MASKED
            )
        else:
            self.nodes = self.demographics = self.log_availability = self.product_demographics = None
            self.product_columns = []
            T = self.mask.shape[0]
            self.weights = torch.ones((T, 1), dtype=p.dtype, device=p.device)
            self.log_weights = torch.zeros((T, 1), dtype=p.dtype, device=p.device)
            self.signed_weights = False

    fp_type: str = "safe_linear"  # PyBLP's contraction type and bounds on simulated shares (see with_contraction)
    product_demographics: Tensor | None = None  # defaults for models pickled before product-specific demographics
    product_columns: tuple[int, ...] | list[int] = ()
    shares_bounds: tuple[float, float] | None = None

    def with_contraction(self, fp_type: str, shares_bounds: tuple[float, float] | None) -> DemandModel:
        """A shallow copy whose :meth:`invert` uses PyBLP's ``fp_type`` and ``shares_bounds`` by default (models
        restricted to a bucket of markets or a shard copy them)."""
        model = copy.copy(self)
        model.fp_type, model.shares_bounds = fp_type, shares_bounds
        return model

    # ----------------------------------------------------------- primitives
    def fix_nodes(self, sigma0: Tensor | np.ndarray) -> DemandModel:
        """Align the nodes with the columns of :math:`\\Sigma` once, by the nonzero pattern of the starting
        ``sigma0`` (the parameters, not their current values): an element that reaches zero during the
        optimization (a bound) must not move the nodes of the columns after it. Returns the model."""
        if self.K2 and self.nodes.shape[-1] != self.K2:
            self.nodes = self.nodes_for(torch.as_tensor(np.asarray(sigma0)))
        return self

    def nodes_for(self, sigma: Tensor) -> Tensor:
        """Nodes aligned with the columns of :math:`\\Sigma`: fewer node columns than ``K2`` fill the
        columns with nonzero :math:`\\Sigma` in order, the rest are zero (as PyBLP); see :meth:`fix_nodes`."""
        nodes = self.nodes
        if nodes.shape[-1] == self.K2:
            return nodes
        used = (sigma != 0).any(dim=0)
        full = nodes.new_zeros(nodes.shape[:-1] + (self.K2,))
        columns = torch.nonzero(used).flatten()[: nodes.shape[-1]].to(nodes.device)
        full[..., columns] = nodes[..., : len(columns)]
        return full

    def coefficients(self, sigma: Tensor, pi: Tensor) -> Tensor | ProductCoefficients | None:
        """Agents' random coefficients :math:`f_k((\\Sigma\\nu_i + \\Pi d_i)_k)`, ``[T, I, K2]``.

        With product-specific demographics :math:`d_{ijt}` they vary by product,
        :math:`f_k((\\Sigma\\nu_i + \\Pi d_{ij})_k)`, and come as
        :class:`~demandkit.kernels.product_coefficients.ProductCoefficients`, which
        :func:`~demandkit.kernels.shares.heterogeneity` weighs by X2 (or its derivatives).
        """
        if not self.K2:
            return None
        nodes = self.nodes_for(sigma)
        if self.product_demographics is None:
            return random_coefficients(nodes, self.demographics, sigma, pi, self.rc_types)
        # the regular demographics hold zeros in the product-specific columns: the index is the agents' part
        index = random_coefficients(nodes, self.demographics, sigma, pi, ("linear",) * self.K2)
        return ProductCoefficients(index, pi[..., self.product_columns], self.product_demographics, self.rc_types)

    def heterogeneity(self, coefficients: Tensor | ProductCoefficients, X2: Tensor | None = None) -> Tensor:
        """:math:`\\mu_{ijt}`, ``[T, J, I]``, from the problem's X2 (or ``X2`` at changed prices or characteristics),
        plus :math:`\\log a_{ijt}` with agent-specific availability (:mod:`.availability`).

        Every path that forms :math:`\\mu` (shares, the inversion and its derivatives, markups, post-estimation,
        micro moments, simulation) comes here, so product-specific demographics (:mod:`.product_demographics`),
        which enter through the ``coefficients``, reach them all."""
        mu = heterogeneity(self.X2 if X2 is None else X2, coefficients)
        return mu if self.log_availability is None else mu + self.log_availability

    def mu(self, sigma: Tensor, pi: Tensor) -> Tensor | None:
        coefficients = self.coefficients(sigma, pi)
        return None if coefficients is None else self.heterogeneity(coefficients)

    def probabilities(self, delta: Tensor, mu: Tensor | None, rho: Tensor) -> Probabilities:
        nested_rho = rho if self.nesting is not None else None
        return compute_probabilities(agent_utilities(delta, mu, self.mask), self.nesting, nested_rho)

    def log_shares(self, delta: Tensor, mu: Tensor | None, rho: Tensor) -> Tensor:
        return self.integrate(self.probabilities(delta, mu, rho))

    def integrate(self, probabilities: Probabilities) -> Tensor:
        """Log shares :math:`\\log\\sum_i w_i P_{ij}` from choice probabilities (weights of either sign)."""
        if self.signed_weights:
            shares = (torch.exp(probabilities.log_probabilities) * self.weights.unsqueeze(1)).sum(-1)
            return torch.log(torch.where(self.mask, shares, 1.0))
        return log_shares(probabilities, self.log_weights)

    def log_share_jacobian(self, delta: Tensor, mu: Tensor | None, rho: Tensor) -> Tensor:
        """:math:`\\partial \\log s / \\partial \\delta`, ``[T, J, J]``, identity on padded slots."""
        probabilities = self.probabilities(delta, mu, rho)
        shares = torch.exp(self.integrate(probabilities))
        jacobian = share_jacobian(probabilities, self.weights, self.mask, self.nesting)
        return identity_padded(jacobian / shares.unsqueeze(-1), self.mask)

    def dampener(self, rho: Tensor) -> Tensor | float:
        """:math:`1 - \\rho_{g(j)}` under nesting (keeps the contraction a contraction), else 1."""
        if self.nesting is None:
            return 1.0
        rho_h = rho.expand(self.nesting.count) if rho.numel() == 1 else rho
        return 1 - rho_h[self.nesting.ids]

    # ------------------------------------------------------------ inversion
    def closed_form_delta(self, rho: Tensor) -> Tensor:
        """Logit :math:`\\log s_j - \\log s_0`, less :math:`\\rho \\log s_{j|g}` under nesting (no X2)."""
        if self.nesting is None:
            return self.logit_delta
        shares = torch.where(self.mask, torch.exp(self.log_market_shares), 0.0)
        nest_totals = torch.zeros(
            (shares.shape[0], self.nesting.count), dtype=shares.dtype, device=shares.device
        ).scatter_add(1, self.nesting.ids, shares)
        log_within = self.log_market_shares - torch.log(nest_totals.gather(1, self.nesting.ids))
        rho_h = rho.expand(self.nesting.count) if rho.numel() == 1 else rho
        return torch.where(self.mask, self.logit_delta - rho_h[self.nesting.ids] * log_within, 0.0)

    def invert(
        self,
        sigma: Tensor,
        pi: Tensor,
        rho: Tensor,
        start: Tensor,
        method: str,
        options: dict,
        *,
        fp_type: str | None = None,
        shares_bounds: tuple[float, float] | None = None,
    ) -> Inversion:
        """Solve :math:`s(\\delta; \\theta) = S` for :math:`\\delta` in every market.

        The solve runs without autograd; the returned ``delta`` carries the implicit derivative. ``shares_bounds``
        ``(lb, ub)`` clips simulated shares in the contraction, and a nonlinear ``fp_type`` makes ``'simple'`` and
        ``'squarem'`` iterate on :math:`e^\\delta` (PyBLP's; :mod:`demandkit.blp.contraction`); by default the
        model's (:meth:`with_contraction`).
        """
        fp_type = self.fp_type if fp_type is None else fp_type
        shares_bounds = self.shares_bounds if shares_bounds is None else shares_bounds
        T = self.mask.shape[0]
        if not self.K2:
            delta = self.closed_form_delta(rho)
            ones = torch.ones(T, dtype=torch.int64, device=delta.device)
            return Inversion(delta, FixedPointResult(delta.detach(), ones.bool(), 0 * ones, 0 * ones))
        logit = self.nesting is None
        differentiable_mu = self.mu(sigma, pi) if logit else None
        with torch.no_grad():
            mu = differentiable_mu.detach() if logit else self.mu(sigma.detach(), pi.detach())
            r = rho.detach()
            damp = self.dampener(r)
            target = self.log_market_shares
            start = torch.where(self.mask, start, 0.0)
            clipping = ShareClipping.build(shares_bounds)
            gaps = None if clipping is None else clipping.gaps(target, self.mask)

            def exact_contraction(x: Tensor) -> Tensor:
                log_shares = self.log_shares(x, mu, r)
                log_shares = log_shares if clipping is None else clipping.log_shares(log_shares)
                return torch.where(self.mask, x + damp * (target - log_shares), 0.0)

            contraction = exact_contraction
            fast = restrict = None
            if logit:
                fast = ExpUtilities.build(mu, self.mask, self.weights)

                def restrict(markets: Tensor | None) -> Callable[[Tensor], Tensor]:
                    """The contraction via the exponentiated kernel on the markets ``markets`` (None: all)."""
                    utilities = fast if markets is None else fast.select(markets)
                    goal = target if markets is None else target.index_select(0, markets)
                    bounds = gaps
                    if markets is not None and gaps is not None:
                        bounds = tuple(None if gap is None else gap.index_select(0, markets) for gap in gaps)

                    def contraction(x: Tensor) -> Tensor:
                        """:math:`\\delta + \\log S - \\log s(\\delta)` (padded slots zero); the log-space kernel
                        where a share underflows or overflows."""
                        update = goal - utilities.log_share_kernel(x)
                        if math.isfinite(update.sum().item()):  # any NaN or infinity makes the sum non-finite
                            # shares clipped to shares_bounds (an underflowing one is clipped in the log-space kernel)
                            return update if bounds is None else ShareClipping.bound_update(update, x, bounds)
                        if markets is None:
                            return exact_contraction(x)
                        # the log-space kernel on every market (the others at their start), read at these markets
                        return exact_contraction(start.index_copy(0, markets, x)).index_select(0, markets)

                    return contraction

                contraction = restrict(None)

            back = None
            if "nonlinear" in fp_type and method in ("simple", "squarem"):  # PyBLP's iteration on exp(delta)
                contraction, start, back = exponentiated(contraction, start, self.mask)
                restrict = None

            if method == "return":
                ones = torch.ones(T, dtype=torch.int64, device=start.device)
                result = FixedPointResult(start, ones.bool(), 0 * ones, 0 * ones)
            elif method == "newton":

                def step(x: Tensor) -> Tensor:
                    residual = torch.where(self.mask, target - self.log_shares(x, mu, r), 0.0)
                    matrix = self.log_share_jacobian(x, mu, r)
                    return torch.linalg.solve(matrix, residual.unsqueeze(-1)).squeeze(-1)

                result = iterate_newton(step, start, self.mask, options)
            else:
                from ..kernels.root import ROOT_METHODS, iterate_custom, solve_root

                if callable(method) or method in ROOT_METHODS:
                    # scipy.optimize.root or a user's routine, called once on the stacked markets (kernels.root)
                    settings = dict(options)
                    contraction_jacobian = None
                    if settings.pop("compute_jacobian", False):
                        scale = damp.unsqueeze(-1) if isinstance(damp, Tensor) else damp

                        def contraction_jacobian(x: Tensor) -> Tensor:
                            """:math:`I - (1 - \\rho)\\,\\partial\\log s/\\partial\\delta` (padded slots ignored)."""
                            jacobian = self.log_share_jacobian(x, mu, r)
                            return torch.eye(jacobian.shape[-1], dtype=x.dtype, device=x.device) - scale * jacobian

                    if callable(method):
                        result = iterate_custom(method, contraction, start, self.mask, settings, contraction_jacobian)
                    else:
                        result = solve_root(contraction, start, self.mask, method, settings, contraction_jacobian)
                else:
                    solver = iterate_simple if method == "simple" else iterate_squarem
                    # inference mode skips autograd's bookkeeping on each of the loop's many small operations
                    # (about a tenth of their fixed cost on the CPU); its tensors are cloned back out below
                    # every contraction above holds padded slots at zero; SQUAREM drops the frozen markets from its
                    # batch as it goes (restrict) where the contraction can be narrowed to some markets
                    narrowing = {} if method == "simple" else {"keeps_padding": True, "restrict": restrict}
                    with torch.inference_mode():
                        result = solver(contraction, start, self.mask, options, **narrowing)
                    result = FixedPointResult(*(getattr(result, f.name).clone() for f in dataclasses.fields(result)))

            result = result if back is None else back(result)
            probabilities = None
            if fast is not None:
                probabilities = fast.probabilities(result.values)
                if probabilities is None:
                    probabilities = LogitProbabilities.apply(result.values, mu, self.mask)

        if probabilities is None:
            delta = ImplicitInversion.apply(result.values, self.pullback(), sigma, pi, rho)
            return Inversion(delta, result)
        weighted = probabilities * self.weights.unsqueeze(1)
        delta = ImplicitInversion.apply(result.values, self.mu_pullback(probabilities, weighted, r), differentiable_mu)
        return Inversion(delta, result, differentiable_mu, probabilities, weighted)

    # ------------------------------------------------------------ implicit derivative
    def pullback(self) -> Pullback:
        """The implicit derivative's backward pass in :math:`(\\Sigma, \\Pi, \\rho)`, by autograd through the
        log-space kernel (nested logit; the logit takes :meth:`mu_pullback`)."""

        def residual(delta: Tensor, sigma_: Tensor, pi_: Tensor, rho_: Tensor) -> Tensor:
            return torch.where(self.mask, self.log_shares(delta, self.mu(sigma_, pi_), rho_), 0.0)

        def jacobian(delta: Tensor, sigma_: Tensor, pi_: Tensor, rho_: Tensor) -> Tensor:
            return self.log_share_jacobian(delta, self.mu(sigma_, pi_), rho_)

        return residual_pullback(residual, jacobian)

    def mu_pullback(self, probabilities: Tensor, weighted: Tensor, rho: Tensor) -> Pullback:
        """The implicit derivative's backward pass with respect to :math:`\\mu` itself, for the logit.

        With :math:`s_j = \\sum_i w_i P_{ij}` and :math:`W_{jk} = \\sum_i w_i P_{ij} P_{ik}`,
        :math:`\\partial\\log s/\\partial\\delta = I - \\mathrm{diag}(1/s)W`, so :math:`\\lambda` solves
        :math:`(I - W\\,\\mathrm{diag}(1/s))\\lambda = g`, that is :math:`Ka = g` with :math:`a = \\lambda/s` and
        :math:`K = \\mathrm{diag}(s) - W = \\partial s/\\partial\\delta`. The gradient is
        :math:`\\bar\\mu_{ik} = -w_i P_{ik}(a_k - \\sum_j a_j P_{ij})`. The probabilities at the solution come
        from the inversion, and the factors are computed once however many reverse passes use them (the
        covariances take one per moment); autograd takes :math:`\\bar\\mu` on to :math:`\\theta` once, together with
        any other use of :math:`\\mu` (the supply side's). A share that underflows takes the log-space path instead.
        """

        def residual(delta: Tensor, mu: Tensor) -> Tensor:
            return torch.where(self.mask, self.log_shares(delta, mu, rho), 0.0)

        def jacobian(delta: Tensor, mu: Tensor) -> Tensor:
            return self.log_share_jacobian(delta, mu, rho)

        generic = residual_pullback(residual, jacobian)
        cache: dict[str, tuple[Tensor, Tensor]] = {}

        def pullback(delta: Tensor, grad: Tensor, params: tuple, wanted: list) -> list:
            with torch.no_grad():
                if "factors" not in cache:
                    shares = weighted.sum(-1)
                    if not bool(((shares > 0) | ~self.mask).all()):
                        return generic(delta, grad, params, wanted)
                    matrix = torch.bmm(weighted, probabilities.transpose(1, 2)).neg_()  # -W, zero on padded slots
                    matrix.diagonal(dim1=-2, dim2=-1).add_(torch.where(self.mask, shares, 1.0))
                    cache["factors"] = lu_factor_transposed(matrix)  # K is symmetric: K' = K
                scaled = torch.linalg.lu_solve(*cache["factors"], grad.unsqueeze(-1)).squeeze(-1)
                scaled = torch.where(self.mask, scaled, 0.0)
                mean = torch.bmm(scaled.unsqueeze(1), probabilities)  # sum_j a_j P_ij, [T, 1, I]
                return [(weighted * mean).addcmul_(weighted, scaled.unsqueeze(-1), value=-1)]

        return pullback
