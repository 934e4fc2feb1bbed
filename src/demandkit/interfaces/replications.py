"""Replications of the field's classic estimates on the built-in data.

:func:`nevo` is the Nevo (2000) cereal replication as in Conlon and Gortmaker (2020): prices with
product fixed effects absorbed in X1; ``1 + prices + sugar + mushy`` in X2 with a diagonal
:math:`\\Sigma`; income, income squared, age and child in :math:`\\Pi` with Nevo's pattern of zeros; the
20 given agents per market; one-step GMM with :math:`W = (Z'Z)^{-1}`; BFGS from Nevo's starting values.
:func:`blp` is the Berry, Levinsohn and Pakes (1995) automobile replication as in Conlon and Gortmaker
(2020), with its supply side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import data
from ..blp.problem import Problem
from ..configurations.formulation import Formulation
from ..configurations.optimization import Optimization

NEVO_SIGMA0 = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI0 = np.array(
    [
        [5.4819, 0, 0.2037, 0],
        [15.8935, -1.2000, 0, 2.6342],
        [-0.2506, 0, 0.0511, 0],
        [1.2650, 0, -0.8091, 0],
    ]
)


def nevo_problem(device: str = "cpu") -> Problem:
    """The Nevo (2000) problem on the built-in cereal data."""
    products = pd.read_csv(data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(data.NEVO_AGENTS_LOCATION)
    formulations = (
        Formulation("0 + prices", absorb="C(product_ids)"),
        Formulation("1 + prices + sugar + mushy"),
    )
    agent_formulation = Formulation("0 + income + income_squared + age + child")
    return Problem(formulations, products, agent_formulation, agents, device=device)


def nevo(device: str = "cpu", progress: bool = False) -> Any:
    """Estimate the Nevo (2000) replication and return its :class:`~demandkit.blp.results.ProblemResults`."""
    problem = nevo_problem(device)
    return problem.solve(
        NEVO_SIGMA0,
        NEVO_PI0,
        optimization=Optimization("bfgs", {"gtol": 1e-5}),
        method="1s",
        progress=progress,
    )


BLP_SIGMA0 = np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056])
BLP_PI0 = np.c_[[0, -43.501, 0, 0, 0, 0]]


def blp_problem(device: str = "cpu") -> Problem:
    """The BLP (1995) automobile problem with its supply side on the built-in data."""
    products = pd.read_csv(data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(data.BLP_AGENTS_LOCATION)
    formulations = (
        Formulation("1 + hpwt + air + mpd + space"),
        Formulation("1 + prices + hpwt + air + mpd + space"),
        Formulation("1 + log(hpwt) + air + log(mpg) + log(space) + trend"),
    )
    return Problem(formulations, products, Formulation("0 + I(1 / income)"), agents, costs_type="log", device=device)


def blp(device: str = "cpu", progress: bool = False) -> Any:
    """Estimate the BLP (1995) replication: demand and log marginal costs, Bertrand-Nash pricing by
    ``firm_ids``, two-step GMM with a clustered weighting matrix and standard errors, W updated at the
    starting values, costs bounded below by 0.001."""
    problem = blp_problem(device)
    return problem.solve(
        BLP_SIGMA0,
        BLP_PI0,
        costs_bounds=(0.001, None),
        W_type="clustered",
        se_type="clustered",
        initial_update=True,
        progress=progress,
    )


REPLICATIONS = {"nevo": nevo, "blp": blp}
