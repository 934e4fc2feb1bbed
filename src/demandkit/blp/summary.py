"""Plain-text tables of estimates in the layout economists expect (standard errors in parentheses)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..settings import options


def _number(x: float) -> str:
    """``x`` with ``demandkit.options.digits`` significant digits (5 by default)."""
    return "NaN" if not np.isfinite(x) else f"{x:+.{options.digits - 1}E}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(header)]
    line = "=" * (sum(widths) + len(widths) - 1)
    out = [
        title,
        line,
        " ".join(h.center(w) for h, w in zip(header, widths, strict=True)),
        " ".join("-" * w for w in widths),
    ]
    out += [" ".join(c.center(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(line)
    return "\n".join(out)


def _matrix_table(
    title: str, rows: list[str], columns: list[str], values: np.ndarray, se: np.ndarray, free: set[tuple[int, int]]
) -> str:
    body: list[list[str]] = []
    for r, label in enumerate(rows):
        estimate = [label] + [(_number(values[r, c]) if (r, c) in free else "") for c in range(len(columns))]
        errors = [""] + [(f"({_number(se[r, c])})" if (r, c) in free else "") for c in range(len(columns))]
        body += [estimate, errors]
    return _table(title, ["", *columns], body)


def _eigenvalue_extremes(eigenvalues: np.ndarray) -> list[str]:
    """The smallest and largest eigenvalue (of the reduced Hessian), or blanks where it was not computed."""
    if not eigenvalues.size or not np.isfinite(eigenvalues).all():
        return ["", ""]
    return [_number(float(eigenvalues.min())), _number(float(eigenvalues.max()))]


def format_results(results: Any) -> str:
    """The summary printed for :class:`~demandkit.blp.results.ProblemResults`."""
    se_name = {"robust": "Robust", "clustered": "Clustered", "unadjusted": "Unadjusted"}[results.se_type]
    parts = [
        _table(
            "Problem Results Summary:",
            [
                "GMM Step",
                "Objective",
                "Gradient Norm",
                "Hessian Min Eigenvalue",
                "Hessian Max Eigenvalue",
                "Optimizer Converged",
                "Markets Not Inverted",
                "Weighting Condition",
            ],
            [
                [
                    str(results.step),
                    _number(results.objective),
                    _number(results.gradient_norm),
                    *_eigenvalue_extremes(results.reduced_hessian_eigenvalues),
                    "Yes" if results.converged else "No",
                    str(int((~results.fp_converged).sum())),
                    _number(float(np.linalg.cond(results.W))),
                ]
            ],
        ),
        _table(
            "Cumulative Statistics:",
            [
                "Computation Time",
                "Optimizer Iterations",
                "Objective Evaluations",
                "Fixed Point Iterations",
                "Contraction Evaluations",
            ],
            [
                [
                    f"{results.total_time:.2f} s",
                    str(results.cumulative_optimization_iterations),
                    str(results.cumulative_objective_evaluations),
                    str(results.cumulative_total_fp_iterations),
                    str(results.cumulative_total_contraction_evaluations),
                ]
            ],
        ),
    ]
    beta_rows = [[_number(v) for v in results.beta[:, 0]], [f"({_number(v)})" for v in results.beta_se[:, 0]]]
    if results.beta.size:
        parts.append(_table(f"Beta Estimates ({se_name} SEs in Parentheses):", results.beta_labels, beta_rows))
    if results.gamma.size:
        gamma_rows = [[_number(v) for v in results.gamma[:, 0]], [f"({_number(v)})" for v in results.gamma_se[:, 0]]]
        parts.append(_table(f"Gamma Estimates ({se_name} SEs in Parentheses):", results.gamma_labels, gamma_rows))
        if results.clipped_costs.any():
            parts.append(
                f"Note: {int(results.clipped_costs.sum())} marginal cost(s) were clipped to "
                f"costs_bounds={results.costs_bounds}."
            )
    space = results._space
    if space.sigma_index[0].size:
        free = set(zip(*(i.tolist() for i in space.sigma_index), strict=True))
        parts.append(
            _matrix_table(
                f"Sigma Estimates ({se_name} SEs in Parentheses):",
                results.sigma_labels,
                results.sigma_labels,
                results.sigma,
                results.sigma_se,
                free,
            )
        )
    if space.pi_index[0].size:
        free = set(zip(*(i.tolist() for i in space.pi_index), strict=True))
        parts.append(
            _matrix_table(
                f"Pi Estimates ({se_name} SEs in Parentheses):",
                results.sigma_labels,
                results.pi_labels,
                results.pi,
                results.pi_se,
                free,
            )
        )
    if space.rho_index.size:
        labels = [f"rho[{k}]" for k in space.rho_index]
        parts.append(
            _table(
                f"Rho Estimates ({se_name} SEs in Parentheses):",
                labels,
                [
                    [_number(results.rho[k, 0]) for k in space.rho_index],
                    [f"({_number(results.rho_se[k, 0])})" for k in space.rho_index],
                ],
            )
        )
    phi = getattr(results, "phi", None)
    if phi is not None and phi.size:  # AR(1) unobservables: PyBLP's phi, rows and columns labelled Xi, Omega
        rows, columns = np.nonzero(np.isfinite(results.phi_se))
        labels = [f"{results.phi_labels[r]} on {results.phi_labels[c]}" for r, c in zip(rows, columns, strict=True)]
        parts.append(
            _table(
                f"Phi Estimates ({se_name} SEs in Parentheses):",
                labels,
                [
                    [_number(phi[r, c]) for r, c in zip(rows, columns, strict=True)],
                    [f"({_number(results.phi_se[r, c])})" for r, c in zip(rows, columns, strict=True)],
                ],
            )
        )
    if results.micro_moments:
        parts.append(_micro_table(results))
    if len(results.first_stage):
        parts.append(
            _table(
                "First-Stage Diagnostics (endogenous X1 on the demand instruments):",
                ["Column", "F (excluded instruments)", "Partial R2"],
                [
                    [row.column, f"{row.F:.2f}" + (" (weak: F < 10)" if row.F < 10 else ""), f"{row.partial_R2:.4f}"]
                    for row in results.first_stage.itertuples()
                ],
            )
        )
    if not results.fp_converged.all():
        parts.append("WARNING: the inversion for delta did not converge in some markets; the estimates are not valid.")
    return "\n\n".join(parts)


def _micro_table(results: Any) -> str:
    """The micro moments: observed and estimated values, their difference, and the parts and datasets (one row
    per part, the moment's numbers on its first)."""
    rows = []
    for moment, value in zip(results.micro_moments, results.micro_values[:, 0], strict=True):
        for k, part in enumerate(moment["parts"]):
            markets = "All" if part["markets"] is None else str(len(part["markets"]))
            if part.get("market_pairs"):
                markets = f"{len(part['market_pairs'])} pairs"
            numbers = [_number(moment["value"]), _number(value), _number(moment["value"] - value), moment["name"]]
            described = [part["name"], part["dataset"], str(part["observations"]), markets]
            rows.append((numbers if k == 0 else ["", "", "", ""]) + described)
    header = ["Observed", "Estimated", "Difference", "Moment", "Part", "Dataset", "Observations", "Markets"]
    return _table("Estimated Micro Moments:", header, rows)
