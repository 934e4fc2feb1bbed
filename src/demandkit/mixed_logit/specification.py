"""What a mixed logit is: its string options, its configuration records and its parameter vector.

Everything here is plain Python and NumPy; nothing knows tables or tensors. The parameter vector
:math:`\\theta` stacks, in this order,

1. the location of every coefficient :math:`k` (its value if fixed, the mean of a normal, the mean of
   the log of a lognormal, the centre of a triangular or uniform, the location :math:`\\mu` of a
   truncated normal), named by the coefficient (``'price'``; ``'gamma'`` for state dependence);
2. the spread of every independent random coefficient, named ``'sd.<name>'`` (the standard deviation
   of a normal, of the log of a lognormal, of the untruncated normal of a truncated normal; the
   half-width of a triangular or uniform);
3. with ``correlated=True``, the lower triangle of the Cholesky factor :math:`L` of the covariance of
   the normal coefficients, row by row, named ``'chol.<row>.<column>'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Literal, get_args

import numpy as np

from ..configurations.formulation import Formulation
from ..configurations.integration import Integration
from ..configurations.options import check_choice
from ..exceptions import SpecificationError

Distribution = Literal["normal", "lognormal", "triangular", "uniform", "truncated_normal"]
DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)
GradientMethod = Literal["analytic", "autograd"]
CovarianceType = Literal["robust", "classical", "opg"]
COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)

#: name of the state-dependence coefficient and of the lagged-choice indicator it multiplies
STATE_COEFFICIENT = "gamma"
STATE_VARIABLE = "lagged_choice"


def check_distribution(coefficient: str, value: Any) -> str:
    """Return ``value`` if it is a known distribution, else raise naming ``coefficient``."""
    return check_choice(f"The distribution of random coefficient {coefficient!r}", value, Distribution)


@dataclass(frozen=True, slots=True)
class StateDependence:
    """Configuration of the built-in state dependence term :math:`\\gamma_i 1\\{y_{i,t-1} = j\\}`.

    Parameters
    ----------
    burn_in : int
        How many of each individual's first choice situations only form the state (the lagged choice)
        and are left out of the likelihood (Tuchman 2019). Individuals need more situations than this.
    random : bool or str
        ``False`` for a fixed :math:`\\gamma`, ``True`` for a normal one, or a distribution name.
    """

    burn_in: int = 0
    random: bool | str = False

    def __post_init__(self) -> None:
        if not isinstance(self.burn_in, Integral) or isinstance(self.burn_in, bool) or self.burn_in < 0:
            raise SpecificationError(
                f"state_dependence burn_in must be a non-negative integer; received {self.burn_in!r}."
            )
        object.__setattr__(self, "burn_in", int(self.burn_in))
        if not isinstance(self.random, (bool, np.bool_)):
            check_distribution(STATE_COEFFICIENT, self.random)

    @property
    def distribution(self) -> str | None:
        """The distribution of :math:`\\gamma`, or None when it is fixed."""
        if isinstance(self.random, (bool, np.bool_)):
            return "normal" if self.random else None
        return str(self.random)

    @classmethod
    def build(cls, value: StateDependence | dict[str, Any] | None) -> StateDependence | None:
        """Accept None, a :class:`StateDependence` or a dict of its fields."""
        if value is None or isinstance(value, StateDependence):
            return value
        if not isinstance(value, dict):
            raise SpecificationError(
                f"state_dependence must be None, a dict such as dict(burn_in=24, random=False) or a StateDependence; "
                f"received {type(value).__name__}."
            )
        unknown = sorted(set(value) - {"burn_in", "random"})
        if unknown:
            raise SpecificationError(f"state_dependence has unknown keys {unknown}; allowed keys are burn_in, random.")
        return cls(**value)


@dataclass(frozen=True)
class ParameterSpace:
    """The coefficients of a mixed logit and the layout of :math:`\\theta`.

    Internally coefficients are reordered *random first* (in the user's order), then fixed, so that the
    coefficient tensor is one concatenation; ``order`` maps internal positions to the user's.

    Parameters
    ----------
    coefficients : tuple of str
        Coefficient names in the user's order (formulation labels, then ``'gamma'``).
    distributions : dict
        Distribution of each random coefficient; the others are fixed.
    correlated : bool
        Whether the normal coefficients have a full covariance (Cholesky factor estimated).
    """

    coefficients: tuple[str, ...]
    distributions: dict[str, str]
    correlated: bool = False
    names: tuple[str, ...] = field(init=False)
    order: np.ndarray = field(init=False, repr=False)  # internal position -> user coefficient index
    random_distributions: tuple[str, ...] = field(init=False)  # per internal random coefficient
    sd_index: np.ndarray = field(init=False, repr=False)  # theta index of each random coefficient's spread (-1)
    normal_block: np.ndarray = field(init=False, repr=False)  # internal indices of the correlated normals
    cholesky_rows: np.ndarray = field(init=False, repr=False)
    cholesky_columns: np.ndarray = field(init=False, repr=False)
    cholesky_index: np.ndarray = field(init=False, repr=False)  # theta index of each Cholesky element

    def __post_init__(self) -> None:
        unknown = sorted(set(self.distributions) - set(self.coefficients))
        if unknown:
            raise SpecificationError(
                f"random names {unknown}, which are not coefficients of the model; the coefficients are "
                f"{list(self.coefficients)}."
            )
        for name, distribution in self.distributions.items():
            check_distribution(name, distribution)
        random = [k for k, name in enumerate(self.coefficients) if name in self.distributions]
        fixed = [k for k, name in enumerate(self.coefficients) if name not in self.distributions]
        order = np.array(random + fixed, dtype=np.int64)
        dists = tuple(self.distributions[self.coefficients[k]] for k in random)
        names = list(self.coefficients)
        sd_index = np.full(len(random), -1, dtype=np.int64)
        block = [r for r, d in enumerate(dists) if d == "normal"] if self.correlated else []
        for r, k in enumerate(random):
            if r not in block:
                sd_index[r] = len(names)
                names.append(f"sd.{self.coefficients[k]}")
        rows, columns, index = [], [], []
        for a, ra in enumerate(block):
            for b, rb in enumerate(block[: a + 1]):
                rows.append(a)
                columns.append(b)
                index.append(len(names))
                names.append(f"chol.{self.coefficients[random[ra]]}.{self.coefficients[random[rb]]}")
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "random_distributions", dists)
        object.__setattr__(self, "sd_index", sd_index)
        object.__setattr__(self, "normal_block", np.array(block, dtype=np.int64))
        object.__setattr__(self, "cholesky_rows", np.array(rows, dtype=np.int64))
        object.__setattr__(self, "cholesky_columns", np.array(columns, dtype=np.int64))
        object.__setattr__(self, "cholesky_index", np.array(index, dtype=np.int64))

    @property
    def size(self) -> int:
        """The number of parameters :math:`P`."""
        return len(self.names)

    @property
    def n_random(self) -> int:
        return len(self.random_distributions)

    @property
    def random_names(self) -> tuple[str, ...]:
        return tuple(self.coefficients[k] for k in self.order[: self.n_random])

    @property
    def internal_names(self) -> tuple[str, ...]:
        """Coefficient names in the internal order (random first)."""
        return tuple(self.coefficients[k] for k in self.order)

    @property
    def parameter_coefficient(self) -> np.ndarray:
        """Internal index of the one coefficient each parameter moves, ``[P]``."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        spreads = np.flatnonzero(self.sd_index >= 0)
        return np.concatenate([inverse, spreads, self.normal_block[self.cholesky_rows]]).astype(np.int64)

    def starting_values(self, logit: np.ndarray | None = None, spread: float | np.ndarray = 0.1) -> np.ndarray:
        """Starting :math:`\\theta`: locations from ``logit`` coefficients (user order) mapped to each
        distribution's location, spreads from ``spread`` (a number, or one per coefficient in the user's order; the
        Cholesky diagonal takes its coefficient's spread, the off-diagonal 0)."""
        K = len(self.coefficients)
        spreads = np.broadcast_to(np.asarray(spread, dtype=np.float64), (K,))
        theta = np.zeros(self.size)
        if logit is not None:
            theta[:K] = logit
        for r, distribution in enumerate(self.random_distributions):
            k = self.order[r]
            if distribution == "lognormal":
                theta[k] = np.log(max(abs(theta[k]), 1e-2))
            elif distribution == "truncated_normal":
                theta[k] = max(theta[k], spreads[k])
            if self.sd_index[r] >= 0:
                theta[self.sd_index[r]] = spreads[k]
        diagonal = self.cholesky_rows == self.cholesky_columns
        rows = self.normal_block[self.cholesky_rows[diagonal]]
        theta[self.cholesky_index[diagonal]] = spreads[self.order[rows]]
        return theta

    def covariance_of_normals(self, theta: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Names and covariance :math:`LL'` of the correlated normal coefficients (empty if none)."""
        n = len(self.normal_block)
        L = np.zeros((n, n))
        L[self.cholesky_rows, self.cholesky_columns] = np.asarray(theta)[self.cholesky_index]
        names = [self.coefficients[self.order[r]] for r in self.normal_block]
        return names, L @ L.T

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": list(self.coefficients),
            "distributions": dict(self.distributions),
            "correlated": bool(self.correlated),
        }


@dataclass(frozen=True)
class Columns:
    """The names of the choice and id columns of a user's table."""

    choice: str | None
    situation_ids: str
    individual_ids: str
    alternative_ids: str

    def __post_init__(self) -> None:
        for name in ("situation_ids", "individual_ids", "alternative_ids"):
            if not isinstance(getattr(self, name), str):
                raise SpecificationError(f"{name} must name a column; received {getattr(self, name)!r}.")
        if self.choice is not None and not isinstance(self.choice, str):
            raise SpecificationError(f"choice must name a column; received {self.choice!r}.")

    def to_dict(self) -> dict[str, str | None]:
        return {
            "choice": self.choice,
            "situation_ids": self.situation_ids,
            "individual_ids": self.individual_ids,
            "alternative_ids": self.alternative_ids,
        }


@dataclass(frozen=True)
class ModelSpecification:
    """Everything that defines a mixed logit apart from its data: enough to rebuild it on new data.

    ``integration`` carries the resolved seed, so the draws of new data are reproducible.
    """

    formulation: Formulation
    columns: Columns
    random: dict[str, str]
    correlated: bool
    state_dependence: StateDependence | None
    outside: bool
    integration: Integration
    covariates: tuple[str, ...]
    utility: Callable[..., Any] | None = None

    @property
    def coefficients(self) -> tuple[str, ...]:
        """Coefficient names: the covariates, with the lagged choice's coefficient called ``'gamma'``."""
        return tuple(STATE_COEFFICIENT if c == STATE_VARIABLE else c for c in self.covariates)

    @property
    def distributions(self) -> dict[str, str]:
        """Distribution of every random coefficient, ``'gamma'`` included."""
        out = dict(self.random)
        if self.state_dependence is not None and self.state_dependence.distribution is not None:
            out[STATE_COEFFICIENT] = self.state_dependence.distribution
        return out

    def space(self) -> ParameterSpace:
        return ParameterSpace(self.coefficients, self.distributions, self.correlated)

    def to_dict(self) -> dict[str, Any]:
        sd = self.state_dependence
        return {
            "formula": self.formulation.formula,
            "columns": self.columns.to_dict(),
            "random": dict(self.random),
            "correlated": bool(self.correlated),
            "state_dependence": None if sd is None else {"burn_in": sd.burn_in, "random": sd.random},
            "outside": bool(self.outside),
            "integration": {
                "specification": self.integration.specification,
                "size": self.integration.size,
                "options": dict(self.integration.options),
            },
            "covariates": list(self.covariates),
            "utility": None if self.utility is None else getattr(self.utility, "__qualname__", repr(self.utility)),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], utility: Callable[..., Any] | None = None) -> ModelSpecification:
        """Rebuild from :meth:`to_dict`; a user-defined utility must be passed again."""
        if values.get("utility") is not None and utility is None:
            raise SpecificationError(
                f"These results were estimated with the user-defined utility {values['utility']!r}; pass it again as "
                "utility=..."
            )
        integration = values["integration"]
        return cls(
            formulation=Formulation(values["formula"]),
            columns=Columns(**values["columns"]),
            random=dict(values["random"]),
            correlated=bool(values["correlated"]),
            state_dependence=StateDependence.build(values["state_dependence"]),
            outside=bool(values["outside"]),
            integration=Integration(integration["specification"], integration["size"], integration["options"]),
            covariates=tuple(values["covariates"]),
            utility=utility,
        )
