"""Kernels against slow, obvious references; padding and batching never change a number."""

import numpy as np
import pytest
import torch
from _synthetic import simulate
from scipy.special import logsumexp

import demandkit as dk
from demandkit.blp.demand import DemandModel
from demandkit.kernels.shares import Nesting, compute_probabilities, log_shares, share_jacobian

torch.set_default_dtype(torch.float64)


def _problem(products, agents, nested=False):
    if not nested:
        products = products.drop(columns="nesting_ids")
    return dk.Problem(
        (dk.Formulation("1 + prices + x"), dk.Formulation("1 + x")), products, dk.Formulation("0 + income"), agents
    )


@pytest.mark.parametrize("rho", [None, 0.6])
def test_shares_match_loop_reference(rho):
    rng = np.random.default_rng(1)
    T, J, I = 3, 5, 7
    u = torch.as_tensor(rng.normal(size=(T, J, I)))
    w = torch.as_tensor(rng.uniform(0.5, 1.5, size=(T, I)))
    ids = torch.as_tensor(rng.integers(0, 2, size=(T, J)))
    nesting = Nesting(ids, 2) if rho is not None else None
    probabilities = compute_probabilities(u, nesting, None if rho is None else torch.tensor([rho]))
    shares = torch.exp(log_shares(probabilities, torch.log(w))).numpy()
    for t in range(T):
        for i in range(I):
            ut = u[t, :, i].numpy()
            if rho is None:
                p = np.exp(ut - logsumexp(np.r_[0, ut]))
            else:
                g = ids[t].numpy()
                iv = np.array([logsumexp(ut[g == h] / (1 - rho)) if (g == h).any() else -np.inf for h in (0, 1)])
                nest = np.exp((1 - rho) * iv - logsumexp(np.r_[0, (1 - rho) * iv]))
                p = np.exp(ut / (1 - rho) - iv[g]) * nest[g]
            np.testing.assert_allclose(np.exp(probabilities.log_probabilities[t, :, i].numpy()), p, rtol=1e-13)
        np.testing.assert_allclose(
            shares[t], (np.exp(probabilities.log_probabilities[t].numpy()) * w[t].numpy()).sum(1), rtol=1e-13
        )


@pytest.mark.parametrize("rho", [None, 0.4])
def test_share_jacobian_matches_autograd(rho):
    rng = np.random.default_rng(2)
    T, J, I = 2, 4, 6
    delta = torch.as_tensor(rng.normal(size=(T, J)))
    mu = torch.as_tensor(rng.normal(size=(T, J, I)))
    w = torch.full((T, I), 1 / I)
    mask = torch.ones((T, J), dtype=torch.bool)
    nesting = Nesting(torch.as_tensor(rng.integers(0, 2, size=(T, J))), 2) if rho else None
    r = torch.tensor([rho]) if rho else None

    def shares(d):
        return torch.exp(log_shares(compute_probabilities(d.unsqueeze(-1) + mu, nesting, r), torch.log(w)))

    analytic = share_jacobian(compute_probabilities(delta.unsqueeze(-1) + mu, nesting, r), w, mask, nesting)
    for t in range(T):
        numeric = torch.autograd.functional.jacobian(shares, delta)[t, :, t, :]
        torch.testing.assert_close(analytic[t], numeric, rtol=1e-12, atol=1e-14)


def test_padding_and_batching_change_nothing():
    """Markets of unequal size solved together equal each market solved alone."""
    products, agents = simulate(T=4, J=6, I=30, vary_sizes=True, seed=3)
    sigma, pi = np.diag([0.0, 0.7]), np.array([[0.0], [0.3]])
    optimization = dk.Optimization("return")
    batched = _problem(products, agents).solve(sigma, pi, optimization=optimization, method="1s")
    assert len(set(products.groupby("market_ids").size())) > 1
    model = DemandModel(_problem(products, agents))
    assert model.mask.shape[1] == products.groupby("market_ids").size().max()
    for t in range(4):
        single_products = products[products.market_ids == t]
        single = _problem(single_products, agents[agents.market_ids == t])
        results = single.solve(sigma, pi, optimization=optimization, method="1s", W=np.eye(single.MD))
        np.testing.assert_allclose(
            results.compute_shares(), batched.compute_shares()[products.market_ids.to_numpy() == t], rtol=1e-14
        )
        delta_single = results._delta_padded[0, : len(single_products)]
        delta_batched = batched._delta_padded[t, : len(single_products)]
        torch.testing.assert_close(delta_single, delta_batched, rtol=1e-12, atol=1e-12)


