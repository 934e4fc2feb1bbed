"""Central finite differences over :math:`\\theta`, PyBLP's ``finite_differences=True``.

PyBLP differentiates what the objective is built from, the stacked left-hand sides
:math:`y(\\theta) = (\\delta(\\theta) - X_1\\beta, \\tilde c(\\theta) - X_3\\gamma)` and the micro statistics,
by central differences with the step :math:`\\epsilon = \\sqrt{\\epsilon_{mach}}`,

.. math::

    \\frac{\\partial y}{\\partial\\theta_p} \\approx
    \\frac{y(\\theta + \\tfrac{\\epsilon}{2}e_p) - y(\\theta - \\tfrac{\\epsilon}{2}e_p)}{\\epsilon},

and chains the exact derivative of the objective in :math:`y` onto them. Each of the :math:`2P` evaluations inverts
every market at once; the evaluations themselves run one after another, as the demand model holds one
:math:`\\theta`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..settings import options

EPSILON = float(np.sqrt(np.finfo(np.float64).eps))
"""The step of the central differences (PyBLP's default ``finite_differences_epsilon``)."""


def central_differences(
    function: Callable[[np.ndarray], Tensor], theta: np.ndarray, epsilon: float | None = None
) -> Tensor:
    """The Jacobian ``[n, P]`` of ``function`` (``theta`` to an ``[n]`` tensor) at ``theta`` by central differences.

    Parameters
    ----------
    function : callable
        ``function(theta) -> Tensor``, ``[n]``.
    theta : ndarray
        ``P`` parameters.
    epsilon : float, optional
        The whole step: each element moves by :math:`\\pm\\epsilon/2`; by default
        ``demandkit.options.finite_differences_epsilon`` (:data:`EPSILON` unless changed).

    Returns
    -------
    Tensor
        ``[n, P]``; ``[n, 0]`` cannot be formed without an evaluation, so ``P`` must be positive.
    """
    epsilon = options.finite_differences_epsilon if epsilon is None else epsilon
    theta = np.asarray(theta, dtype=np.float64)
    columns = []
    for p in range(theta.size):  # a loop over parameters: 2P evaluations, each over every market
        up, down = theta.copy(), theta.copy()
        up[p] += epsilon / 2
        down[p] -= epsilon / 2
        columns.append((function(up) - function(down)) / epsilon)
    return torch.stack(columns, dim=1)
