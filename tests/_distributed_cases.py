"""The two problems of tests/test_distributed.py, shared by the test (one process) and the torchrun job."""

from __future__ import annotations

import demandkit as dk

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


def blp_results(distributed: bool | None = None, absorbed: bool = False) -> dict:
    """A random-coefficients logit with Pi, log marginal costs (Bertrand-Nash supply) and a micro moment; or, with
    ``absorbed``, firm and market fixed effects absorbed into X1 and firm fixed effects into X3 (groups that span
    the ranks' markets) without the micro moment."""
    import numpy as np
    import pandas as pd

    from demandkit.construction.instruments import build_differentiation_instruments, build_id_data

    rng = np.random.default_rng(5)
    T, J, I = 12, 5, 40
    ids = build_id_data(T, J, 3)
    products = pd.DataFrame(
        {
            "market_ids": ids.market_ids.ravel().astype(int),
            "firm_ids": ids.firm_ids.ravel().astype(int),
            "x": rng.uniform(0, 2, T * J),
            "w": rng.uniform(0, 1, T * J),
        }
    )
    markets = np.repeat(np.arange(T), I)
    agents = pd.DataFrame(
        {
            "market_ids": markets,
            "weights": 1 / I,
            "nodes0": rng.normal(size=markets.size),
            "nodes1": rng.normal(size=markets.size),
            "income": rng.normal(size=markets.size),
        }
    )
    simulation = dk.Simulation(
        [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x + prices"), dk.Formulation("1 + w")],
        products,
        beta=[3, -2, 1],
        sigma=[[0.7, 0], [0, 0]],
        pi=[[0], [0.3]],
        gamma=[1, 1],
        agent_formulation=dk.Formulation("0 + income"),
        agent_data=agents,
        xi_variance=0.2,
        omega_variance=0.2,
        correlation=0.7,
        costs_type="log",
        seed=5,
    )
    frame = simulation.replace_endogenous().product_data
    differences = build_differentiation_instruments(dk.Formulation("0 + x + w"), frame, "quadratic", interact=True)
    columns = {f"demand_instruments{k}": differences[:, k] for k in range(differences.shape[1])}
    columns.update({f"supply_instruments{k}": differences[:, k] for k in range(differences.shape[1])})
    formulations = [dk.Formulation("1 + prices + x"), dk.Formulation("0 + x + prices"), dk.Formulation("1 + w")]
    if absorbed:
        formulations[0] = dk.Formulation("0 + prices + x", absorb="C(firm_ids) + C(market_ids)")
        formulations[2] = dk.Formulation("0 + w", absorb="C(firm_ids)")
    problem = dk.Problem(formulations, frame.assign(**columns), dk.Formulation("0 + income"), agents, costs_type="log")
    survey = dk.MicroDataset("survey", 500, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    income_inside = dk.MicroPart(
        "E[income 1{j>0}]", survey, lambda t, p, a: np.outer(a.demographics[:, 0], np.r_[0, np.ones(p.size)])
    )
    inside = dk.MicroPart("E[1{j>0}]", survey, lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, np.ones(p.size)]))
    moments = [dk.MicroMoment("E[income | inside]", 0.1, [income_inside, inside], lambda v: v[0] / v[1])]
    results = problem.solve(
        sigma=[[0.5, 0], [0, 0]],
        pi=[[0], [0.2]],
        beta=[-1.5, None] if absorbed else [None, -1.5, None],
        micro_moments=() if absorbed else moments,
        optimization=dk.Optimization("l-bfgs-b", {"gtol": 1e-8}),
        distributed=distributed,
    )
    names = ["theta", "sigma_se", "pi_se", "beta", "beta_se", "gamma", "gamma_se", "xi", "omega", "micro_values", "W"]
    names = names + ["delta"] if absorbed else names
    return {name: getattr(results, name) for name in names} | {"objective": results.objective}
