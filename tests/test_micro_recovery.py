"""Recovery with micro moments on synthetic data with known truth.

The design of ``benchmarks/micro_montecarlo.py`` (60 markets, a random coefficient on ``x`` and a price-income
interaction, equilibrium prices): the survey and second-choice samples are drawn at the truth with
``simulate_micro_data``, their statistics become the observed values, and the estimates must lie within sampling
error of the truth. The benchmark's 200 replications measure the coverage (0.96-0.97) and the precision gained.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from demandkit.exceptions import ConvergenceWarning

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def design():
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark imports its harness as a sibling module
    try:
        spec = importlib.util.spec_from_file_location("micro_montecarlo", BENCHMARKS / "micro_montecarlo.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize("seed", [7, 8])
def test_micro_moments_recover_sigma_and_pi(design, seed):
    with warnings.catch_warnings():  # a line search that cannot improve a flat objective; judged by the gradient
        warnings.simplefilter("ignore", ConvergenceWarning)
        outcome = design.replicate(seed)
    assert outcome["converged"]  # the optimizer's flag or a final gradient below 1e-4
    sigma, sigma_se, pi, pi_se = outcome["micro"]
    assert np.isfinite([sigma_se, pi_se]).all() and sigma_se > 0 and pi_se > 0
    assert abs(sigma - design.SIGMA_X) < 4 * sigma_se
    assert abs(pi - design.PI_P) < 4 * pi_se
    # the micro data make the estimates more precise than the shares alone
    assert sigma_se < outcome["aggregate"][1] and pi_se < outcome["aggregate"][3]
