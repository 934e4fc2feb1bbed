"""``Problem``: a BLP demand (and supply) estimation problem, PyBLP's entry point.

``Problem(product_formulations, product_data, agent_formulation, agent_data, integration)`` lays the data out
(:class:`~demandkit.blp.economy.Economy`) and ``solve`` estimates it by GMM (:mod:`demandkit.blp.estimation`).
"""

from __future__ import annotations

from typing import Any

from ..memory import reuse_freed_memory
from .economy import Economy
from .estimation import solve
from .results import ProblemResults


class Problem(Economy):
    """A BLP demand estimation problem (logit, nested logit, random-coefficients (nested) logit).

    Parameters
    ----------
    product_formulations : Formulation or sequence of Formulation
        ``(X1, X2)``: linear characteristics (with ``absorb`` for fixed effects) and characteristics with
        random coefficients; omit X2 (or pass None) for the logit and nested logit.
    product_data : DataFrame or mapping
        One row per product and market (see the module docstring for column names).
    agent_formulation : Formulation, optional
        Demographics :math:`d_i` interacted with X2 through :math:`\\Pi`, e.g. ``'0 + income'``.
    agent_data : DataFrame or mapping, optional
        ``market_ids``, ``weights``, ``nodes0..`` and the demographics.
    integration : Integration, optional
        Builds nodes and weights for every market instead of (or in place of the nodes in) agent_data.
    rc_types : sequence of {'linear', 'log', 'logit'}, optional
        How each random coefficient enters: as is, exponentiated (lognormal) or through the logistic
        function. Default all ``'linear'``.
    add_exogenous : bool
        Add the exogenous X1 columns to the demand instruments (PyBLP's default).
    device : str
        ``'cpu'`` or ``'cuda'``; the same code runs on both.
    dtype : torch.dtype
        ``torch.float64`` by default.
    """

    def solve(self, sigma: Any = None, pi: Any = None, rho: Any = None, **kwargs: Any) -> ProblemResults:
        """Estimate the model by GMM. See :func:`demandkit.blp.estimation.solve` for every argument.

        On the CPU, freed memory is kept for reuse while it runs (:func:`demandkit.memory.reuse_freed_memory`).
        """
        with reuse_freed_memory():
            return solve(self, sigma=sigma, pi=pi, rho=rho, **kwargs)
