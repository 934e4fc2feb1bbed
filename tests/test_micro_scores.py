"""Micro data after estimation against PyBLP 1.3.0 on the Nevo data: simulated surveys, micro and agent scores, and
optimal micro moments (:mod:`demandkit.blp.micro_scores`).

Both libraries are solved at the same parameters (``Optimization('return')``). Scores of simulated observations agree
with PyBLP's to 1e-8 (measured: 1e-14) with nodes built by an ``Integration`` and with custom ``micro_ids``,
``weights`` and ``nodes``, for a survey with the outside option, inside purchasers with survey weights that depend on
demographics, second choices and a nested random-coefficients logit; agent scores too. PyBLP loses digits in the
second-choice agent scores of agents whose purchase probabilities are near 1e-16 (0.3 in a score); there the scores
are checked against 50-digit arithmetic instead, and against PyBLP in the other markets. The score identity holds
(exactly in expectation, and within sampling error on a large simulated sample), simulated frequencies match the
model's probabilities, and optimal micro moments built by the helper equal PyBLP's tutorial recipe, values and
objective.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import demandkit as dk
from demandkit.blp import micro_scores as ms
from demandkit.blp.micro_results import estimated_probabilities
from demandkit.exceptions import SpecificationError

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

EXACT = 1e-8
SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])
MARKETS = 20
OBSERVATIONS = 600


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    products = pd.read_csv(dk.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(dk.data.NEVO_AGENTS_LOCATION)
    keep = products["market_ids"].unique()[:MARKETS]
    products = products[products["market_ids"].isin(keep)].reset_index(drop=True)
    agents = agents[agents["market_ids"].isin(keep)].reset_index(drop=True)
    agents["agent_indices"] = agents.groupby("market_ids").cumcount()
    return products, agents


def datasets(lib, markets) -> dict:
    """A survey with the outside option, inside purchasers sampled by income, and second choices."""
    return {
        "survey": lib.MicroDataset("survey", OBSERVATIONS, lambda t, p, a: np.ones((a.size, 1 + p.size))),
        "buyers": lib.MicroDataset(
            "buyers",
            OBSERVATIONS,
            lambda t, p, a: np.outer(1 + (a.demographics[:, 0] > 0), np.ones(p.size)),
            market_ids=markets[:7],
        ),
        "second": lib.MicroDataset(
            "second", OBSERVATIONS, lambda t, p, a: np.ones((a.size, 1 + p.size, 1 + p.size)), market_ids=markets[:10]
        ),
    }


def solve(lib, data, nested: bool = False, rc_types=None):
    """Results at SIGMA and PI (and rho = 0.4 with nests by mushy), with one micro moment, and the datasets."""
    products, agents = data
    if nested:
        products = products.assign(nesting_ids=products["mushy"])
    formulations = (
        lib.Formulation("0 + prices", absorb="C(product_ids)"),
        lib.Formulation("1 + prices + sugar + mushy"),
    )
    demographics = lib.Formulation("0 + income + income_squared + age + child")
    problem = lib.Problem(formulations, products, demographics, agents, rc_types=rc_types)
    sets = datasets(lib, products["market_ids"].unique())
    inside = lib.MicroPart(
        "E[1{j>0}]", sets["survey"], lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)])
    )
    results = problem.solve(
        sigma=SIGMA,
        pi=PI,
        rho=0.4 if nested else None,
        method="1s",
        optimization=lib.Optimization("return"),
        iteration=lib.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=[lib.MicroMoment("E[inside]", 0.45, inside)],
    )
    return results, sets


@pytest.fixture(scope="module")
def both(data):
    return {"pyblp": solve(pyblp, data), "dk": solve(dk, data)}


def simulated(results, dataset, agents, seed=0) -> pd.DataFrame:
    """PyBLP's simulated observations with the demographics, weights and nodes of their agents merged in."""
    micro = pd.DataFrame(pyblp.data_to_dict(results.simulate_micro_data(dataset, seed=seed)))
    return micro.merge(agents, on=["market_ids", "agent_indices"], how="left")


