"""Implicit Runge–Kutta (ESDIRK) methods solved by a simplified Newton iteration: ``kvaerno5``.

An ESDIRK method with ``s`` stages, an explicit first stage and the same diagonal ``γ`` for the
others computes

.. math::

    Z_1 = z, \\qquad Z_i = z + h \\sum_{j<i} a_{ij} k_j + h γ\\, k_i, \\quad
    k_i = f(t + c_i h, Z_i), \\qquad z_1 = z + h \\sum_i b_i k_i .

Each implicit stage is the nonlinear system ``G(Z) = Z - base_i - hγ f(t_i, Z) = 0``, solved by
the simplified Newton iteration ``(I - hγ J) ΔZ = -G(Z)`` with ``J = ∂f/∂z`` evaluated once per
step at ``(t, z)`` and factorised once (see :mod:`odejax._linear_solve`); all stages share it.
The iteration starts from the predicted derivative ``k_i^0 = Σ_j α_ij k_j`` and stops when the
estimated remaining error ``η ‖ΔZ‖`` (``η = ρ / (1 - ρ)``, ``ρ`` the observed contraction rate) is
below ``κ`` in the scaled norm of the step-size controller (Hairer & Wanner II, §IV.8). A rate
``ρ ≥ 1`` (divergence) or no convergence in ``newton_max_iters`` iterations fails the step,
which the loop rejects and retries with half the step. After convergence the stage derivative is
taken from the stage equation, ``k_i = (Z_i - base_i) / (hγ)``, not from a new evaluation of
``f`` (which would amplify the Newton error by the stiffness).

Kvaerno5 (Kværnø 2004) is stiffly accurate (``b`` is the last row of ``a``), so ``z_1 = Z_s``;
its embedded fourth-order solution is the sixth stage, so the error estimate is
``Z_7 - Z_6 = h Σ_i (b_i - \\hat b_i) k_i``. Dense output is the cubic Hermite polynomial through
``(z, f(t, z))`` and ``(z_1, f(t + h, z_1))``, as in Diffrax.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.scipy.sparse.linalg import gmres

from ._linear_solve import LINEAR_SOLVERS, KrylovOptions, iteration_matrix
from ._step import lincomb

__all__ = [
    "ESDIRKTableau",
    "ImplicitSolver",
    "Kvaerno5",
    "StiffStep",
    "esdirk_step",
    "hermite_dense_weights",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ESDIRKTableau:
    """Coefficients of an ESDIRK method (explicit first stage, constant diagonal ``γ``).

    Attributes:
        a: ``(s, s)`` lower-triangular stage matrix with ``a[0, 0] = 0`` and ``a[i, i] = γ``.
        b: ``(s,)`` solution weights (sum 1).
        c: ``(s,)`` nodes, ``c_i = Σ_j a_ij``.
        e: ``(s,)`` error weights ``b - b_hat`` (sum 0).
        predictor: ``(s, s)`` strictly lower-triangular weights ``α`` (rows sum to 1) of the
            Newton starting guess ``k_i^0 = Σ_j α_ij k_j``, ``Z_i^0 = base_i + hγ k_i^0``
            (default: ``k_i^0 = k_{i-1}``).
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    e: np.ndarray
    predictor: np.ndarray | None = None

    def __post_init__(self):
        a, b, c, e = (np.asarray(x, dtype=np.float64) for x in (self.a, self.b, self.c, self.e))
        s = b.shape[0]
        if a.shape != (s, s) or c.shape != (s,) or e.shape != (s,):
            raise ValueError(f"ESDIRK tableau shapes disagree: a {a.shape}, b, c, e of {s}.")
        if np.any(np.triu(a, 1) != 0):
            raise ValueError("ESDIRK tableau `a` must be lower triangular.")
        gamma = a[1, 1] if s > 1 else 0.0
        if a[0, 0] != 0 or np.any(np.abs(np.diag(a)[1:] - gamma) > 1e-14) or gamma <= 0:
            raise ValueError("ESDIRK tableau needs a[0,0] = 0 and one positive diagonal γ.")
        if np.max(np.abs(a.sum(axis=1) - c)) > 1e-10:
            raise ValueError("ESDIRK tableau rows of `a` do not sum to `c`.")
        if abs(b.sum() - 1) > 1e-10 or abs(e.sum()) > 1e-10:
            raise ValueError("ESDIRK tableau weights must sum to 1 and error weights to 0.")
        pred = self.predictor
        if pred is None:  # predict each stage derivative by the previous one
            pred = np.eye(s, k=-1)
        pred = np.asarray(pred, dtype=np.float64)
        if pred.shape != (s, s) or np.any(np.triu(pred) != 0):
            raise ValueError("ESDIRK predictor must be strictly lower triangular (s, s).")
        for name, val in (("a", a), ("b", b), ("c", c), ("e", e), ("predictor", pred)):
            object.__setattr__(self, name, val)

    @property
    def num_stages(self) -> int:
        return self.b.shape[0]

    @property
    def gamma(self) -> float:
        return float(self.a[1, 1])

    @property
    def stiffly_accurate(self) -> bool:
        return bool(np.array_equal(self.a[-1], self.b))


