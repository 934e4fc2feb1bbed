"""PyBLP's top-level helpers: ``build_integration``, ``build_matrix``, ``data_to_dict``, ``read_pickle``,
``save_pickle`` and ``parallel``, so that scripts calling them run unchanged."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..configurations.formulation import Formulation, absorb
from ..configurations.integration import Integration
from ..layout.validation import as_frame


def build_integration(integration: Integration, dimensions: int) -> np.recarray:
    """Nodes and weights of one market, as a record array for building ``agent_data`` by hand.

    Useful when agents should integrate over fewer dimensions than :math:`K_2` (columns of ``sigma`` that are zero)
    or when nodes are to be turned into demographics. Call it once per market for several markets.

    Parameters
    ----------
    integration : Integration
        How to build the nodes and weights.
    dimensions : int
        The number of columns of nodes (with an ``Integration`` passed to ``Problem``, this is :math:`K_2`).

    Returns
    -------
    recarray
        ``I`` rows with fields ``weights`` (``I x 1``, summing to one) and ``nodes`` (``I x dimensions``), the
        nodes and weights of :meth:`Integration.build`.

    Examples
    --------
    >>> import demandkit as dk
    >>> agents = dk.build_integration(dk.Integration("product", 3), 2)
    >>> agents.nodes.shape, agents.weights.shape
    ((9, 2), (9, 1))
    """
    nodes, weights = integration.build(dimensions)
    dtype = [("weights", np.float64, (1,)), ("nodes", np.float64, (nodes.shape[1],))]
    records = np.empty(weights.size, dtype=dtype)
    records["weights"] = weights.reshape(-1, 1)
    records["nodes"] = nodes
    return records.view(np.recarray)


def build_matrix(formulation: Formulation, data: Any) -> np.ndarray:
    """The matrix a formulation designs from ``data``, with the fixed effects in its ``absorb`` absorbed.

    Parameters
    ----------
    formulation : Formulation
        The formula (variables are fields of ``data``) and, optionally, fixed effects to absorb.
    data : DataFrame, mapping of columns or structured array
        The data.

    Returns
    -------
    ndarray
        The ``N x K`` matrix (columns in the order the formula gives, the intercept first).
    """
    frame = as_frame(data, "data")
    matrix, _ = formulation.build_matrix(frame)
    return absorb(matrix, formulation.build_ids(frame), formulation.absorb_method, formulation.absorb_options)


def data_to_dict(data: Any, ignore_empty: bool = True) -> dict[str, np.ndarray]:
    """A dictionary of one-dimensional arrays from a record array (PyBLP's), a mapping or a DataFrame.

    A field holding a matrix with ``K > 1`` columns (such as ``demand_instruments``) becomes fields ``name0`` to
    ``name{K-1}``; a one-column field keeps its name; so the result can go straight into a
    :class:`pandas.DataFrame`.

    Parameters
    ----------
    data : recarray, structured array, mapping or DataFrame
        The data.
    ignore_empty : bool
        Leave out fields with no columns (the default); otherwise each becomes an empty array under its name.

    Returns
    -------
    dict
        Field names to one-dimensional arrays.
    """
    if isinstance(data, pd.DataFrame):
        fields: Mapping[str, Any] = {str(name): data[name].to_numpy() for name in data.columns}
    elif isinstance(data, np.ndarray) and data.dtype.names is not None:
        fields = {name: data[name] for name in data.dtype.names}
    elif isinstance(data, Mapping):
        fields = data
    else:
        raise TypeError("data must be a record array, a structured array, a mapping or a DataFrame.")
    result: dict[str, np.ndarray] = {}
    for name, value in fields.items():
        array = np.asarray(value)
        if array.ndim < 2 or array.shape[1] == 1:
            result[str(name)] = array.reshape(array.shape[0]) if array.ndim else array
        elif array.shape[1] == 0:
            if not ignore_empty:
                result[str(name)] = np.array([], dtype=array.dtype)
        else:
            result.update({f"{name}{k}": array[:, k] for k in range(array.shape[1])})
    return result


def read_pickle(path: str | Path) -> object:
    """Load an object that :func:`save_pickle` (or ``pickle.dump``) wrote; only open files you trust (pickle runs
    code)."""
    with open(path, "rb") as handle:
        return pickle.load(handle)


def save_pickle(x: object, path: str | Path) -> None:
    """Write ``x`` to ``path`` with :mod:`pickle` (results, problems, simulations and configurations all pickle)."""
    with open(path, "wb") as handle:
        pickle.dump(x, handle)


@contextmanager
def parallel(processes: int, use_pathos: bool = False) -> Iterator[None]:
    """A ``with`` block in which torch computes with ``processes`` threads (PyBLP's context manager).

    PyBLP loops over markets and this context spreads its market-by-market work over a pool of Python processes.
    demandkit does not loop: every market is computed at once as batched tensors, which torch already spreads over
    its threads (and a GPU, with ``device='cuda'``). So no processes are started here; inside the block torch's
    intra-op thread count is ``processes`` (restored afterwards), which is how to give estimation more or fewer
    cores. Markets can also be split across processes or machines with ``torch.distributed``
    (:mod:`demandkit.distributed`).

    Parameters
    ----------
    processes : int
        The number of threads torch may use inside the block (a positive integer).
    use_pathos : bool
        Accepted for PyBLP's signature and ignored (no objects are passed between processes).

    Examples
    --------
    >>> import demandkit as dk
    >>> with dk.parallel(2):
    ...     pass
    """
    del use_pathos  # no process pool: nothing is pickled between processes
    if isinstance(processes, bool) or not isinstance(processes, int | np.integer) or processes < 1:
        raise ValueError(f"processes must be a positive integer; received {processes!r}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(processes))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
