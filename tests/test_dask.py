"""Multi-start and Monte Carlo on a Dask cluster (issue 17): ``executor=client.get_executor()``.

A :class:`distributed.LocalCluster` of two worker processes with one thread each runs the same jobs as the default
local process pool: a small BLP problem and a small mixed logit with ``starts=3``, and a small Monte Carlo study. Every
start and replication fixes its starting values and seed before it is sent, and both pools' workers run torch with
one thread (Dask's nanny sets ``OMP_NUM_THREADS=1``), so the results agree to rounding: theta to 1e-10.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import distributed
import numpy as np
import pandas as pd
import pytest
from _synthetic import simulate
from test_multistart import lognormal_model
from test_simulation import monte_carlo_design

import demandkit as dk
from demandkit import montecarlo
from demandkit.exceptions import SpecificationError
from demandkit.mixed_logit import MixedLogit

#: the multi-start options of both estimators: three fixed starts, no distinct-optima warning (rtol=1)
OPTIONS = {"seed": 3, "rtol": 1.0}
BLP = {"sigma": [[0.5]], "pi": [[0.1]], "method": "1s", "check_optimality": "gradient"}
MONTE_CARLO = {"solve_kwargs": {"method": "1s", "beta": [np.nan, -1.0, np.nan]}, "replications": 3, "seed": 5}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes with one thread each, closed (workers, scheduler and client) after the module's tests."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()
    assert cluster.status.name == "closed" and not cluster.workers


@pytest.fixture(scope="module")
def problem() -> dk.Problem:
    products, agents = simulate(T=20, J=6, I=100, pi_x=0.5)
    return dk.Problem(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")],
        products.drop(columns="nesting_ids"),
        dk.Formulation("0 + income"),
        agents,
    )


@pytest.fixture(scope="module")
def model() -> MixedLogit:
    return lognormal_model(200, 4, 50, seed=1)


def _agree(dask: Any, local: Any, value: str) -> None:
    """Same winner, same theta (to 1e-10), same value at every start."""
    np.testing.assert_allclose(dask.theta, local.theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dask.starts[value], local.starts[value], rtol=1e-12)
    assert list(dask.starts["best"]) == list(local.starts["best"]) and dask.starts["converged"].all()
    for ours, theirs in zip(dask.starts["estimate"], local.starts["estimate"], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)


def test_blp_starts_on_dask_equal_the_local_pool(client: Any, problem: dk.Problem) -> None:
    with distributed.get_task_stream(client) as stream:  # the starts ran on the cluster's workers
        dask = problem.solve(starts=3, starts_options=OPTIONS, executor=client.get_executor(), **BLP)
    assert len(stream.data) == 3
    local = problem.solve(starts=3, starts_options=OPTIONS, **BLP)
    assert dask.problem is problem and len(dask.starts) == 3
    _agree(dask, local, "objective")
    np.testing.assert_allclose(dask.sigma_se, local.sigma_se, rtol=1e-8)


def test_mixed_logit_starts_on_dask_equal_the_local_pool(client: Any, model: MixedLogit) -> None:
    with distributed.get_task_stream(client) as stream:
        dask = model.fit(starts=3, starts_options=OPTIONS, executor=client.get_executor(), progress=False)
    assert len(stream.data) == 3
    local = model.fit(starts=3, starts_options=OPTIONS, progress=False)
    assert dask.model is model and len(dask.starts) == 3
    _agree(dask, local, "loglikelihood")
    np.testing.assert_allclose(dask.se, local.se, rtol=1e-8)


def test_monte_carlo_on_dask_equals_the_local_pool(client: Any) -> None:
    with distributed.get_task_stream(client) as stream:
        dask = montecarlo.run(monte_carlo_design, executor=client.get_executor(), progress=False, **MONTE_CARLO)
    assert len(stream.data) == MONTE_CARLO["replications"]
    local = montecarlo.run(monte_carlo_design, processes=2, progress=False, **MONTE_CARLO)
    assert not dask.attrs["failures"] and (dask["replications"] == 3).all()
    pd.testing.assert_frame_equal(dask, local, check_exact=False, rtol=1e-10, atol=1e-10)
    columns = ["replication", "seed", "parameter", "name", "estimate", "se"]
    ours, theirs = dask.attrs["replications"][columns], local.attrs["replications"][columns]
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=0, atol=1e-10)
    with pytest.raises(SpecificationError, match="processes or executor, not both"):
        montecarlo.run(monte_carlo_design, processes=2, executor=client.get_executor(), **MONTE_CARLO)
    with pytest.raises(SpecificationError, match="executor must be a concurrent.futures.Executor"):
        montecarlo.run(monte_carlo_design, executor=client, **MONTE_CARLO)