def test_row_order_is_irrelevant():
    """Shuffling the rows of the product table permutes, and does not change, every output."""
    products, agents = simulate(T=5, J=5, I=20, seed=4)
    sigma, pi = np.diag([0.0, 0.7]), np.array([[0.0], [0.3]])
    order = np.random.default_rng(0).permutation(len(products))
    a = _problem(products, agents).solve(sigma, pi, optimization=dk.Optimization("return"))
    b = _problem(products.iloc[order], agents).solve(sigma, pi, optimization=dk.Optimization("return"))
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-12)
    np.testing.assert_allclose(a.xi[order], b.xi, rtol=1e-9, atol=1e-12)
    ea, eb = a.compute_elasticities(), b.compute_elasticities()
    np.testing.assert_allclose(a.extract_diagonals(ea)[order], b.extract_diagonals(eb), rtol=1e-10)
    np.testing.assert_allclose(np.nansum(ea, axis=1)[order], np.nansum(eb, axis=1), rtol=1e-10)


def test_invert_is_a_pseudo_inverse_for_singular_matrices():
    from demandkit.kernels.gmm import invert

    rng = np.random.default_rng(0)
    A = torch.as_tensor(rng.normal(size=(6, 3)))
    singular = A @ A.T  # rank 3
    inverse, flagged = invert(singular)
    assert flagged
    torch.testing.assert_close(inverse, torch.linalg.pinv(singular, hermitian=True), rtol=1e-8, atol=1e-10)
    regular = singular + torch.eye(6)
    inverse, flagged = invert(regular)
    assert not flagged
    torch.testing.assert_close(inverse @ regular, torch.eye(6, dtype=regular.dtype), rtol=1e-10, atol=1e-10)


