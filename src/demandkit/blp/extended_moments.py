"""PyBLP's extended aggregate moments: covariance restrictions and AR(1) unobservables.

Covariance restrictions (MacKay and Miller) add, for covariance instruments :math:`Z_C` (``product_data`` field
``covariance_instruments``) and a chosen mean :math:`m` (``covariance_moments_mean``, zero by default),

.. math::

    E[g_{C,jt}] = E[(\\xi_{jt}\\omega_{jt} - m) Z_{C,jt}] = 0,

stacked after the demand and supply moments (before any micro moments). As in PyBLP, the concentrated linear
parameters :math:`(\\beta_c, \\gamma_c)` are still the IV-GMM estimates from the demand and supply moments under the
upper-left block of :math:`W`; the covariance moments, which are not linear in them, inform :math:`\\theta` only.

AR(1) unobservables follow, with the lag operator :math:`L` of ``product_data``'s ``lag_indices``,

.. math::

    \\xi_{jt} = \\phi_\\xi L\\xi_{jt} + \\phi_{\\xi\\omega} L\\omega_{jt} + \\tilde\\xi_{jt}, \\qquad
    \\omega_{jt} = \\phi_\\omega L\\omega_{jt} + \\phi_{\\omega\\xi} L\\xi_{jt} + \\tilde\\omega_{jt},

and a block of moments is of type ``'levels'`` (:math:`\\xi Z`), ``'innovations'`` (:math:`\\tilde\\xi Z`, zero
for rows without a lag) or ``'differenced_innovations'`` (:math:`(\\tilde\\xi - L\\tilde\\xi) Z`, zero for rows
without two lags). The quasi-differences apply to the left-hand sides and regressors alike, so the concentrated
linear parameters solve one stacked IV-GMM system with block-diagonal instruments, one block per moment type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..exceptions import InvalidDataError, SpecificationError
from ..kernels.gmm import invert
from ..layout.validation import numbered_columns
from .economy import GMM_DTYPE
from .parameters import ParameterSpace

MOMENT_TYPES = ("levels", "innovations", "differenced_innovations")
"""PyBLP's moment types."""

PHI_LABELS = ("Xi", "Omega")
"""PyBLP's labels of the rows and columns of :math:`\\phi`."""


def parse_moment_types(value: Any, M: int, side: str) -> list[tuple[str, int]]:
    """``demand_moment_types`` or ``supply_moment_types`` as ``[(type, instruments), ...]``.

    Parameters
    ----------
    value : str or sequence of (str, int)
        One type for all :math:`M` instruments, or blocks of consecutive instruments, one per distinct type.
    M : int
        The side's number of instruments.
    side : {'demand', 'supply'}
        For messages.

    Raises
    ------
    SpecificationError
        An unknown type, a repeated type, or counts that do not sum to :math:`M`.
    """
    name = f"{side}_moment_types"
    if isinstance(value, str):
        value = [(value, M)]
    if not isinstance(value, list | tuple):
        raise SpecificationError(f"{name} must be a string or a sequence of (type, instruments) tuples.")
    parsed = []
    for item in value:
        valid = isinstance(item, tuple | list) and len(item) == 2 and item[0] in MOMENT_TYPES
        if not valid or isinstance(item[1], bool) or not isinstance(item[1], int | np.integer) or not 0 <= item[1] <= M:
            raise SpecificationError(
                f"{name} must be one of {MOMENT_TYPES} or a sequence of (type, instruments) tuples with a type among "
                f"them and between 0 and {M} instruments; received {item!r}."
            )
        parsed.append((str(item[0]), int(item[1])))
    if len({kind for kind, _ in parsed}) != len(parsed):
        raise SpecificationError(f"{name} cannot repeat a type.")
    if sum(count for _, count in parsed) != M:
        raise SpecificationError(f"{name}'s instrument counts must sum to the number of {side} instruments, {M}.")
    return parsed


def covariance_instruments(problem: Any) -> np.ndarray:
    """:math:`Z_C`, ``N x M_C``: the ``covariance_instruments`` field (numbered or one column) of the product data."""
    frame = problem.product_frame
    names = numbered_columns(frame, "covariance_instruments", "product_data")
    values = frame[names].to_numpy(dtype=np.float64) if names else np.zeros((len(frame), 0))
    if not np.isfinite(values).all():
        raise InvalidDataError("The covariance_instruments field of product_data has NaNs or infinities.")
    return values


