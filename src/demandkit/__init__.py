"""demandkit: structural demand estimation on a batched PyTorch engine, with PyBLP's interface."""

from . import data, exceptions, frac, montecarlo, replications
from .construction import build_ownership
from .formulation import Formulation
from .instruments import build_blp_instruments, build_differentiation_instruments, build_id_data
from .integration import Integration
from .iteration import Iteration
from .mixed_logit import MixedLogit, MixedLogitResults
from .optimal_instruments import OptimalInstrumentResults
from .optimization import Optimization
from .problem import Problem
from .results import ProblemResults
from .simulation import Simulation, SimulationResults

__version__ = "0.1.0"

__all__ = [
    "Formulation",
    "Integration",
    "Iteration",
    "MixedLogit",
    "MixedLogitResults",
    "Optimization",
    "Problem",
    "ProblemResults",
    "data",
    "exceptions",
    "replications",
    "__version__",
    "build_ownership",
    "build_blp_instruments",
    "build_differentiation_instruments",
    "build_id_data",
    "frac",
    "montecarlo",
    "OptimalInstrumentResults",
    "Simulation",
    "SimulationResults",
]
