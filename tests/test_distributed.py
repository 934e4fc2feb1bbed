"""Distributed estimation on torch.distributed: two processes (gloo, spawned here) give the estimates, standard errors
and log-likelihood of one process, for the integrated model and the mixed logit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import demandkit as dk
from demandkit.distributed import Shard, current_shard
from demandkit.exceptions import SpecificationError

SETTINGS = {"markets": 5, "periods": 12, "products": 3, "households": 40, "sigma": [[0.8]], "seed": 4}


def integrated_results(distributed: bool | None = None) -> dict:
    sim = dk.IntegratedSimulation.draw(**SETTINGS)
    problem = dk.IntegratedProblem(
        (dk.Formulation("1 + prices + ads"), dk.Formulation("0 + prices")),
        sim.product_data,
        sim.micro_data,
        integration=dk.Integration("halton", 30, {"seed": 0}),
        burn_in=2,
    )
    results = problem.solve(sigma=[[0.5]], gamma=0.5, distributed=distributed)
    names = ["theta", "theta_covariance", "beta", "beta_se", "loglikelihood", "delta", "scores", "fp_converged"]
    return {name: getattr(results, name) for name in names} | {"evaluations": results.evaluations}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {"integrated": integrated_results(), "mixed_logit": mixed_logit_results()}
        shard = current_shard(None, torch.device("cpu"))
        results["shard"] = (shard.rank, shard.world)
        with open(f"{out}.{rank}", "wb") as handle:
            pickle.dump(results, handle)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both estimators solved by two spawned gloo processes (one spawn for the module: start-up is seconds)."""
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(2, str(folder / "store"), str(folder / "out")), nprocs=2, join=True)
    ranks = [pickle.loads((folder / f"out.{rank}").read_bytes()) for rank in range(2)]
    assert [r["shard"] for r in ranks] == [(0, 2), (1, 2)]
    return ranks


def test_integrated_two_processes_equal_one(two_processes):
    single = integrated_results()
    ranks = [r["integrated"] for r in two_processes]
    for name in ("theta", "theta_covariance", "beta", "beta_se", "delta", "scores"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])  # every process returns the same results
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=1e-10, atol=1e-12, err_msg=name)
    assert ranks[0]["loglikelihood"] == pytest.approx(single["loglikelihood"], rel=1e-12)
    assert ranks[0]["fp_converged"].shape == single["fp_converged"].shape


def test_mixed_logit_two_processes_equal_one(two_processes):
    single = mixed_logit_results()
    ranks = [r["mixed_logit"] for r in two_processes]
    for name in ("theta", "se"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=1e-10, atol=1e-12, err_msg=name)
    assert ranks[0]["loglikelihood"] == pytest.approx(single["loglikelihood"], rel=1e-12)


def test_blocks_cover_the_items_in_order():
    sizes = np.array([5, 1, 1, 1, 9, 2, 2, 3])
    blocks = [Shard(rank, 3, torch.device("cpu")).block(sizes) for rank in range(3)]
    assert blocks[0][0] == 0 and blocks[-1][1] == sizes.size
    assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    assert all(start <= stop for start, stop in blocks)


def test_distributed_true_needs_a_process_group():
    with pytest.raises(SpecificationError, match="init_process_group"):
        current_shard(True, torch.device("cpu"))
    assert current_shard(None, torch.device("cpu")) is None


def mixed_logit_results(distributed: bool | None = None) -> dict:
    from demandkit.mixed_logit import simulate_panel

    coefficients = {"price": ("normal", -1.0, 0.6), "quality": ("lognormal", 0.0, 0.3)}
    panel = simulate_panel(150, 5, 3, coefficients, outside=True, availability=0.8, seed=3)
    model = dk.MixedLogit(
        dk.Formulation("0 + price + quality"),
        panel.data,
        choice="chosen",
        situation_ids="situation",
        individual_ids="individual",
        alternative_ids="alternative",
        random={"price": "normal", "quality": "lognormal"},
        outside=True,
        integration=dk.Integration("halton", 40, {"seed": 0}),
    )
    results = model.fit(progress=False, distributed=distributed)
    return {"theta": results.theta, "se": results.se.to_numpy(), "loglikelihood": results.loglikelihood}