def with_custom_agents(micro: pd.DataFrame) -> pd.DataFrame:
    """Each observation integrated over 2 to 5 custom agents: its demographics with random nodes and weights."""
    counts = 2 + np.arange(len(micro)) % 4
    rows = micro.loc[micro.index.repeat(counts)].reset_index(drop=True)
    rng = np.random.default_rng(1)
    rows["micro_ids"] = np.repeat(np.arange(len(micro)), counts)
    weights = rng.uniform(0.5, 1.5, len(rows))
    rows["weights"] = weights / np.bincount(rows["micro_ids"], weights)[rows["micro_ids"]]
    for k in range(4):
        rows[f"nodes{k}"] = rng.standard_normal(len(rows))
    return rows


def assert_close(actual, expected, rtol=EXACT, what=""):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, what
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    finite = np.isfinite(expected)
    floor = rtol * max(np.abs(expected[finite]).max(initial=0.0), 1e-300)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=floor, err_msg=what)


def assert_agent_scores_close(ours, theirs, markets=None, rtol=EXACT):
    assert len(ours) == len(theirs)
    for mine, expected in zip(ours, theirs, strict=True):
        assert list(mine) == list(expected)
        for market in expected if markets is None else markets:
            assert_close(mine[market], expected[market], rtol, f"market {market}")


# ------------------------------------------------------------------------------------------------- against PyBLP
@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["survey", "buyers", "second"])
def test_micro_scores_match_pyblp(data, both, name):
    (theirs, their_sets), (ours, our_sets) = both["pyblp"], both["dk"]
    micro = simulated(theirs, their_sets[name], data[1]).iloc[: 250 if name == "second" else None]
    expected = theirs.compute_micro_scores(their_sets[name], micro, integration=pyblp.Integration("product", 3))
    actual = ms.compute_micro_scores(ours, our_sets[name], micro, integration=dk.Integration("product", 3))
    assert len(actual) == len(expected) == ours.theta.size
    for k, (mine, their) in enumerate(zip(actual, expected, strict=True)):
        assert_close(mine, their, what=f"{name}, integration, {ours.theta_labels[k]}")
    custom = with_custom_agents(micro)
    expected = theirs.compute_micro_scores(their_sets[name], custom)
    actual = ms.compute_micro_scores(ours, our_sets[name], custom)
    for k, (mine, their) in enumerate(zip(actual, expected, strict=True)):
        assert mine.shape == (len(micro),)
        assert_close(mine, their, what=f"{name}, custom agents, {ours.theta_labels[k]}")


@pytest.mark.pyblp
@pytest.mark.parametrize("name", ["survey", "buyers"])
def test_agent_scores_match_pyblp(both, name):
    (theirs, their_sets), (ours, our_sets) = both["pyblp"], both["dk"]
    expected = theirs.compute_agent_scores(their_sets[name], integration=pyblp.Integration("product", 3))
    actual = ms.compute_agent_scores(ours, our_sets[name], integration=dk.Integration("product", 3))
    assert actual[0][next(iter(actual[0]))].shape == (20, 25 if name == "survey" else 24)
    assert_agent_scores_close(actual, expected)
    expected = theirs.compute_agent_scores(their_sets[name])  # each agent integrated over its own node
    assert_agent_scores_close(ms.compute_agent_scores(ours, our_sets[name]), expected)


@pytest.mark.pyblp
def test_second_choice_agent_scores_match_pyblp_where_it_keeps_its_digits(both):
    (theirs, their_sets), (ours, our_sets) = both["pyblp"], both["dk"]
    expected = theirs.compute_agent_scores(their_sets["second"], integration=pyblp.Integration("product", 3))
    actual = ms.compute_agent_scores(ours, our_sets["second"], integration=dk.Integration("product", 3))
    # PyBLP loses digits where some agent almost never buys (purchase probabilities near 1e-16 at some nodes): compare
    # markets where every agent buys with probability at least 0.5% (at its own node)
    purchase = 1 - estimated_probabilities(ours)[..., 0].numpy()
    ids = list(ours.problem.layout.market_ids)
    counts = ours.problem.agent_layout.mask.sum(axis=1)
    markets = [m for m in expected[0] if purchase[ids.index(m), : counts[ids.index(m)]].min() > 5e-3]
    assert len(markets) >= 5
    assert_agent_scores_close(actual, expected, markets)


