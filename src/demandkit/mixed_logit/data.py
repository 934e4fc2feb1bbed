"""Validation of long choice data and its layout as panels.

A user's table has one row per (choice situation, alternative). :func:`build_panel` checks it and returns a
:class:`Panel`: the rows that enter the likelihood in *panel order* (individual, then the individual's
situations in the order they first appear in the table, then the situation's alternatives in table order),
with the outside alternative (utility zero) appended as a last row per situation when asked for, and with
the state-dependence indicator :math:`1\\{y_{i,t-1} = j\\}` built from the panel itself.

Individuals are ordered by their sorted ids; that order also indexes their simulation draws. Unbalanced
panels and alternatives missing from some situations need nothing special: padding happens later, per
chunk of individuals (:mod:`demandkit.mixed_logit.chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..configurations.formulation import Formulation
from ..exceptions import InvalidDataError
from ..layout.validation import label
from .specification import STATE_VARIABLE, Columns, StateDependence


@dataclass(frozen=True)
class Panel:
    """Validated rows in panel order.

    Attributes
    ----------
    X : ndarray
        ``[N, K]`` covariates (the lagged-choice indicator last under state dependence); zero on outside rows.
    labels : list of str
        The ``K`` covariate names.
    row : ndarray
        ``[N]`` position of each row in the user's table, -1 on outside rows.
    individual, situation, period, slot : ndarray
        ``[N]`` individual index, situation index, position of the situation among the individual's
        likelihood situations and position of the alternative within the situation.
    alternative : ndarray
        ``[N]`` alternative code (into ``alternative_ids``), -1 for the outside alternative.
    chosen : ndarray
        ``[N]`` booleans (all False when the table has no choices).
    outside : ndarray
        ``[N]`` whether the row is the outside alternative.
    individual_ids, situation_ids, alternative_ids : ndarray
        The ids behind the codes (situations in panel order).
    n_situations : ndarray
        ``[I]`` likelihood situations per individual.
    n_alternatives : ndarray
        ``[I]`` the largest situation (outside alternative included) of each individual.
    """

    X: np.ndarray
    labels: list[str]
    row: np.ndarray
    individual: np.ndarray
    situation: np.ndarray
    period: np.ndarray
    slot: np.ndarray
    alternative: np.ndarray
    chosen: np.ndarray
    outside: np.ndarray
    individual_ids: np.ndarray
    situation_ids: np.ndarray
    alternative_ids: np.ndarray
    n_situations: np.ndarray
    n_alternatives: np.ndarray

    @property
    def n_individuals(self) -> int:
        return len(self.individual_ids)

    @property
    def n_rows(self) -> int:
        return len(self.row)

    @property
    def n_choice_situations(self) -> int:
        return len(self.situation_ids)


def _check_columns(data: pd.DataFrame, columns: Columns, require_choice: bool) -> None:
    names = [columns.situation_ids, columns.individual_ids, columns.alternative_ids]
    if require_choice:
        names.append(columns.choice)
    missing = [name for name in names if name not in data.columns]
    if missing:
        raise InvalidDataError(f"The data have no column(s) {missing}; columns are {sorted(map(str, data.columns))}.")
    for name in names:
        if data[name].isna().any():
            first = int(np.flatnonzero(data[name].isna().to_numpy())[0])
            raise InvalidDataError(f"Column {name!r} has missing values (first at row {first}).")


def _covariates(data: pd.DataFrame, formulation: Formulation, situations: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The design matrix, after checking that the columns it uses have no missing or infinite values."""
    for name in sorted(formulation.variables & set(data.columns)):
        values = data[name]
        bad = values.isna().to_numpy()
        if values.dtype.kind in "fc":
            bad = bad | ~np.isfinite(values.to_numpy(dtype=np.complex128 if values.dtype.kind == "c" else np.float64))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InvalidDataError(
                f"Covariate column {name!r} has {int(bad.sum())} missing or infinite value(s); the first is in "
                f"choice situation {label(situations[first])} (row {first}). Drop or fill those rows."
            )
    X, labels = formulation.build_matrix(data)
    finite = np.isfinite(X)
    if not finite.all():
        k = int(np.flatnonzero(~finite.all(axis=0))[0])
        first = int(np.flatnonzero(~finite[:, k])[0])
        raise InvalidDataError(
            f"The covariate {labels[k]!r} built by {formulation.formula!r} is not finite in choice situation "
            f"{label(situations[first])} (row {first})."
        )
    return X, labels


