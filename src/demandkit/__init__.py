"""demandkit: structural demand estimation on a batched PyTorch engine, with PyBLP's interface."""

from . import data, exceptions, frac, montecarlo, replications
from .blp.bootstrap import BootstrappedResults
from .blp.importance_sampling import ImportanceSamplingResults
from .blp.optimal_instruments import OptimalInstrumentResults
from .blp.problem import Problem
from .blp.progress import OptimizationProgress
from .blp.results import ProblemResults
from .configurations.formulation import Formulation
from .configurations.integration import Integration
from .configurations.iteration import Iteration
from .configurations.micro import MicroDataset, MicroMoment, MicroPart, PanelMicroDataset
from .configurations.optimization import Optimization
from .construction.instruments import build_blp_instruments, build_differentiation_instruments, build_id_data
from .construction.ownership import build_ownership
from .integrated import IntegratedProblem, IntegratedResults
from .integrated.simulation import IntegratedSimulation
from .interfaces.utilities import build_integration, build_matrix, data_to_dict, parallel, read_pickle, save_pickle
from .mixed_logit import MixedLogit, MixedLogitResults
from .settings import options
from .simulation.simulation import Simulation, SimulationResults

__version__ = "0.1.0"

__all__ = [
    "BootstrappedResults",
    "ImportanceSamplingResults",
    "Formulation",
    "Integration",
    "IntegratedProblem",
    "IntegratedResults",
    "IntegratedSimulation",
    "Iteration",
    "MicroDataset",
    "MicroMoment",
    "MicroPart",
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
    "build_integration",
    "build_matrix",
    "data_to_dict",
    "parallel",
    "read_pickle",
    "save_pickle",
    "OptimizationProgress",
    "frac",
    "montecarlo",
    "OptimalInstrumentResults",
    "PanelMicroDataset",
    "Simulation",
    "SimulationResults",
    "options",
]
