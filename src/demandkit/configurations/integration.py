"""``Integration``: how the nodes and weights that integrate over agent heterogeneity are built.

This module owns the integration configuration users build (PyBLP's ``Integration`` names) and the rules
themselves: pseudo-random and quasi-random draws mapped to standard normals, Gauss-Hermite product
rules and Smolyak sparse grids. Every rule approximates

.. math:: \\int f(\\nu) \\phi(\\nu) \\, d\\nu \\approx \\sum_{i=1}^{I} w_i f(\\nu_i),

with :math:`\\phi` the standard multivariate normal density, nodes :math:`\\nu_i` and weights :math:`w_i`
that sum to one. Everything is NumPy/SciPy; the estimation engine consumes the arrays.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Literal, get_args

import numpy as np
from numpy.polynomial.hermite import hermgauss
from scipy.stats import norm, qmc

from .nested_hermite import MAX_LEVEL, nested_hermite
from .options import check_choice, check_keys

IntegrationSpecification = Literal[
    "monte_carlo", "halton", "sobol", "lhs", "mlhs", "product", "nested_product", "grid", "nested_grid"
]
SPECIFICATIONS: tuple[str, ...] = get_args(IntegrationSpecification)

_DEFAULTS: dict[str, dict[str, Any]] = {
    "monte_carlo": {"seed": None},
    "halton": {"seed": None, "discard": 1000, "scramble": True},
    "sobol": {"seed": None, "discard": 0, "scramble": True},
    "lhs": {"seed": None},
    "mlhs": {"seed": None},
    "product": {},
    "nested_product": {},
    "grid": {},
    "nested_grid": {},
}
_QUADRATURES = ("product", "nested_product", "grid", "nested_grid")

# SciPy renamed the generator keyword of the QMC engines from ``seed`` to ``rng`` in 1.15; a Generator
# passed under either name gives the same stream.
_QMC_RNG_KEYWORD = "rng" if "rng" in inspect.signature(qmc.Sobol).parameters else "seed"


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True, slots=True)
class Integration:
    """Configuration for building integration nodes and weights over standard normal heterogeneity.

    Parameters
    ----------
    specification : {'monte_carlo', 'halton', 'sobol', 'lhs', 'mlhs', 'product', 'nested_product', 'grid', \
'nested_grid'}
        The rule. The first five are equally weighted draws, :math:`w_i = 1 / I` with :math:`I` = ``size``,
        and :math:`\\nu_i = \\Phi^{-1}(u_i)` for uniforms :math:`u_i` (except ``'monte_carlo'``):

        - ``'monte_carlo'``: i.i.d. standard normal draws from ``numpy.random.RandomState(seed).normal``,
          the generator PyBLP uses, so a seeded configuration reproduces PyBLP's draws exactly.
        - ``'halton'``: the Halton sequence (one prime base per dimension), whose first ``discard`` points are
          skipped; scrambled by default with a random permutation of each digit position (Owen 2017), PyBLP's
          draws for the same seed.
        - ``'sobol'``: the Sobol sequence from :class:`scipy.stats.qmc.Sobol`, Owen-scrambled by default.
        - ``'lhs'``: Latin hypercube sampling, :math:`u_{id} = (\\pi_d(i) + U_{\\pi_d(i)d}) / I` with an independent
          random permutation :math:`\\pi_d` of :math:`0, \\dots, I - 1` for each dimension :math:`d` and
          :math:`U_{id} \\sim U[0, 1)`: one point in each of the :math:`I` strata of every dimension.
        - ``'mlhs'``: modified Latin hypercube sampling (Hess, Train and Polak 2006): as ``'lhs'`` but with a
          single shift :math:`U_d` per dimension, :math:`u_{id} = (\\pi_d(i) + U_d) / I`.

        The last two are deterministic Gauss-Hermite quadrature. With :math:`(x_k, \\omega_k)_{k=1}^{n}` the
        level-:math:`n` rule for the standard normal (physicists' nodes times :math:`\\sqrt{2}`, weights over
        :math:`\\sqrt{\\pi}`), exact for polynomials of degree :math:`2n - 1`:

        - ``'product'``: the tensor product of the level-``size`` rule in every dimension,
          :math:`\\text{size}^{D}` nodes with weights :math:`\\prod_d \\omega_{k_d}`.
        - ``'grid'``: the Smolyak sparse grid of accuracy level :math:`L` = ``size``
          (Heiss and Winschel 2008),

          .. math:: \\sum_{q = \\max(0, L - D)}^{L - 1} (-1)^{L - 1 - q} \\binom{D - 1}{D + q - L}
                    \\sum_{\\|\\ell\\|_1 = D + q} \\bigotimes_{d=1}^{D} Q_{\\ell_d},

          over positive level vectors :math:`\\ell`, with repeated nodes merged by adding their weights
          (which can be negative) and the weights rescaled to sum to one, as PyBLP does.
        - ``'nested_product'`` and ``'nested_grid'``: the same with the nested rules of Genz and Keister (1996)
          in place of Gauss-Hermite's (:mod:`~demandkit.configurations.nested_hermite`; Heiss and Winschel's
          "KPN" rules, as in PyBLP). The level-:math:`\\ell` rule (1 to 25) has 1, 3, 3, 7, 9, ... nodes and is
          exact at least to degree :math:`2\\ell - 1`; its nodes are among those of every higher level, so a
          nested sparse grid reuses nodes across its components and is smaller than the Gauss-Hermite one. Their
          weights can be negative.

    size : int
        The number of draws per market for the random rules, the quadrature level for ``'product'``,
        ``'nested_product'``, ``'grid'`` and ``'nested_grid'`` (at most 25 for the nested rules). A positive
        integer.
    specification_options : dict, optional
        ``seed`` (int or None, every rule but the quadratures): seeds the generator. ``None`` (the default,
        as in PyBLP) seeds from fresh operating-system entropy, so draws differ from call to call.
        ``'monte_carlo'``, ``'halton'``, ``'lhs'`` and ``'mlhs'`` use ``numpy.random.RandomState(seed)``
        (PyBLP's draws); ``'sobol'`` uses ``numpy.random.default_rng(seed)``. ``discard`` (int, ``'halton'``
        and ``'sobol'``): how many leading points of the sequence to skip; 1000 for ``'halton'`` as in PyBLP (it
        removes the correlation between the first points of different bases), 0 for ``'sobol'``. ``scramble`` (bool,
        ``'halton'`` and ``'sobol'``, default True): whether to randomize the sequence. Unscrambled
        sequences start at the origin, whose normal quantile is infinite, so they need ``discard >= 1``.

    Notes
    -----
    Across markets (:meth:`build_many`) the deterministic rules repeat one set of nodes and weights. The
    random rules draw every market from a single generator seeded once, market after market, so market
    :math:`t` gets its own draws: for ``'halton'`` and ``'sobol'`` the markets take consecutive blocks of
    one long sequence, market :math:`t` (from 0) using points ``discard + t * size`` to
    ``discard + (t + 1) * size - 1`` as PyBLP does for Halton draws; scrambled Halton digits are permuted anew for
    each market, as PyBLP does (``build_many(..., rescramble=False)`` splits one scrambled sequence instead, for
    the mixed logit's individuals and the integrated model's households). ``'lhs'`` and ``'mlhs'`` give every
    market its own hypercube of ``size`` points, as PyBLP does. With ``'monte_carlo'``, ``'halton'``, ``'lhs'``
    and ``'mlhs'`` the draws equal PyBLP's bit for bit for the same seed (one ``RandomState`` stream, market after
    market). In every case the first market's nodes equal :meth:`build`'s.

    Examples
    --------
    Gauss-Hermite quadrature with 3 nodes in one dimension (exact for polynomials of degree 5):

    >>> import demandkit as dk
    >>> nodes, weights = dk.Integration("product", 3).build(1)
    >>> nodes.ravel().round(4).tolist(), weights.round(4).tolist()
    ([-1.7321, 0.0, 1.7321], [0.1667, 0.6667, 0.1667])

    500 scrambled Halton draws in two dimensions, equally weighted:

    >>> nodes, weights = dk.Integration("halton", 500, {"seed": 0}).build(2)
    >>> nodes.shape, round(float(weights.sum()), 12)
    ((500, 2), 1.0)
    """

    specification: IntegrationSpecification
    size: int
    specification_options: dict[str, Any] | None = field(default=None, compare=False)
    options: dict[str, Any] = field(init=False, repr=False, hash=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("Integration specification", self.specification, IntegrationSpecification)
        if not _is_integer(self.size) or self.size < 1:
            raise ValueError(f"Integration size must be a positive integer; received {self.size!r}.")
        object.__setattr__(self, "size", int(self.size))
        if self.specification.startswith("nested_") and self.size > MAX_LEVEL:
            raise ValueError(
                f"Integration size (the level) of {self.specification!r} is at most {MAX_LEVEL}; received {self.size}."
            )
        given = self.specification_options
        if given is not None and not isinstance(given, dict):
            raise ValueError(
                f"Integration specification_options must be None or a dict; received {type(given).__name__}."
            )
        merged = check_keys(
            f"Integration specification_options for {self.specification!r}",
            dict(given or {}),
            _DEFAULTS[self.specification],
        )
        if "seed" in merged:
            seed = merged["seed"]
            if seed is not None and not _is_integer(seed):
                raise ValueError(f"Integration option seed must be an integer or None; received {seed!r}.")
            merged["seed"] = None if seed is None else int(seed)
        if "discard" in merged:
            discard = merged["discard"]
            if not _is_integer(discard) or discard < 0:
                raise ValueError(f"Integration option discard must be a non-negative integer; received {discard!r}.")
            if not isinstance(merged["scramble"], (bool, np.bool_)):
                raise ValueError(f"Integration option scramble must be True or False; received {merged['scramble']!r}.")
            merged["discard"], merged["scramble"] = int(discard), bool(merged["scramble"])
            if not merged["scramble"] and merged["discard"] == 0:
                raise ValueError(
                    "Integration option discard must be at least 1 when scramble is False: the first point "
                    "of an unscrambled sequence is 0, whose normal quantile is -inf."
                )
        object.__setattr__(self, "options", merged)

    def __str__(self) -> str:
        size, options = self.size, self.options
        scrambled = "scrambled " if options.get("scramble") else ""
        rules = {
            "monte_carlo": f"Monte Carlo draws of size {size}",
            "halton": f"{scrambled}Halton draws of size {size}",
            "sobol": f"{scrambled}Sobol draws of size {size}",
            "lhs": f"Latin hypercube draws of size {size}",
            "mlhs": f"modified Latin hypercube draws of size {size}",
            "product": f"the level-{size} Gauss-Hermite product rule",
            "nested_product": f"the level-{size} nested Gauss-Hermite product rule",
            "grid": f"a sparse grid of level-{size} Gauss-Hermite rules",
            "nested_grid": f"a sparse grid of level-{size} nested Gauss-Hermite rules",
        }
        text = f"Configured to construct nodes and weights with {rules[self.specification]}"
        if options:
            text += " (" + ", ".join(f"{key}={value!r}" for key, value in options.items()) + ")"
        return text + "."

    def build(self, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
        """Build the nodes and weights for one market.

        Parameters
        ----------
        dimensions : int
            The number :math:`D` of random coefficients integrated over.

        Returns
        -------
        nodes : ndarray
            :math:`I \\times D` nodes :math:`\\nu_i`.
        weights : ndarray
            :math:`I` weights :math:`w_i`, summing to one.
        """
        nodes, weights = self._build_markets(_check_dimensions(dimensions), 1)
        return nodes, weights

    def build_many(
        self, dimensions: int, market_ids: np.ndarray, *, rescramble: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Build the nodes and weights for several markets at once.

        Parameters
        ----------
        dimensions : int
            The number :math:`D` of random coefficients integrated over.
        market_ids : ndarray
            The :math:`T` distinct market identifiers, in the order the agents should follow.
        rescramble : bool
            Scrambled ``'halton'`` only: True (the default) permutes the digits anew for each market, as PyBLP; False
            splits one scrambled sequence into consecutive blocks (:class:`scipy.stats.qmc.Halton`), so that the
            draws of a block do not depend on where a batch of blocks starts (the mixed logit's and the integrated
            model's individuals and households, drawn in chunks) and the cost does not grow with the blocks.

        Returns
        -------
        agent_market_ids : ndarray
            :math:`\\sum_t I_t` market identifiers, each repeated for its market's agents.
        nodes : ndarray
            :math:`\\sum_t I_t \\times D` nodes, grouped by market in the order of ``market_ids``.
        weights : ndarray
            :math:`\\sum_t I_t` weights, summing to one within each market.

        Notes
        -----
        The first market's nodes equal :meth:`build`'s; see the class notes for how later markets are drawn.
        """
        dimensions = _check_dimensions(dimensions)
        market_ids = np.asarray(market_ids)
        if market_ids.ndim != 1:
            raise ValueError(f"Integration market_ids must be one-dimensional; received shape {market_ids.shape}.")
        nodes, weights = self._build_markets(dimensions, market_ids.size, rescramble)
        return np.repeat(market_ids, weights.size // max(market_ids.size, 1)), nodes, weights

    def _build_markets(self, dimensions: int, markets: int, rescramble: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Stack the nodes and weights of ``markets`` consecutive markets."""
        if self.specification in _QUADRATURES:
            rule = _product_rule if self.specification.endswith("product") else _sparse_grid
            nodes, weights = rule(dimensions, self.size, self.specification.startswith("nested_"))
            return np.tile(nodes, (markets, 1)), np.tile(weights, markets)
        count = markets * self.size
        weights = np.full(count, 1 / self.size)
        seed = self.options["seed"]
        if self.specification == "monte_carlo":
            return np.random.RandomState(seed).normal(size=(count, dimensions)), weights
        if self.specification == "halton" and (rescramble or not self.options["scramble"]):
            uniforms = _halton(self.size, dimensions, markets, self.options["discard"], self.options["scramble"], seed)
            return norm.ppf(uniforms), weights
        generator = np.random.default_rng(seed)
        if self.specification in ("halton", "sobol"):
            engine_type = qmc.Halton if self.specification == "halton" else qmc.Sobol
            engine = engine_type(dimensions, scramble=self.options["scramble"], **{_QMC_RNG_KEYWORD: generator})
            with warnings.catch_warnings():
                # Sobol points are balanced only in blocks of powers of two; any count is still valid
                warnings.filterwarnings("ignore", message=".*balance properties.*", category=UserWarning)
                if self.options["discard"]:
                    engine.fast_forward(self.options["discard"])
                uniforms = engine.random(count) if count else np.empty((0, dimensions))
        else:
            uniforms = _latin_hypercubes(self.specification, self.size, dimensions, markets, seed)
        return norm.ppf(uniforms), weights


def _primes(count: int) -> list[int]:
    """The first ``count`` primes."""
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % prime for prime in primes):
            primes.append(candidate)
        candidate += 1
    return primes


def _halton_digits(base: int) -> int:
    """:math:`D`, the digit positions of a Halton coordinate in ``base``: the :math:`j \\ge 1` with
    :math:`b^j < 2^{54}`, so that the last digit's weight :math:`b^{-D}` is still above :math:`2^{-54}` (half the
    spacing of doubles near one half). PyBLP draws one permutation per position, so :math:`D` also sets how far the
    random stream advances for each dimension (found by comparing the two)."""
    digits = 0
    while base ** (digits + 1) < 2**54:
        digits += 1
    return digits


def _halton(size: int, dimensions: int, markets: int, discard: int, scramble: bool, seed: Any) -> np.ndarray:
    """PyBLP's Halton uniforms for ``markets`` consecutive markets, ``[markets * size, dimensions]``.

    Market :math:`t` takes the points :math:`n = \\text{discard} + t I, \\dots, \\text{discard} + (t + 1) I - 1` of the
    sequence; dimension :math:`k` is the radical inverse of :math:`n` in the :math:`k`-th prime base :math:`b`,
    :math:`u = \\sum_{j=0}^{D-1} \\pi_j(a_j) b^{-j-1}` with :math:`n = \\sum_j a_j b^j` and
    :math:`D` digits (:func:`_halton_digits`). Scrambled (Owen 2017), each digit
    position has its own random permutation :math:`\\pi_j` of :math:`0, \\dots, b - 1`, drawn anew for every market
    and dimension from one ``numpy.random.RandomState(seed)`` stream in that order, which makes the nodes PyBLP's for
    the same seed (found by comparing the two, ``tests/test_integration.py``); unscrambled, :math:`\\pi_j` is the
    identity. The digits are computed for all of a market's points at once; the permutations are drawn market by
    market (set-up only: the stream is sequential).
    """
    state = np.random.RandomState(seed) if scramble else None
    uniforms = np.empty((markets, size, dimensions))
    for t in range(markets):  # set-up only: the stream's order is PyBLP's, market after market
        points = np.arange(discard + t * size, discard + (t + 1) * size, dtype=np.int64)
        for k, base in enumerate(_primes(dimensions)):
            digits = _halton_digits(base)
            identity = np.arange(base)
            permutations = [state.permutation(base) if state is not None else identity for _ in range(digits)]
            remaining, value, scale = points.copy(), np.zeros(size), 1.0
            for permutation in permutations:  # a loop over digit positions
                scale /= base
                value += permutation[remaining % base] * scale
                remaining //= base
            uniforms[t, :, k] = value
    return uniforms.reshape(markets * size, dimensions)


def _latin_hypercubes(specification: str, size: int, dimensions: int, markets: int, seed: Any) -> np.ndarray:
    """PyBLP's Latin hypercube (``'lhs'``) and modified Latin hypercube (``'mlhs'``) uniforms for ``markets``
    consecutive markets, ``[markets * size, dimensions]``, from one ``numpy.random.RandomState(seed)`` stream.

    For each market and dimension in turn, ``'lhs'`` draws ``size`` uniforms :math:`U_i` and a permutation
    :math:`\\pi` and takes :math:`u_i = (\\pi(i) + U_{\\pi(i)})/I`; ``'mlhs'`` draws one uniform shift :math:`U` and a
    permutation and takes :math:`u_i = (\\pi(i) + U)/I`. The order of the draws in the stream makes the nodes equal
    to PyBLP's for the same seed (found by comparing the two, ``tests/test_integration.py``). The stream is
    sequential, so this set-up step loops over markets and dimensions (``RandomState`` calls, no array work).
    """
    state = np.random.RandomState(seed)
    uniforms = np.empty((markets, size, dimensions))
    strata = np.arange(size)
    for t in range(markets):  # set-up only: the stream's order is PyBLP's, market after market
        for k in range(dimensions):
            if specification == "lhs":
                uniforms[t, :, k] = ((strata + state.uniform(size=size)) / size)[state.permutation(size)]
            else:
                shift = state.uniform()
                uniforms[t, :, k] = (state.permutation(size) + shift) / size
    return uniforms.reshape(markets * size, dimensions)


def _check_dimensions(dimensions: Any) -> int:
    if not _is_integer(dimensions) or dimensions < 1:
        raise ValueError(f"Integration dimensions must be a positive integer; received {dimensions!r}.")
    return int(dimensions)


@functools.cache
def _gauss_hermite(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The level-``level`` Gauss-Hermite rule for :math:`N(0, 1)`, made exactly symmetric (middle node 0)."""
    nodes, weights = hermgauss(level)
    nodes = (nodes - nodes[::-1]) / 2 * math.sqrt(2) + 0.0
    weights = (weights + weights[::-1]) / 2 / math.sqrt(math.pi)
    return nodes, weights


def _tensor(levels: tuple[int, ...], nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Tensor product of the univariate rules (nested ones if ``nested``) of the given levels, the last dimension
    varying fastest."""
    univariate = nested_hermite if nested else _gauss_hermite
    rules = [univariate(level) for level in levels]
    grids = np.meshgrid(*(nodes for nodes, _ in rules), indexing="ij")
    nodes = np.stack([grid.ravel() for grid in grids], axis=1)
    weights = functools.reduce(np.kron, (weights for _, weights in rules))
    return nodes, weights


def _frozen(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights


@functools.cache
def _product_rule(dimensions: int, level: int, nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The level-``level`` (nested if ``nested``) Gauss-Hermite product rule in ``dimensions`` dimensions
    (read-only, cached)."""
    return _frozen(*_tensor((level,) * dimensions, nested))


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of ``parts`` positive integers that sum to ``total``."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        yield tuple(np.diff((0, *cuts, total)).tolist())


@functools.cache
def _sparse_grid(dimensions: int, level: int, nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The Smolyak sparse grid of Gauss-Hermite rules (nested ones if ``nested``) of accuracy ``level``
    (read-only, cached).

    Nodes are the distinct rows of all component tensor grids, sorted lexicographically (first column
    first); each weight is the sum of the signed component weights at that node, rescaled to sum to one.
    """
    node_blocks, weight_blocks = [], []
    for q in range(max(0, level - dimensions), level):
        coefficient = (-1) ** (level - 1 - q) * math.comb(dimensions - 1, dimensions + q - level)
        for levels in _compositions(dimensions + q, dimensions):
            nodes, weights = _tensor(levels, nested)
            node_blocks.append(nodes)
            weight_blocks.append(coefficient * weights)
    # distinct Gauss-Hermite levels share no node but 0, which is exactly 0.0 in every odd-level rule, and the
    # nested rules take a shared node from one table of floats, so exact comparison merges precisely the
    # repeated nodes
    nodes, inverse = np.unique(np.concatenate(node_blocks), axis=0, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=np.concatenate(weight_blocks), minlength=nodes.shape[0])
    return _frozen(nodes, weights / weights.sum())
