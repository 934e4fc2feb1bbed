"""Random coefficients with product-specific demographics :math:`d_{ijt}` (PyBLP's ``distance0, distance1, ...``).

With regular demographics :math:`R` (one value per agent) and product-specific ones :math:`P` (one value per agent
and product), agent :math:`i`'s coefficient on characteristic :math:`k` depends on the product as well:

.. math::

    c_{ijtk} = f_k\\Big(\\underbrace{\\sum_l \\Sigma_{kl}\\nu_{itl} + \\sum_{d \\in R} \\Pi_{kd} d_{itd}}_{a_{itk}}
               + \\underbrace{\\sum_{d \\in P} \\Pi_{kd} d_{ijtd}}_{e_{ijtk}}\\Big),
    \\qquad
    \\mu_{ijt} = \\sum_k x^{(2)}_{jtk} c_{ijtk},

with :math:`f_k` the identity, ``exp`` or the logistic function (``rc_types``). The ``[T, J, I, K2]`` tensor of
coefficients is never formed. For linear coefficients the sum splits into the agents' part and one contraction of
the ``[T, J, I, D_P]`` product-specific demographics,

.. math::

    \\sum_{k\\,\\text{linear}} x_{jtk}(a_{itk} + e_{ijtk})
    = \\sum_{k\\,\\text{linear}} x_{jtk} a_{itk} + \\sum_{d \\in P} (X \\Pi_P)_{jtd}\\, d_{ijtd},

and a lognormal or logit coefficient is formed one characteristic at a time (``[T, J, I]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ProductCoefficients:
    """Random coefficients :math:`c_{ijtk} = f_k(a_{itk} + e_{ijtk})` that vary by product (see the module).

    Stands where the ``[T, I, K2]`` coefficients of a model without product-specific demographics stand, and is
    consumed only through :meth:`weigh` (:func:`demandkit.kernels.shares.heterogeneity`).
    """

    index: Tensor  # [T, I, K2]: a_itk, before f_k
    pi: Tensor  # [K2, D_P]: the columns of Pi on the product-specific demographics
    demographics: Tensor  # [T, J, I, D_P]: d_ijt, zero in padded slots
    rc_types: tuple[str, ...]

    def weigh(self, X: Tensor) -> Tensor:
        """:math:`\\sum_k x_{jtk} c_{ijtk}`, ``[T, J, I]``, for ``X`` ``[T, J, K2]`` (X2 or its derivatives).

        Parameters
        ----------
        X : Tensor
            ``[T, J, K2]`` characteristics (or their derivatives with respect to a product variable).

        Returns
        -------
        Tensor
            ``[T, J, I]``: :math:`\\mu_{ijt}` for ``X = X2``, :math:`\\partial\\mu_{ijt}/\\partial x_{jt}` for a
            derivative of X2.
        """
        linear = torch.tensor([kind == "linear" for kind in self.rc_types], dtype=X.dtype, device=X.device)
        linear_X = X * linear
        out = torch.einsum("tjk,tik->tji", linear_X, self.index)
        out = out + torch.einsum("tjd,tjid->tji", linear_X @ self.pi, self.demographics)
        for k, kind in enumerate(self.rc_types):  # a loop over characteristics, not markets or agents
            if kind == "linear":
                continue
            z = self.index[:, None, :, k] + self.demographics @ self.pi[k]  # [T, J, I]
            out = out + X[..., k, None] * (torch.exp(z) if kind == "log" else torch.sigmoid(z))
        return out