def hermite_dense_weights(anchor: str) -> np.ndarray:
    """Cubic Hermite dense output over ``D = [(z_1 - z)/h, f(t, z), f(t + h, z_1)]``.

    ``z(θ) = z_ref + h Σ_i w_i(θ) D_i`` with ``w_i(θ) = Σ_j P_ij θ^j`` (column ``j`` multiplies
    ``θ^j``); ``z_ref`` is ``z`` for ``anchor="start"`` and ``z_1`` for ``"end"``.
    """
    p = np.array(
        [
            [0.0, 0.0, 3.0, -2.0],  # h01 = 3θ² - 2θ³ on the secant slope
            [0.0, 1.0, -2.0, 1.0],  # h10 = θ - 2θ² + θ³ on f(t, z)
            [0.0, 0.0, -1.0, 1.0],  # h11 = θ³ - θ² on f(t + h, z_1)
        ]
    )
    if anchor == "end":
        p[0, 0] = -1.0
    return p


@dataclasses.dataclass(frozen=True, eq=False)
class ImplicitSolver:
    """An ESDIRK method with its Newton and linear-solve settings (static data).

    Attributes:
        name: short name (``"kvaerno5"``).
        tableau: the :class:`ESDIRKTableau`.
        order: order of the propagated solution; ``error_order``: of the embedded one.
        linear_solver: ``"dense"`` (LU) or ``"matrix_free"`` (GMRES on Jacobian-vector products).
        newton_max_iters: the most simplified-Newton iterations per stage.
        newton_kappa: a stage has converged when the estimated error of the iterate is below
            ``κ`` times the step's tolerance (scaled RMS norm).
        krylov: GMRES settings for ``linear_solver="matrix_free"``.
    """

    name: str
    tableau: ESDIRKTableau
    order: int
    error_order: int
    linear_solver: str = "dense"
    newton_max_iters: int = 10
    newton_kappa: float = 1e-2
    krylov: KrylovOptions = dataclasses.field(default_factory=KrylovOptions)

    kind = "esdirk"
    adaptive = True
    stiff = True

    def __post_init__(self):
        if self.linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver={self.linear_solver!r} is not one of {LINEAR_SOLVERS}."
            )
        if self.newton_max_iters < 1:
            raise ValueError(f"newton_max_iters must be at least 1, got {self.newton_max_iters}.")
        if not 0 < self.newton_kappa < 1:
            raise ValueError(f"newton_kappa must lie in (0, 1), got {self.newton_kappa}.")

    def dense_weights(self, anchor: str) -> np.ndarray:
        return hermite_dense_weights(anchor)

    def __repr__(self) -> str:
        return f"ImplicitSolver({self.name!r}, order={self.order}, {self.linear_solver})"


