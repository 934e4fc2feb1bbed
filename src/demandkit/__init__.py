"""demandkit: structural demand estimation on a batched PyTorch engine, with PyBLP's interface."""

from . import data, exceptions, replications
from .construction import build_ownership
from .formulation import Formulation
from .integration import Integration
from .iteration import Iteration
from .optimization import Optimization
from .problem import Problem
from .results import ProblemResults

__version__ = "0.1.0"

__all__ = [
    "Formulation",
    "Integration",
    "Iteration",
    "Optimization",
    "Problem",
    "ProblemResults",
    "data",
    "exceptions",
    "replications",
    "__version__",
    "build_ownership",
]
