"""Rosenbrock methods: ``rodas5``. One linear solve per stage, no Newton iteration.

In the form of Hairer & Wanner (II, §IV.7, the transformed ``rodas`` variables), a step of size
``h`` from ``(t, z)`` with ``J = ∂f/∂z`` and ``f_t = ∂f/∂t`` at ``(t, z)`` computes

.. math::

    \\Big(\\frac{I}{hγ} - J\\Big) k_i = f\\Big(t + c_i h,\\; z + \\sum_{j<i} A_{ij} k_j\\Big)
        + \\sum_{j<i} \\frac{C_{ij}}{h} k_j + h\\, d_i\\, f_t ,
    \\qquad z_1 = z + \\sum_i m_i k_i ,

so every stage costs one evaluation of ``f`` and one solve with the same matrix, factorised once
per step (:mod:`odejax._linear_solve`; it is solved as ``(I - hγJ) k = hγ · rhs``). The stages
``k_i`` are increments (they carry the factor ``h``).

Rodas5 (Di Marzo 1993; Hairer & Wanner's coefficients as listed by OrdinaryDiffEq.jl) has 8
stages, order 5 with an embedded order-4 solution, is stiffly accurate and L-stable. Its last two
stages sit at ``t + h`` and its solution is ``z_1 = U_8 + k_8`` where ``U_8 = z + Σ_j A_8j k_j``
is the embedded solution, so the error estimate is ``k_8`` itself. Its dense output (order 4) is

.. math::

    z(θ) = (1 - θ) z + θ \\big(z_1 + (1 - θ)(K_1 + θ K_2 + θ^2 K_3)\\big),
    \\qquad K_r = \\sum_i H_{ri} k_i .
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from jax import Array

from ._implicit import StiffStep
from ._linear_solve import LINEAR_SOLVERS, KrylovOptions, iteration_matrix
from ._step import lincomb

__all__ = ["Rodas5", "RosenbrockSolver", "RosenbrockTableau", "rosenbrock_step"]


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """Coefficients of a Rosenbrock method in the transformed (``rodas``) form.

    Attributes:
        gamma: the diagonal ``γ``.
        a: ``(s, s)`` strictly lower-triangular ``A`` (stage arguments).
        cmat: ``(s, s)`` strictly lower-triangular ``C`` (stage couplings).
        c: ``(s,)`` stage times; ``d``: ``(s,)`` weights of ``h f_t`` (``d_1 = γ``).
        m: ``(s,)`` solution weights; ``e``: ``(s,)`` error weights ``m - m_hat``.
        h: ``(p, s)`` dense-output weights (see the module docstring).
    """

    gamma: float
    a: np.ndarray
    cmat: np.ndarray
    c: np.ndarray
    d: np.ndarray
    m: np.ndarray
    e: np.ndarray
    h: np.ndarray

    def __post_init__(self):
        vals = {k: np.asarray(getattr(self, k), np.float64) for k in "a cmat c d m e h".split()}
        s = vals["m"].shape[0]
        for k in ("a", "cmat"):
            if vals[k].shape != (s, s) or np.any(np.triu(vals[k]) != 0):
                raise ValueError(f"Rosenbrock tableau `{k}` must be strictly lower (s, s).")
        for k in ("c", "d", "e"):
            if vals[k].shape != (s,):
                raise ValueError(f"Rosenbrock tableau `{k}` must have shape ({s},).")
        if vals["h"].ndim != 2 or vals["h"].shape[1] != s:
            raise ValueError(f"Rosenbrock dense weights `h` must have shape (p, {s}).")
        if not self.gamma > 0:
            raise ValueError("Rosenbrock tableau needs γ > 0.")
        for k, v in vals.items():
            object.__setattr__(self, k, v)

    @property
    def num_stages(self) -> int:
        return self.m.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockSolver:
    """A Rosenbrock method and its linear-solve settings (static data).

    Attributes:
        name: short name (``"rodas5"``).
        tableau: the :class:`RosenbrockTableau`.
        order: order of the solution; ``error_order``: of the embedded one.
        linear_solver: ``"dense"`` (LU) or ``"matrix_free"`` (GMRES on Jacobian-vector products).
        krylov: GMRES settings for ``"matrix_free"``; Rosenbrock methods need accurate solves,
            so the default tolerance follows ``rtol``.
    """

    name: str
    tableau: RosenbrockTableau
    order: int
    error_order: int
    linear_solver: str = "dense"
    krylov: KrylovOptions = dataclasses.field(default_factory=KrylovOptions)

    kind = "rosenbrock"
    adaptive = True
    stiff = True

    def __post_init__(self):
        if self.linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver={self.linear_solver!r} is not one of {LINEAR_SOLVERS}."
            )

    def dense_weights(self, anchor: str) -> np.ndarray:
        """Weights ``P`` over ``D = [(z_1 - z)/h, K_1/h, …, K_p/h]`` (column ``j`` for ``θ^j``).

        ``z(θ) = z_ref + h Σ_i w_i(θ) D_i``: ``(1-θ) z + θ z_1 = z + h θ D_0`` and
        ``θ(1-θ) θ^{r-1} K_r = h (θ^r - θ^{r+1}) D_r``.
        """
        p = self.tableau.h.shape[0]
        w = np.zeros((p + 1, p + 2))
        w[0, 1] = 1.0
        if anchor == "end":
            w[0, 0] = -1.0
        for r in range(1, p + 1):
            w[r, r] = 1.0
            w[r, r + 1] = -1.0
        return w

    def __repr__(self) -> str:
        return f"RosenbrockSolver({self.name!r}, order={self.order}, {self.linear_solver})"


def rosenbrock_step(
    solver: RosenbrockSolver,
    fn,
    t: Array,
    z: Array,
    dt: Array,
    f0: Array,
    rtol: Array,
    atol: Array,
) -> StiffStep:
    """Attempt one Rosenbrock step from ``(t, z)`` with step ``dt``.

    ``f(t, z)`` comes with the Jacobian; ``f0`` is passed through as ``f1`` (unused).
    """
    del atol
    tab = solver.tableau
    s = tab.num_stages
    dz = dt.astype(z.dtype)
    hg = dz * tab.gamma
    fz, mat = iteration_matrix(
        solver.linear_solver, fn, t, z, hg, with_time=True, krylov=solver.krylov, rtol=rtol
    )
    ft = mat.dfdt.astype(z.dtype)
    ks: list[Array] = []
    for i in range(s):
        inc = lincomb(tab.a[i, :i], ks)
        ui = z if inc is None else z + inc
        fi = fz if i == 0 else fn(t + float(tab.c[i]) * dt, ui)
        rhs = fi
        coup = lincomb(tab.cmat[i, :i], ks)
        if coup is not None:
            rhs = rhs + coup / dz
        if tab.d[i] != 0:
            rhs = rhs + (float(tab.d[i]) * dz) * ft
        ks.append(mat.solve(hg * rhs))
    z1 = z + lincomb(tab.m, ks)
    err = lincomb(tab.e, ks)
    dense = [(z1 - z) / dz]
    for r in range(tab.h.shape[0]):
        dense.append(lincomb(tab.h[r], ks) / dz)
    n_f = jnp.asarray(s, jnp.int32)
    return StiffStep(z1, err, f0, jnp.stack(dense), jnp.zeros((), bool), n_f, n_f)


# Rodas5 (Di Marzo 1993), in the transformed variables of Hairer & Wanner's rodas.f, as listed by
# OrdinaryDiffEq.jl (Rodas5Tableau), with its dense-output weights H.
_R5_A6 = [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
          24.13215229196062]  # fmt: skip
_R5_A = [
    [2.0],
    [3.040894194418781, 1.041747909077569],
    [2.576417536461461, 1.622083060776640, -0.9089668560264532],
    [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
    _R5_A6,
    [*_R5_A6, 1.0],
    [*_R5_A6, 1.0, 1.0],
]
_R5_C = [
    [-10.31323885133993],
    [-21.04823117650003, -7.234992135176716],
    [32.22751541853323, -4.943732386540191, 19.44922031041879],
    [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
    [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906,
     318.3822534212147],
    [34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365,
     1.408950972071624, -6.551835421242162],
    [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503,
     -31.58359187223370, -6.685968952921985, -5.810979938412932],
]  # fmt: skip
_R5_GAMMA = 0.19
_R5_c = [0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580, 1.0, 1.0, 1.0]
_R5_d = [_R5_GAMMA, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343,
         -0.377417564392089818, 0.0, 0.0, 0.0]  # fmt: skip
_R5_H = [
    [27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979,
     -4.699151156849391, -1.6008677469422725, -1.5306074446748028, -1.3929872940716344],
    [44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154,
     -181.91095152160645, 3.4116351403665033, 2.5793540257308067, 2.2435122582734066],
    [-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676,
     183.21182741427398, -7.480257918273637, -5.792426076169686, -5.32503859794143],
]  # fmt: skip


def _lower(rows, s: int) -> np.ndarray:
    out = np.zeros((s, s))
    for i, row in enumerate(rows, start=1):
        out[i, : len(row)] = row
    return out


@functools.cache
def Rodas5(  # noqa: N802
    linear_solver: str = "dense", krylov: KrylovOptions | None = None
) -> RosenbrockSolver:
    """Rodas5: an 8-stage Rosenbrock method of order 5(4), L-stable and stiffly accurate.

    Args:
        linear_solver: ``"dense"`` (LU, once per step) or ``"matrix_free"`` (GMRES).
        krylov: GMRES settings (:class:`odejax.KrylovOptions`) for ``"matrix_free"``.
    """
    a = _lower(_R5_A, 8)
    m = a[7].copy()
    m[7] = 1.0  # z_1 = U_8 + k_8
    e = np.zeros(8)
    e[7] = 1.0  # the embedded solution is U_8
    tab = RosenbrockTableau(
        gamma=_R5_GAMMA, a=a, cmat=_lower(_R5_C, 8), c=_R5_c, d=_R5_d, m=m, e=e, h=_R5_H
    )
    return RosenbrockSolver(
        "rodas5",
        tab,
        order=5,
        error_order=4,
        linear_solver=linear_solver,
        krylov=KrylovOptions() if krylov is None else krylov,
    )
