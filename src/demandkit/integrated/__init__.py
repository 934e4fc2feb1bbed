"""The integrated macro-micro demand model (Tuchman 2019): aggregate shares pin down the mean utilities, a
household panel identifies the taste distribution and state dependence, with the same mean utilities in both.

``problem`` (``IntegratedProblem``) -> ``estimation`` (likelihood, IV step, covariances) -> ``engine`` (the
recursive inversion, its implicit derivative, the household likelihood) -> ``kernels`` (one period in closed
form); ``data`` validates and lays out the tables, ``parameters`` holds theta2, ``results`` the estimates and
``simulation`` draws data with known truth.
"""

from .problem import IntegratedProblem
from .results import IntegratedResults

__all__ = ["IntegratedProblem", "IntegratedResults"]
