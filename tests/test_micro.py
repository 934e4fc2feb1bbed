"""Micro moments against PyBLP 1.3.0 on the Nevo data, and their validation.

At the same parameters (``Optimization('return')``) both libraries evaluate the micro values, the objective, its
gradient, the updated weighting matrix and the standard errors: they agree to 1e-8 (measured: 1e-10 to 1e-14).
The configurations cover a survey with the outside option and conditional means (ratios of parts), a dataset of
inside purchasers in a subset of markets with a covariance (a function of three parts), a simple average (a single
part), second choices with the first choice removed and with a group of products removed (firms), and given sample
covariances. Estimates after a full two-step solve agree to 1e-6 (two optimizer runs). The objective's gradient
also matches central finite differences, and ``compute_gradient`` may be left to autograd.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import demandkit as dk
from demandkit.exceptions import SpecificationError

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

EXACT = 1e-8
SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])
MARKETS = 20


def ratio(v):
    return v[0] / v[1]


def ratio_gradient(v):
    return [1 / v[1], -v[0] / v[1] ** 2]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    keep = products["market_ids"].unique()[:MARKETS]
    products = products[products["market_ids"].isin(keep)].reset_index(drop=True)
    agents = agents[agents["market_ids"].isin(keep)].reset_index(drop=True)
    # two product_ids columns: the brand (absorbed) and the firm (the group removed with a second choice)
    products = products.rename(columns={"product_ids": "product_ids0"}).assign(
        product_ids1="firm" + products["firm_ids"].astype(str)
    )
    return products, agents


def build(lib, data, kind: str = "first"):
    """The same problem and micro moments in either library."""
    products, agents = data
    formulations = (
        lib.Formulation("0 + prices", absorb="C(product_ids0)"),
        lib.Formulation("1 + prices + sugar + mushy"),
    )
    problem = lib.Problem(formulations, products, lib.Formulation("0 + income + income_squared + age + child"), agents)
    markets = products["market_ids"].unique()
    if kind == "first":
        survey = lib.MicroDataset("survey", 5000, lambda t, p, a: np.ones((a.size, 1 + p.size)))
        buyers = lib.MicroDataset("buyers", 800, lambda t, p, a: np.ones((a.size, p.size)), market_ids=markets[:7])
        income_inside = lib.MicroPart(
            "E[income 1{j>0}]", survey, lambda t, p, a: np.outer(a.demographics[:, 0], np.r_[0, np.ones(p.size)])
        )
        inside = lib.MicroPart(
            "E[1{j>0}]", survey, lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)])
        )
        age_sugar = lib.MicroPart("E[age sugar]", buyers, lambda t, p, a: np.outer(a.demographics[:, 2], p.X2[:, 2]))
        sugar = lib.MicroPart("E[sugar]", buyers, lambda t, p, a: np.outer(np.ones(a.size), p.X2[:, 2]))
        age = lib.MicroPart("E[age]", buyers, lambda t, p, a: np.outer(a.demographics[:, 2], np.ones(p.size)))
        moments = [
            lib.MicroMoment("E[income | inside]", 0.5, [income_inside, inside], ratio, ratio_gradient),
            lib.MicroMoment("E[inside]", 0.45, inside),
            lib.MicroMoment(
                "Cov(age, sugar)",
                0.1,
                [age_sugar, age, sugar],
                lambda v: v[0] - v[1] * v[2],
                lambda v: [1, -v[2], -v[1]],
            ),
        ]
        return problem, moments
    index = 1 if kind == "groups" else None
    both = lib.MicroDataset(
        "second choices",
        2000,
        lambda t, p, a: np.ones((a.size, 1 + p.size, 1 + p.size)),
        eliminated_product_ids_index=index,
        market_ids=markets[:10],
    )

    def broadcast(matrix, a, p):
        return np.broadcast_to(matrix, (a.size, 1 + p.size, 1 + p.size))

    mushy = lib.MicroPart(
        "mushy both",
        both,
        lambda t, p, a: broadcast(np.outer(np.r_[0, p.X2[:, 3]], np.r_[0, p.X2[:, 3]]), a, p),
    )
    to_outside = lib.MicroPart(
        "inside then outside",
        both,
        lambda t, p, a: broadcast(np.outer(np.r_[0, np.ones(p.size)], np.r_[1, np.zeros(p.size)]), a, p),
    )
    inside_first = lib.MicroPart(
        "inside first", both, lambda t, p, a: broadcast(np.r_[0, np.ones(p.size)][:, None] * np.ones(1 + p.size), a, p)
    )
    moments = [
        lib.MicroMoment("P(mushy, mushy | inside)", 0.1, [mushy, inside_first], ratio, ratio_gradient),
        lib.MicroMoment("P(k = 0 | j > 0)", 0.3, [to_outside, inside_first], ratio, ratio_gradient),
    ]
    if kind == "second":  # values that differ across agents: the dataset is kept per agent, not summed over them
        income_first = lib.MicroPart(
            "income, inside first",
            both,
            lambda t, p, a: a.demographics[:, 0][:, None, None] * broadcast(np.r_[0, np.ones(p.size)][:, None], a, p),
        )
        moments.append(lib.MicroMoment("E[income | j > 0]", 0.2, [income_first, inside_first], ratio, ratio_gradient))
    return problem, moments


def evaluate(lib, data, kind: str = "first", **options):
    problem, moments = build(lib, data, kind)
    return problem.solve(
        sigma=SIGMA,
        pi=PI,
        method="1s",
        optimization=lib.Optimization("return"),
        iteration=lib.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=moments,
        **options,
    )


def assert_close(actual, expected, rtol=EXACT, what=""):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, what
    finite = np.isfinite(expected)
    floor = rtol * max(np.abs(expected[finite]).max(initial=0.0), 1e-300)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=floor, err_msg=what)


def compare(ours, theirs, rtol=EXACT):
    for name in ("objective", "gradient", "micro_values", "beta", "W", "updated_W"):
        assert_close(getattr(ours, name), getattr(theirs, name), rtol, name)
    for name in ("sigma", "pi"):
        estimated = getattr(theirs, name) != 0
        assert_close(getattr(ours, f"{name}_se")[estimated], getattr(theirs, f"{name}_se")[estimated], rtol, name)
    assert_close(ours.beta_se, theirs.beta_se, rtol, "beta_se")


@pytest.mark.pyblp
@pytest.mark.parametrize("kind", ["first", "second", "groups"])
def test_micro_moments_match_pyblp_at_the_same_parameters(data, kind):
    compare(evaluate(dk, data, kind), evaluate(pyblp, data, kind))


@pytest.mark.pyblp
def test_given_micro_covariances_match_pyblp(data):
    covariances = np.array([[0.2, 0.01, 0.0], [0.01, 0.1, 0.0], [0.0, 0.0, 0.05]])
    ours = evaluate(dk, data, micro_sample_covariances=covariances)
    compare(ours, evaluate(pyblp, data, micro_sample_covariances=covariances))
    N = len(data[0])  # S_M is N times the covariance of the sample statistics
    assert_close(np.linalg.inv(ours.W[-3:, -3:]), N * covariances, 1e-10, "micro block of W")


@pytest.mark.pyblp
def test_two_step_estimates_match_pyblp(data):
    # fewer nonlinear parameters than SIGMA and PI: with all of them the objective is so flat that both optimizers
    # stop (converged) at points whose objectives differ in the fifth digit
    sigma = np.diag([0.33, 2.45, 0, 0])
    pi = np.zeros((4, 4))
    pi[0, 0], pi[1, 0], pi[1, 3], pi[0, 2] = 5.48, 15.89, 2.63, 0.2
    results = {}
    for lib in (dk, pyblp):
        problem, moments = build(lib, data)
        results[lib] = problem.solve(
            sigma=sigma,
            pi=pi,
            optimization=lib.Optimization("l-bfgs-b", {"gtol": 1e-8}),
            iteration=lib.Iteration("squarem", {"atol": 1e-14}),
            micro_moments=moments,
        )
    ours, theirs = results[dk], results[pyblp]
    for name in ("sigma", "pi", "beta", "micro_values"):
        assert_close(getattr(ours, name), getattr(theirs, name), 1e-6, name)
    assert_close(ours.objective, theirs.objective, 1e-8, "objective")
    assert_close(ours.pi_se[pi != 0], theirs.pi_se[pi != 0], 1e-6, "pi_se")


def test_gradient_matches_finite_differences_with_second_choices(data):
    problem, moments = build(dk, data, "second")
    options = {"method": "1s", "iteration": dk.Iteration("squarem", {"atol": 1e-14}), "micro_moments": moments}
    W = evaluate(dk, data, "second").W

    def objective(sigma_diagonal):
        sigma = np.diag(sigma_diagonal)
        return problem.solve(sigma=sigma, pi=PI, W=W, optimization=dk.Optimization("return"), **options)

    base = np.diag(SIGMA).copy()
    results = objective(base)
    step = 1e-5
    for k in range(4):
        up, down = base.copy(), base.copy()
        up[k] += step
        down[k] -= step
        numeric = (objective(up).objective - objective(down).objective) / (2 * step)
        np.testing.assert_allclose(results.gradient[k, 0], numeric, rtol=1e-5, atol=1e-6)


def test_autograd_gradient_of_compute_value_equals_the_given_one(data):
    problem, moments = build(dk, data)
    without = [
        dk.MicroMoment(m.name, m.value, m.parts if len(m.parts) > 1 else m.parts[0], m.compute_value) for m in moments
    ]
    given = evaluate(dk, data)
    autograd = problem.solve(
        sigma=SIGMA,
        pi=PI,
        method="1s",
        optimization=dk.Optimization("return"),
        iteration=dk.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=without,
    )
    for name in ("objective", "gradient", "sigma_se", "W"):
        assert_close(getattr(autograd, name), getattr(given, name), 1e-12, name)
    assert given.compute_micro_values(moments).shape == (3,)  # flat, as PyBLP
    assert_close(given.compute_micro_values(moments), given.micro_values[:, 0], 1e-12, "compute_micro_values")
    assert given.moments.shape == (problem.MD + 3, 1)


# ----------------------------------------------------------------------------------------------------- validation
def _solve(data, moments, **options):
    problem, _ = build(dk, data)
    return problem.solve(
        sigma=SIGMA, pi=PI, method="1s", optimization=dk.Optimization("return"), **options, micro_moments=moments
    )


def test_configuration_errors():
    dataset = dk.MicroDataset("d", 10, lambda t, p, a: np.ones((a.size, p.size)))
    part = dk.MicroPart("p", dataset, lambda t, p, a: np.ones((a.size, p.size)))
    with pytest.raises(SpecificationError, match="observations must be a positive integer"):
        dk.MicroDataset("d", 0, lambda t, p, a: None)
    with pytest.raises(SpecificationError, match="dataset must be a MicroDataset"):
        dk.MicroPart("p", "d", lambda t, p, a: None)
    with pytest.raises(SpecificationError, match="non-empty sequence"):
        dk.MicroMoment("m", 1.0, [])
    with pytest.raises(SpecificationError, match="give compute_value"):
        dk.MicroMoment("m", 1.0, [part, part])
    with pytest.raises(SpecificationError, match="value must be finite"):
        dk.MicroMoment("m", np.nan, part)


def test_bad_micro_inputs_name_the_culprit(data):
    good = dk.MicroDataset("survey", 100, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    wrong = dk.MicroDataset("wrong shape", 100, lambda t, p, a: np.ones((a.size, p.size + 2)))
    part = dk.MicroPart("inside", good, lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)]))
    with pytest.raises(SpecificationError, match=r"'wrong shape'.*market"):
        _solve(data, [dk.MicroMoment("m", 0.5, dk.MicroPart("x", wrong, lambda t, p, a: 0))])
    mismatched = dk.MicroPart("mismatched", good, lambda t, p, a: np.ones((a.size, p.size)))
    with pytest.raises(SpecificationError, match="'mismatched'.*shape"):
        _solve(data, [dk.MicroMoment("m", 0.5, mismatched)])
    absent = dk.MicroDataset("absent", 100, lambda t, p, a: np.ones((a.size, p.size)), market_ids=["nowhere"])
    with pytest.raises(SpecificationError, match="'absent'.*not markets"):
        _solve(data, [dk.MicroMoment("m", 0.5, dk.MicroPart("y", absent, lambda t, p, a: np.ones((a.size, p.size))))])
    infinite = dk.MicroPart("infinite", good, lambda t, p, a: np.full((a.size, 1 + p.size), np.inf))
    with pytest.raises(SpecificationError, match="'infinite'.*non-finite"):
        _solve(data, [dk.MicroMoment("m", 0.5, infinite)])
    with pytest.raises(SpecificationError, match="named 'm'"):
        _solve(data, [dk.MicroMoment("m", 0.5, part), dk.MicroMoment("m", 0.4, part)])
    with pytest.raises(SpecificationError, match="must be 1 x 1"):
        _solve(data, [dk.MicroMoment("m", 0.5, part)], micro_sample_covariances=np.eye(2))
    with pytest.raises(SpecificationError, match="positive semi-definite"):
        _solve(data, [dk.MicroMoment("m", 0.5, part)], micro_sample_covariances=[[-1.0]])
    with pytest.raises(SpecificationError, match="initial_update cannot be False"):
        _solve(data, [dk.MicroMoment("m", 0.5, part)], initial_update=False)
    numpy_only = dk.MicroMoment("logs", 0.5, [part, part], lambda v: np.log(v[0]) - np.log(v[1]))
    with pytest.raises(SpecificationError, match="'logs'.*autograd"):
        _solve(data, [numpy_only])


def test_micro_moments_in_the_summary_json_and_pickle(data, tmp_path):
    results = evaluate(dk, data)
    text = str(results)
    assert "Estimated Micro Moments:" in text and "Cov(age, sugar)" in text and "E[income 1{j>0}]" in text
    saved = results.to_dict()
    assert [m["name"] for m in saved["micro_moments"]] == ["E[income | inside]", "E[inside]", "Cov(age, sugar)"]
    np.testing.assert_array_equal(saved["micro_values"], results.micro_values.ravel())
    results.to_pickle(tmp_path / "micro.pkl")
    loaded = dk.ProblemResults.from_pickle(tmp_path / "micro.pkl")
    assert str(loaded) == text


@pytest.mark.pyblp
def test_resampled_agents_add_pyblps_simulation_covariance(data):
    _, agents = data

    def resample(index):
        if index >= 4:
            return None
        frame = agents.copy()
        columns = [c for c in frame.columns if c.startswith("nodes")]
        frame[columns] = np.random.default_rng(index).standard_normal((len(frame), len(columns)))
        return frame

    ours = evaluate(dk, data, resample_agent_data=resample)
    theirs = evaluate(pyblp, data, resample_agent_data=resample)
    for name in ("objective", "updated_W", "sigma_se", "pi_se", "beta_se"):
        assert_close(getattr(ours, name), getattr(theirs, name), 1e-6, name)
    plain = evaluate(dk, data)
    assert not np.allclose(ours.sigma_se, plain.sigma_se, equal_nan=True)
    with pytest.raises(SpecificationError, match="at least 2"):
        evaluate(dk, data, resample_agent_data=lambda index: agents if index == 0 else None)


@pytest.mark.pyblp
def test_nested_second_choices_are_the_models_probabilities_without_the_first_choice(data):
    """Under nesting, removing the first choice changes its nest's inclusive value. demandkit's second-choice
    probabilities equal those of PyBLP's own model with the first choice removed (its mean utility at -1e6), to
    1e-14. (PyBLP 1.3's micro values for nested second choices differ from these: 0.161 against 0.076 for
    P(mushy, mushy | inside) below; its first-choice micro values under nesting agree with demandkit's to 1e-12.)"""
    import torch

    from demandkit.blp.micro import MicroMoments
    from demandkit.blp.micro_results import estimated_probabilities

    products, agents = data
    products = products.assign(nesting_ids=np.where(products["mushy"] > 0, "mushy", "crunchy"))
    options = {"method": "1s", "iteration": None, "rho": 0.4}
    results = {}
    for lib in (dk, pyblp):
        problem, moments = build(lib, (products, agents), "second")
        options["iteration"] = lib.Iteration("squarem", {"atol": 1e-14})
        results[lib] = problem.solve(
            sigma=SIGMA, pi=PI, optimization=lib.Optimization("return"), micro_moments=moments, **options
        )
    ours, theirs = results[dk], results[pyblp]
    micro = MicroMoments(ours.problem, build(dk, (products, agents), "second")[1])
    layout = micro.layouts[0]
    second = micro.nested_second_choices(
        layout, estimated_probabilities(ours)[layout.markets], torch.tensor([0.4], dtype=torch.float64)
    )
    market = products["market_ids"].unique()[0]
    rows = np.flatnonzero(products["market_ids"] == market)
    for j in (0, 3, 11):  # inside first choices (index j + 1 with the outside option first)
        delta = np.asarray(theirs.delta)[rows, 0].copy()
        delta[j] = -1e6
        removed = theirs.compute_probabilities(delta=delta, market_id=market)  # J x I
        np.testing.assert_allclose(second[0, :, j + 1, 1:].numpy().T, removed, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours.micro_values[:, 0], [0.0758056, 0.3585745, 0.4813223], rtol=1e-5)


def test_nested_second_choice_gradient_matches_finite_differences(data):
    products, agents = data
    products = products.assign(nesting_ids=np.where(products["mushy"] > 0, "mushy", "crunchy"))
    problem, moments = build(dk, (products, agents), "groups")
    options = {"method": "1s", "iteration": dk.Iteration("squarem", {"atol": 1e-14}), "micro_moments": moments}
    W = problem.solve(sigma=SIGMA, pi=PI, rho=0.4, optimization=dk.Optimization("return"), **options).W

    def solve(rho):
        return problem.solve(sigma=SIGMA, pi=PI, rho=rho, W=W, optimization=dk.Optimization("return"), **options)

    step = 1e-6
    numeric = (solve(0.4 + step).objective - solve(0.4 - step).objective) / (2 * step)
    np.testing.assert_allclose(solve(0.4).gradient[-1, 0], numeric, rtol=1e-5)
