"""The test ODEs, their save grids, and SciPy DOP853 reference solutions.

Each vector field is written once as ``rhs(z, t, p, xp)`` with only elementwise operations, so
the same code serves JAX (``xp=jax.numpy``), NumPy (``xp=numpy``) and a whole batch at once (``z``
of shape ``(n, B)``, ``p`` of shape ``(P, B)``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = [
    "DETEST",
    "LOTKA_VOLTERRA",
    "VAN_DER_POL",
    "VAN_DER_POL_BATCH",
    "VAN_DER_POL_T1",
    "Case",
    "Problem",
    "reference",
]

REFERENCE_TOL = 1e-13


def van_der_pol(z, t, p, xp=jnp):
    """Van der Pol oscillator, ``p = (mu,)``."""
    x, y = z[0], z[1]
    return xp.stack([y, p[0] * (1 - x**2) * y - x])


def lotka_volterra(z, t, p, xp=jnp):
    """Lotka–Volterra predator–prey, ``p = (alpha, beta, gamma, delta)``."""
    x, y = z[0], z[1]
    return xp.stack([p[0] * x - p[1] * x * y, p[3] * x * y - p[2] * y])


def detest_a3(z, t, p, xp=jnp):
    """DETEST A3: y' = y cos t."""
    return xp.stack([z[0] * xp.cos(t)])


def detest_b5(z, t, p, xp=jnp):
    """DETEST B5: Euler's equations of a rigid body without external forces."""
    return xp.stack([z[1] * z[2], -z[0] * z[2], -0.51 * z[0] * z[1]])


def detest_c3(z, t, p, xp=jnp):
    """DETEST C3: the 10-equation tridiagonal linear system (a discretised heat equation)."""
    n = 10
    rows = [-2 * z[0] + z[1]]
    rows += [z[i - 1] - 2 * z[i] + z[i + 1] for i in range(1, n - 1)]
    rows += [z[n - 2] - 2 * z[n - 1]]
    return xp.stack(rows)


def detest_d(z, t, p, xp=jnp):
    """DETEST D1–D5: the two-body problem, ``z = (x, y, x', y')``, eccentricity from ``z0``."""
    x, y, u, v = z[0], z[1], z[2], z[3]
    r3 = (x**2 + y**2) ** 1.5
    return xp.stack([u, v, -x / r3, -y / r3])


@dataclasses.dataclass(frozen=True)
class Problem:
    """An initial value problem, or a batch of them differing only in their parameters.

    Attributes:
        name: short label.
        rhs: ``rhs(z, t, p, xp)`` as described in the module docstring.
        z0: initial state.
        t0, t1: time interval.
        num_saves: save at ``linspace(t0, t1, num_saves)``; ``1`` means at ``t1`` only.
        params: one parameter row per problem; more than one row makes a batch, which JAX
            implementations solve under ``jax.vmap``.
    """

    name: str
    rhs: Callable
    z0: tuple[float, ...]
    t0: float
    t1: float
    num_saves: int
    params: tuple[tuple[float, ...], ...]

    @property
    def batched(self) -> bool:
        return len(self.params) > 1

    @property
    def ts(self) -> np.ndarray:
        """Times passed to every solver: the save grid, or ``[t0, t1]`` when saving at t1 only."""
        return np.linspace(self.t0, self.t1, max(self.num_saves, 2))

    @property
    def save_ts(self) -> np.ndarray:
        """Times at which a solution is returned and compared with the reference."""
        return self.ts if self.num_saves > 1 else np.array([self.t1])

    def jax_rhs(self, z, t, p):
        """The vector field as JAX code, ``f(z, t, p)``."""
        return self.rhs(z, t, p, jnp)

    def numpy_rhs(self, z, t, p):
        """The vector field as NumPy code, ``f(z, t, p)``."""
        return self.rhs(z, t, p, np)


VAN_DER_POL = Problem("vdp", van_der_pol, (2.0, 0.0), 0.0, 20.0, 101, ((5.0,),))
LOTKA_VOLTERRA = Problem("lv", lotka_volterra, (1.0, 1.0), 0.0, 20.0, 101, ((1.5, 1.0, 3.0, 1.0),))
VAN_DER_POL_BATCH = Problem(
    "vdp_batch",
    van_der_pol,
    (2.0, 0.0),
    0.0,
    10.0,
    1,
    tuple((float(mu),) for mu in np.linspace(0.5, 10.0, 1024)),
)


VAN_DER_POL_T1 = dataclasses.replace(VAN_DER_POL, name="vdp_t1", num_saves=1)  # `overhead` only
_E = 0.7  # D4's eccentricity
_D4_Z0 = (1 - _E, 0.0, 0.0, ((1 + _E) / (1 - _E)) ** 0.5)
DETEST = (
    Problem("A3", detest_a3, (1.0,), 0.0, 20.0, 101, ((0.0,),)),
    Problem("B5", detest_b5, (0.0, 1.0, 1.0), 0.0, 20.0, 101, ((0.0,),)),
    Problem("C3", detest_c3, (1.0,) + (0.0,) * 9, 0.0, 20.0, 101, ((0.0,),)),
    Problem("D4", detest_d, _D4_Z0, 0.0, 20.0, 101, ((0.0,),)),
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One thing to time: a problem, a method, tolerances and the step limit."""

    problem: Problem
    solver: str
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 4096


@functools.cache
def reference(problem: Problem) -> np.ndarray | None:
    """SciPy DOP853 at ``rtol = atol = 1e-13``, shape ``(B, T, n)``; ``None`` without SciPy.

    A batch is solved as one stacked system (its members are independent), so the steps are
    shared; with the RMS error norm each member's local error stays below ``sqrt(n B) · 1e-13``.
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        return None
    p = np.array(problem.params).T  # (P, B)
    n, b = len(problem.z0), p.shape[1]
    z0 = np.repeat(np.array(problem.z0)[:, None], b, axis=1)  # (n, B)

    def f(t, y):
        return problem.numpy_rhs(y.reshape(n, b), t, p).ravel()

    sol = solve_ivp(
        f,
        (problem.t0, problem.t1),
        z0.ravel(),
        method="DOP853",
        t_eval=problem.save_ts,
        rtol=REFERENCE_TOL,
        atol=REFERENCE_TOL,
    )
    if not sol.success:
        raise RuntimeError(f"Reference solve of {problem.name} failed: {sol.message}")
    return sol.y.reshape(n, b, -1).transpose(1, 2, 0)
