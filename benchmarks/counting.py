"""Counting vector-field evaluations with a host-side counter, in a separate untimed run.

For JAX code the counter is bumped by ``jax.experimental.io_callback`` (an effect, so XLA keeps
one call per evaluation that actually executes, inside loops too); for host code (SciPy) by a
plain Python wrapper. Either way the count is the number of evaluations the solver really made,
not a formula.
"""

from __future__ import annotations

from collections.abc import Callable

from jax.experimental import io_callback

__all__ = ["Counter"]


class Counter:
    """Wraps a vector field ``f(z, t, p)`` so that every evaluation adds one to ``count``."""

    def __init__(self):
        self.count = 0

    def _bump(self):
        self.count += 1

    def wrap_jax(self, f: Callable) -> Callable:
        """``f`` for traced JAX code, counting each executed evaluation on the host."""

        def counted(z, t, p):
            io_callback(self._bump, None, ordered=False)
            return f(z, t, p)

        return counted

    def wrap_host(self, f: Callable) -> Callable:
        """``f`` for plain Python code."""

        def counted(z, t, p):
            self._bump()
            return f(z, t, p)

        return counted
