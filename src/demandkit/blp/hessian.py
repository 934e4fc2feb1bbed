"""The Hessian of the GMM objective at the estimates, for ``check_optimality='both'`` (PyBLP's).

It comes from central differences of the analytic gradient, :math:`2P` gradient evaluations; they are not counted
with the optimizer's.
"""

from __future__ import annotations

import numpy as np
import torch

from .objective import EvaluationStats, GMMObjective


def objective_hessian(objective: GMMObjective, theta: np.ndarray) -> np.ndarray:
    """The Hessian of the objective at ``theta``, ``P x P``, by central differences of the analytic gradient.

    Column :math:`p` is :math:`(\\nabla q(\\theta + h_p e_p) - \\nabla q(\\theta - h_p e_p))/2h_p` with
    :math:`h_p = \\epsilon^{1/3}\\max(1, |\\theta_p|)`, and the result is symmetrized. Its evaluations are not
    counted with the optimizer's.

    The inversion at :math:`\\theta + h_p e_p` starts from :math:`\\hat\\delta`, the mean utilities at
    :math:`\\theta` (where the covariances left the objective's start), and the one at :math:`\\theta - h_p e_p`
    from the secant prediction :math:`2\\hat\\delta - \\delta(\\theta + h_p e_p) = \\delta(\\theta - h_p e_p) +
    O(h_p^2)`, so that it needs fewer contraction evaluations. The fixed points, hence the Hessian, do not depend on
    the starts beyond the inversion's tolerance. (Stacking the :math:`2P` points' markets into one inversion was
    slower on Nevo: every copy then iterates until the slowest market of all converges.)
    """
    if theta.size == 0:
        return np.zeros((0, 0))
    steps = np.finfo(np.float64).eps ** (1 / 3) * np.maximum(1.0, np.abs(theta))
    shifts = np.diag(steps)
    points = np.stack([theta + shifts, theta - shifts], axis=1).reshape(-1, theta.size)  # up_0, down_0, up_1, ...
    gradients = _gradient_pairs(objective, points)
    hessian = (gradients[0::2] - gradients[1::2]).T / (2 * steps)
    return (hessian + hessian.T) / 2


def _gradient_pairs(objective: GMMObjective, points: np.ndarray) -> np.ndarray:
    """The gradients at ``points`` (pairs ``theta + h e_p``, ``theta - h e_p``), the second of each pair started
    from the secant prediction (see :func:`objective_hessian`)."""
    counted = objective.stats
    objective.stats = EvaluationStats()
    base = objective.start
    mask = objective.problem.product_mask
    gradients = []
    for up, down in zip(points[0::2], points[1::2], strict=True):  # a loop over parameters (after estimation)
        objective.start = base
        upper = objective.evaluate(up)
        predicted = torch.where(mask, 2 * base - upper.delta, 0.0)
        objective.start = predicted if bool(torch.isfinite(predicted).all()) else base
        gradients.extend([upper.gradient, objective.evaluate(down).gradient])
    objective.start = base
    objective.stats = counted
    return np.stack(gradients)
