"""Mixed logit kernels: pure tensor functions for one chunk of individuals.

Notation: individual :math:`i`, draw :math:`r` with weight :math:`w_r` (:math:`1/R` for simulation), situation
:math:`t`, alternative :math:`j`, chosen alternative :math:`y_{it}`. With coefficients :math:`\\beta_{ir}`,

.. math::

    \\ell_{ir} = \\sum_t \\log P_{i y_{it} t}(\\beta_{ir}), \\qquad
    \\ell_i = \\log \\sum_r w_r e^{\\ell_{ir}}, \\qquad
    \\omega_{ir} = \\frac{w_r e^{\\ell_{ir}}}{\\sum_s w_s e^{\\ell_{is}}},

the simulated log-likelihood of the panel of individual :math:`i` and the posterior weights of its draws.
Everything is accumulated in logs, so long panels never underflow.

The analytic gradient is the posterior-weighted average of the per-draw gradients,

.. math::

    \\frac{\\partial \\ell_i}{\\partial \\beta_{ir}} = \\omega_{ir} \\sum_t \\Big( x_{i y_{it} t} -
    \\sum_j P_{ijt}(\\beta_{ir}) x_{ijt} \\Big) = -\\omega_{ir} \\sum_{t, j \\ne y_{it}} P_{ijt}(\\beta_{ir})
    \\tilde x_{ijt},

with :math:`\\tilde x` the covariates minus those of the chosen alternative; the chain rule to :math:`\\theta`
is :meth:`~demandkit.mixed_logit.distributions.CoefficientMap.chain_rule`. In differences,
:math:`\\log P_{i y t} = -\\log(1 + \\sum_{j \\ne y} e^{\\tilde v_{ijt}})`, which the fast path evaluates
without shifting; a chunk whose result is not finite is recomputed by the shifted (overflow-proof) path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .chunks import DifferenceChunk, FullChunk
from .distributions import CoefficientMap

Utility = Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]

#: panels longer than this sum logs of per-situation denominators instead of taking the log of their product
_PRODUCT_PERIODS = 32


def analytic_loglikelihood(
    theta: Tensor,
    space: CoefficientMap,
    chunk: DifferenceChunk,
    base: Tensor,
    log_weights: Tensor,
    stable: bool,
    workspace: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Simulated log-likelihood ``[n]`` and per-individual scores ``[n, P]`` of one chunk, without autograd.

    Parameters
    ----------
    theta : Tensor
        ``[P]`` parameters.
    space : CoefficientMap
        The map from parameters to coefficients.
    chunk : DifferenceChunk
        Differenced covariates in the internal coefficient order.
    base : Tensor
        ``[n, Kr, R]`` base draws.
    log_weights : Tensor
        ``[R]`` log draw weights.
    stable : bool
        Shift utilities by :math:`\\max(0, \\max_j \\tilde v_{ijt})` before exponentiating.
    workspace : Tensor, optional
        A flat buffer of at least :math:`n J' T R` elements to hold the utilities (reused across chunks and
        evaluations, which spares the allocator); its contents are overwritten.
    """
    n = chunk.X.shape[0]
    Jp, T = chunk.alternatives, chunk.periods
    B = space.coefficients(theta, base, one=True)  # [n, K + 1, R]
    R = B.shape[-1]
    if workspace is None:
        V = torch.bmm(chunk.X, B)  # [n, J'T, R]; padding -inf
    else:
        V = torch.bmm(chunk.X, B, out=workspace[: n * Jp * T * R].view(n, Jp * T, R))
    E = V.view(n, T, Jp, R)
    if stable:
        shift = E.amax(dim=2).clamp_(min=0)  # [n, T, R]
        E.sub_(shift.unsqueeze(2)).exp_()
        denominator = E.sum(dim=2).add_(torch.exp(-shift))
        negative = (shift + denominator.log()).sum(dim=1)
    else:
        E.exp_()
        denominator = E.sum(dim=2).add_(1.0)  # [n, T, R]
        if T <= _PRODUCT_PERIODS:
            negative = denominator.prod(dim=1).log_()
        else:
            negative = denominator.log().sum(dim=1)
    joint = log_weights - negative  # [n, R]: log w_r + l_ir
    loglikelihood = torch.logsumexp(joint, dim=1)
    posterior = joint.sub_(loglikelihood.unsqueeze(1)).exp_()  # omega_ir
    E.mul_(denominator.reciprocal_().mul_(posterior.unsqueeze(1)).unsqueeze(2))  # omega_ir P_ijt (non-chosen)
    gradient = torch.bmm(chunk.XT, V)  # minus d l_i / d beta_ir, [n, K, R]
    return loglikelihood, space.chain_rule(gradient, theta, base, B[:, : space.n_random]).neg_()


