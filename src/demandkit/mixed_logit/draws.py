"""Simulation draws per individual, fixed across iterations and reproducible chunk by chunk.

Individual :math:`i` (its position among the sorted individual ids) always gets the same ``R`` standard normal
nodes in ``D`` dimensions, whatever the chunking, so the draws can be cached on the device or regenerated
chunk by chunk when they do not fit:

- ``'halton'`` and ``'sobol'``: one scrambled sequence (seeded); individual :math:`i` takes points
  ``discard + i R`` to ``discard + (i + 1) R - 1`` (Train's consecutive blocks), generated for any range of
  individuals by skipping ahead.
- ``'monte_carlo'``, ``'lhs'``, ``'mlhs'``: blocks of :data:`BLOCK` individuals, each from its own generator
  seeded by ``numpy.random.SeedSequence([seed, block])``.
- ``'product'`` and ``'grid'``: the same quadrature nodes for everybody, with their weights.

All nodes come from :class:`demandkit.Integration`. A seed of None is replaced once by fresh entropy, recorded
in :attr:`DrawSource.seed`, so the draws of one model stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..configurations.integration import Integration
from ..exceptions import SpecificationError

#: individuals per independently seeded block of pseudo-random draws
BLOCK = 256
_SEQUENCES = ("halton", "sobol")
_QUADRATURE = ("product", "nested_product", "grid", "nested_grid")


@dataclass(frozen=True)
class DrawSource:
    """Standard normal nodes ``[n, D, R]`` for any range of individuals, and the draw weights ``[R]``."""

    integration: Integration
    dimensions: int
    seed: int | None = None
    weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        options = self.integration.options
        if self.seed is None and "seed" in options:
            seed = options["seed"]
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1)[0])
            object.__setattr__(self, "seed", seed)
        if self.dimensions == 0:
            weights = np.ones(1)
        elif self.integration.specification in _QUADRATURE:
            weights = self.integration.build(self.dimensions)[1]
            if (weights <= 0).any():
                raise SpecificationError(
                    f"The {self.integration.specification!r} rule in {self.dimensions} dimensions has non-positive "
                    "weights, which a simulated likelihood cannot use; use 'product' or a simulation rule."
                )
        else:
            weights = np.full(self.integration.size, 1 / self.integration.size)
        object.__setattr__(self, "weights", weights)

    @property
    def size(self) -> int:
        """The number of draws :math:`R` per individual."""
        return len(self.weights)

    def _integration(self, **overrides: object) -> Integration:
        options = {**self.integration.options, "seed": self.seed, **overrides}
        return Integration(self.integration.specification, self.integration.size, options)

    def normals(self, start: int, stop: int) -> np.ndarray:
        """Nodes of individuals ``start`` to ``stop - 1``, ``[stop - start, D, R]``."""
        n, D, R = stop - start, self.dimensions, self.size
        if D == 0 or n <= 0:
            return np.zeros((max(n, 0), D, R))
        specification = self.integration.specification
        if specification in _QUADRATURE:
            nodes = self.integration.build(D)[0]
            return np.broadcast_to(nodes.T[None], (n, D, R)).copy()
        if specification in _SEQUENCES:
            engine = self._integration(discard=self.integration.options["discard"] + start * R)
            nodes = engine.build_many(D, np.arange(n), rescramble=False)[1]  # one sequence, split by individual
            return nodes.reshape(n, R, D).transpose(0, 2, 1).copy()
        out = np.empty((n, D, R))
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            seed = int(np.random.SeedSequence([self.seed, block]).generate_state(1)[0])
            engine = Integration(specification, R, {**self.integration.options, "seed": seed})
            nodes = engine.build_many(D, np.arange(BLOCK))[1].reshape(BLOCK, R, D).transpose(0, 2, 1)
            lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
            out[lo - start : hi - start] = nodes[lo - block * BLOCK : hi - block * BLOCK]
        return out

    def take(self, individuals: np.ndarray) -> np.ndarray:
        """Nodes of arbitrary ``individuals`` (indices), ``[n, D, R]``."""
        individuals = np.asarray(individuals, dtype=np.int64)
        if individuals.size == 0:
            return np.zeros((0, self.dimensions, self.size))
        lo, hi = int(individuals.min()), int(individuals.max()) + 1
        if hi - lo <= 4 * individuals.size:
            return self.normals(lo, hi)[individuals - lo]
        out = np.empty((individuals.size, self.dimensions, self.size))
        order = np.argsort(individuals)
        sorted_ids = individuals[order]
        # contiguous runs of the sorted indices
        breaks = np.flatnonzero(np.diff(sorted_ids) > 1) + 1
        for run in np.split(np.arange(sorted_ids.size), breaks):
            a, b = int(sorted_ids[run[0]]), int(sorted_ids[run[-1]]) + 1
            out[order[run]] = self.normals(a, b)[sorted_ids[run] - a]
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "specification": self.integration.specification,
            "size": self.integration.size,
            "options": {**self.integration.options, "seed": self.seed},
        }
