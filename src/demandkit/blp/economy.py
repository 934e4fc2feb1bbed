"""``Economy``: product and agent tables, validated and laid out as batched tensors.

Columns follow PyBLP: products have ``market_ids``, ``shares``, ``prices``, ``firm_ids``, ``nesting_ids``,
``clustering_ids``, ``demand_instruments0..``, ``supply_instruments0..``; agents have ``market_ids``, ``weights``,
``nodes0..`` and demographics. Exogenous columns of X1 (those that do not move with prices) are added to the
demand instruments unless ``add_exogenous=False``. Estimation (``Problem.solve``) lives one floor up, in
:mod:`demandkit.blp.problem`, so that everything between the data and the estimator can take an ``Economy``
without importing the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..configurations.formulation import Formulation, absorb
from ..configurations.integration import Integration
from ..configurations.options import CostsType, RCType, check_choice
from ..construction.ownership import ownership_from_firms
from ..device import resolve_device
from ..exceptions import InvalidDataError, SpecificationError
from ..layout.padding import Layout
from ..layout.validation import (
    as_frame,
    check_agent_markets,
    check_finite,
    check_full_rank,
    check_shares,
    check_weights,
    label,
    numbered_columns,
    require_columns,
    require_rows,
    warn_duplicate_products,
)
from ..settings import as_torch_dtype, options
from .availability import log_availability
from .identifiers import ProblemIdentifiers
from .product_demographics import build_demographics, pad_product_demographics
from .records import agent_records, cached_product_records


def check_epsilon_scale(epsilon_scale: Any) -> float:
    """PyBLP's ``epsilon_scale`` (in its position among the arguments): only 1, the logit's own scale."""
    if isinstance(epsilon_scale, bool) or not isinstance(epsilon_scale, (int, float)) or epsilon_scale != 1:
        raise SpecificationError(
            f"epsilon_scale must be 1; received {epsilon_scale!r}. Scaling the logit error (PyBLP's approximation to "
            "the pure characteristics model of Berry and Pakes 2007) is not supported."
        )
    return 1.0


GMM_DTYPE = torch.float64
"""The precision of the row-level data (X1, Z_D, X3, Z_S) and of all GMM algebra on it: the weighting matrix, the
concentrated linear parameters, the moments and the objective. ``dtype=torch.float32`` lowers only the per-market
work (shares, the inversion, markups); :math:`(Z'Z/N)^{-1}` and its kin are often too ill-conditioned for float32
(Nevo's has a condition number near :math:`10^8`)."""


@dataclass(frozen=True)
class Design:
    """Numpy side of a problem: matrices in the user's row order and their labels."""

    X1: np.ndarray  # [N, K1] (absorbed)
    X1_labels: list[str]
    X1_raw: np.ndarray  # before absorption
    X2: np.ndarray  # [N, K2]
    X2_labels: list[str]
    ZD: np.ndarray  # [N, MD] (absorbed)
    ZD_labels: list[str]
    endogenous: list[str]
    absorb_ids: np.ndarray | None
    demographics_labels: list[str]


class Economy(ProblemIdentifiers):
    """The data of a BLP problem laid out once as padded ``[T, J, ...]`` tensors (PyBLP's ``Economy``).

    Everything a model needs (designs, instruments, agents, ownership, nests, fixed-effect codes) and nothing of
    estimation: :class:`~demandkit.blp.problem.Problem` adds ``solve``, and the kernels, the objective, the
    results and the counterfactuals take an ``Economy``. The arguments are :class:`~demandkit.Problem`'s. PyBLP's
    ``unique_*_ids``, ``F``, ``MC``, ``ED`` and ``ES`` come from :class:`~demandkit.blp.identifiers.ProblemIdentifiers`.

    Attributes
    ----------
    product_frame : DataFrame
        The product data as given, a DataFrame.
    products : numpy.recarray
        PyBLP's ``Problem.products``: one row per product, with the identifiers, ``shares``, the instruments
        ``ZD``, ``ZS``, ``ZC``, the designs ``X1``, ``X2``, ``X3`` (after absorbing fixed effects, as estimation uses
        them) and the variables the formulations read (:mod:`demandkit.blp.records`).
    agents : numpy.recarray or None
        PyBLP's ``Problem.agents`` (None without random coefficients).
    """

    def __init__(
        self,
        product_formulations: Formulation | Sequence[Formulation | None],
        product_data: Any,
        agent_formulation: Formulation | None = None,
        agent_data: Any = None,
        integration: Integration | None = None,
        rc_types: Sequence[str] | None = None,
        epsilon_scale: float = 1.0,
        costs_type: str = "linear",
        add_exogenous: bool = True,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        buckets: int | None = None,
    ) -> None:
        self.epsilon_scale = check_epsilon_scale(epsilon_scale)
        if buckets is not None and (isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1):
            raise SpecificationError(f"buckets must be None or a positive integer; received {buckets!r}.")
        self.buckets = buckets
        formulations = (
            [product_formulations] if isinstance(product_formulations, Formulation) else list(product_formulations)
        )
        while len(formulations) < 3:
            formulations.append(None)
        if formulations[0] is None:
            raise SpecificationError("product_formulations must start with the X1 formulation.")
        check_choice("costs_type", costs_type, CostsType)
        self.product_formulations = tuple(formulations)
        self.agent_formulation = agent_formulation
        self.integration = integration
        self.costs_type = costs_type
        self.add_exogenous = add_exogenous
        self.device = resolve_device(device)
        self.dtype = options.dtype if dtype is None else as_torch_dtype(dtype)
        self.product_frame = as_frame(product_data, "product_data")
        require_rows(self.product_frame, "product_data")
        self._build_products()
        self.K2 = self.design.X2.shape[1]
        self.rc_types = tuple(rc_types) if rc_types is not None else ("linear",) * self.K2
        if len(self.rc_types) != self.K2:
            raise SpecificationError(
                f"rc_types must have {self.K2} entries, one per X2 column; received {self.rc_types}."
            )
        for kind in self.rc_types:
            check_choice("rc_types entry", kind, RCType)
        self._build_agents(agent_data)
        self._build_supply()
        self._build_tensors()

    @property
    def products(self) -> np.recarray:
        """PyBLP's ``Problem.products``, a record array with one row per product (:mod:`demandkit.blp.records`)."""
        return cached_product_records(self, self)

    # -------------------------------------------------------------- products
    def _build_products(self) -> None:
        frame = self.product_frame
        require_columns(frame, ["market_ids", "shares"], "product_data")
        X1_formulation, X2_formulation = self.product_formulations[:2]
        if X2_formulation is not None and X2_formulation.absorb:
            raise SpecificationError("Fixed effects can be absorbed only into X1, not X2.")
        used = (
            {"shares"}
            | X1_formulation.numeric_variables
            | (X2_formulation.numeric_variables if X2_formulation else set())
        )
        for formulation in (X1_formulation, X2_formulation):
            if formulation is not None:
                require_columns(frame, sorted(formulation.variables), "product_data")
        instrument_names = numbered_columns(frame, "demand_instruments", "product_data")
        check_finite(frame, sorted(used) + instrument_names, "product_data")
        if frame["market_ids"].isna().any():
            raise SpecificationError("Column 'market_ids' of product_data has missing values.")
        warn_duplicate_products(frame, "product_data", stacklevel=3)
        self.market_ids_of_rows = frame["market_ids"].to_numpy()
        self.shares = frame["shares"].to_numpy(dtype=np.float64)
        check_shares(self.shares, self.market_ids_of_rows)
        self.layout = Layout.build(self.market_ids_of_rows)
        self.N_rows = len(frame)

        X1_raw, X1_labels = X1_formulation.build_matrix(frame)
        X2, X2_labels = (
            X2_formulation.build_matrix(frame) if X2_formulation is not None else (np.zeros((len(frame), 0)), [])
        )
        endogenous = self._endogenous_columns(X1_formulation, frame, X1_raw, X1_labels)
        exogenous = [k for k, label in enumerate(X1_labels) if label not in endogenous]
        Z_raw = frame[instrument_names].to_numpy(dtype=np.float64) if instrument_names else np.zeros((len(frame), 0))
        Z_labels = list(instrument_names)
        if self.add_exogenous:
            Z_raw = np.column_stack([Z_raw, X1_raw[:, exogenous]])
            Z_labels += [X1_labels[k] for k in exogenous]
        absorb_ids = X1_formulation.build_ids(frame)
        X1 = absorb(X1_raw, absorb_ids, X1_formulation.absorb_method, X1_formulation.absorb_options)
        ZD = absorb(Z_raw, absorb_ids, X1_formulation.absorb_method, X1_formulation.absorb_options)
        check_full_rank(X1, X1_labels, "X1")
        check_full_rank(ZD, Z_labels, "The demand instruments")
        self.nesting_ids = frame["nesting_ids"].to_numpy() if "nesting_ids" in frame.columns else None
        self.clustering_ids = frame["clustering_ids"].to_numpy() if "clustering_ids" in frame.columns else None
        self.design = Design(X1, X1_labels, X1_raw, X2, X2_labels, ZD, Z_labels, endogenous, absorb_ids, [])

    @staticmethod
    def _endogenous_columns(
        formulation: Formulation, frame: pd.DataFrame, X1: np.ndarray, labels: list[str]
    ) -> list[str]:
        """Labels of X1 columns that move when prices move (the endogenous ones)."""
        if "prices" not in formulation.variables:
            return []
        shifted = frame.copy()
        shifted["prices"] = shifted["prices"] * 1.5 + 1.0
        moved = np.any(formulation.build_matrix(shifted)[0] != X1, axis=0)
        return [labels[k] for k in np.flatnonzero(moved)]

    # ---------------------------------------------------------------- supply
    def _build_supply(self) -> None:
        """X3, the supply instruments, ownership and the price derivatives of the designs."""
        frame = self.product_frame
        X3_formulation = self.product_formulations[2]
        self.K3 = 0
        self.X3 = np.zeros((self.N_rows, 0))
        self.X3_labels: list[str] = []
        self.ZS = np.zeros((self.N_rows, 0))
        self.ZS_labels: list[str] = []
        self.supply_absorb_ids = None
        if X3_formulation is not None:
            require_columns(frame, ["prices", "firm_ids"], "product_data (a supply side needs them)")
            require_columns(frame, sorted(X3_formulation.variables - {"shares"}), "product_data")
            instrument_names = numbered_columns(frame, "supply_instruments", "product_data")
            check_finite(
                frame, sorted(X3_formulation.numeric_variables | {"prices"}) + instrument_names, "product_data"
            )
            X3_raw, self.X3_labels = X3_formulation.build_matrix(frame)
            endogenous = [k for k, label in enumerate(self.X3_labels) if "shares" in label]
            exogenous = [k for k in range(len(self.X3_labels)) if k not in endogenous]
            ZS = frame[instrument_names].to_numpy(dtype=np.float64) if instrument_names else np.zeros((self.N_rows, 0))
            self.ZS_labels = list(instrument_names)
            if self.add_exogenous:
                ZS = np.column_stack([ZS, X3_raw[:, exogenous]])
                self.ZS_labels += [self.X3_labels[k] for k in exogenous]
            self.supply_absorb_ids = X3_formulation.build_ids(frame)
            self.X3_raw = X3_raw
            self.X3 = absorb(
                X3_raw, self.supply_absorb_ids, X3_formulation.absorb_method, X3_formulation.absorb_options
            )
            self.ZS = absorb(ZS, self.supply_absorb_ids, X3_formulation.absorb_method, X3_formulation.absorb_options)
            check_full_rank(self.X3, self.X3_labels, "X3")
            check_full_rank(self.ZS, self.ZS_labels, "The supply instruments")
            self.K3 = self.X3.shape[1]
        self.ownership = self._ownership(frame)
        if "prices" in frame.columns:
            check_finite(frame, ["prices"], "product_data")
            self.dX1 = self.product_formulations[0].derivative_matrix(frame, "prices")
            self.dX2 = (
                self.product_formulations[1].derivative_matrix(frame, "prices")
                if self.product_formulations[1] is not None
                else np.zeros((self.N_rows, 0))
            )
        else:
            self.dX1 = np.zeros_like(self.design.X1_raw)
            self.dX2 = np.zeros_like(self.design.X2)

    def _ownership(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Padded ``[T, J, J]`` ownership: ``ownership0..`` columns if given, else from ``firm_ids``."""
        columns = numbered_columns(frame, "ownership", "product_data")
        if columns:
            width = self.layout.mask.shape[1]
            if len(columns) < width:
                raise InvalidDataError(
                    f"product_data has {len(columns)} ownership columns; markets have up to {width} products, so "
                    f"ownership0..ownership{width - 1} are needed."
                )
            check_finite(frame.assign(**{c: frame[c].fillna(0) for c in columns}), columns, "product_data")
            matrix = self.layout.pad(frame[columns[:width]].to_numpy(dtype=np.float64))
            both = self.layout.mask[:, :, None] & self.layout.mask[:, None, :]
            return np.where(both, matrix, 0.0)
        if "firm_ids" not in frame.columns:
            return None
        return ownership_from_firms(self.layout, frame["firm_ids"].to_numpy())

    def _build_agents(self, agent_data: Any) -> None:
        markets = self.layout.market_ids
        built = None  # the agents' demographics (.product_demographics)
        self.product_demographics = self.demographic_records = None
        self.product_demographic_columns: list[int] = []
        if self.K2 == 0:
            self.agents = None
            self.agent_layout = None
            if agent_data is not None and numbered_columns(as_frame(agent_data, "agent_data"), "availability"):
                raise SpecificationError("Agent-specific availability needs random coefficients (an X2 formulation).")
            self.nodes = np.zeros((len(markets), 0))
            self.weights = np.ones(len(markets))
            self.demographics = None
            self.agent_market_ids = markets
            return
        frame = as_frame(agent_data, "agent_data") if agent_data is not None else None
        self.agent_frame = frame  # micro moments' callbacks may read its columns
        if frame is None and self.integration is None:
            raise SpecificationError("A random-coefficients problem needs agent_data with nodes or an integration.")
        if frame is not None:
            require_rows(frame, "agent_data")
            require_columns(frame, ["market_ids"], "agent_data")
            check_agent_markets(self.market_ids_of_rows, frame["market_ids"].to_numpy())
        if self.agent_formulation is not None:
            if frame is None:
                raise SpecificationError("agent_formulation needs agent_data with the demographics it names.")
            built = build_demographics(self.agent_formulation, frame, self.layout)  # regular and product-specific
        if self.integration is not None:
            agent_markets, nodes, weights = self.integration.build_many(self.K2, markets)
            if built is not None:
                loaded = frame["market_ids"].to_numpy()
                built = built.rows(lambda values: first_agent_rows(values, loaded, agent_markets, "demographics"))
        else:
            node_names = numbered_columns(frame, "nodes", "agent_data")
            require_columns(frame, ["weights"], "agent_data")
            if not node_names:
                raise SpecificationError("agent_data needs nodes0, nodes1, ... columns (or pass an integration).")
            check_finite(frame, ["weights"] + node_names, "agent_data")
            agent_markets = frame["market_ids"].to_numpy()
            nodes = frame[node_names].to_numpy(dtype=np.float64)[:, : self.K2]
            weights = frame["weights"].to_numpy(dtype=np.float64)
        if self.integration is None:  # quadrature rules (sparse grids) may carry negative weights by design
            check_weights(weights, agent_markets)
        self.agent_layout = Layout.build(agent_markets, markets)
        self.log_availability = log_availability(
            frame, self.agent_layout, self.layout.mask.shape[1], self.integration, self.K2
        )
        self.agent_market_ids = agent_markets
        self.nodes = nodes
        self.weights = weights
        if built is not None:
            self.demographics, self.demographic_records = built.values, built.records  # [I, D]; PyBLP's I x D (x J)
            self.product_demographics, self.product_demographic_columns = built.product, built.columns  # [I, D_P, J]
            self.design.demographics_labels.extend(built.labels)
        else:
            self.demographics = None
        given = frame if self.integration is None else None  # agents read from agent_data, row for row
        availability = numbered_columns(given, "availability", "agent_data") if given is not None else []
        self.agents = agent_records(  # PyBLP's Problem.agents
            agent_markets,
            given["agent_ids"].to_numpy() if given is not None and "agent_ids" in given.columns else None,
            weights,
            nodes,
            self.demographic_records,
            given[availability[: self.layout.mask.shape[1]]].to_numpy(np.float64) if availability else None,
        )

    # --------------------------------------------------------------- tensors
    def _tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``array`` on the problem's device; read-only arrays (pandas 3 hands them out) are copied first."""
        array = np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        return torch.as_tensor(array, dtype=dtype or self.dtype, device=self.device)

    def padded(self, values: np.ndarray) -> torch.Tensor:
        """Rows in the user's order (``N`` or ``N x K``) as a padded ``[T, J(, K)]`` tensor on the problem's device."""
        return torch.as_tensor(self.layout.pad(values), dtype=self.dtype, device=self.device)

    def _build_tensors(self) -> None:
        layout = self.layout
        self.N, self.T = len(self.shares), len(layout.market_ids)
        self.K1, self.MD = self.design.X1.shape[1], self.design.ZD.shape[1]
        self.D = 0 if self.demographics is None else self.demographics.shape[1]
        self.product_mask = torch.as_tensor(layout.mask, device=self.device)
        log_shares = np.log(self.shares)
        outside = np.log1p(-np.bincount(layout.market_of_row, weights=self.shares, minlength=self.T))
        self.log_market_shares = self._tensor(layout.pad(log_shares))
        self.logit_delta = self._tensor(layout.pad(log_shares - outside[layout.market_of_row]))
        self.X2_padded = self._tensor(layout.pad(self.design.X2)) if self.K2 else None
        self.X1_tensor = self._tensor(self.design.X1, GMM_DTYPE)
        self.ZD_tensor = self._tensor(self.design.ZD, GMM_DTYPE)
        self.rows_market = torch.as_tensor(layout.market_of_row, device=self.device)
        self.rows_slot = torch.as_tensor(layout.slot_of_row, device=self.device)
        self.H = 0
        self.nesting_codes = None
        if self.nesting_ids is not None:
            labels, codes = np.unique(self.nesting_ids, return_inverse=True)
            self.nesting_labels, self.H = labels, len(labels)
            self.nesting_codes = torch.as_tensor(layout.pad(codes, 0), dtype=torch.int64, device=self.device)
        self.absorb_codes, self.absorb_counts = [], []
        if self.design.absorb_ids is not None:
            for e in range(self.design.absorb_ids.shape[1]):
                codes = self.design.absorb_ids[:, e]
                self.absorb_codes.append(torch.as_tensor(codes, device=self.device))
                self.absorb_counts.append(self._tensor(np.bincount(codes), GMM_DTYPE))
        self.I = len(self.weights) if self.K2 else 0  # agents over all markets (PyBLP's I)
        if self.K2:
            agent = self.agent_layout
            self.agent_mask = torch.as_tensor(agent.mask, device=self.device)
            self.agent_weights = self._tensor(agent.pad(self.weights))
            self.nodes_padded = self._tensor(agent.pad(self.nodes))
            self.demographics_padded = (
                self._tensor(agent.pad(self.demographics)) if self.demographics is not None else None
            )
            availability = getattr(self, "log_availability", None)
            self.availability_padded = None if availability is None else self._tensor(availability)
            product = getattr(self, "product_demographics", None)  # [T, J, I, D_P] (.product_demographics)
            self.product_demographics_padded = (
                None if product is None else self._tensor(pad_product_demographics(product, agent))
            )
        self.prices_padded = (
            self._tensor(layout.pad(self.product_frame["prices"].to_numpy(dtype=np.float64)))
            if "prices" in self.product_frame.columns
            else None
        )
        self.dX1_padded = self._tensor(layout.pad(self.dX1))
        self.dX2_padded = self._tensor(layout.pad(self.dX2)) if self.K2 else None
        self.ownership_padded = self._tensor(self.ownership) if self.ownership is not None else None
        self.X3_tensor = self._tensor(self.X3, GMM_DTYPE)
        self.ZS_tensor = self._tensor(self.ZS, GMM_DTYPE)
        self.MS = self.ZS.shape[1]
        self.supply_absorb_codes, self.supply_absorb_counts = [], []
        if self.supply_absorb_ids is not None:
            for e in range(self.supply_absorb_ids.shape[1]):
                codes = self.supply_absorb_ids[:, e]
                self.supply_absorb_codes.append(torch.as_tensor(codes, device=self.device))
                self.supply_absorb_counts.append(self._tensor(np.bincount(codes), GMM_DTYPE))
        if self.clustering_ids is not None:
            self.clustering_codes = torch.as_tensor(
                np.unique(self.clustering_ids, return_inverse=True)[1], device=self.device
            )
        else:
            self.clustering_codes = None

    # ------------------------------------------------------------------ text
    def __str__(self) -> str:
        lines = [
            "Dimensions:",
            f"  T = {self.T}, N = {self.N}, K1 = {self.K1}, K2 = {self.K2}, D = {self.D}, MD = {self.MD}, H = {self.H}"
            + (f", I = {len(self.weights)}" if self.K2 else ""),
            "Formulations:",
            f"  X1: {self.product_formulations[0]}  (endogenous: {', '.join(self.design.endogenous) or 'none'})",
        ]
        if self.product_formulations[1] is not None:
            lines.append(f"  X2: {self.product_formulations[1]}")
        if self.product_formulations[2] is not None:
            lines.append(f"  X3: {self.product_formulations[2]}  (costs_type: {self.costs_type}, MS = {self.MS})")
        if self.agent_formulation is not None:
            lines.append(f"  d: {self.agent_formulation}")
        return "\n".join(lines)


def first_agent_rows(values: np.ndarray, loaded: np.ndarray, built: np.ndarray, name: str) -> np.ndarray:
    """The first ``I_t`` loaded rows of ``values`` in each market, to match ``I_t`` integration-built agents.

    ``loaded`` are the market ids of the rows of ``agent_data``, ``built`` those of the integration's agents.
    """
    built_layout = Layout.build(built)
    loaded_layout = Layout.build(loaded, built_layout.market_ids)
    short = loaded_layout.sizes < built_layout.sizes
    if short.any():
        t = int(np.argmax(short))
        raise InvalidDataError(
            f"agent_data has too few rows of {name} in market {label(built_layout.market_ids[t])} for the "
            f"integration's {built_layout.sizes[t]} agents."
        )
    padded = loaded_layout.pad(values)[:, : built_layout.mask.shape[1]]
    return built_layout.unpad(padded)
