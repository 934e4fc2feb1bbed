"""Markets bucketed by size (issue 14): the plan is a partition that minimizes its cost model, and a bucketed
evaluation gives what one batch of all markets gives (objective, gradient, delta, costs), for the logit's fast
markups, the nested logit's generic path, micro moments and a sharded-style subset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _synthetic import simulate

import demandkit as dk
from demandkit.blp.buckets import BATCH_COST, bucket_cost, build_buckets, plan_buckets
from demandkit.exceptions import SpecificationError


def brute_force_cost(products: np.ndarray, agents: np.ndarray, max_buckets: int, batch_cost: float) -> float:
    """The least cost over every split of the markets sorted by size into at most ``max_buckets`` runs."""
    order = np.argsort(-products, kind="stable")
    sizes, people = products[order], agents[order]
    T, best = len(sizes), np.inf
    for k in range(1, max_buckets + 1):
        for cuts in itertools.combinations(range(1, T), k - 1):
            edges = (0, *cuts, T)
            total = sum(
                bucket_cost(b - a, sizes[a:b].max(), people[a:b].max()) + batch_cost
                for a, b in itertools.pairwise(edges)
            )
            best = min(best, total)
    return best


def plan_cost(plan: list[np.ndarray], products: np.ndarray, agents: np.ndarray, batch_cost: float) -> float:
    return sum(bucket_cost(len(b), products[b].max(), agents[b].max()) + batch_cost for b in plan)


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_a_partition_with_the_least_cost(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 9))
    products = rng.integers(1, 60, size=T)
    agents = rng.integers(1, 40, size=T)
    batch_cost = float(rng.choice([0.0, 1e3, 1e5]))
    plan = plan_buckets(products, agents, max_buckets=4, batch_cost=batch_cost)
    assert sorted(np.concatenate(plan).tolist()) == list(range(T))
    assert len(plan) <= 4
    # markets sorted by size: a bucket of larger markets never holds a market smaller than the next bucket's
    for first, second in itertools.pairwise(plan):
        assert products[first].min() >= products[second].max()
    expected = brute_force_cost(products, agents, 4, batch_cost)
    assert plan_cost(plan, products, agents, batch_cost) == pytest.approx(expected, rel=1e-12)


def test_plan_keeps_equal_markets_together_and_one_bucket_when_splitting_does_not_pay():
    assert len(plan_buckets(np.full(50, 24), np.full(50, 20))) == 1
    # two close sizes: the saved padding is worth less than a batch
    assert len(plan_buckets(np.array([24, 23, 24]), np.full(3, 20), batch_cost=BATCH_COST)) == 1
    # very different sizes: split
    assert len(plan_buckets(np.array([200] * 5 + [10] * 200), np.full(205, 500), batch_cost=BATCH_COST)) == 2


def test_buckets_argument_is_checked():
    products, agents = simulate(T=4, J=4, I=5, seed=1)
    for bad in (0, -1, 2.5, True, "2"):
        with pytest.raises(SpecificationError, match="buckets"):
            dk.Problem(dk.Formulation("1 + prices + x"), products, buckets=bad)


def _problems(**kwargs):
    """The same problem in one batch and in up to three buckets."""
    return [_problem(buckets=b, **kwargs) for b in (1, 3)]


def _problem(buckets, nested=False, supply=True, seed=5):
    products, agents = simulate(T=12, J=16, I=40, seed=seed, vary_sizes=True, rho=0.4 if nested else None)
    products["supply_instruments0"] = products["demand_instruments0"]
    products["supply_instruments1"] = products["x"] ** 2
    if not nested:
        products = products.drop(columns="nesting_ids")
    formulations = [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x")]
    if supply:
        formulations.append(dk.Formulation("1 + x"))
    return dk.Problem(formulations, products, dk.Formulation("0 + income"), agents, costs_type="log", buckets=buckets)


def _solve(problem, nested, micro=None):
    return problem.solve(
        sigma=[[0.7]],
        pi=[[0.3]],
        rho=0.3 if nested else None,
        beta=[np.nan, -2.0, np.nan],
        method="1s",
        optimization=dk.Optimization("return"),
        costs_bounds=(1e-3, None),
        **({} if micro is None else {"micro_moments": micro}),
    )


def _compare(whole, bucketed):
    for name in ("objective", "gradient", "delta", "xi", "omega", "beta", "gamma", "sigma_se", "beta_se"):
        a, b = getattr(whole, name), getattr(bucketed, name)
        if a is None:
            assert b is None
            continue
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("nested", [False, True], ids=["logit markups", "nested logit"])
def test_bucketed_evaluation_equals_one_batch(nested):
    whole, bucketed = _problems(nested=nested)
    assert build_buckets(whole) is None
    plan = build_buckets(bucketed)
    assert plan is not None and len(plan) >= 2
    assert max(b.products for b in plan.buckets) > min(b.products for b in plan.buckets)
    _compare(_solve(whole, nested), _solve(bucketed, nested))


def test_bucketed_gradient_matches_finite_differences():
    """theta = (sigma, pi, beta_prices): the gradient through the buckets' inversions and markups."""
    problem = _problem(buckets=3)
    theta = np.array([0.7, 0.3, -2.0])
    step = 1e-6
    numeric = [
        (_solve_at(problem, theta + step * e).objective - _solve_at(problem, theta - step * e).objective) / (2 * step)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(_solve_at(problem, theta).gradient.ravel(), numeric, rtol=1e-6)


def _solve_at(problem, theta):
    return problem.solve(
        sigma=[[theta[0]]],
        pi=[[theta[1]]],
        beta=[np.nan, theta[2], np.nan],
        method="1s",
        optimization=dk.Optimization("return"),
        costs_bounds=(1e-3, None),
        W=np.eye(problem.MD + problem.MS),
    )


def test_bucketed_micro_moments_equal_one_batch():
    whole, bucketed = _problems()
    markets = np.unique(whole.product_frame["market_ids"])[:6]
    survey = dk.MicroDataset("survey", 500, lambda t, p, a: np.ones((a.size, 1 + p.size)), market_ids=markets)
    inside = dk.MicroPart("inside", survey, lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)]))
    income_x = dk.MicroPart("income x", survey, lambda t, p, a: np.outer(a.demographics[:, 0], np.r_[0, p.X2[:, 0]]))
    micro = [
        dk.MicroMoment("P(inside)", 0.6, inside),
        dk.MicroMoment("E[income x | inside]", 0.1, [income_x, inside], lambda v: v[0] / v[1]),
    ]
    _compare(_solve(whole, False, micro), _solve(bucketed, False, micro))
