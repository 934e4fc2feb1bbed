"""Session-wide test settings.

Tests run with one BLAS/OpenMP thread and one torch thread. The problems in the suite are small, and on a
shared two-core machine multithreaded BLAS (PyBLP's many tiny solves) and torch's intra-op threads wait on
each other at every barrier: measured 10-15x slower under load. One thread makes the suite's run time
robust to whatever else the machine is doing; it does not change any number a test checks.
"""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _single_threaded():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