class StiffStep(NamedTuple):
    """What one attempted stiff step produces.

    Attributes:
        z1: candidate state; ``err``: embedded error estimate; ``f1``: ``f(t + h, z_1)`` (or the
            incoming ``f0`` when the method does not produce it).
        dense: ``(m, n)`` vectors the dense-output weights multiply.
        fail: the nonlinear solve failed (the step must be rejected and shrunk).
        nfe: evaluations of ``f`` (Jacobian-vector products not counted); ``nlin``: solves.
    """

    z1: Array
    err: Array
    f1: Array
    dense: Array
    fail: Array
    nfe: Array
    nlin: Array


def _scaled_norm(x: Array, scale: Array) -> Array:
    y = x / scale
    return jnp.sqrt(jnp.mean(y * y))


def esdirk_step(
    solver: ImplicitSolver,
    fn,
    t: Array,
    z: Array,
    dt: Array,
    f0: Array,
    rtol: Array,
    atol: Array,
) -> StiffStep:
    """Attempt one ESDIRK step from ``(t, z)`` with step ``dt`` (``f0 = fn(t, z)``).

    Each stage's Newton solve is wrapped in ``lax.custom_root``: it runs as a plain
    ``lax.while_loop`` and is never differentiated itself; derivatives of the stage value come
    from the implicit function theorem on the stage equation, with the exact Jacobian at the
    solution (materialised for ``"dense"``, GMRES for ``"matrix_free"``). So forward mode and
    reverse mode (the checkpoint adjoint) cost one linear solve per stage, not one per Newton
    iteration, and are the derivative of the converged discretisation.
    """
    tab = solver.tableau
    s = tab.num_stages
    n = z.shape[0]
    dz = dt.astype(z.dtype)
    hg = dz * tab.gamma
    _, mat = iteration_matrix(solver.linear_solver, fn, t, z, hg, krylov=solver.krylov, rtol=rtol)
    scale = atol + rtol * jnp.abs(z)
    # atol = 0 at a zero component gives Newton no size to converge to there: borrow the
    # largest component's (or 1's) relative size.
    scale = jnp.where(scale > 0, scale, rtol * jnp.maximum(jnp.max(jnp.abs(z)), 1))
    kappa = solver.newton_kappa
    kmax = solver.newton_max_iters
    tiny = jnp.finfo(z.dtype).eps

    def tangent_solve(g, y):
        if solver.linear_solver == "dense":
            return jnp.linalg.solve(jax.vmap(g, out_axes=1)(jnp.eye(n, dtype=y.dtype)), y)
        tol = max(solver.krylov.tol or 1e-10, 100 * float(tiny))
        return gmres(g, y, tol=tol, restart=min(solver.krylov.restart, n), maxiter=50)[0]

    ks = [f0]
    fail = jnp.zeros((), bool)
    nfe = jnp.zeros((), jnp.int32)
    eta0 = jnp.ones((), z.dtype)  # Hairer's η carried from stage to stage
    zi = z
    for i in range(1, s):
        inc = lincomb(tab.a[i, :i], ks)
        base = z if inc is None else z + dz * inc
        pinc = lincomb(tab.predictor[i, :i], ks)  # predicted k_i
        guess = base if pinc is None else base + hg * pinc
        ti = t + float(tab.c[i]) * dt

        def residual(zc, ti=ti, base=base):
            return zc - base - hg * fn(ti, zc)

        def newton(residual, guess, eta0=eta0):
            def iterate(c):
                zc, _, _, it, prev, eta = c
                dzc = mat.solve(-residual(zc))
                norm = _scaled_norm(dzc, scale)
                rate = norm / jnp.maximum(prev, tiny)
                first = it == 0
                eta = jnp.where(first, eta, rate / jnp.maximum(1 - rate, tiny))
                done = eta * norm <= kappa
                bad = ~jnp.isfinite(norm) | (~first & (rate >= 1))  # divergence
                return zc + dzc, done & ~bad, bad, it + 1, norm, eta

            def active(c):
                _, done, bad, it, *_ = c
                return ~done & ~bad & (it < kmax)

            no = jnp.zeros((), bool)
            init = (guess, no, no, jnp.zeros((), jnp.int32), jnp.ones((), z.dtype), eta0)
            zc, done, _, its, _, eta = lax.while_loop(active, iterate, init)
            # A failed solve (the step is rejected) returns the finite guess: custom_root
            # differentiates at the returned point, and a diverged (inf/nan) iterate there would
            # turn the zero cotangent of the rejected step into nan in reverse mode.
            zc = jnp.where(done, zc, guess)
            # Auxiliary outputs as floats: custom_root gives them zero tangents of their dtype.
            return zc, (done.astype(z.dtype), its.astype(z.dtype), eta)

        zi, (done, its, eta) = lax.custom_root(residual, guess, newton, tangent_solve, has_aux=True)
        fail = fail | (done == 0)
        nfe = nfe + its.astype(jnp.int32)
        eta0 = jnp.maximum(eta, tiny) ** 0.8
        ks.append((zi - base) / hg)

    if tab.stiffly_accurate:
        z1 = zi
    else:
        z1 = z + dz * lincomb(tab.b, ks)
    err = dz * lincomb(tab.e, ks)
    f1 = ks[-1] if tab.stiffly_accurate and tab.c[-1] == 1.0 else fn(t + dt, z1)
    dense = jnp.stack([(z1 - z) / dz, f0, f1])
    return StiffStep(z1, err, f1, dense, fail, nfe, nfe)


