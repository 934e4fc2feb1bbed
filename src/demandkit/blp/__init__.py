"""The BLP estimator on aggregate data (PyBLP's ``Problem``), from the bottom up.

``economy`` (the data laid out as tensors) -> ``parameters``, ``demand``, ``supply`` (the model at theta) ->
``equilibrium`` (demand as a function of prices) -> ``objective`` (GMM at theta) -> ``postestimation``,
``counterfactuals``, ``optimal_instruments``, ``diagnostics``, ``summary`` -> ``results`` -> ``estimation``
(the one- and two-step procedure) -> ``problem`` (``Problem.solve``). ``frac`` (Salanie-Wolak starting
values) stands beside it. See ARCHITECTURE.md.
"""

from .optimal_instruments import OptimalInstrumentResults
from .problem import Problem
from .results import ProblemResults

__all__ = ["OptimalInstrumentResults", "Problem", "ProblemResults"]
