"""The exceptions and warnings demandkit raises.

Every error a user can cause derives from :class:`DemandkitError` and from the builtin it refines
(``ValueError`` for bad input), so ``except ValueError`` keeps working.
"""


class DemandkitError(Exception):
    """Base class of every demandkit error."""


class InvalidDataError(DemandkitError, ValueError):
    """Product or agent data that cannot be used.

    The message names the column and, where it matters, the market at fault. Fix the data (drop the
    rows, rescale the column, rename it) and build the problem again.
    """


class SpecificationError(DemandkitError, ValueError):
    """A model specification that cannot be estimated: unknown options, parameter matrices of the
    wrong shape, too few instruments for the parameters, collinear regressors or instruments.
    """


class ConvergenceWarning(UserWarning):
    """A fixed point or an optimizer that stopped before meeting its criterion.

    The results object records which markets or steps failed; tighten nothing silently, but consider
    more iterations, a different accelerator, better starting values or rescaled characteristics.
    """


class DistinctOptimaWarning(UserWarning):
    """Starts of a multi-start estimation that converged to distinct optima (objectives that differ materially).

    The results are the best start's; ``results.starts`` lists every start. The objective has local optima there:
    more starts may find a better one, and an optimum that depends on the start deserves a look at identification.
    """
