"""Runge–Kutta methods as data: a Butcher tableau, checked on construction.

A method with ``s`` stages advances ``z`` by ``dt`` through

.. math::

    k_i = f\\big(t + c_i\\,dt,\\; z + dt \\sum_{j<i} a_{ij} k_j\\big), \\qquad
    z_1 = z + dt \\sum_i b_i k_i, \\qquad
    e = dt \\sum_i e_i k_i ,

where ``e`` is the embedded error estimate (``e_i = b_i - \\hat b_i``).

Dense output between ``t`` and ``t + dt`` is a polynomial in ``θ ∈ [0, 1]``:

.. math::

    z(t + θ\\,dt) = z + dt \\sum_i w_i(θ)\\, K_i, \\qquad
    w_i(θ) = \\sum_{p \\ge 1} P_{ip}\\, θ^p ,

with ``K = [k_1, …, k_s, f(t + dt, z_1)]``: the stages and the derivative at the end of the step
(which is the last stage for FSAL methods and the first stage of the next step otherwise).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ButcherTableau", "Solver", "hermite_interpolant"]

_TOL = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """Coefficients of an explicit Runge–Kutta method.

    Attributes:
        a: ``(s, s)`` strictly lower-triangular stage matrix.
        b: ``(s,)`` solution weights; they sum to 1.
        c: ``(s,)`` nodes; ``c[0] == 0`` and ``c_i = Σ_j a_ij``.
        e: ``(s,)`` error weights ``b - b_hat`` summing to 0, or ``None`` for a method without an
            embedded error estimate (fixed step only).
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    e: np.ndarray | None = None

    def __post_init__(self):
        a = np.asarray(self.a, dtype=np.float64)
        b = np.asarray(self.b, dtype=np.float64)
        c = np.asarray(self.c, dtype=np.float64)
        s = b.shape[0]
        if b.ndim != 1 or a.shape != (s, s) or c.shape != (s,):
            raise ValueError(
                f"Butcher tableau shapes disagree: a {a.shape}, b {b.shape}, c {c.shape};"
                f" expected a ({s}, {s}), b ({s},), c ({s},)."
            )
        if np.any(np.triu(a) != 0):
            raise ValueError("Butcher tableau `a` must be strictly lower triangular (explicit).")
        if abs(c[0]) > _TOL:
            raise ValueError(f"Butcher tableau needs c[0] == 0, got {c[0]}.")
        bad = np.abs(a.sum(axis=1) - c) > 1e-10
        if np.any(bad):
            rows = np.nonzero(bad)[0].tolist()
            raise ValueError(f"Butcher tableau rows {rows} of `a` do not sum to `c`.")
        if abs(b.sum() - 1) > 1e-10:
            raise ValueError(f"Butcher tableau weights `b` sum to {b.sum()!r}, not 1.")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        if self.e is not None:
            e = np.asarray(self.e, dtype=np.float64)
            if e.shape != (s,):
                raise ValueError(f"Butcher tableau error weights have shape {e.shape}, not ({s},).")
            if abs(e.sum()) > 1e-10:
                raise ValueError(f"Butcher tableau error weights sum to {e.sum()!r}, not 0.")
            object.__setattr__(self, "e", e)

    @property
    def num_stages(self) -> int:
        return self.b.shape[0]

    @property
    def fsal(self) -> bool:
        """First Same As Last: the last stage is ``f(t + dt, z_1)``."""
        s = self.num_stages
        return s > 1 and self.c[-1] == 1.0 and np.array_equal(self.a[-1], self.b)


def hermite_interpolant(b: np.ndarray) -> np.ndarray:
    """Cubic Hermite dense output written as stage weights ``P`` (see module docstring).

    With ``h01 = 3θ² - 2θ³``, ``h10 = θ - 2θ² + θ³`` and ``h11 = θ³ - θ²``,
    ``z(θ) = z0 + dt [h01 Σ b_i k_i + h10 k_1 + h11 f(t1, z1)]`` (as ``k_1 = f(t0, z0)``).
    """
    s = b.shape[0]
    p = np.zeros((s + 1, 3))
    p[:s] = np.outer(b, [0.0, 3.0, -2.0])
    p[0] += [1.0, -2.0, 1.0]
    p[s] += [0.0, -1.0, 1.0]
    return p


@dataclasses.dataclass(frozen=True, eq=False)
class Solver:
    """A Runge–Kutta solver: its tableau, orders and dense-output interpolant.

    Solvers are plain data, hashable by identity, so they can be static arguments of ``jax.jit``.

    Attributes:
        name: short name, as accepted by ``solve(..., solver=name)``.
        tableau: the :class:`ButcherTableau`.
        order: classical order of the propagated solution.
        error_order: order ``q`` of the embedded estimate; the step controller uses
            ``err ∝ dt^(q+1)``. ``None`` for fixed-step methods.
        interpolant: ``(s + 1, p)`` matrix ``P`` of dense-output stage weights (module
            docstring); defaults to cubic Hermite.
    """

    name: str
    tableau: ButcherTableau
    order: int
    error_order: int | None = None
    interpolant: np.ndarray | None = None

    def __post_init__(self):
        tab = self.tableau
        if (self.error_order is None) != (tab.e is None):
            raise ValueError(
                f"Solver {self.name!r}: give both an error estimate and `error_order`, or neither."
            )
        interp = self.interpolant
        if interp is None:
            interp = hermite_interpolant(tab.b)
        interp = np.asarray(interp, dtype=np.float64)
        s = tab.num_stages
        if interp.ndim != 2 or interp.shape[0] != s + 1:
            raise ValueError(
                f"Solver {self.name!r}: interpolant must have shape ({s + 1}, p),"
                f" got {interp.shape}."
            )
        # At θ = 1 the interpolant must reproduce the step: Σ_p P_ip = b_i (stage weights),
        # counting the end-point derivative row for FSAL methods onto the last stage.
        w1 = interp.sum(axis=1)
        w_stages = w1[:s].copy()
        if tab.fsal:
            w_stages[-1] += w1[s]
        elif abs(w1[s]) > 1e-9:
            w_stages = None
        if w_stages is None or np.max(np.abs(w_stages - tab.b)) > 1e-9:
            raise ValueError(f"Solver {self.name!r}: interpolant at θ=1 does not equal the step.")
        object.__setattr__(self, "interpolant", interp)

    @property
    def adaptive(self) -> bool:
        return self.tableau.e is not None

    def __repr__(self) -> str:
        kind = "adaptive" if self.adaptive else "fixed-step"
        return f"Solver({self.name!r}, order={self.order}, {kind})"