def _utilities(
    theta: Tensor, space: CoefficientMap, chunk: FullChunk, base: Tensor, utility: Utility | None, names: dict
) -> tuple[Tensor, Tensor]:
    """Utilities ``[n, T, J, R]`` (outside alternative 0, unavailable -inf) and coefficients ``[n, K, R]``."""
    n, T, J, K = chunk.X.shape
    B = space.coefficients(theta, base)
    R = B.shape[-1]
    if utility is None:
        V = torch.bmm(chunk.X.reshape(n, T * J, K), B).view(n, T, J, R)
    else:
        beta = {name: B[:, k].view(n, 1, 1, R) for k, name in enumerate(names["coefficients"])}
        x = {name: chunk.X[..., k, None] for k, name in enumerate(names["covariates"])}
        V = torch.broadcast_to(utility(beta, x), (n, T, J, R))
    V = torch.where(chunk.outside.unsqueeze(-1), V.new_zeros(()), V)
    return V.masked_fill(~chunk.available.unsqueeze(-1), float("-inf")), B


def draw_loglikelihoods(
    theta: Tensor,
    space: CoefficientMap,
    chunk: FullChunk,
    base: Tensor,
    utility: Utility | None = None,
    names: dict | None = None,
) -> Tensor:
    """Differentiable :math:`\\ell_{ir}`, ``[n, R]``, for the linear or a user-defined utility.

    ``theta`` may be ``[P]`` or ``[n, P]``; with one row per individual, one backward pass of the summed
    log-likelihood gives every individual's score.
    """
    V, _ = _utilities(theta, space, chunk, base, utility, names or {})
    n, T, J, R = V.shape
    chosen = V.gather(2, chunk.chosen.view(n, T, 1, 1).expand(n, T, 1, R)).squeeze(2)
    log_p = chosen - torch.logsumexp(V, dim=2)  # [n, T, R]; padded situations give exactly 0
    return log_p.sum(dim=1)


def simulated_loglikelihood(draws: Tensor, log_weights: Tensor) -> Tensor:
    """:math:`\\ell_i = \\log \\sum_r w_r e^{\\ell_{ir}}` from ``[n, R]`` per-draw log-likelihoods."""
    return torch.logsumexp(draws + log_weights, dim=1)


def posterior_weights(draws: Tensor, log_weights: Tensor) -> Tensor:
    """:math:`\\omega_{ir}`, ``[n, R]``."""
    return torch.softmax(draws + log_weights, dim=1)