def _choices(data: pd.DataFrame, name: str) -> np.ndarray:
    values = data[name].to_numpy()
    if values.dtype == bool:
        return values
    try:
        numeric = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidDataError(f"The choice column {name!r} must hold 0/1 or booleans.") from error
    if not np.isin(numeric, (0.0, 1.0)).all():
        bad = numeric[~np.isin(numeric, (0.0, 1.0))][0]
        raise InvalidDataError(f"The choice column {name!r} must hold 0/1 or booleans; found {label(bad)}.")
    return numeric == 1.0


def build_panel(
    data: pd.DataFrame,
    formulation: Formulation,
    columns: Columns,
    outside: bool = False,
    state_dependence: StateDependence | None = None,
    require_choice: bool = True,
) -> Panel:
    """Validate a long table and lay it out as a :class:`Panel`.

    Parameters
    ----------
    data : DataFrame
        One row per (choice situation, alternative).
    formulation : Formulation
        Covariates of the alternatives.
    columns : Columns
        Names of the choice and id columns.
    outside : bool
        Whether each situation also has an outside alternative with utility zero (chosen when no row is).
    state_dependence : StateDependence, optional
        Adds the lagged-choice indicator as the last covariate and drops each individual's first
        ``burn_in`` situations from the likelihood rows.
    require_choice : bool
        Whether the choice column must be present and valid (estimation). Prediction needs it only
        under state dependence, to form the lagged choice, and then uses no burn-in.

    Raises
    ------
    InvalidDataError
        Missing columns or ids, non-binary choices, situations with no or several chosen alternatives,
        situations split across individuals, repeated alternatives in a situation, missing or infinite
        covariates, individuals with no situation left after the burn-in.
    """
    if not isinstance(data, pd.DataFrame):
        raise InvalidDataError(f"data must be a pandas DataFrame in long format; received {type(data).__name__}.")
    if len(data) == 0:
        raise InvalidDataError("data has no rows.")
    data = data.reset_index(drop=True)
    has_choice = columns.choice is not None and columns.choice in data.columns
    needs_choice = require_choice or state_dependence is not None
    _check_columns(data, columns, needs_choice)
    situation_raw = data[columns.situation_ids].to_numpy()
    X, labels = _covariates(data, formulation, situation_raw)
    chosen = _choices(data, columns.choice) if (has_choice or needs_choice) else np.zeros(len(data), dtype=bool)

    situation, situation_ids = pd.factorize(data[columns.situation_ids], sort=False)
    individual, individual_ids = pd.factorize(data[columns.individual_ids], sort=True)
    alternative, alternative_ids = pd.factorize(data[columns.alternative_ids], sort=True)
    situation_ids, individual_ids = np.asarray(situation_ids), np.asarray(individual_ids)
    alternative_ids = np.asarray(alternative_ids)
    S = len(situation_ids)

    # one individual per situation
    owners = np.full(S, -1, dtype=np.int64)
    owners[situation] = individual
    split = owners[situation] != individual
    if split.any():
        s = situation[np.flatnonzero(split)[0]]
        who = sorted({label(individual_ids[i]) for i in np.unique(individual[situation == s])})
        raise InvalidDataError(
            f"Choice situation {label(situation_ids[s])} is split across individuals {', '.join(who)}; each "
            f"situation must belong to one individual (column {columns.individual_ids!r})."
        )
    # no repeated alternative within a situation
    pairs = situation.astype(np.int64) * len(alternative_ids) + alternative
    unique_pairs, counts = np.unique(pairs, return_counts=True)
    if (counts > 1).any():
        s, a = divmod(int(unique_pairs[np.argmax(counts > 1)]), len(alternative_ids))
        raise InvalidDataError(
            f"Alternative {label(alternative_ids[a])} appears more than once in choice situation "
            f"{label(situation_ids[s])}."
        )
    # chosen alternatives per situation
    n_chosen = np.bincount(situation, weights=chosen, minlength=S).astype(np.int64)
    if needs_choice or has_choice:
        several = np.flatnonzero(n_chosen > 1)
        if several.size:
            raise InvalidDataError(
                f"Choice situation {label(situation_ids[several[0]])} has {n_chosen[several[0]]} chosen alternatives "
                f"in column {columns.choice!r}; exactly one is allowed"
                + (" (or none, when the outside alternative is chosen)." if outside else ".")
            )
        none = np.flatnonzero(n_chosen == 0)
        if none.size and not outside and require_choice:
            raise InvalidDataError(
                f"Choice situation {label(situation_ids[none[0]])} has no chosen alternative in column "
                f"{columns.choice!r} ({none.size} situation(s) in all); mark one row per situation, or pass "
                "outside=True if no row chosen means the outside alternative was chosen."
            )

    # periods: situations of an individual in order of first appearance (situation codes are that order)
    situation_owner = owners
    order = np.lexsort((np.arange(S), situation_owner))
    per_individual = np.bincount(situation_owner, minlength=len(individual_ids))
    starts = np.concatenate([[0], np.cumsum(per_individual)[:-1]])
    period = np.empty(S, dtype=np.int64)
    period[order] = np.arange(S) - np.repeat(starts, per_individual)

    if state_dependence is not None:
        # previous situation's chosen alternative code, -1 when none (first situation, outside chosen)
        chosen_code = np.full(S, -1, dtype=np.int64)
        chosen_code[situation[chosen]] = alternative[chosen]
        previous = np.full(S, -1, dtype=np.int64)
        same_owner = situation_owner[order][1:] == situation_owner[order][:-1]
        previous[order[1:][same_owner]] = chosen_code[order[:-1][same_owner]]
        lagged = (alternative == previous[situation]).astype(np.float64)
        X = np.column_stack([X, lagged])
        labels = [*labels, STATE_VARIABLE]

    burn_in = state_dependence.burn_in if (state_dependence is not None and require_choice) else 0
    if burn_in:
        short = np.flatnonzero(per_individual <= burn_in)
        if short.size:
            i = short[0]
            raise InvalidDataError(
                f"Individual {label(individual_ids[i])} has {per_individual[i]} choice situation(s), but burn_in="
                f"{burn_in} uses that many to form the state and leaves none for the likelihood ({short.size} "
                "individual(s) in all); drop them or lower burn_in."
            )
    keep_situation = period >= burn_in
    period = period - burn_in

    # rows that enter, then the outside rows
    keep = keep_situation[situation]
    rows = np.flatnonzero(keep)
    kept_situations = np.flatnonzero(keep_situation)
    row = np.concatenate([rows, np.full(kept_situations.size if outside else 0, -1)])
    sit = np.concatenate([situation[rows], kept_situations if outside else np.empty(0, np.int64)]).astype(np.int64)
    alt = np.concatenate([alternative[rows], np.full(kept_situations.size if outside else 0, -1)]).astype(np.int64)
    chosen_rows = np.concatenate([chosen[rows], (n_chosen[kept_situations] == 0) if outside else np.empty(0, bool)])
    is_outside = np.concatenate([np.zeros(rows.size, bool), np.ones(kept_situations.size if outside else 0, bool)])
    X_rows = np.concatenate([X[rows], np.zeros((kept_situations.size if outside else 0, X.shape[1]))])
    ind = situation_owner[sit]
    per = period[sit]

    # panel order: individual, period, table order (outside rows last within their situation)
    position = np.concatenate([rows, np.full(kept_situations.size if outside else 0, len(data))])
    order = np.lexsort((position, per, ind))
    sit, ind, per = sit[order], ind[order], per[order]
    # re-code situations in panel order
    new_code = np.full(S, -1, dtype=np.int64)
    first = np.concatenate([[True], sit[1:] != sit[:-1]])
    new_code[sit[first]] = np.arange(int(first.sum()))
    situation_in_panel = new_code[sit]
    starts_rows = np.flatnonzero(first)
    sizes = np.diff(np.concatenate([starts_rows, [len(sit)]]))
    slot = np.arange(len(sit)) - np.repeat(starts_rows, sizes)
    n_individuals = len(individual_ids)
    n_situations = np.bincount(ind[first], minlength=n_individuals)
    n_alternatives = np.zeros(n_individuals, dtype=np.int64)
    np.maximum.at(n_alternatives, ind[first], sizes)
    return Panel(
        X=np.ascontiguousarray(X_rows[order]),
        labels=list(labels),
        row=row[order],
        individual=ind,
        situation=situation_in_panel,
        period=per,
        slot=slot,
        alternative=alt[order],
        chosen=chosen_rows[order],
        outside=is_outside[order],
        individual_ids=individual_ids,
        situation_ids=situation_ids[sit[first]],
        alternative_ids=alternative_ids,
        n_situations=n_situations,
        n_alternatives=n_alternatives,
    )
