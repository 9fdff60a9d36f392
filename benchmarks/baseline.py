"""The floor for the overhead ratio: hand-written fixed-step RK4 in one ``lax.fori_loop``.

It makes 4 vector-field evaluations per step and nothing else (no error control, no saving), so
its time per evaluation is the cost of ``f`` plus the least possible loop overhead.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .problems import Problem

__all__ = ["build_rk4"]


def rk4(f, z0, t0, t1, p, num_steps: int):
    """Classical RK4 for ``dz/dt = f(z, t, p)`` with ``num_steps`` equal steps; returns z(t1)."""
    dt = (t1 - t0) / num_steps

    def step(i, z):
        t = t0 + i * dt
        k1 = f(z, t, p)
        k2 = f(z + dt / 2 * k1, t + dt / 2, p)
        k3 = f(z + dt / 2 * k2, t + dt / 2, p)
        k4 = f(z + dt * k3, t + dt, p)
        return z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return lax.fori_loop(0, num_steps, step, z0)


def build_rk4(problem: Problem, num_steps: int) -> Callable[[], jax.Array]:
    """A zero-argument jitted call of :func:`rk4` on ``problem`` (its first parameter row)."""

    @jax.jit
    def run(z0, t0, t1, p):
        return rk4(problem.jax_rhs, z0, t0, t1, p, num_steps)

    z0, p = jnp.array(problem.z0), jnp.array(problem.params[0])
    t0, t1 = jnp.array(problem.t0), jnp.array(problem.t1)
    return lambda: run(z0, t0, t1, p)
