"""``Iteration``: how the fixed point for mean utilities (the Berry inversion) is solved.

The algorithms themselves are batched kernels in :mod:`demandkit.kernels.fixed_point`; this module is
the frozen, validated configuration users build, with PyBLP's names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

from .options import IterationMethod, IterationNorm, IterationRootMethod, check_choice, check_keys

ROOT_METHODS: tuple[str, ...] = get_args(IterationRootMethod)

_DEFAULTS: dict[str, dict[str, Any]] = {
    "squarem": {
        "atol": 1e-14,
        "rtol": 0.0,
        "max_evaluations": 5000,
        "norm": "infinity",
        "scheme": 3,
        "step_min": 1.0,
        "step_max": 1.0,
        "step_factor": 4.0,
    },
    "simple": {"atol": 1e-14, "rtol": 0.0, "max_evaluations": 5000, "norm": "infinity"},
    "newton": {"atol": 1e-14, "rtol": 0.0, "max_evaluations": 100, "norm": "infinity"},
    "return": {},
    # scipy.optimize.root's options; as in PyBLP the nonlinear solvers and df-sane judge convergence in the
    # infinity norm by default (MINPACK's hybr and lm take no norm)
    **{method: {"tol_norm": "infinity"} for method in ROOT_METHODS if method not in ("df-sane", "hybr", "lm")},
    "df-sane": {"fnorm": "infinity"},
    "hybr": {},
    "lm": {},
}
_DESCRIPTIONS = {
    "squarem": "the SQUAREM acceleration method",
    "simple": "no acceleration",
    "newton": "Newton's method with the analytic share Jacobian",
    "broyden1": "scipy's Broyden's good method",
    "broyden2": "scipy's Broyden's bad method",
    "anderson": "scipy's Anderson mixing",
    "krylov": "scipy's Krylov approximation of the inverse Jacobian",
    "diagbroyden": "scipy's diagonal Broyden method",
    "df-sane": "scipy's derivative-free spectral method",
    "hybr": "MINPACK's modified Powell hybrid method (via scipy)",
    "lm": "MINPACK's modified Levenberg-Marquardt method (via scipy)",
}


@dataclass(frozen=True, slots=True)
class Iteration:
    """Configuration for solving the contraction :math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)`.

    Parameters
    ----------
    method : str or callable
        The batched solvers, which iterate every market at once, each stopping on its own criterion:

        - ``'squarem'`` (Varadhan and Roland 2008, scheme S3, the default) accelerates the contraction;
        - ``'simple'`` iterates it as it is;
        - ``'newton'`` takes Newton steps on :math:`\\log s(\\delta) = \\log S` with the analytic share Jacobian
          (one batched linear solve per market and step);
        - ``'return'`` returns the starting values.

        PyBLP's :func:`scipy.optimize.root` methods, ``'broyden1'``, ``'broyden2'``, ``'anderson'``, ``'krylov'``,
        ``'diagbroyden'``, ``'df-sane'``, ``'hybr'`` and ``'lm'``, solve
        :math:`G(\\delta) - \\delta = 0` for the contraction :math:`G` with one call to scipy on the stacked system
        of all markets' products (markets do not interact, so its Jacobian is block diagonal): convergence is
        judged on the stacked vector and every market reports the same counts
        (:mod:`demandkit.kernels.root`). ``'hybr'`` and ``'lm'`` factor the dense ``N x N`` Jacobian of the
        stacked system, a cost cubic in the total number of products (seconds to a minute for Nevo's 2256), so
        they suit small problems; ``'hybr'`` without an analytic Jacobian is told the Jacobian is banded.

        A callable is a custom routine with PyBLP's contract,
        ``method(initial, contraction, callback, **method_options) -> (final, converged)``, where
        ``contraction(x) -> (x1, weights, jacobian)`` (``weights`` None; ``jacobian`` the Jacobian of the
        contraction if ``compute_jacobian``, else None) and ``callback()`` is called after each major iteration.
        Unlike PyBLP, which calls it once per market, it is called once with the stacked vector of all markets'
        products (``jacobian`` is then the ``N x N`` block-diagonal matrix).
    method_options : dict, optional
        For ``'squarem'``, ``'simple'`` and ``'newton'``: ``atol`` (default 1e-14) and ``rtol`` (0): a market
        stops when :math:`\\|\\delta^{new} - \\delta\\| \\le atol + rtol \\|\\delta\\|`; ``max_evaluations`` of the
        share function per market (5000, Newton 100); ``norm``: ``'infinity'`` (default), ``'l2'``, or a callable
        of one market's vector returning a scalar as in PyBLP (batched with ``torch.vmap`` when it is a torch
        function, else called on each market's NumPy vector, a slow path: see
        :func:`~demandkit.kernels.fixed_point.market_norm`); for SQUAREM ``scheme`` (1, 2 or 3), ``step_min``,
        ``step_max`` and ``step_factor`` as in Varadhan and Roland.

        For the scipy methods, the ``options`` of :func:`scipy.optimize.root` (``fatol``, ``maxiter``, ``xtol``,
        ...; scipy's defaults, looser than SQUAREM's, unless given). As in PyBLP, ``tol_norm`` (``fnorm`` for
        ``'df-sane'``) defaults to the infinity norm; ``'infinity'``, ``'l2'`` or a function of a vector. For a
        callable ``method``, the keyword arguments it is called with.
    compute_jacobian : bool
        Whether ``'hybr'``, ``'lm'`` and a custom routine get the analytic Jacobian (otherwise scipy
        approximates it by finite differences). Default False, as in PyBLP.
    """

    method: IterationMethod | Callable[..., Any] = "squarem"
    method_options: dict[str, Any] | None = None
    compute_jacobian: bool = False
    options: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.compute_jacobian, bool):
            raise ValueError(f"Iteration compute_jacobian must be True or False; received {self.compute_jacobian!r}.")
        if callable(self.method) or self.method in ROOT_METHODS:
            given = dict(self.method_options or {})
            defaults = {} if callable(self.method) else _DEFAULTS[self.method]
            # the kernels read compute_jacobian from the options they are handed (and pass the rest on)
            options = {**defaults, **given, "compute_jacobian": self.compute_jacobian}
            object.__setattr__(self, "options", options)
            return
        check_choice("Iteration method", self.method, IterationMethod)
        merged = check_keys("Iteration method_options", dict(self.method_options or {}), _DEFAULTS[self.method])
        if self.method != "return":
            if not callable(merged["norm"]):
                check_choice("Iteration norm", merged["norm"], IterationNorm)
            if not merged["atol"] >= 0 or not merged["rtol"] >= 0:
                raise ValueError("Iteration atol and rtol must be non-negative.")
            if int(merged["max_evaluations"]) < 1:
                raise ValueError("Iteration max_evaluations must be at least 1.")
        if self.method == "squarem" and merged["scheme"] not in (1, 2, 3):
            raise ValueError(f"Iteration SQUAREM scheme must be 1, 2 or 3; received {merged['scheme']!r}.")
        object.__setattr__(self, "options", merged)

    def __str__(self) -> str:
        if self.method == "return":
            return "Configured to return starting values without iterating."
        o = self.options
        if callable(self.method) or self.method in ROOT_METHODS:
            name = "a custom method" if callable(self.method) else _DESCRIPTIONS[self.method]
            jacobian = "with" if self.compute_jacobian else "without"
            shown = {key: value for key, value in o.items() if key != "compute_jacobian"}
            return f"Configured to iterate using {name} {jacobian} analytic Jacobians with options {shown}."
        norm = f"custom ({getattr(o['norm'], '__name__', 'callable')})" if callable(o["norm"]) else o["norm"]
        return (
            f"Configured to iterate with {self.method!r} until the {norm} norm of the change is at most "
            f"{o['atol']:.1e} + {o['rtol']:.1e} x the norm of delta, with at most {o['max_evaluations']} "
            "evaluations per market."
        )
