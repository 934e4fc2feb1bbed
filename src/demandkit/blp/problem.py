"""``Problem``: a BLP demand (and supply) estimation problem, PyBLP's entry point.

``Problem(product_formulations, product_data, agent_formulation, agent_data, integration)`` lays the data out
(:class:`~demandkit.blp.economy.Economy`) and ``solve`` estimates it by GMM (:mod:`demandkit.blp.estimation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from ..configurations.iteration import Iteration
from ..configurations.micro import MicroMoment
from ..configurations.optimization import Optimization
from ..memory import reuse_freed_memory
from .economy import Economy
from .estimation import solve
from .results import ProblemResults
from .solve_options import DEFAULT_SHARES_BOUNDS
from .starts import solve_from_starts


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
        ``market_ids``, ``weights``, ``nodes0..`` and the demographics. A demographic that varies by product as
        well, :math:`d_{ijt}` (the distance from agent :math:`i` to product :math:`j`), is given as numbered columns
        ``distance0, distance1, ...`` instead of one ``distance`` column: column :math:`j` is the market's
        :math:`j`-th product in the order of ``product_data``, there are as many as the largest market has
        products, and markets with fewer products ignore the extra columns (which may be NaN). The random
        coefficients then vary by product,

        .. math::

            \\mu_{ijt} = \\sum_k x^{(2)}_{jtk} f_k\\Big(\\sum_l \\Sigma_{kl}\\nu_{itl}
                         + \\sum_d \\Pi_{kd} d_{ijtd}\\Big),

        with :math:`d_{ijtd} = d_{itd}` for the regular demographics (:mod:`demandkit.blp.product_demographics`);
        every term of ``agent_formulation`` that involves such a variable (``income:distance``) is
        product-specific, and ``agents.demographics`` is then ``I x D x J`` as in PyBLP.
    integration : Integration, optional
        Builds nodes and weights for every market instead of (or in place of the nodes in) agent_data.
    rc_types : sequence of {'linear', 'log', 'logit'}, optional
        How each random coefficient enters: as is, exponentiated (lognormal) or through the logistic
        function. Default all ``'linear'``.
    epsilon_scale : float
        PyBLP's scale of the logit error, in PyBLP's position; only 1 (the default) is supported (an error says so
        otherwise).
    add_exogenous : bool
        Add the exogenous X1 columns to the demand instruments (PyBLP's default).
    device : str
        ``'cpu'`` or ``'cuda'``; the same code runs on both.
    dtype : torch.dtype
        ``torch.float64`` by default. ``torch.float32`` runs the per-market work (shares, the inversion, markups)
        in single precision, for GPUs; the GMM algebra (weighting matrix, linear parameters, moments, objective,
        standard errors) stays in float64. On Nevo (2000) it gives estimates within 1e-3 standard errors of
        float64's and standard errors within 1% (``tests/test_precision.py``); use an inversion tolerance near
        1e-6 and an optimizer tolerance that float32's gradient noise can meet (``gtol`` about 0.1).
    buckets : int, optional
        Markets of very different sizes are grouped into buckets of similar size, each padded only to its largest
        market, for the per-market work of estimation (:mod:`demandkit.blp.buckets`). None (the default) chooses
        the buckets by a cost model (one bucket when the markets are of similar size); ``1`` keeps every market in
        one batch; ``k`` uses up to ``k`` buckets wherever market sizes differ. Results do not depend on it.
    """

    def solve(
        self,
        sigma: Any = None,
        pi: Any = None,
        rho: Any = None,
        phi: Any = None,
        beta: Any = None,
        gamma: Any = None,
        sigma_bounds: Any = None,
        pi_bounds: Any = None,
        rho_bounds: Any = None,
        phi_bounds: Any = None,
        beta_bounds: Any = None,
        gamma_bounds: Any = None,
        delta: Any = None,
        method: str = "2s",
        initial_update: bool | None = None,
        optimization: Optimization | None = None,
        scale_objective: bool = True,
        check_optimality: str = "both",
        finite_differences: bool = False,
        error_behavior: str = "revert",
        error_punishment: float = 1,
        delta_behavior: str = "first",
        iteration: Iteration | None = None,
        fp_type: str = "safe_linear",
        shares_bounds: Any = DEFAULT_SHARES_BOUNDS,
        costs_bounds: Any = None,
        W: Any = None,
        center_moments: bool = True,
        W_type: str = "robust",
        se_type: str = "robust",
        demand_moment_types: Any = "levels",
        supply_moment_types: Any = "levels",
        covariance_moments_mean: float = 0,
        micro_moments: Sequence[MicroMoment] = (),
        micro_sample_covariances: Any = None,
        resample_agent_data: Callable[[int], Any] | None = None,
        *,
        progress: bool | None = None,
        distributed: bool | None = None,
        starts: int | list[dict[str, Any]] | None = None,
        starts_options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
    ) -> ProblemResults:
        """Estimate the model by GMM, with PyBLP 1.3's arguments in PyBLP's order (a positional call means what it
        means in PyBLP) and demandkit's own after them, keyword-only. See :func:`demandkit.blp.estimation.solve` for
        every argument but the multi-start ones below.

        On the CPU, freed memory is kept for reuse while it runs (:func:`demandkit.memory.reuse_freed_memory`).

        Parameters
        ----------
        sigma, pi, rho : array-like
            Starting values (the first start of a multi-start estimation).
        starts : int or list of dict, optional
            Multi-start estimation (:mod:`demandkit.blp.starts`, :mod:`demandkit.multistart`). An int ``n`` solves
            from the given starting values and from ``n - 1`` draws around them; a list gives each start as a dict
            of starting values (keys among ``sigma``, ``pi``, ``rho``, ``beta``, ``gamma``, ``delta``; the other
            arguments are shared, and keys a start lacks take this call's values). Each start is solved in full, and
            the results of the one with the lowest first-step GMM objective among those that converged (among all,
            if none did) are returned, with ``results.starts``, a DataFrame of every start: ``start``,
            ``objective`` (first step), ``converged``, ``gradient_norm``, ``iterations`` (all steps), ``seconds``,
            ``best``, ``warnings``, ``error``, ``final_objective``, ``initial`` and ``estimate``. A
            :class:`~demandkit.exceptions.DistinctOptimaWarning` (a ``UserWarning``) says when converged starts end
            at objectives worse than the best by more than ``rtol * max(|best|, 1)``, ``rtol = 1e-4`` by default.
            None (the default) solves once, as before, and ``results.starts`` is None.
        starts_options : dict, optional
            ``{'seed': 0, 'scale': 1.0, 'rtol': 1e-4}`` (the defaults): the seed of the draws, their standard
            deviation in units of ``max(|start|, f)`` (``f`` one utility unit per scale of what the parameter
            multiplies) and the relative tolerance of distinct optima.
        executor : concurrent.futures.Executor, optional
            Where the starts run. By default a local ``ProcessPoolExecutor`` with a worker per core (at most one per
            start) and one torch thread each; one start, one core or a problem on a GPU runs in this process. The
            problem and the arguments are pickled to the workers.

        Raises
        ------
        SpecificationError
            ``starts`` below 1 or of another type, ``executor`` not an ``Executor``, unknown ``starts_options``, or
            either of those without ``starts``; and :func:`~demandkit.blp.estimation.solve`'s errors (raised by a
            multi-start estimation only if every start fails).
        """
        # every argument of estimation.solve by name (the first statement, so the frame holds only the arguments)
        arguments = {k: v for k, v in locals().items() if k not in {"self", "starts", "starts_options", "executor"}}
        if starts is not None or starts_options is not None or executor is not None:
            return solve_from_starts(self, starts, starts_options, executor, arguments)
        with reuse_freed_memory():
            results = solve(self, **arguments)
        results.starts = None
        return results