def test_singular_weighting_matrix_warns_when_used():
    """Clustered S with fewer clusters than moments is singular: a 2-step estimate must say so."""
    products, agents = simulate(T=6, J=5, I=20, seed=14)
    products = products.drop(columns="nesting_ids").assign(clustering_ids=lambda d: d.market_ids // 3)
    problem = dk.Problem(dk.Formulation("1 + prices + x"), products)
    with pytest.warns(dk.exceptions.ConvergenceWarning, match="singular"):
        problem.solve(method="2s", W_type="clustered")


def test_float32_accuracy_bound():
    """float32 (a GPU option) with a float32-sized tolerance stays within 1e-4 of float64 at the same parameters."""
    products, agents = simulate(T=8, J=6, I=50, seed=15)
    products = products.drop(columns="nesting_ids")
    sigma, pi = np.diag([0.0, 0.7]), np.array([[0.0], [0.3]])
    results = {}
    for dtype, atol in ((torch.float64, 1e-14), (torch.float32, 1e-5)):
        problem = dk.Problem(
            (dk.Formulation("1 + prices + x"), dk.Formulation("1 + x")),
            products,
            dk.Formulation("0 + income"),
            agents,
            dtype=dtype,
        )
        results[dtype] = problem.solve(
            sigma,
            pi,
            optimization=dk.Optimization("return"),
            method="1s",
            iteration=dk.Iteration("squarem", {"atol": atol}),
        )
        assert results[dtype].fp_converged.all()
    double, single = results[torch.float64], results[torch.float32]
    np.testing.assert_allclose(single.objective, double.objective, rtol=1e-4)
    np.testing.assert_allclose(single.beta, double.beta, rtol=1e-4)
    np.testing.assert_allclose(single.delta, double.delta, rtol=1e-4, atol=1e-4)


def _markups_inputs(seed=0, T=3, J=5, I=7, uniform_alpha=True, mixed_signs=False):
    """Random logit inputs with padding: market 1 has 3 products and market 2 has 4; ``mixed_signs`` gives some
    agents a positive price derivative."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(T, J, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 4:] = False
    delta = torch.randn(T, J, generator=g, dtype=torch.float64) - 1
    mu = torch.randn(T, J, I, generator=g, dtype=torch.float64)
    mu = torch.where(mask.unsqueeze(-1), mu, 0.0)
    shape = (T, 1, I) if uniform_alpha else (T, J, I)
    alpha = -1 - torch.rand(shape, generator=g, dtype=torch.float64)
    if mixed_signs:
        alpha = alpha * torch.where(torch.arange(I) % 2 == 0, -3.0, 1.0).to(torch.float64)
    weights = torch.full((T, I), 1 / I, dtype=torch.float64)
    firm_ids = torch.tensor([[0, 1, 0, 2, 1], [3, 3, 4, 0, 0], [5, 6, 5, 5, 0]])
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    ownership = ((firm_ids.unsqueeze(-1) == firm_ids.unsqueeze(-2)) & both).to(torch.float64)
    shares = torch.where(mask, 0.1 + 0.05 * torch.rand(T, J, generator=g, dtype=torch.float64), 0.0)
    return delta, mu, alpha, weights, ownership, shares, mask


def _generic_markups(delta, mu, alpha, weights, ownership, shares, mask):
    from demandkit.kernels.markups import bertrand_markups
    from demandkit.kernels.shares import LogitProbabilities, logit_share_jacobian

    P = LogitProbabilities.apply(delta, mu, mask)
    jacobian = logit_share_jacobian(P, weights, alpha.expand_as(P))
    return bertrand_markups(jacobian, ownership, shares, mask)


@pytest.mark.parametrize("ownership_kind", ["firms", "firms_as_matrix", "partial"])
@pytest.mark.parametrize("uniform_alpha, mixed_signs", [(True, False), (False, False), (True, True)])
def test_logit_markups_closed_form_backward_matches_autograd(ownership_kind, uniform_alpha, mixed_signs):
    """Closed-form markups backward (firm sums or a full ownership matrix; price derivatives of either sign) equals
    autograd through the generic path."""
    from demandkit.blp.supply import firm_codes
    from demandkit.kernels.markups import LogitMarkups
    from demandkit.kernels.shares import LogitProbabilities

    delta, mu, alpha, weights, ownership, shares, mask = _markups_inputs(
        uniform_alpha=uniform_alpha, mixed_signs=mixed_signs
    )
    if ownership_kind == "partial":
        both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        ownership = torch.where(both, 0.5 * ownership + 0.2, 0.0)
        ownership = torch.where(torch.eye(5, dtype=torch.bool), torch.where(mask, 1.0, 0.0).unsqueeze(-1), ownership)
    firms = firm_codes(ownership, mask) if ownership_kind == "firms" else None
    assert (firms is None) == (ownership_kind != "firms")
    cotangent = torch.randn(delta.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def gradients(function):
        inputs = [x.clone().requires_grad_(True) for x in (delta, mu, alpha)]
        markups = function(*inputs)
        return [markups.detach()] + list(torch.autograd.grad((markups * cotangent).sum(), inputs))

    def fast(d, m, a):
        P = LogitProbabilities.apply(d.detach(), m.detach(), mask)
        return LogitMarkups.apply(d, m, a, P, P * weights.unsqueeze(1), weights, ownership, shares, mask, firms)

    expected = gradients(lambda d, m, a: _generic_markups(d, m, a, weights, ownership, shares, mask))
    for got, want, name in zip(gradients(fast), expected, ["markups", "delta", "mu", "alpha"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    assert bool((expected[0][~mask] == 0).all())


def test_lu_factor_transposed_solves_the_untransposed_system():
    from demandkit.kernels.linalg import lu_factor_transposed

    g = torch.Generator().manual_seed(5)
    matrix = torch.randn(4, 6, 6, generator=g, dtype=torch.float64) + 3 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(4, 6, 1, generator=g, dtype=torch.float64)
    factors, pivots = lu_factor_transposed(matrix.mT.contiguous())
    torch.testing.assert_close(torch.linalg.lu_solve(factors, pivots, rhs), torch.linalg.solve(matrix, rhs))
    adjoint = torch.linalg.lu_solve(factors, pivots, rhs, adjoint=True)
    torch.testing.assert_close(adjoint, torch.linalg.solve(matrix.mT, rhs))
    singular = lu_factor_transposed(torch.zeros(1, 3, 3, dtype=torch.float64))  # no error: non-finite solutions
    assert not bool(torch.isfinite(torch.linalg.lu_solve(*singular, torch.ones(1, 3, 1, dtype=torch.float64))).all())


def test_firm_codes_describe_firm_ownership_only():
    from demandkit.blp.supply import firm_codes

    _, _, _, _, ownership, _, mask = _markups_inputs()
    firms = firm_codes(ownership, mask)
    assert firms.count == 3  # at most three firms in a market
    codes = firms.flat.view(3, 5)
    assert bool(((codes // firms.count) == torch.arange(3).unsqueeze(-1)).all())  # each market's own firms
    both = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    same = (codes.unsqueeze(-1) == codes.unsqueeze(-2)) & both
    torch.testing.assert_close(same.to(torch.float64), ownership)
    values = torch.randn(3, 5, 4, dtype=torch.float64)
    scale = torch.where(mask, torch.randn(3, 5, dtype=torch.float64), 0.0)
    expected = torch.einsum("tjk,tk,tki->tji", ownership, scale, values)  # sum_k O_jk c_k v_ki
    torch.testing.assert_close(
        firms.spread(firms.sum(values, scale), torch.ones(3, 5, dtype=torch.float64)) * mask.unsqueeze(-1), expected
    )
    assert firm_codes(0.5 * ownership, mask) is None  # kappa-style partial ownership
    broken = ownership.clone()
    broken[0, 0, 2] = 0.0  # not symmetric: not an equivalence of products
    assert firm_codes(broken, mask) is None


def test_reuse_freed_memory_nests_and_can_be_switched_off(monkeypatch):
    from demandkit import memory

    with memory.reuse_freed_memory(), memory.reuse_freed_memory():
        assert memory._depth == (2 if memory.enabled() else 0)
        torch.ones(1 << 20, dtype=torch.float64).sum()  # a large temporary inside the block
    assert memory._depth == 0
    monkeypatch.setenv("DEMANDKIT_REUSE_MEMORY", "0")
    assert not memory.enabled()
    with memory.reuse_freed_memory():
        assert memory._depth == 0
