"""``Iteration``: how the fixed point for mean utilities (the Berry inversion) is solved.

The algorithms themselves are batched kernels in :mod:`demandkit.kernels.fixed_point`; this module is
the frozen, validated configuration users build, with PyBLP's names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .options import IterationMethod, IterationNorm, check_choice, check_keys

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
}


@dataclass(frozen=True, slots=True)
class Iteration:
    """Configuration for solving the contraction :math:`\\delta \\leftarrow \\delta + \\log S - \\log s(\\delta)`.

    Parameters
    ----------
    method : {'squarem', 'simple', 'newton', 'return'}
        ``'squarem'`` (Varadhan and Roland 2008, scheme S3, the default) accelerates the contraction;
        ``'simple'`` iterates it as it is; ``'newton'`` takes Newton steps on
        :math:`\\log s(\\delta) = \\log S` with the analytic share Jacobian (one batched linear solve per
        market and step); ``'return'`` returns the starting values.
    method_options : dict, optional
        ``atol`` (default 1e-14) and ``rtol`` (0): a market stops when
        :math:`\\|\\delta^{new} - \\delta\\| \\le atol + rtol \\|\\delta\\|`; ``max_evaluations`` of the share
        function per market (5000, Newton 100); ``norm`` (``'infinity'`` or ``'l2'``); for SQUAREM
        ``scheme`` (1, 2 or 3), ``step_min``, ``step_max`` and ``step_factor`` as in Varadhan and Roland.
    """

    method: IterationMethod = "squarem"
    method_options: dict[str, Any] | None = None
    options: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("Iteration method", self.method, IterationMethod)
        merged = check_keys("Iteration method_options", dict(self.method_options or {}), _DEFAULTS[self.method])
        if self.method != "return":
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
        return (
            f"Configured to iterate with {self.method!r} until the {o['norm']} norm of the change is at most "
            f"{o['atol']:.1e} + {o['rtol']:.1e} x the norm of delta, with at most {o['max_evaluations']} "
            "evaluations per market."
        )
