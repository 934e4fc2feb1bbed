"""Micro moments configured as PyBLP configures them: datasets, parts and moments (Conlon and Gortmaker 2025),
and micro data over panels of repeated choices (:class:`PanelMicroDataset`, beyond PyBLP).

A micro dataset :math:`d` (a survey) is defined by its survey weights :math:`w_{dijt}` (or :math:`w_{dijkt}` with
second choices :math:`k`): the probability that agent type :math:`i` of market :math:`t` who chose :math:`j`
is sampled. A micro part :math:`p` on dataset :math:`d_p` averages values :math:`v_{pijt}` over the survey:

.. math::

    \\bar v_p = \\frac{1}{N_{d_p}}\\sum_{n} v_{p i_n j_n t_n}, \\qquad
    v_p(\\theta) = \\frac{\\sum_t\\sum_i\\sum_{j \\in J_t\\cup\\{0\\}} w_{it} s_{ijt}(\\theta) w_{d_pijt} v_{pijt}}
                        {\\sum_t\\sum_i\\sum_{j \\in J_t\\cup\\{0\\}} w_{it} s_{ijt}(\\theta) w_{d_pijt}},

and a micro moment :math:`m` matches a smooth function of parts, :math:`\\bar g_{M,m} = f_m(\\bar v) - f_m(v)`
(a conditional mean is a ratio of two parts, a covariance a function of three). These classes only hold and check
the configuration; :mod:`demandkit.blp.micro` evaluates them on a problem's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..exceptions import SpecificationError


class MicroDataset:
    """A micro dataset :math:`d`, often a survey, defined by its survey weights :math:`w_{dijt}`.

    Parameters
    ----------
    name : str
        Unique name, used in outputs.
    observations : int
        The number of observations :math:`N_d`; micro moments' covariances are scaled by :math:`N/N_d`.
    compute_weights : callable
        ``compute_weights(t, products, agents) -> weights`` for market ``t``, with the market's products (``J_t``
        rows) and agents (``I_t`` rows) as record objects whose attributes are PyBLP's (``products.X2``,
        ``products.prices``, ``agents.demographics``, ``agents.weights``, ``.size``, ...). ``weights`` has
        shape ``I_t x J_t`` (inside purchasers only, :math:`w_{di0t} = 0`) or ``I_t x (1 + J_t)`` (the first
        column is the outside option); with second choices a third axis indexes :math:`k`, of length ``J_t``
        (inside second choices) or ``1 + J_t`` (the outside option first).
    eliminated_product_ids_index : int, optional
        With second choices: None (default) if only the first choice :math:`j` is removed before the second
        choice; otherwise the column of ``product_ids`` whose value groups the products removed with :math:`j`,
        so that :math:`s_{ik(-h(j))t} = s_{ikt}/(1 - \\sum_{l \\in h(j)} s_{ilt})` for :math:`k \\notin h(j)`.
    market_ids : array-like, optional
        The markets with nonzero survey weights (all markets by default); ``compute_weights`` is called only there.

    Notes
    -----
    Weights and values are computed once, when the micro moments are set up for a problem, and kept as padded
    ``[markets, agents, 1 + products]`` tensors; estimation never calls back into Python.
    """

    def __init__(
        self,
        name: str,
        observations: int,
        compute_weights: Callable[..., Any],
        eliminated_product_ids_index: int | None = None,
        market_ids: Sequence[Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SpecificationError(f"MicroDataset name must be a non-empty string; received {name!r}.")
        if isinstance(observations, bool) or not isinstance(observations, int | np.integer) or observations < 1:
            raise SpecificationError(
                f"MicroDataset '{name}': observations must be a positive integer; received {observations!r}."
            )
        if not callable(compute_weights):
            raise SpecificationError(f"MicroDataset '{name}': compute_weights must be callable.")
        if eliminated_product_ids_index is not None and (
            isinstance(eliminated_product_ids_index, bool)
            or not isinstance(eliminated_product_ids_index, int | np.integer)
            or eliminated_product_ids_index < 0
        ):
            raise SpecificationError(
                f"MicroDataset '{name}': eliminated_product_ids_index must be None or a non-negative integer."
            )
        self.name = name
        self.observations = int(observations)
        self.compute_weights = compute_weights
        self.eliminated_product_ids_index = eliminated_product_ids_index
        self.market_ids = None if market_ids is None else np.unique(np.asarray(market_ids, dtype=object))
        if self.market_ids is not None and self.market_ids.size == 0:
            raise SpecificationError(f"MicroDataset '{name}': market_ids is empty.")

    def __str__(self) -> str:
        markets = "All Markets" if self.market_ids is None else f"{self.market_ids.size} Markets"
        return f"{self.name}: {self.observations} Observations in {markets}"

    __repr__ = __str__


class MicroPart:
    """A micro part :math:`p`: the average of values :math:`v_{pijt}` over the survey of its dataset.

    Parameters
    ----------
    name : str
        Unique name, used in outputs.
    dataset : MicroDataset
        The dataset :math:`d_p` the part averages over.
    compute_values : callable
        ``compute_values(t, products, agents) -> values``, an array of the shape of the dataset's weights in
        market ``t`` (see :class:`MicroDataset`).
    """

    def __init__(self, name: str, dataset: MicroDataset, compute_values: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise SpecificationError(f"MicroPart name must be a non-empty string; received {name!r}.")
        if not isinstance(dataset, MicroDataset):
            raise SpecificationError(f"MicroPart '{name}': dataset must be a MicroDataset; received {dataset!r}.")
        if not callable(compute_values):
            raise SpecificationError(f"MicroPart '{name}': compute_values must be callable.")
        self.name = name
        self.dataset = dataset
        self.compute_values = compute_values

    def __str__(self) -> str:
        return f"{self.name} on {self.dataset}"

    __repr__ = __str__


class MicroMoment:
    """A micro moment :math:`m`: an observed statistic :math:`f_m(\\bar v)` matched by :math:`f_m(v(\\theta))`.

    Parameters
    ----------
    name : str
        Unique name, used in outputs.
    value : float
        The observed value :math:`f_m(\\bar v)`.
    parts : MicroPart or sequence of MicroPart
        The parts :math:`f_m` depends on. A single part (not in a sequence) means :math:`f_m(v) = v_p`.
    compute_value : callable, optional
        ``compute_value(part_values) -> float``, :math:`f_m(v)`; required with a sequence of parts.
    compute_gradient : callable, optional
        ``compute_gradient(part_values) -> array``, :math:`\\partial f_m/\\partial v` (as many elements as parts).
        Unlike PyBLP, it may be left out: the gradient is then taken by autograd, calling ``compute_value`` on a
        ``torch`` tensor (write it with operators or ``torch`` functions, not ``numpy`` ones).
    """

    def __init__(
        self,
        name: str,
        value: float,
        parts: MicroPart | Sequence[MicroPart],
        compute_value: Callable[[np.ndarray], Any] | None = None,
        compute_gradient: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SpecificationError(f"MicroMoment name must be a non-empty string; received {name!r}.")
        try:
            value = float(np.asarray(value, dtype=np.float64).reshape(()))
        except (TypeError, ValueError) as error:
            raise SpecificationError(f"MicroMoment '{name}': value must be one number; received {value!r}.") from error
        if not np.isfinite(value):
            raise SpecificationError(f"MicroMoment '{name}': value must be finite; received {value}.")
        single = isinstance(parts, MicroPart)
        parts_list = [parts] if single else list(parts) if isinstance(parts, Sequence) else None
        if not parts_list:
            raise SpecificationError(
                f"MicroMoment '{name}': parts must be a MicroPart or a non-empty sequence of them."
            )
        for part in parts_list:
            if not isinstance(part, MicroPart):
                raise SpecificationError(f"MicroMoment '{name}': every part must be a MicroPart; received {part!r}.")
        if not single and compute_value is None:
            raise SpecificationError(
                f"MicroMoment '{name}' has a sequence of {len(parts_list)} parts: give compute_value (f_m of the "
                "parts' values) and, optionally, compute_gradient."
            )
        for label, function in (("compute_value", compute_value), ("compute_gradient", compute_gradient)):
            if function is not None and not callable(function):
                raise SpecificationError(f"MicroMoment '{name}': {label} must be callable.")
        self.name = name
        self.value = value
        self.parts = parts_list
        self.compute_value = compute_value
        self.compute_gradient = compute_gradient

    def __str__(self) -> str:
        return f"{self.name}: {self.value:+.6g} ({', '.join(part.name for part in self.parts)})"

    __repr__ = __str__


class PanelMicroDataset(MicroDataset):
    """A micro dataset of the same individuals' choices in two linked markets (beyond PyBLP).

    Survey respondents are observed choosing in a first market :math:`t` and again in a linked market :math:`t'`
    (the same households in two periods, say). Individual type :math:`i` keeps its tastes (nodes and demographics)
    across the pair, and its idiosyncratic shocks are independent across markets, so the joint probability of
    choosing :math:`j` in :math:`t` and :math:`k` in :math:`t'` is :math:`s_{ijt}\\,s_{ikt'}`, and a part averages

    .. math::

        v_p = \\frac{\\sum_{(t, t')}\\sum_i \\sum_{j, k} w_{it} s_{ijt} s_{ikt'} w_{dijk(t,t')} v_{pijk(t,t')}}
                   {\\sum_{(t, t')}\\sum_i \\sum_{j, k} w_{it} s_{ijt} s_{ikt'} w_{dijk(t,t')}}.

    The probability of buying the same product again, the persistence of buying a type of product, or switching
    out of the market are such parts: they measure the spread of tastes directly, as second choices do.

    **How agents are linked.** Agent :math:`i` of market :math:`t'` is the :math:`i`-th agent of :math:`t'` in
    ``agent_data`` (its rows' order within the market), and it must be the same individual type as the
    :math:`i`-th agent of :math:`t`: both markets need the same number of agents, the same integration weights, nodes
    and demographics, and, if ``agent_data`` has an ``agent_ids`` column, the same ids in the same order. Any
    mismatch is an error naming the pair of markets.

    Parameters
    ----------
    name, observations : str, int
        As in :class:`MicroDataset` (:math:`N_d` counts individuals observed in a pair of markets).
    market_pairs : sequence of (market id, market id)
        The linked pairs :math:`(t, t')`.
    compute_weights : callable
        ``compute_weights((t, t2), (products, products2), agents) -> weights`` of shape ``I x J_t x J_t'`` with
        ``1 + J`` on an axis that includes the outside option first (as second choices in :class:`MicroDataset`);
        ``agents`` are the individuals (the first market's records). Parts on the dataset take the same arguments.
    """

    def __init__(
        self,
        name: str,
        observations: int,
        market_pairs: Sequence[tuple[Any, Any]],
        compute_weights: Callable[..., Any],
    ) -> None:
        super().__init__(name, observations, compute_weights)
        pairs = [tuple(pair) for pair in market_pairs]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise SpecificationError(
                f"PanelMicroDataset '{name}': market_pairs must be a non-empty sequence of (market, market) pairs."
            )
        if any(first == second for first, second in pairs):
            raise SpecificationError(f"PanelMicroDataset '{name}': a pair links a market with itself.")
        self.market_pairs = pairs

    def __str__(self) -> str:
        return f"{self.name}: {self.observations} Observations in {len(self.market_pairs)} Pairs of Markets"

    __repr__ = __str__