def test_second_choice_agent_scores_keep_their_digits_for_near_zero_probabilities(both):
    """In C03Q1 agent 11 buys with probability about 1e-16 at some nodes: its scores equal a 50-digit evaluation of
    the numerator (the denominator and the Jacobian of delta are the double-precision ones), where PyBLP loses
    digits."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    ours, sets = both["dk"]
    integration = dk.Integration("product", 2)
    actual = ms.compute_agent_scores(ours, sets["second"], integration=integration)
    survey = ms._Survey(ours.problem, sets["second"])
    scores = ms._Scores(ours, survey)
    agents = ms._problem_agents(ours, survey, integration)
    t = list(ours.problem.layout.market_ids).index("C03Q1")
    n = int(np.flatnonzero(agents.markets == t)[11])
    rows = agents.owner == n
    exact = lambda array: [[mpmath.mpf(float(x)) for x in row] for row in np.atleast_2d(array)]  # noqa: E731
    nodes, demographics = exact(agents.nodes[rows]), exact(agents.demographics[rows])
    (weights,) = exact(agents.weights[rows])
    J = int(ours.problem.layout.mask[t].sum())
    X2 = exact(ours.problem.X2_padded[t, :J].numpy())
    (delta,) = exact(scores.delta[t, :J].numpy())
    jacobian = exact(scores.delta_jacobian[t, :J].numpy())
    sigma, pi = (exact(x.numpy()) for x in scores.point[:2])

    def numerator(eps, p, j, k):
        """sum_i w_i s_ij s_ik / (1 - s_ij) with theta_p and delta moved by eps along their derivatives."""
        dsigma, dpi = (exact(x.numpy()) for x in scores.tangents[p][:2])
        total = mpmath.mpf(0)
        for r in range(len(weights)):
            z = [
                sum(nodes[r][c] * (sigma[a][c] + eps * dsigma[a][c]) for c in range(4))
                + sum(demographics[r][e] * (pi[a][e] + eps * dpi[a][e]) for e in range(4))
                for a in range(4)
            ]
            exp = [
                mpmath.exp(delta[l] + eps * jacobian[l][p] + sum(X2[l][a] * z[a] for a in range(4))) for l in range(J)
            ]
            s = [1 / (1 + sum(exp))] + [e / (1 + sum(exp)) for e in exp]
            total += weights[r] * s[j] * s[k] / (1 - s[j])
        return total

    h = mpmath.mpf("1e-20")
    for p, j, k in [(0, 1, 20), (9, 3, 0)]:
        derivative = (mpmath.log(numerator(h, p, j, k)) - mpmath.log(numerator(-h, p, j, k))) / (2 * h)
        expected = float(derivative) - scores.denominator_scores[p]
        assert actual[p]["C03Q1"][11, j, k] == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.pyblp
def test_nested_random_coefficients_logit_scores_match_pyblp(data):
    """Under nesting the scores take one forward-mode pass per parameter (rho among them)."""
    (theirs, their_sets), (ours, our_sets) = solve(pyblp, data, nested=True), solve(dk, data, nested=True)
    assert ours.theta_labels == [str(label) for label in theirs.theta_labels]  # rho last, by its nesting group
    micro = simulated(theirs, their_sets["survey"], data[1]).iloc[:200]
    expected = theirs.compute_micro_scores(their_sets["survey"], micro, integration=pyblp.Integration("product", 2))
    actual = ms.compute_micro_scores(ours, our_sets["survey"], micro, integration=dk.Integration("product", 2))
    for mine, their in zip(actual, expected, strict=True):
        assert_close(mine, their)
    expected = theirs.compute_agent_scores(their_sets["buyers"], integration=pyblp.Integration("product", 2))
    assert_agent_scores_close(
        ms.compute_agent_scores(ours, our_sets["buyers"], integration=dk.Integration("product", 2)), expected
    )


@pytest.mark.pyblp
def test_nonlinear_random_coefficients_match_pyblp_on_both_derivative_paths(data, monkeypatch):
    """Lognormal and logistic coefficients; the closed-form logit derivatives equal the forward-mode ones."""
    rc_types = ["linear", "linear", "log", "logit"]
    (theirs, their_sets), (ours, our_sets) = solve(pyblp, data, rc_types=rc_types), solve(dk, data, rc_types=rc_types)
    micro = simulated(theirs, their_sets["survey"], data[1]).iloc[:200]
    integration = dk.Integration("product", 2)
    expected = theirs.compute_micro_scores(their_sets["survey"], micro, integration=pyblp.Integration("product", 2))
    closed = ms.compute_micro_scores(ours, our_sets["survey"], micro, integration=integration)
    agents_closed = ms.compute_agent_scores(ours, our_sets["buyers"], integration=integration)
    monkeypatch.setattr(ms._Scores, "_logit_scores", ms._Scores._forward_scores)
    forward = ms.compute_micro_scores(ours, our_sets["survey"], micro, integration=integration)
    for mine, other, their in zip(closed, forward, expected, strict=True):
        assert_close(mine, their)
        assert_close(other, mine, 1e-12)
    assert_agent_scores_close(ms.compute_agent_scores(ours, our_sets["buyers"], integration=integration), agents_closed)


@pytest.mark.pyblp
def test_optimal_micro_moments_equal_pyblps_recipe(data, both):
    (theirs, their_sets), (ours, our_sets) = both["pyblp"], both["dk"]
    micro = simulated(theirs, their_sets["survey"], data[1])
    mine = ms.build_optimal_micro_moments(ours, our_sets["survey"], micro, integration=dk.Integration("product", 3))
    integration = pyblp.Integration("product", 3)
    micro_scores = theirs.compute_micro_scores(their_sets["survey"], micro, integration=integration)
    agent_scores = theirs.compute_agent_scores(their_sets["survey"], integration=integration)
    recipe = [
        pyblp.MicroMoment(
            f"score {k}",
            scores.mean(),
            pyblp.MicroPart(f"part {k}", their_sets["survey"], lambda t, p, a, v=values: np.nan_to_num(v[t])),
        )
        for k, (scores, values) in enumerate(zip(micro_scores, agent_scores, strict=True))
    ]
    assert [m.name for m in mine] == [f"Score {label}" for label in ours.theta_labels]
    assert_close([m.value for m in mine], [m.value for m in recipe])
    products, agents = data
    results = {}
    for lib, moments in ((pyblp, recipe), (dk, mine)):
        formulations = (
            lib.Formulation("0 + prices", absorb="C(product_ids)"),
            lib.Formulation("1 + prices + sugar + mushy"),
        )
        demographics = lib.Formulation("0 + income + income_squared + age + child")
        results[lib.__name__] = lib.Problem(formulations, products, demographics, agents).solve(
            sigma=SIGMA,
            pi=PI,
            method="1s",
            optimization=lib.Optimization("return"),
            iteration=lib.Iteration("squarem", {"atol": 1e-14}),
            micro_moments=moments,
        )
    for name in ("micro_values", "objective", "gradient"):
        assert_close(getattr(results["demandkit"], name), getattr(results["pyblp"], name), 1e-7, name)
    selected = ms.build_optimal_micro_moments(
        ours, our_sets["survey"], micro, dk.Integration("product", 2), "Optimal", parameters=[0, "1 x income"]
    )
    assert [m.name for m in selected] == ["Optimal 1 x 1", "Optimal 1 x income"]


# --------------------------------------------------------------------------------------- score identity, simulation
def test_expected_score_is_zero_at_the_true_parameters(data, both):
    """With every agent an observation of its own (its node and weight), the dataset's probabilities of the agent-
    choices sum to one, so their probability-weighted scores sum to zero: exactly in expectation, and within sampling
    error in a large sample simulated at these parameters."""
    ours, sets = both["dk"]
    agent_scores = ms.compute_agent_scores(ours, sets["survey"])
    probabilities = estimated_probabilities(ours).numpy() * ours.problem.agent_weights.numpy()[..., None]
    counts, products = ours.problem.agent_layout.mask.sum(axis=1), ours.problem.layout.mask.sum(axis=1)
    ids = list(ours.problem.layout.market_ids)
    for scores in agent_scores:
        expected = sum(
            (probabilities[ids.index(m), : counts[ids.index(m)], : 1 + products[ids.index(m)]] * v).sum()
            for m, v in scores.items()
        )
        assert abs(expected) < 1e-10 * max(np.abs(v).max() for v in scores.values())
    sample = dk.MicroDataset("large", 20_000, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    micro = ms.simulate_micro_data(ours, sample, seed=3).merge(data[1], on=["market_ids", "agent_indices"])
    scores = np.array(ms.compute_micro_scores(ours, sample, micro))
    t = scores.mean(axis=1) / (scores.std(axis=1) / np.sqrt(scores.shape[1]))
    assert np.abs(t).max() < 4.5


def test_simulated_frequencies_match_probabilities(data, both):
    """With survey weights of one, market t, agent i and choice j are drawn with probability w_it s_ijt / T: choices
    with the observed market shares S_jt / T and agents with their weights / T (chi-square tests)."""
    products, _ = data
    ours, sets = both["dk"]
    markets = products["market_ids"].unique()
    large = dk.MicroDataset("large", 200_000, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    micro = ms.simulate_micro_data(ours, large, seed=0)
    assert list(micro.columns) == ["micro_ids", "market_ids", "agent_indices", "choice_indices"]
    np.testing.assert_array_equal(micro["micro_ids"], np.arange(200_000))
    shares = products.assign(choice_indices=products.groupby("market_ids").cumcount() + 1)
    outside = 1 - shares.groupby("market_ids")["shares"].sum()
    expected = pd.concat(
        [
            shares.set_index(["market_ids", "choice_indices"])["shares"],
            outside.to_frame().assign(choice_indices=0).set_index("choice_indices", append=True)["shares"],
        ]
    ) / len(markets)
    _chi_square(micro.groupby(["market_ids", "choice_indices"]).size(), expected)
    weights = data[1].set_index(["market_ids", "agent_indices"])["weights"] / len(markets)
    _chi_square(micro.groupby(["market_ids", "agent_indices"]).size(), weights)
    # second choices: never the first choice again; the first choices keep the market shares
    second = ms.simulate_micro_data(ours, sets["second"], seed=1)
    assert (second["choice_indices"] != second["second_choice_indices"]).all()
    assert set(second["market_ids"]) <= set(markets[:10])
    # inside purchasers: choice index 0 is the first inside good
    buyers = ms.simulate_micro_data(ours, sets["buyers"], seed=2)
    sizes = products.groupby("market_ids").size()
    assert (buyers["choice_indices"] >= 0).all() and (buyers["choice_indices"] < buyers["market_ids"].map(sizes)).all()
    again = ms.simulate_micro_data(ours, sets["buyers"], seed=2)
    pd.testing.assert_frame_equal(buyers, again)


def _chi_square(counts: pd.Series, probabilities: pd.Series) -> None:
    expected = probabilities.reindex(counts.index.union(probabilities.index)).fillna(0) * counts.sum()
    observed = counts.reindex(expected.index).fillna(0)
    assert (observed[expected == 0] == 0).all()
    keep = expected > 5
    statistic = (((observed - expected) ** 2 / expected)[keep]).sum()
    assert statistic < stats.chi2.ppf(1 - 1e-4, keep.sum() - 1)


# ------------------------------------------------------------------------------------------------------ validation
def test_bad_micro_data_names_the_culprit(data, both):
    ours, sets = both["dk"]
    products, agents = data
    micro = ms.simulate_micro_data(ours, sets["buyers"], seed=0).merge(agents, on=["market_ids", "agent_indices"])
    integration = dk.Integration("product", 2)
    score = lambda frame, dataset=sets["buyers"], **kw: ms.compute_micro_scores(ours, dataset, frame, **kw)  # noqa: E731
    with pytest.raises(SpecificationError, match="choice_indices"):
        score(micro.drop(columns="choice_indices"), integration=integration)
    with pytest.raises(SpecificationError, match="income"):
        score(micro.drop(columns="income"), integration=integration)
    with pytest.raises(SpecificationError, match="micro_ids.*integration"):
        score(micro.drop(columns="micro_ids"))
    with pytest.raises(SpecificationError, match="second_choice_indices"):
        score(micro, sets["second"], integration=integration)
    with pytest.raises(SpecificationError, match="'nowhere' is not a market of the problem"):
        score(micro.assign(market_ids="nowhere"), integration=integration)
    outside = products["market_ids"].unique()[10]
    with pytest.raises(SpecificationError, match=f"'{outside}' is not among the markets of MicroDataset 'buyers'"):
        score(micro.assign(market_ids=outside), integration=integration)
    too_far = micro.assign(choice_indices=micro["market_ids"].map(products.groupby("market_ids").size()))
    with pytest.raises(SpecificationError, match=r"choice_indices 24 is out of range in market .* first inside good"):
        score(too_far, integration=integration)
    with pytest.raises(SpecificationError, match="must hold integers"):
        score(micro.assign(choice_indices=0.5), integration=integration)
    mixed = with_custom_agents(micro.iloc[:10])
    mixed.loc[1, "market_ids"] = next(m for m in micro["market_ids"] if m != mixed.loc[0, "market_ids"])
    with pytest.raises(SpecificationError, match="market_ids differs within the rows of micro_ids 0"):
        score(mixed)
    with pytest.raises(SpecificationError, match="must be an Integration"):
        score(micro, integration="product")
    with pytest.raises(SpecificationError, match="must be a MicroDataset"):
        score(micro, "buyers", integration=integration)
    with pytest.raises(SpecificationError, match="Unknown parameter 'nope'"):
        ms.build_optimal_micro_moments(ours, sets["buyers"], micro, integration, parameters=["nope"])


def test_impossible_observations_have_nan_scores(data, both):
    """An observation the survey cannot sample (a weight of zero) has probability zero, hence NaN scores (as PyBLP),
    and cannot feed an optimal micro moment."""
    ours, _ = both["dk"]
    products, agents = data
    no_first = dk.MicroDataset(
        "no first product", 100, lambda t, p, a: np.ones((a.size, p.size)) * (np.arange(p.size) > 0)
    )
    micro = ms.simulate_micro_data(ours, no_first, seed=0).merge(agents, on=["market_ids", "agent_indices"])
    assert (micro["choice_indices"] > 0).all()
    micro.loc[:4, "choice_indices"] = 0
    integration = dk.Integration("product", 2)
    scores = ms.compute_micro_scores(ours, no_first, micro, integration=integration)
    for parameter in scores:
        assert np.isnan(parameter[:5]).all() and np.isfinite(parameter[5:]).all()
    agent_scores = ms.compute_agent_scores(ours, no_first, integration=integration)
    assert all(np.isnan(v[:, 0]).all() and np.isfinite(v[:, 1:]).all() for v in agent_scores[0].values())
    with pytest.raises(SpecificationError, match="Observation 0 of micro_data has probability zero"):
        ms.build_optimal_micro_moments(ours, no_first, micro, integration)


def test_scores_do_not_depend_on_the_order_or_batching_of_observations(data, both, monkeypatch):
    ours, sets = both["dk"]
    micro = ms.simulate_micro_data(ours, sets["second"], seed=5).merge(data[1], on=["market_ids", "agent_indices"])
    micro = micro.iloc[:150]
    integration = dk.Integration("product", 2)
    scores = np.array(ms.compute_micro_scores(ours, sets["second"], micro, integration=integration))
    order = np.random.default_rng(0).permutation(len(micro))
    monkeypatch.setattr(ms, "CHUNK_ELEMENTS", 20_000)  # several batches
    shuffled = np.array(ms.compute_micro_scores(ours, sets["second"], micro.iloc[order], integration=integration))
    np.testing.assert_allclose(shuffled, scores[:, order], rtol=1e-12, atol=1e-12)
    agent = ms.compute_agent_scores(ours, sets["second"], micro.drop(columns="choice_indices"), integration)
    first = agent[0][micro["market_ids"].iloc[0]][0]  # the first observation of its market, every choice pair
    choices = micro["choice_indices"].iloc[0], micro["second_choice_indices"].iloc[0]
    assert first[choices] == pytest.approx(scores[0, 0], rel=1e-12)
