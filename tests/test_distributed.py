"""Distributed estimation on torch.distributed: two processes (gloo, started with torchrun) give the estimates,
standard errors and log-likelihood (or GMM objective) of one process, for the integrated model, the mixed logit
and a BLP problem with a supply side and a micro moment."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _distributed_cases import blp_results, integrated_results, mixed_logit_results

from demandkit.distributed import Shard, current_shard
from demandkit.exceptions import SpecificationError


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both estimators solved by two gloo processes started as the README says, with torchrun (once per module)."""
    folder = tmp_path_factory.mktemp("distributed")
    job = Path(__file__).resolve().parent / "_distributed_job.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*command, str(job), str(folder / "out")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
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


def test_blp_with_supply_and_micro_moments_two_processes_equal_one(two_processes):
    single = blp_results(distributed=False)
    ranks = [r["blp"] for r in two_processes]
    for name in ("theta", "sigma_se", "pi_se", "beta", "beta_se", "gamma", "gamma_se", "xi", "omega", "W"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=1e-8, atol=1e-10, err_msg=name)
    assert ranks[0]["objective"] == pytest.approx(single["objective"], rel=1e-9)


def test_blp_with_absorbed_fixed_effects_two_processes_equal_one(two_processes):
    """Firm and market fixed effects (X1) and firm fixed effects (X3): groups span both ranks' markets."""
    single = blp_results(distributed=False, absorbed=True)
    ranks = [r["blp_absorbed"] for r in two_processes]
    for name in ("theta", "sigma_se", "pi_se", "beta", "beta_se", "gamma", "gamma_se", "xi", "omega", "delta", "W"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=1e-8, atol=1e-10, err_msg=name)
    assert ranks[0]["objective"] == pytest.approx(single["objective"], rel=1e-9)


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
