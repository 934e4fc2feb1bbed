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
