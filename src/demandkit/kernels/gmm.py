"""IV-GMM algebra on stacked product rows.

With :math:`N` products, instruments :math:`Z` (``N x M``), linear characteristics :math:`X_1`
(``N x K_1``), weighting matrix :math:`W` and mean utilities :math:`\\delta(\\theta)`:

.. math::

    \\hat\\beta(\\theta) = (X_1'ZWZ'X_1)^{-1} X_1'ZWZ'\\delta(\\theta), \\quad
    \\xi = \\delta - X_1\\hat\\beta, \\quad \\bar g = Z'\\xi / N, \\quad q(\\theta) = N \\bar g' W \\bar g.

Covariances follow Hansen (1982): :math:`S` is the covariance of the moment contributions
:math:`g_n = z_n \\xi_n` (heteroskedasticity-robust, summed within clusters, or homoskedastic), the
weighting matrix is :math:`S^{-1}`, and :math:`\\mathrm{Var}(\\hat\\theta) = (G'WG)^{-1}G'WSWG(G'WG)^{-1}/N`
(the inner sandwich dropped when unadjusted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class LinearIV:
    """Pre-computed operator for the concentrated linear parameters at a given ``W``."""

    projector: Tensor  # [K1, N]: beta = projector @ delta
    X: Tensor  # [N, K1]
    Z: Tensor  # [N, M]
    W: Tensor  # [M, M]

    @classmethod
    def build(cls, X: Tensor, Z: Tensor, W: Tensor) -> LinearIV:
        if X.shape[1] == 0:
            return cls(X.new_zeros((0, X.shape[0])), X, Z, W)
        ZX = Z.T @ X
        bread = ZX.T @ W @ ZX
        projector = torch.linalg.solve(bread, ZX.T @ W @ Z.T)
        return cls(projector, X, Z, W)

    def beta(self, delta: Tensor) -> Tensor:
        return self.projector @ delta

    def residuals(self, delta: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\hat\\beta, \\xi)` for a stacked ``delta`` of shape ``[N]``."""
        beta = self.beta(delta)
        return beta, delta - self.X @ beta

    def objective(self, residuals: Tensor, N: int) -> Tensor:
        """:math:`N \\bar g' W \\bar g` with :math:`\\bar g = Z'u/N`.

        ``residuals`` stack the equations (:math:`\\xi`, then :math:`\\omega` if any); ``N`` is the number of
        products, not the stacked length.
        """
        g = self.Z.T @ residuals / N
        return N * g @ self.W @ g


def moment_covariances(
    residuals: list[Tensor],
    instruments: list[Tensor],
    covariance_type: str,
    clusters: Tensor | None = None,
    center: bool = True,
) -> Tensor:
    """Covariance :math:`S` of the stacked moment contributions :math:`g_n = (z_{Dn}\\xi_n, z_{Sn}\\omega_n)`.

    ``residuals`` and ``instruments`` hold one ``[N]`` error and one ``[N, M_e]`` instrument matrix per
    equation (demand, and supply if any). Unadjusted :math:`S` has blocks
    :math:`\\widehat{\\mathrm{Cov}}(u_a, u_b) Z_a'Z_b / N`.
    """
    N = residuals[0].shape[0]
    if covariance_type == "unadjusted":
        centered = [u - u.mean() for u in residuals]
        blocks = [
            [(a @ b / N) * (Za.T @ Zb) for b, Zb in zip(centered, instruments, strict=True)]
            for a, Za in zip(centered, instruments, strict=True)
        ]
        S = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0) / N
    else:
        g = torch.cat([Z * u.unsqueeze(-1) for u, Z in zip(residuals, instruments, strict=True)], dim=1)
        if center:
            g = g - g.mean(dim=0, keepdim=True)
        if covariance_type == "clustered":
            if clusters is None:
                raise ValueError("Clustered covariances need clustering_ids.")
            count = int(clusters.max()) + 1
            g = torch.zeros((count, g.shape[1]), dtype=g.dtype, device=g.device).index_add_(0, clusters, g)
        S = g.T @ g / N
    return (S + S.T) / 2


def invert(matrix: Tensor) -> tuple[Tensor, bool]:
    """Moore-Penrose inverse of a symmetric matrix, and whether it was (numerically) singular.

    Eigenvalues below :math:`\\max(M, N)\\,\\epsilon\\,|\\lambda|_{max}` are treated as zero, the cutoff of
    ``scipy.linalg.pinv`` that PyBLP applies by default, so a rank-deficient :math:`S` (say, clustered
    with fewer clusters than moments) gives the pseudo-inverse rather than a numerically huge inverse.
    """
    symmetric = (matrix + matrix.T) / 2
    values, vectors = torch.linalg.eigh(symmetric)
    cutoff = max(matrix.shape) * torch.finfo(matrix.dtype).eps * values.abs().max()
    keep = values.abs() > cutoff
    inverse_values = torch.where(keep, 1 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
    inverse = (vectors * inverse_values) @ vectors.T
    return (inverse + inverse.T) / 2, bool((~keep).any())


def parameter_covariances(W: Tensor, S: Tensor, G: Tensor, covariance_type: str) -> Tensor:
    """GMM covariance of :math:`\\sqrt{N}(\\hat\\theta - \\theta)` given the mean moment Jacobian ``G``."""
    bread, _ = invert(G.T @ W @ G)
    if covariance_type == "unadjusted":
        covariances = bread
    else:
        covariances = bread @ G.T @ W @ S @ W @ G @ bread
    return (covariances + covariances.T) / 2
