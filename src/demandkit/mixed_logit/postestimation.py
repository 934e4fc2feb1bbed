"""Post-estimation on any long table: choice probabilities, conditional (posterior) means, elasticities.

Each function rebuilds the panel of ``data`` with the estimated model's specification, draws for its individuals
from the same integration configuration and seed (so the estimation data get the estimation draws), and
evaluates the kernels chunk by chunk. Outputs are pandas objects indexed by the user's own ids or rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from ..exceptions import InvalidDataError
from . import kernels
from .chunks import FullChunk
from .data import Panel, build_panel
from .draws import DrawSource
from .engine import Engine
from .specification import STATE_VARIABLE, ModelSpecification


def engine_for(
    specification: ModelSpecification,
    data: pd.DataFrame,
    device: torch.device,
    require_choice: bool,
    chunk_size: int | None = None,
) -> Engine:
    """An :class:`Engine` on the panel of ``data`` (no burn-in when choices are not required)."""
    panel = build_panel(
        data,
        specification.formulation,
        specification.columns,
        specification.outside,
        specification.state_dependence,
        require_choice=require_choice,
    )
    if tuple(panel.labels) != specification.covariates:
        raise InvalidDataError(
            f"The formulation builds the covariates {panel.labels} on these data, but the model was estimated with "
            f"{list(specification.covariates)} (categorical levels differ?)."
        )
    space = specification.space()
    draws = DrawSource(specification.integration, space.n_random)
    return Engine(panel, space, draws, device, torch.float64, specification.utility, chunk_size)


def _chunks(engine: Engine, theta: np.ndarray) -> Iterator[tuple[FullChunk, torch.Tensor, torch.Tensor]]:
    t = torch.tensor(theta, dtype=engine.dtype, device=engine.device)
    for chunk, base in engine.chunks("autograd"):
        yield chunk, base, t


def probabilities(engine: Engine, theta: np.ndarray) -> np.ndarray:
    """Simulated probability of every panel row, ``[N]`` in panel order."""
    panel = engine.panel
    out = np.zeros(panel.n_rows)
    with torch.no_grad():
        for chunk, base, t in _chunks(engine, theta):
            p, _ = kernels.probabilities(t, engine.map, chunk, base, engine.weights, engine.utility, engine.names)
            rows = chunk.rows
            real = rows >= 0
            out[rows[real]] = p.cpu().numpy()[real]
    return out


def predict(engine: Engine, theta: np.ndarray, data: pd.DataFrame) -> pd.Series:
    """Probabilities aligned with the rows of ``data`` (index kept)."""
    panel: Panel = engine.panel
    values = probabilities(engine, theta)
    out = np.full(len(data), np.nan)
    real = panel.row >= 0
    out[panel.row[real]] = values[real]
    return pd.Series(out, index=data.index, name="probability")


def outside_probabilities(engine: Engine, theta: np.ndarray) -> pd.Series:
    """Probability of the outside alternative in each situation, indexed by situation id."""
    panel = engine.panel
    values = probabilities(engine, theta)
    rows = panel.outside
    return pd.Series(values[rows], index=pd.Index(panel.situation_ids[panel.situation[rows]], name="situation"))


def conditional_means(
    engine: Engine, theta: np.ndarray, coefficients: tuple[str, ...], index_name: str
) -> pd.DataFrame:
    """Posterior means :math:`\\sum_r \\omega_{ir} \\beta_{ir}` of every coefficient, one row per individual."""
    K = len(coefficients)
    values = np.zeros((engine.panel.n_individuals, K))
    order = engine.space.order  # internal position -> user coefficient
    with torch.no_grad():
        for chunk, weights, B in engine.posterior(theta):
            means = torch.einsum("nr,nkr->nk", weights, B).cpu().numpy()
            values[chunk.individuals.cpu().numpy()[:, None], order[None, :]] = means
    index = pd.Index(engine.panel.individual_ids, name=index_name)
    return pd.DataFrame(values, index=index, columns=list(coefficients))


def elasticities(engine: Engine, theta: np.ndarray, variable: str) -> pd.DataFrame:
    """Elasticities of each row's probability with respect to ``variable`` of each alternative of its situation.

    Rows are (situation, alternative) of the data; columns are alternatives; an entry is NaN where the column's
    alternative is not in the row's situation.
    """
    panel = engine.panel
    if variable == STATE_VARIABLE or variable not in engine.names["covariates"]:
        raise InvalidDataError(f"{variable!r} is not a covariate of the model; covariates are {list(panel.labels)}.")
    column = engine.names["covariates"].index(variable)
    A = len(panel.alternative_ids)
    out = np.full((panel.n_rows, A), np.nan)
    with torch.no_grad():
        for chunk, base, t in _chunks(engine, theta):
            _, per_draw = kernels.probabilities(
                t, engine.map, chunk, base, engine.weights, engine.utility, engine.names
            )
            derivatives = kernels.utility_derivatives(t, engine.map, chunk, base, column, engine.utility, engine.names)
            matrices = kernels.elasticity_matrices(per_draw, derivatives, engine.weights, chunk.X[..., column])
            matrices = matrices.cpu().numpy()  # [n, T, J, J]
            rows = chunk.rows  # [n, T, J]
            alternatives = np.where(rows >= 0, panel.alternative[np.maximum(rows, 0)], -1)
            pairs = (rows >= 0)[..., :, None] & (alternatives >= 0)[..., None, :]
            i, t_, j, slot = np.nonzero(pairs)
            out[rows[i, t_, j], alternatives[i, t_, slot]] = matrices[i, t_, j, slot]
    real = ~panel.outside
    index = pd.MultiIndex.from_arrays(
        [panel.situation_ids[panel.situation[real]], panel.alternative_ids[np.maximum(panel.alternative[real], 0)]],
        names=["situation", "alternative"],
    )
    return pd.DataFrame(out[real], index=index, columns=pd.Index(panel.alternative_ids, name="with respect to"))