def lag_indices(problem: Any) -> np.ndarray | None:
    """``product_data``'s ``lag_indices`` (the row of each product's lag; its own row in its first period), checked."""
    frame = problem.product_frame
    if "lag_indices" not in frame.columns:
        return None
    values = frame["lag_indices"].to_numpy()
    N = len(frame)
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.mod(values, 1) == 0):
        raise InvalidDataError("lag_indices in product_data must be integers.")
    values = values.astype(np.int64)
    rows = np.arange(N)
    initial = values == rows
    if (values < 0).any() or (values > N - 1).any():
        raise InvalidDataError(f"lag_indices in product_data must be between 0 and N - 1 = {N - 1}.")
    if not initial.any() or np.unique(values[~initial]).size != (~initial).sum():
        raise InvalidDataError(
            "lag_indices in product_data must hold some rows' own indices (first periods) and otherwise distinct rows."
        )
    return values


@dataclass(frozen=True)
class Lags:
    """The lag operator :math:`L` on product rows: ``index`` of each row's lag, whether it has one and two lags."""

    index: Tensor  # [N]
    first: Tensor  # [N] bool: has a lag
    second: Tensor  # [N] bool: has a lag whose row has a lag

    @classmethod
    def build(cls, indices: np.ndarray, device: Any) -> Lags:
        first = indices != np.arange(indices.size)
        second = first & first[indices]
        return cls(*(torch.as_tensor(x, device=device) for x in (indices, first, second)))

    def transform(self, kind: str, x: Tensor, phi: Tensor, other: Tensor | None, other_phi: Tensor | None) -> Tensor:
        """The innovation :math:`x - \\phi Lx - \\phi_o Lx_o` (``'innovations'``) or its difference from its own lag
        (``'differenced_innovations'``), zero on rows without the lags it needs; ``x`` is ``[N]`` or ``[N, K]``."""
        quasi = x - phi * x[self.index]
        if other is not None:
            quasi = quasi - other_phi * other[self.index]
        mask = self.first
        if kind == "differenced_innovations":
            quasi = quasi - quasi[self.index]
            mask = self.second
        return torch.where(mask.reshape(-1, *([1] * (x.dim() - 1))), quasi, torch.zeros_like(quasi))


def with_phi(space: ParameterSpace, problem: Any, phi: Any, phi_bounds: Any, bounded: bool) -> ParameterSpace:
    """``space`` with :math:`\\phi`'s free elements inserted into :math:`\\theta` after :math:`\\rho` (PyBLP's order).

    :math:`\\phi` is a scalar :math:`\\phi_\\xi` without a supply side, otherwise :math:`2 \\times 2` (rows and columns
    ``Xi``, ``Omega``); zeros stay fixed at zero, as do elements with equal bounds. Without ``lag_indices`` it must be
    None; with them, None means zeros.
    """
    size = 2 if problem.K3 else 1
    lags = lag_indices(problem) is not None
    if not lags:
        if phi is not None and np.asarray(phi).size:
            raise SpecificationError("phi can be given only when product_data has lag_indices.")
        return space
    phi0 = np.zeros((size, size)) if phi is None else np.atleast_2d(np.asarray(phi, dtype=np.float64))
    if phi0.shape != (size, size) or not np.isfinite(phi0).all():
        raise SpecificationError(f"phi must be a finite {size} by {size} matrix; received {np.asarray(phi)!r}.")
    lower, upper = np.full_like(phi0, -np.inf), np.full_like(phi0, np.inf)
    if phi_bounds is not None:
        if len(phi_bounds) != 2:
            raise SpecificationError("phi_bounds must be a tuple (lb, ub).")
        given = [np.atleast_2d(np.asarray(np.where(b is None, np.nan, b), dtype=np.float64)) for b in phi_bounds]
        if any(b.shape != phi0.shape for b in given):
            raise SpecificationError(f"phi_bounds' lb and ub must be {size} by {size}, like phi.")
        lower, upper = np.nan_to_num(given[0], nan=-np.inf), np.nan_to_num(given[1], nan=np.inf)
        if ((phi0 < lower) | (phi0 > upper)).any():
            raise SpecificationError("phi must lie within phi_bounds.")
        if not bounded:  # only bounds that fix elements, as PyBLP
            lower, upper = np.where(lower == upper, lower, -np.inf), np.where(lower == upper, upper, np.inf)
    rows, columns = np.nonzero(phi0)
    index = (rows.astype(np.int64), columns.astype(np.int64))
    offset = space.P_demand
    labels = [f"phi[{PHI_LABELS[r]}, {PHI_LABELS[c]}]" for r, c in zip(*index, strict=True)]
    insert = np.full(len(labels), offset, dtype=np.int64)
    return ParameterSpace(
        *(getattr(space, name) for name in ("sigma0", "pi0", "rho0", "sigma_index", "pi_index", "rho_index")),
        *(getattr(space, name) for name in ("beta0", "gamma0", "beta_index", "gamma_index")),
        np.insert(space.lower, insert, lower[index]),
        np.insert(space.upper, insert, upper[index]),
        space.labels[:offset] + labels + space.labels[offset:],
        phi0,
        index,
    )


