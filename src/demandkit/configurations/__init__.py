"""Configuration objects, as PyBLP groups them: what to estimate and how.

:class:`Formulation` (formulas to design matrices, fixed effects absorbed), :class:`Integration` (nodes and
weights), :class:`Iteration` (fixed-point accelerators), :class:`Optimization` (the scipy bridge), and the
string options each defined once (:mod:`.options`). They know nothing of tensors or estimators.
"""

from .formulation import Formulation
from .integration import Integration
from .iteration import Iteration
from .micro import MicroDataset, MicroMoment, MicroPart, PanelMicroDataset
from .optimization import Optimization

__all__ = [
    "Formulation",
    "Integration",
    "Iteration",
    "MicroDataset",
    "MicroMoment",
    "MicroPart",
    "Optimization",
    "PanelMicroDataset",
]
