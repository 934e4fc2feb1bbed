"""``demandkit.options``: PyBLP's global settings are accepted (scripts that set them run unchanged); ``verbose``,
``digits``, ``dtype`` and ``finite_differences_epsilon`` change what demandkit does, and bad values or unknown
names are errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import simulate

import demandkit as dk
from demandkit.exceptions import SpecificationError


@pytest.fixture(autouse=True)
def defaults():
    dk.options.reset()
    yield
    dk.options.reset()


def _problem(**kwargs):
    products, agents = simulate(T=6, J=4, I=20, seed=3)
    products = products.drop(columns="nesting_ids")
    return dk.Problem((dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")), products, None, agents, **kwargs)


def test_every_pyblp_setting_can_be_set():
    pyblp = pytest.importorskip("pyblp")
    names = {name for name in dir(pyblp.options) if not name.startswith("_")}
    for name in names:
        setattr(dk.options, name, getattr(dk.options, name))  # the script line pyblp.options.<name> = ... runs
    assert names <= set(type(dk.options).__slots__)


def test_unknown_names_and_bad_values_are_errors():
    with pytest.raises(AttributeError, match="verbos"):
        dk.options.verbos = False
    with pytest.raises(SpecificationError, match="longdouble"):
        dk.options.dtype = np.longdouble
    with pytest.raises(SpecificationError, match="digits"):
        dk.options.digits = 0
    with pytest.raises(SpecificationError, match="finite_differences_epsilon"):
        dk.options.finite_differences_epsilon = -1.0


def test_dtype_is_the_default_of_new_problems():
    dk.options.dtype = np.float32
    assert _problem().dtype == torch.float32
    assert _problem(dtype=torch.float64).dtype == torch.float64  # the argument wins
    dk.options.reset()
    assert _problem().dtype == torch.float64


def test_digits_set_the_summary_precision():
    results = _problem().solve(sigma=[[0.5]], method="1s", optimization=dk.Optimization("return"))
    dk.options.digits = 3
    short = str(results)
    dk.options.digits = 8
    long = str(results)
    assert f"{results.beta[1, 0]:+.2E}" in short and f"{results.beta[1, 0]:+.7E}" in long


def test_verbose_shows_progress_unless_progress_is_given(capsys):
    problem = _problem()
    dk.options.verbose = True
    problem.solve(sigma=[[0.5]], method="1s")
    assert "GMM step 1" in capsys.readouterr().err
    problem.solve(sigma=[[0.5]], method="1s", progress=False)
    assert "GMM step 1" not in capsys.readouterr().err


def test_finite_differences_epsilon_is_the_step():
    problem = _problem()
    arguments = dict(sigma=[[0.5]], method="1s", optimization=dk.Optimization("return"), finite_differences=True)
    exact = problem.solve(sigma=[[0.5]], method="1s", optimization=dk.Optimization("return")).gradient
    dk.options.finite_differences_epsilon = 1e-4
    coarse = problem.solve(**arguments).gradient
    dk.options.finite_differences_epsilon = 1e-7
    fine = problem.solve(**arguments).gradient
    assert not np.array_equal(coarse, fine)
    np.testing.assert_allclose(fine, exact, rtol=1e-5, atol=1e-8)
