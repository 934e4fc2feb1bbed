"""Mixed logit on individual choice data: simulated maximum likelihood with panels and state dependence.

Modules, in the order data flows:

- :mod:`.specification`: string options, configuration records and the parameter layout;
- :mod:`.data`: validation of long tables and their panel layout;
- :mod:`.draws`: per-individual simulation draws (via :class:`demandkit.Integration`);
- :mod:`.chunks`: chunks of individuals as padded tensors, sized from free memory;
- :mod:`.distributions`: from draws to coefficients, and the chain rule back;
- :mod:`.kernels`: log-likelihood, analytic gradient and Hessian, probabilities, elasticities;
- :mod:`.engine`: the chunked evaluation loop on one device;
- :mod:`.model`: :class:`MixedLogit`, the estimator; :mod:`.covariance`: its covariance matrices;
- :mod:`.results` and :mod:`.postestimation`: :class:`MixedLogitResults`;
- :mod:`.simulation`: synthetic panels with known truth.
"""

from .model import MixedLogit
from .results import MixedLogitResults
from .simulation import SimulatedPanel, simulate_panel
from .specification import DISTRIBUTIONS, StateDependence

__all__ = ["DISTRIBUTIONS", "MixedLogit", "MixedLogitResults", "SimulatedPanel", "StateDependence", "simulate_panel"]
