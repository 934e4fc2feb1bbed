"""String options, each defined once, with the check and the message derived from the definition."""

from __future__ import annotations

from typing import Any, Literal, get_args

from ..exceptions import SpecificationError

IterationRootMethod = Literal["broyden1", "broyden2", "anderson", "krylov", "diagbroyden", "df-sane", "hybr", "lm"]
"""PyBLP's :func:`scipy.optimize.root` methods for the inversion (run on the stacked system of all markets)."""
IterationMethod = Literal["squarem", "simple", "newton", "return", IterationRootMethod]
IterationNorm = Literal["infinity", "l2"]
OptimizationMethod = Literal[
    "l-bfgs-b", "bfgs", "slsqp", "tnc", "trust-constr", "cg", "newton-cg", "nelder-mead", "powell", "knitro", "return"
]
GMMMethod = Literal["1s", "2s"]
CovarianceType = Literal["robust", "clustered", "unadjusted"]
DeltaBehavior = Literal["first", "last"]
Optimality = Literal["gradient", "both"]
RCType = Literal["linear", "log", "logit"]
CostsType = Literal["linear", "log"]


def check_choice(parameter: str, value: Any, options: Any) -> Any:
    """Return ``value`` if it is one of the ``Literal`` ``options``, else raise naming the parameter."""
    allowed = get_args(options)
    if value not in allowed:
        raise SpecificationError(
            f"{parameter} must be one of {', '.join(repr(a) for a in allowed)}; received {value!r}."
        )
    return value


def check_keys(parameter: str, given: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Merge ``given`` into the defaults ``allowed``, rejecting unknown keys by name."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise SpecificationError(f"{parameter} has unknown keys {unknown}; allowed keys are {sorted(allowed)}.")
    return {**allowed, **given}
