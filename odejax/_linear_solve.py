"""Linear solves of the stiff solvers: ``(I - hγ J) x = b`` with ``J = ∂f/∂z`` at one point.

Both stiff methods need, once per step, the Jacobian ``J`` of the flat vector field at the step's
start and then several solves with the iteration matrix ``M = I - hγ J`` (the Newton matrix of
an ESDIRK stage, or ``hγ`` times the Rosenbrock matrix ``I/(hγ) - J``):

* ``"dense"``: ``J`` by forward mode (one ``jax.jvp`` per column, vmapped), ``M`` factorised
  once (LU with partial pivoting) and every solve a pair of triangular solves. Best for small and
  medium states (up to a few hundred components).
* ``"matrix_free"``: no matrix at all. ``f`` is linearised once per step (``jax.linearize``) and
  each solve runs restarted GMRES on the products ``v ↦ v - hγ J v``. For large states (neural
  vector fields, discretised PDEs) where ``n × n`` is too big to form or factorise.

Everything is differentiable (``lu_factor``/``lu_solve`` have JAX rules; GMRES is a
``custom_linear_solve``), so the solvers work under the checkpoint adjoint and forward mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import Array
from jax.scipy.sparse.linalg import gmres

__all__ = ["LINEAR_SOLVERS", "IterationMatrix", "KrylovOptions", "iteration_matrix"]

LINEAR_SOLVERS = ("dense", "matrix_free")


@dataclasses.dataclass(frozen=True)
class KrylovOptions:
    """Settings of the matrix-free GMRES solve (static data).

    Attributes:
        tol: relative residual ``‖b - Mx‖ ≤ tol ‖b‖`` to reach; ``None`` picks
            ``min(1e-3 · rtol, 1e-6)``, floored at ``100 ε`` of the state's dtype.
        restart: Krylov subspace size before a restart.
        maxiter: the most restarts.
    """

    tol: float | None = None
    restart: int = 20
    maxiter: int = 10

    def __post_init__(self):
        if self.tol is not None and not 0 < self.tol < 1:
            raise ValueError(f"KrylovOptions tol must lie in (0, 1), got {self.tol}.")
        if self.restart < 1 or self.maxiter < 1:
            raise ValueError("KrylovOptions restart and maxiter must be at least 1.")


class IterationMatrix:
    """``M = I - hγ J`` ready to solve with; built by :func:`iteration_matrix`."""

    def __init__(self, solve: Callable[[Array], Array], dfdt: Array | None):
        self.solve = solve
        self.dfdt = dfdt  # ∂f/∂t at the same point, when asked for


def jacobian(fn, t: Array, z: Array, with_time: bool = False):
    """``f(t, z)``, ``J = ∂f/∂z`` ``(n, n)`` and optionally ``∂f/∂t``: one vmapped ``jax.jvp``.

    The primal is computed once; the tangents are the ``n`` unit vectors of ``z`` (and the unit
    time direction), so this costs about ``n`` (``n + 1``) Jacobian-vector products.
    """
    n = z.shape[0]
    tz = jnp.eye(n, dtype=z.dtype)
    tt = jnp.zeros((n,), t.dtype)
    if with_time:
        tz = jnp.concatenate([tz, jnp.zeros((1, n), z.dtype)])
        tt = jnp.concatenate([tt, jnp.ones((1,), t.dtype)])

    def one(dt_, dz_):
        return jax.jvp(fn, (t, z), (dt_, dz_))

    fz, cols = jax.vmap(one, out_axes=(None, 0))(tt, tz)  # cols[i] = J e_i (rows of J^T)
    if with_time:
        return fz, cols[:n].T, cols[n]
    return fz, cols.T, None


def iteration_matrix(
    kind: str,
    fn,
    t: Array,
    z: Array,
    hgamma: Array,
    *,
    with_time: bool = False,
    krylov: KrylovOptions | None = None,
    rtol: Array | None = None,
) -> tuple[Array, IterationMatrix]:
    """Linearise ``fn`` at ``(t, z)`` and prepare solves with ``M = I - hgamma · J``.

    Args:
        kind: ``"dense"`` or ``"matrix_free"``.
        fn: flat vector field ``fn(t, z) -> (n,)``.
        t, z: the point; ``hgamma``: the scalar ``h γ`` (state dtype).
        with_time: also return ``∂f/∂t`` (Rosenbrock methods).
        krylov: GMRES settings (``"matrix_free"``).
        rtol: the solve's relative tolerance (sets the default GMRES tolerance).

    Returns:
        ``(f(t, z), M)``.
    """
    n = z.shape[0]
    if kind == "dense":
        fz, jac, dfdt = jacobian(fn, t, z, with_time)
        m = jnp.eye(n, dtype=z.dtype) - hgamma * jac
        lu = jsl.lu_factor(m)
        return fz, IterationMatrix(lambda b: jsl.lu_solve(lu, b), dfdt)
    if kind != "matrix_free":
        raise ValueError(f"Unknown linear_solver={kind!r}; use one of {LINEAR_SOLVERS}.")
    krylov = KrylovOptions() if krylov is None else krylov
    if with_time:
        fz, lin = jax.linearize(fn, t, z)
        dfdt = lin(jnp.ones((), t.dtype), jnp.zeros_like(z))

        def jvp(v):
            return lin(jnp.zeros((), t.dtype), v)

    else:
        fz, jvp = jax.linearize(lambda y: fn(t, y), z)
        dfdt = None
    eps = float(jnp.finfo(z.dtype).eps)
    if krylov.tol is not None:
        tol = max(krylov.tol, 100 * eps)
    else:
        tol = jnp.clip(1e-3 * jnp.min(rtol), 100 * eps, 1e-6) if rtol is not None else 1e-6

    def matvec(v):
        return v - hgamma * jvp(v)

    def solve(b):
        x, _ = gmres(matvec, b, tol=tol, restart=min(krylov.restart, n), maxiter=krylov.maxiter)
        return x

    return fz, IterationMatrix(solve, dfdt)
