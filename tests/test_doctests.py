"""The examples in the docstrings (shown in the documentation's API reference) run as doctests.

Each module listed here has short ``Examples`` sections; a failing example prints the expected and the actual
output and fails its module's test. Keep the examples fast: they run on every test run.
"""

import doctest

import pytest

from demandkit.configurations import formulation, integration
from demandkit.construction import instruments, ownership

MODULES = [formulation, integration, instruments, ownership]


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_docstring_examples(module):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    results = doctest.testmod(module, optionflags=flags, report=True)
    assert results.attempted > 0, f"{module.__name__} has no docstring examples"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {module.__name__}"