def probabilities(
    theta: Tensor,
    space: CoefficientMap,
    chunk: FullChunk,
    base: Tensor,
    weights: Tensor,
    utility: Utility | None = None,
    names: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """Simulated choice probabilities ``[n, T, J]`` and the per-draw ones ``[n, T, J, R]``."""
    V, _ = _utilities(theta, space, chunk, base, utility, names or {})
    per_draw = torch.softmax(V, dim=2)
    return per_draw @ weights, per_draw


def utility_derivatives(
    theta: Tensor,
    space: CoefficientMap,
    chunk: FullChunk,
    base: Tensor,
    column: int,
    utility: Utility | None = None,
    names: dict | None = None,
) -> Tensor:
    """:math:`\\partial v_{ijtr} / \\partial x_{ijt}` for covariate ``column``, ``[n, T, J, R]``.

    For the linear utility this is the coefficient; for a user-defined one it comes from one backward pass,
    assuming (as random utility models do) that an alternative's utility depends on its own covariates only.
    """
    n, T, J, K = chunk.X.shape
    if utility is None:
        B = space.coefficients(theta, base)
        return B[:, column].view(n, 1, 1, -1).expand(n, T, J, B.shape[-1])
    R = base.shape[-1]
    with torch.enable_grad():
        x = chunk.X[..., column, None].expand(n, T, J, R).clone().requires_grad_(True)
        columns = [x if k == column else chunk.X[..., k, None] for k in range(K)]
        B = space.coefficients(theta.detach(), base)
        beta = {name: B[:, k].view(n, 1, 1, R) for k, name in enumerate(names["coefficients"])}
        data = {name: columns[k] for k, name in enumerate(names["covariates"])}
        V = torch.broadcast_to(utility(beta, data), (n, T, J, R))
        (derivative,) = torch.autograd.grad(V.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if derivative is None else derivative


def elasticity_matrices(per_draw: Tensor, derivatives: Tensor, weights: Tensor, x: Tensor) -> Tensor:
    """Elasticities :math:`\\varepsilon_{jl} = \\frac{x_l}{P_j} \\sum_r w_r P_{jr}(1\\{j = l\\} - P_{lr})
    \\partial v_{lr} / \\partial x_l`, ``[n, T, J, J]``.

    Parameters
    ----------
    per_draw : Tensor
        ``[n, T, J, R]`` per-draw probabilities.
    derivatives : Tensor
        ``[n, T, J, R]`` derivatives of utilities with respect to the covariate.
    weights : Tensor
        ``[R]`` draw weights.
    x : Tensor
        ``[n, T, J]`` the covariate.
    """
    weighted = per_draw * weights
    own = (weighted * derivatives).sum(-1)  # [n, T, J]
    cross = torch.matmul(weighted, (per_draw * derivatives).transpose(-1, -2))  # [n, T, J, J]
    derivative = torch.diag_embed(own) - cross
    probability = weighted.sum(-1)
    return derivative * x.unsqueeze(-2) / probability.unsqueeze(-1)


def analytic_hessian(
    theta: Tensor, space: CoefficientMap, chunk: DifferenceChunk, base: Tensor, log_weights: Tensor
) -> Tensor:
    """The Hessian ``[P, P]`` of the chunk's simulated log-likelihood, from its structure.

    With :math:`u_{ir} = \\partial \\ell_{ir} / \\partial \\theta` and :math:`s_i = \\sum_r \\omega_{ir} u_{ir}`,

    .. math::

        \\frac{\\partial^2 \\ell_i}{\\partial \\theta \\partial \\theta'} = \\sum_r \\omega_{ir} \\Big(
        J_{ir}' H_{ir} J_{ir} + \\sum_k \\frac{\\partial \\ell_{ir}}{\\partial \\beta_{irk}}
        \\frac{\\partial^2 \\beta_{irk}}{\\partial \\theta \\partial \\theta'} + u_{ir} u_{ir}' \\Big) - s_i s_i',

    where :math:`J_{ir}` is the Jacobian of the coefficients (one factor per parameter,
    :meth:`CoefficientMap.factors`) and
    :math:`H_{ir} = -\\sum_t \\big(\\sum_j P_{ijt} \\tilde x_{ijt} \\tilde x_{ijt}'
    - \\bar x_{irt} \\bar x_{irt}'\\big)`,
    :math:`\\bar x_{irt} = \\sum_j P_{ijt} \\tilde x_{ijt}`, is the per-draw logit Hessian. The curvature of the
    coefficients themselves (lognormal, truncated normal) is differentiated by autograd.
    """
    n = chunk.X.shape[0]
    Jp, T = chunk.alternatives, chunk.periods
    M = Jp * T
    B = space.coefficients(theta, base, one=True)
    K, R = B.shape[1] - 1, B.shape[-1]
    device = theta.device
    exponentials = torch.bmm(chunk.X, B).view(n, T, Jp, R)
    shift = exponentials.amax(dim=2).clamp_(min=0)
    exponentials.sub_(shift.unsqueeze(2)).exp_()
    denominator = exponentials.sum(dim=2).add_(torch.exp(-shift))
    joint = log_weights - (shift + denominator.log()).sum(dim=1)
    posterior = torch.softmax(joint, dim=1)  # [n, R]
    probabilities = exponentials.div_(denominator.unsqueeze(2)).view(n, M, R)
    draw_gradient = -torch.bmm(chunk.XT, probabilities)  # [n, K, R], unweighted
    factors = space.factors(theta, base, B[:, : space.n_random])  # [n, P, R]
    coefficient = space.parameter_coefficient
    scores = (draw_gradient[:, coefficient] * factors * posterior.unsqueeze(1)).sum(-1)  # [n, P]
    # sum_r omega_ir (H_ir + g_ir g_ir') in coefficient space, for the pairs k <= l
    first, second = torch.triu_indices(K, K, device=device)
    squares = torch.bmm(chunk.XT[:, first] * chunk.XT[:, second], probabilities)  # [n, pairs, R]
    X = chunk.X[..., :K].reshape(n * T, Jp, K)  # padded rows are zero
    means = torch.bmm(X.transpose(1, 2), probabilities.view(n * T, Jp, R)).view(n, T, K, R)
    outer = torch.cat([(means[:, :, k : k + 1] * means[:, :, k:]).sum(dim=1) for k in range(K)], dim=1)
    curvature = outer.sub_(squares).addcmul_(draw_gradient[:, first], draw_gradient[:, second])
    curvature.mul_(posterior.unsqueeze(1))
    pair = torch.zeros((K, K), dtype=torch.int64, device=device)
    pair[first, second] = torch.arange(first.numel(), device=device)
    pair[second, first] = pair[first, second]
    # H[p, q] = sum_{i, r} curvature[pair(k(p), k(q))] F_p F_q, coefficient by coefficient of q
    hessian = -scores.T @ scores
    for k in range(K):
        columns = space.coefficient_parameters[k]
        rows = curvature[:, pair[coefficient, k]] * factors  # [n, P, R]
        block = torch.bmm(rows, factors[:, columns].transpose(1, 2)).sum(0)  # [P, A_k]
        hessian = hessian.index_add(1, columns, block)
    if space.curved:
        weights = (draw_gradient * posterior.unsqueeze(1)).detach()

        def weighted_coefficients(parameters: Tensor) -> Tensor:
            return (space.coefficients(parameters, base) * weights).sum()

        hessian = hessian + torch.autograd.functional.hessian(weighted_coefficients, theta)
    return (hessian + hessian.T) / 2