class ExtendedMoments:
    """The moment types, covariance instruments and lags of a ``solve`` call, and the moments they define.

    Parameters
    ----------
    problem : Problem
    demand_moment_types, supply_moment_types : str or sequence of (str, int)
        PyBLP's; see :func:`parse_moment_types`.
    covariance_moments_mean : float
        :math:`m` in the covariance moments.
    """

    def __init__(self, problem: Any, demand_moment_types: Any, supply_moment_types: Any, mean: Any) -> None:
        if isinstance(mean, bool) or not isinstance(mean, int | float | np.floating | np.integer):
            raise SpecificationError(f"covariance_moments_mean must be a float; received {mean!r}.")
        self.problem, self.mean = problem, float(mean)
        self.demand_types = parse_moment_types(demand_moment_types, problem.MD, "demand")
        supply_types = parse_moment_types(supply_moment_types, problem.MS, "supply")
        self.supply_types = supply_types if problem.K3 else []
        ZC = covariance_instruments(problem)
        if ZC.shape[1] and not problem.K3:
            raise SpecificationError("Covariance instruments need a supply side (omega) for E[xi omega Z_C] = 0.")
        self.MC = ZC.shape[1]
        self.ZC = torch.as_tensor(ZC, dtype=GMM_DTYPE, device=problem.device)
        indices = lag_indices(problem)
        self.lags = None if indices is None else Lags.build(indices, problem.device)
        self.differenced = any(kind != "levels" for kind, _ in self.demand_types + self.supply_types)
        if self.differenced:
            if self.lags is None:
                raise SpecificationError("Moment types other than 'levels' need lag_indices in product_data.")
            if self.MC:
                raise SpecificationError("Moment types other than 'levels' and covariance instruments cannot be mixed.")
            if problem.ED or problem.ES:
                raise SpecificationError(
                    "Moment types other than 'levels' and absorbed fixed effects cannot be mixed (use dummies)."
                )
        split = [torch.split(problem.ZD_tensor, [c for _, c in self.demand_types], dim=1)]
        if problem.K3:
            split.append(torch.split(problem.ZS_tensor, [c for _, c in self.supply_types], dim=1))
        self.Z_list = [Z for blocks in split for Z in blocks]

    @property
    def active(self) -> bool:
        """Whether the moments differ from the plain levels (covariance instruments, other types, or lags)."""
        return bool(self.MC or self.differenced or self.lags is not None)

    @property
    def M(self) -> int:
        """Number of aggregate moments, :math:`M_D + M_S + M_C`."""
        return self.problem.MD + self.problem.MS + self.MC

    def initial_W(self) -> Tensor:
        """PyBLP's 2SLS weighting matrix: block-diagonal :math:`(Z_b'Z_b/N)^{-1}` over the type blocks and
        :math:`Z_C`."""
        N = self.problem.N
        blocks = self.Z_list + ([self.ZC] if self.MC else [])
        return torch.block_diag(*[invert(Z.T @ Z / N)[0] for Z in blocks])

    def equations(self, xi: Tensor, omega: Tensor | None, phi: Tensor) -> list[Tensor]:
        """The left-hand sides (or regressors, or residuals) of each moment block from the levels ``xi`` and
        ``omega`` (``[N]`` or ``[N, K]``), demand blocks first."""
        stacked = []
        for kind, _ in self.demand_types:
            if kind == "levels":
                stacked.append(xi)
            else:
                assert self.lags is not None
                cross = (omega, phi[0, 1]) if omega is not None else (None, None)
                stacked.append(self.lags.transform(kind, xi, phi[0, 0], *cross))
        for kind, _ in self.supply_types:
            assert omega is not None
            if kind == "levels":
                stacked.append(omega)
            else:
                assert self.lags is not None
                stacked.append(self.lags.transform(kind, omega, phi[1, 1], xi, phi[1, 0]))
        return stacked

    def aggregate(self, u_list: list[Tensor], xi: Tensor, omega: Tensor | None) -> Tensor:
        """:math:`\\bar g = (Z_b'u_b/N, \\dots, Z_C'(\\xi\\omega - m)/N)`."""
        N = self.problem.N
        g = [Z.T @ u / N for Z, u in zip(self.Z_list, u_list, strict=True)]
        if self.MC:
            assert omega is not None
            g.append(self.ZC.T @ (xi * omega - self.mean) / N)
        return torch.cat(g)

    def terms(self, xi: Tensor, omega: Tensor | None, phi: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The errors and instruments whose products are the moment contributions, for :math:`S`."""
        u_list, Z_list = self.equations(xi, omega, phi), list(self.Z_list)
        if self.MC:
            assert omega is not None
            u_list.append(xi * omega - self.mean)
            Z_list.append(self.ZC)
        return u_list, Z_list
