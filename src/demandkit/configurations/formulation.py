"""Formulations: the one module that owns formulaic.

A :class:`Formulation` turns a formula such as ``'1 + prices + sugar'`` into a design matrix with
PyBLP's column labels (the intercept is ``'1'``), and optionally names fixed effects to absorb
(``absorb='C(product_ids) + C(city_ids)'``). Absorption uses pyhdfe on the numpy side; the batched
engine re-applies the same projection to mean utilities in :mod:`demandkit.kernels.absorption`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from ..exceptions import InvalidDataError, SpecificationError

_INTERCEPT_NAMES = ("Intercept", "1")
_ABSORB_TERM = re.compile(r"^C\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)$|^(?P<bare>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True, slots=True)
class Formulation:
    """Configuration for designing a matrix of product or agent characteristics.

    Parameters
    ----------
    formula : str
        A formulaic/patsy-style formula, e.g. ``'1 + prices + sugar'``, ``'0 + prices'``,
        ``'1 + log(hpwt) + I(prices ** 2) + C(firm_ids)'``. An intercept is included unless the formula
        says ``0 +``.
    absorb : str, optional
        Fixed effects to absorb instead of estimating them, e.g. ``'C(product_ids)'`` or
        ``'C(product_ids) + C(city_ids)'``; ``'C(firm_ids):C(market_ids)'`` absorbs one fixed effect for each
        combination of the two (as PyBLP). Only for the linear part X1 (and X3).
    absorb_method : str, optional
        Passed to ``pyhdfe.create`` (``'within'`` for one fixed effect, ``'map'`` for several by default).
    absorb_options : dict, optional
        Passed to ``pyhdfe.create`` as its ``options`` (PyBLP's): e.g. ``{'tol': 1e-12}`` or a MAP acceleration.

    Examples
    --------
    >>> import pandas as pd
    >>> import demandkit as dk
    >>> data = pd.DataFrame({"prices": [1.0, 2.0, 4.0], "sugar": [3, 0, 1]})
    >>> matrix, labels = dk.Formulation("1 + prices + log(sugar + 1)").build_matrix(data)
    >>> labels
    ['1', 'prices', 'log(sugar + 1)']
    >>> matrix.round(3).tolist()
    [[1.0, 1.0, 1.386], [1.0, 2.0, 0.0], [1.0, 4.0, 0.693]]

    Fixed effects named in ``absorb`` are projected out, never built as columns:

    >>> formulation = dk.Formulation("0 + prices", absorb="C(product_ids)")
    >>> print(formulation)
    0 + prices + Absorb[C(product_ids)]
    >>> formulation.absorb_names
    ('product_ids',)
    """

    formula: str
    absorb: str | None = None
    absorb_method: str | None = None
    absorb_options: dict | None = None
    absorb_names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not isinstance(self.formula, str) or not self.formula.strip():
            raise SpecificationError(f"formula must be a non-empty string; received {self.formula!r}.")
        names: tuple[str, ...] = ()
        if self.absorb is not None:
            terms = [t.strip() for t in self.absorb.split("+") if t.strip()]
            parsed = []
            for term in terms:  # one fixed effect per term; 'C(a):C(b)' is one for each pair of values
                matches = [_ABSORB_TERM.match(part.strip()) for part in term.split(":")]
                if any(match is None for match in matches):
                    raise SpecificationError(
                        f"absorb terms must look like 'C(name)' or 'C(name):C(other)'; received {term!r} in "
                        f"absorb={self.absorb!r}."
                    )
                parsed.append(":".join(match.group("name") or match.group("bare") for match in matches))
            names = tuple(parsed)
        object.__setattr__(self, "absorb_names", names)
        if self.absorb_options is not None and not isinstance(self.absorb_options, dict):
            raise SpecificationError(f"absorb_options must be a dict; received {self.absorb_options!r}.")

    def __str__(self) -> str:
        text = self.formula
        if self.absorb:
            text += f" + Absorb[{self.absorb}]"
        return text

    # ------------------------------------------------------------------ design
    def build_matrix(self, data: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """Design the matrix for ``data``.

        Returns
        -------
        matrix : ndarray
            ``N x K`` float64 design.
        labels : list of str
            Column labels with the intercept called ``'1'``.
        """
        from formulaic import Formula, model_matrix

        unknown = self.variables - set(data.columns)
        if unknown:
            raise InvalidDataError(
                f"The formula {self.formula!r} names {sorted(unknown)}, which are not columns of the data "
                f"(columns: {sorted(map(str, data.columns))})."
            )
        _reject_text(data, self.numeric_variables, self.formula)
        try:
            matrix = model_matrix(Formula(self.formula, _ordering="none"), data, na_action="raise", output="pandas")
        except Exception as error:  # formulaic raises several types; surface them as one
            raise SpecificationError(f"Could not build the design for {self.formula!r}: {error}") from error
        labels = ["1" if str(c) in _INTERCEPT_NAMES else str(c) for c in matrix.columns]
        values = np.asarray(matrix, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        return values, labels

    @property
    def variables(self) -> set[str]:
        """Names of the data columns the formula uses (best effort, for validation)."""
        return self._variables(numeric_only=False)

    @property
    def numeric_variables(self) -> set[str]:
        """Names of the data columns the formula reads as numbers: all but those used only inside ``C(...)``."""
        return self._variables(numeric_only=True)

    def _variables(self, numeric_only: bool) -> set[str]:
        from formulaic import Formula

        try:
            formula = Formula(self.formula)
            variables = set()
            for term in formula.rhs.root if hasattr(formula, "rhs") else formula.root:
                for factor in term.factors:
                    if not (numeric_only and _is_categorical(factor)):
                        variables |= _factor_variables(factor)
        except Exception:
            return set()
        return variables - {"1", "0", "Intercept"}

    def build_ids(self, data: pd.DataFrame) -> np.ndarray | None:
        """Integer codes ``N x E`` of the fixed effects to absorb, or None."""
        if not self.absorb_names:
            return None
        columns = [name.split(":") for name in self.absorb_names]
        missing = [n for names in columns for n in names if n not in data.columns]
        if missing:
            raise InvalidDataError(f"absorb={self.absorb!r} names {missing}, which are not columns of the data.")
        codes = [data.groupby(names, sort=True, dropna=False).ngroup().to_numpy() for names in columns]
        return np.column_stack(codes).astype(np.int64)

    def derivative_matrix(self, data: pd.DataFrame, name: str) -> np.ndarray:
        """Derivatives of the design columns with respect to the data column ``name``.

        Uses the five-point central stencil with a step proportional to the column's scale; this is
        exact for the polynomial terms formulas usually hold and accurate to about 1e-12 otherwise.
        """
        if name not in data.columns:
            raise InvalidDataError(f"Cannot differentiate with respect to {name!r}: not a column of the data.")
        base = np.asarray(data[name], dtype=np.float64)
        scale = max(float(np.nanmax(np.abs(base))), 1e-8)
        h = 1e-3 * scale
        designs = []
        for k in (-2, -1, 1, 2):
            shifted = data.copy()
            shifted[name] = base + k * h
            designs.append(self.build_matrix(shifted)[0])
        derivative = (designs[0] - 8 * designs[1] + 8 * designs[2] - designs[3]) / (12 * h)
        moved = np.any(np.stack(designs) != designs[0], axis=(0, 1))
        derivative[:, ~moved] = 0.0  # columns that do not depend on the variable have a zero derivative
        return derivative


def _factor_variables(factor: Any) -> set[str]:
    """Variables referenced by one formulaic factor."""
    expr = str(getattr(factor, "expr", factor))
    try:
        import ast

        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return {expr}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    callables = {
        node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    return names - callables - {"np", "numpy"}


def _is_categorical(factor: Any) -> bool:
    """Whether a formulaic factor is ``C(...)``, whose column may hold text."""
    import ast

    try:
        tree = ast.parse(str(getattr(factor, "expr", factor)), mode="eval")
    except SyntaxError:
        return False
    call = tree.body
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "C"


def _reject_text(data: pd.DataFrame, names: set[str], formula: str) -> None:
    """Raise naming the first of the columns ``names`` that holds text where ``formula`` needs numbers.

    formulaic would quietly treat such a column as categorical (one dummy per distinct string), so
    ``'1 + prices'`` with prices stored as strings would not estimate a price coefficient at all.
    """
    for name in sorted(names & set(data.columns)):
        column = data[name]
        if is_numeric_dtype(column) or is_bool_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
            continue
        text = column.map(lambda value: isinstance(value, (str, bytes))).to_numpy(dtype=bool)
        if text.any():
            row = int(np.argmax(text))
            raise InvalidDataError(
                f"Column {name!r}, which the formula {formula!r} uses as a number, holds text ({int(text.sum())} "
                f"value(s), the first {column.iloc[row]!r} in row {row}). Convert it to numbers first, for example "
                f"data[{name!r}] = pd.to_numeric(data[{name!r}]); write C({name}) only if its values are categories."
            )


def absorb(
    matrix: np.ndarray, ids: np.ndarray | None, method: str | None = None, options: dict | None = None
) -> np.ndarray:
    """Residualize the columns of ``matrix`` on the fixed effects ``ids`` with pyhdfe (``method`` and ``options``:
    the formulation's ``absorb_method`` and ``absorb_options``)."""
    if ids is None or matrix.size == 0:
        return matrix
    import pyhdfe

    arguments = {} if method is None else {"residualize_method": method}
    if options:
        arguments["options"] = dict(options)
    algorithm = pyhdfe.create(ids, drop_singletons=False, **arguments)
    return algorithm.residualize(matrix)
