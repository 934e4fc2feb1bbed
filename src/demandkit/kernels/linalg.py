"""Batched LU factorizations of per-market ``[T, J, J]`` systems built in transposed form.

LAPACK factors column-major matrices; a row-major ``[T, J, J]`` tensor is copied and transposed first (about a
quarter of the factorization's time at ``J = 150``). A caller that can build :math:`A'` as easily as :math:`A` builds
:math:`A'` row-major and hands over its transposed view, which is :math:`A` column-major: no copy. (A Cholesky
factorization of the symmetric systems is no faster on the CPU: torch copies the input and zeroes a triangle.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def lu_factor_transposed(transposed: Tensor) -> tuple[Tensor, Tensor]:
    """LU factors and pivots of the batch ``A`` given as ``A'`` (``[T, J, J]``, row-major), without a copy.

    Singular matrices give non-finite solutions rather than an error, for the optimizer to step back from.
    """
    factors, pivots, _ = torch.linalg.lu_factor_ex(transposed.mT)
    return factors, pivots