# Kværnø (2004), "Singly diagonally implicit Runge–Kutta methods with an explicit first stage",
# BIT 44: the 7-stage, order 5(4), L-stable, stiffly accurate pair. Predictor weights are
# OrdinaryDiffEq.jl's (with α21 = 1).
_G = 0.26
_A = [
    [0.0],
    [_G, _G],
    [0.13, 0.84033320996790809, _G],
    [0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _G],
    [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, _G],
    [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, _G],
    [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
     0.06962479448202728, _G],
]  # fmt: skip
_ALPHA = [
    [],
    [1.0],
    [-1.366025403784441, 2.3660254037844357],
    [-0.19650552613122207, 0.8113579546496623, 0.38514757148155954],
    [0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0],
    [-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0],
    [*_A[5][:5], _G],
]


def _square(rows) -> np.ndarray:
    s = len(rows)
    out = np.zeros((s, s))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@functools.cache
def Kvaerno5(  # noqa: N802
    linear_solver: str = "dense",
    newton_max_iters: int = 10,
    newton_kappa: float = 1e-2,
    krylov: KrylovOptions | None = None,
) -> ImplicitSolver:
    """Kværnø's 5(4) ESDIRK method: 7 stages (6 implicit), L-stable, stiffly accurate.

    Args:
        linear_solver: ``"dense"`` (LU of ``I - hγJ``, once per step) or ``"matrix_free"``
            (GMRES on Jacobian-vector products).
        newton_max_iters, newton_kappa: simplified-Newton settings (see :class:`ImplicitSolver`).
        krylov: GMRES settings (:class:`KrylovOptions`) for ``"matrix_free"``.
    """
    a = _square(_A)
    b = a[-1].copy()
    b_hat = np.zeros(7)
    b_hat[:6] = a[5, :6]  # the sixth stage is the embedded fourth-order solution
    c = a.sum(axis=1)
    c[np.abs(c - 1) < 1e-12] = 1.0  # the last two stages sit exactly at t + h
    tab = ESDIRKTableau(a=a, b=b, c=c, e=b - b_hat, predictor=_square(_ALPHA))
    return ImplicitSolver(
        "kvaerno5",
        tab,
        order=5,
        error_order=4,
        linear_solver=linear_solver,
        newton_max_iters=newton_max_iters,
        newton_kappa=newton_kappa,
        krylov=KrylovOptions() if krylov is None else krylov,
    )
