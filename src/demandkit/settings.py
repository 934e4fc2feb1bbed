"""``demandkit.options`` (defined here, in ``demandkit.settings``): PyBLP's global settings, so that scripts that set
``pyblp.options.verbose = False`` and its kin run unchanged.

Every name of ``pyblp.options`` (PyBLP 1.3) can be set. These change what demandkit does:

``verbose`` (default False)
    When True, :meth:`~demandkit.Problem.solve` shows its progress bar (tqdm) unless ``progress=`` is given.
    PyBLP prints status updates by default; demandkit is quiet by default.
``digits`` (default 5)
    Significant digits of the numbers in printed summaries (``print(results)``).
``dtype`` (default ``torch.float64``)
    The default ``dtype`` of new :class:`~demandkit.Problem` and :class:`~demandkit.Simulation` objects (their own
    ``dtype=`` argument wins): ``torch.float64``/``numpy.float64`` or ``torch.float32``/``numpy.float32``. Extended
    precision (PyBLP's ``numpy.longdouble``) does not exist in torch and raises an error.
``finite_differences_epsilon`` (default :math:`\\sqrt{\\epsilon_{mach}}`)
    The step of ``solve(finite_differences=True)``.

The others are accepted and have no effect, because demandkit does the job differently: ``verbose_output``,
``flush_output`` and ``verbose_tracebacks`` (progress is a tqdm bar; errors are exceptions with their tracebacks),
``pseudo_inverses``, ``singular_tol``, ``collinear_atol``, ``collinear_rtol``, ``psd_atol``, ``psd_rtol``,
``stable_atol``, ``stable_rtol`` and ``weights_tol`` (ill-conditioned matrices are pseudo-inverted with a warning;
collinear columns are reported at set-up), ``micro_computation_chunks`` and ``detect_micro_collinearity`` (micro
moments are computed in batched tensors) and ``drop_product_fields``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .exceptions import SpecificationError

_EFFECTIVE: dict[str, Any] = {
    "verbose": False,
    "digits": 5,
    "dtype": torch.float64,
    "finite_differences_epsilon": float(np.sqrt(np.finfo(np.float64).eps)),
}
_ACCEPTED: dict[str, Any] = {
    "verbose_output": print,
    "flush_output": False,
    "verbose_tracebacks": False,
    "pseudo_inverses": True,
    "singular_tol": 1 / np.finfo(np.float64).eps,
    "collinear_atol": 1e-10,
    "collinear_rtol": 1e-10,
    "psd_atol": 1e-8,
    "psd_rtol": 1e-8,
    "stable_atol": 1e-10,
    "stable_rtol": 1e-10,
    "weights_tol": 1e-10,
    "micro_computation_chunks": 1,
    "detect_micro_collinearity": False,
    "drop_product_fields": False,
}
_DTYPES = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
}


def as_torch_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """A torch floating dtype from a torch or NumPy float64/float32 dtype (or type), else a clear error."""
    try:
        key = dtype if isinstance(dtype, torch.dtype) else np.dtype(dtype)
    except TypeError:
        key = None
    if key not in _DTYPES:
        raise SpecificationError(
            f"{name} must be float64 or float32 (torch or NumPy); received {dtype!r}. Extended precision "
            "(numpy.longdouble) has no torch counterpart."
        )
    return _DTYPES[key]


class Options:
    """PyBLP's global settings (module docstring); an unknown name is an error that lists the known ones."""

    __slots__ = tuple(_EFFECTIVE) + tuple(_ACCEPTED)

    def __init__(self) -> None:
        for name, value in {**_EFFECTIVE, **_ACCEPTED}.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__slots__:
            raise AttributeError(
                f"demandkit.options has no setting {name!r}; the settings are {sorted(self.__slots__)}."
            )
        if name == "dtype":
            value = as_torch_dtype(value, "options.dtype")
        elif name == "digits" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecificationError(f"options.digits must be a positive integer; received {value!r}.")
        elif name == "finite_differences_epsilon" and not (isinstance(value, (int, float)) and value > 0):
            raise SpecificationError(f"options.finite_differences_epsilon must be positive; received {value!r}.")
        elif name == "verbose":
            value = bool(value)
        object.__setattr__(self, name, value)

    def reset(self) -> None:
        """Back to the defaults."""
        self.__init__()

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in _EFFECTIVE)
        return f"demandkit.options({settings}, and PyBLP's other settings, accepted without effect)"


options = Options()
"""The settings (``demandkit.options``)."""
