"""Builders of data that a problem needs: instruments (BLP sums, Gandhi-Houde differentiation), id data and
ownership matrices. They work on the user's tables and return arrays; no estimator is involved."""

from .instruments import build_blp_instruments, build_differentiation_instruments, build_id_data
from .ownership import build_ownership

__all__ = ["build_blp_instruments", "build_differentiation_instruments", "build_id_data", "build_ownership"]
