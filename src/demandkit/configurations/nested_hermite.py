"""Nested Gauss-Hermite rules for the standard normal: the Genz-Keister (1996) sequence.

A rule with nodes :math:`x_1, \\dots, x_n` is *extended* by :math:`m` new nodes, the roots of the monic
polynomial :math:`p` of degree :math:`m` that makes the combined rule as exact as possible (Kronrod 1965, Patterson
1968):

.. math:: \\int p(x)\\, q(x)\\, x^k \\phi(x)\\, dx = 0, \\qquad k = 0, \\dots, m - 1,
          \\qquad q(x) = \\prod_{i=1}^{n} (x - x_i),

where :math:`\\phi` is the standard normal density; the weights of the combined :math:`n + m` nodes are the
interpolatory ones (they match the normal moments :math:`E[x^{2k}] = (2k - 1)!!`). Starting from the one-point
rule at 0, the extensions by 2, 6, 10 and 16 nodes give the fully symmetric rules of Genz and Keister with 3, 9,
19 and 35 nodes, exact for polynomials of degree 5, 15, 29 and 51. Because the real roots of these extensions exist
only that far, the accuracy levels in between take interpolatory rules on subsets of the next rule's nodes, as in
the "KPN" table of Heiss and Winschel (2008) that PyBLP uses: the level-:math:`\\ell` rule is exact at least up to
degree :math:`2\\ell - 1`, for :math:`\\ell \\le 25`.

The roots and weights are computed once, at 60 significant digits with mpmath (installed with torch, through
sympy), and rounded to float64; every level draws its nodes from the same rounded values, so a node shared by two
levels is the same float in both (which the nested sparse grid relies on to merge them).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

MAX_LEVEL = 25
"""The highest accuracy level of the nested rules (the 35-node rule is the last real extension)."""

_EXTENSIONS = (2, 6, 10, 16)
"""How many nodes each Patterson extension adds: 1 -> 3 -> 9 -> 19 -> 35 nodes."""

# accuracy level -> (index into the chain of extensions, positive nodes of that rule left out); the levels
# between the extensions use subsets of the next rule (Heiss and Winschel's KPN table, found to agree with
# PyBLP's nested rules); dropped nodes are named by their values to 4 decimals
_LEVELS: dict[int, tuple[int, tuple[float, ...]]] = {
    1: (0, ()),
    **{level: (1, ()) for level in (2, 3)},
    4: (2, (2.8613,)),
    **{level: (2, ()) for level in range(5, 9)},
    9: (3, (3.2053,)),
    **{level: (3, ()) for level in range(10, 16)},
    16: (4, (4.7364, 5.6982)),
    17: (4, (4.7364,)),
    **{level: (4, ()) for level in range(18, MAX_LEVEL + 1)},
}

_DIGITS = 60


def _moment(mp: Any, power: int) -> Any:
    """:math:`E[x^{power}]` for a standard normal :math:`x`, at mpmath's precision."""
    if power % 2:
        return mp.mpf(0)
    return mp.fac2(power - 1) if power else mp.mpf(1)


def _multiply(mp: Any, a: list, b: list) -> list:
    """Coefficients (ascending powers) of the product of two polynomials."""
    out = [mp.mpf(0)] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return out


def _extension(mp: Any, positive: list, added: int) -> list:
    """The ``added / 2`` new positive nodes of the Patterson extension of the symmetric rule with nodes 0 and
    :math:`\\pm` ``positive``.

    With :math:`q` odd and the extension polynomial even, :math:`p(x) = P(x^2)`, only the odd :math:`k` give
    conditions: ``added / 2`` linear equations in the coefficients of the monic :math:`P`.
    """
    q = [mp.mpf(0), mp.mpf(1)]
    for node in positive:
        q = _multiply(mp, q, [-node * node, mp.mpf(0), mp.mpf(1)])
    half = added // 2

    def expectation(coefficients: list, shift: int) -> Any:
        """:math:`E[x^{shift} c(x)]` for the polynomial ``coefficients``."""
        return mp.fsum(c * _moment(mp, i + shift) for i, c in enumerate(coefficients))

    matrix, target = mp.matrix(half, half), mp.matrix(half, 1)
    for row in range(half):
        k = 2 * row + 1
        for column in range(half):
            matrix[row, column] = expectation(q, k + 2 * column)
        target[row] = -expectation(q, k + 2 * half)
    solution = mp.lu_solve(matrix, target)
    coefficients = [solution[i] for i in range(half)] + [mp.mpf(1)]
    roots = mp.polyroots(coefficients[::-1], maxsteps=500, extraprec=4 * _DIGITS)
    return sorted(mp.sqrt(mp.re(root)) for root in roots)


def _interpolatory_weights(mp: Any, positive: list) -> list:
    """Weights of the symmetric rule on 0 and :math:`\\pm` ``positive`` that match the normal's even moments."""
    nodes = [mp.mpf(0), *positive]
    size = len(nodes)
    matrix, target = mp.matrix(size, size), mp.matrix(size, 1)
    for k in range(size):
        target[k] = _moment(mp, 2 * k)
        for i, node in enumerate(nodes):
            matrix[k, i] = node ** (2 * k) * (1 if i == 0 else 2)
    solution = mp.lu_solve(matrix, target)
    return [solution[i] for i in range(size)]


@functools.cache
def _chain() -> tuple[np.ndarray, ...]:
    """The positive nodes of the 1-, 3-, 9-, 19- and 35-node rules, high-precision roots rounded to float64."""
    import mpmath  # declared in pyproject (and installed with torch, through sympy)

    with mpmath.workdps(_DIGITS):
        rules: list[list] = [[]]
        for added in _EXTENSIONS:
            rules.append(sorted(rules[-1] + _extension(mpmath, rules[-1], added)))
        return tuple(np.array([float(node) for node in rule]) for rule in rules)


@functools.cache
def nested_hermite(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The level-``level`` nested rule for :math:`N(0, 1)`: ascending nodes and weights (read-only, cached).

    Parameters
    ----------
    level : int
        The accuracy level, 1 to :data:`MAX_LEVEL`; the rule integrates polynomials of degree up to
        :math:`2\\,level - 1` exactly (at least).

    Returns
    -------
    nodes, weights : ndarray
        The symmetric nodes (exactly 0 in the middle) and their weights, which sum to one and can be negative.
    """
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"Nested Gauss-Hermite rules have levels 1 to {MAX_LEVEL}; received {level}.")
    import mpmath

    rule, dropped = _LEVELS[level]
    positive = [x for x in _chain()[rule] if not any(abs(x - value) < 5e-5 for value in dropped)]
    with mpmath.workdps(_DIGITS):
        weights = _interpolatory_weights(mpmath, [mpmath.mpf(float(x)) for x in positive])
        half = np.array([float(w) for w in weights])
    nodes = np.concatenate([-np.array(positive[::-1]), [0.0], positive])
    weights = np.concatenate([half[:0:-1], half])
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights
