"""One explicit Runge–Kutta step and its dense output, on a flat state vector.

Everything here is unrolled at trace time from the tableau's numpy coefficients: zero
coefficients are skipped, so a step costs exactly the method's evaluations of ``f`` plus a few
fused vector updates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ._tableau import Solver

__all__ = ["StepResult", "dense_weights", "interpolate", "lincomb", "rk_step"]

FlatField = Callable[[Array, Array], Array]  # fn(t, z) -> dz/dt, z of shape (n,)


def lincomb(coeffs: Sequence[float], ks: Sequence[Array]) -> Array | None:
    """``Σ_i coeffs[i] * ks[i]`` over the non-zero coefficients (``None`` if all are zero).

    Built from ``lax`` primitives with constants of the stages' dtype: no dtype promotion to
    work out at trace time (this is the bulk of a step's tracing).
    """
    out = None
    for c, k in zip(coeffs, ks):
        c = float(c)
        if c == 0.0:
            continue
        term = k if c == 1.0 else lax.mul(k, np.asarray(c, k.dtype))
        out = term if out is None else lax.add(out, term)
    return out


class StepResult(NamedTuple):
    """What one attempted step produces.

    Attributes:
        z1: ``(n,)`` candidate state at ``t + dt``.
        err: ``(n,)`` embedded error estimate (``None`` for fixed-step methods).
        f1: ``(n,)`` ``f(t + dt, z1)``, the first stage of the next step.
        ks: the ``s`` stages followed by ``f1``: what the dense output needs.
    """

    z1: Array
    err: Array | None
    f1: Array
    ks: tuple[Array, ...]


def rk_step(solver: Solver, fn: FlatField, t: Array, z: Array, dt: Array, f0: Array) -> StepResult:
    """Attempt one step of ``solver`` from ``(t, z)`` with step ``dt`` (signed, time dtype).

    ``f0 = fn(t, z)`` is reused as the first stage. Costs ``s - 1`` evaluations for FSAL methods
    and ``s`` otherwise (the last one is ``f(t + dt, z1)``, which the next step reuses).
    """
    tab = solver.tableau
    s = tab.num_stages
    dz = dt.astype(z.dtype)  # stage times stay in the time dtype, increments in the state's
    # One broadcast: the reverse pass then sums the step's cotangent elementwise over the
    # stages and reduces once (a scalar times each increment would reduce once per stage).
    dz = jnp.broadcast_to(dz, z.shape)
    ks = [f0]
    z1 = None
    for i in range(1, s):
        inc = lincomb(tab.a[i, :i], ks)
        zi = z if inc is None else z + dz * inc
        if tab.fsal and i == s - 1:
            z1 = zi
        ks.append(fn(t + float(tab.c[i]) * dt, zi))
    if z1 is None:
        z1 = z + dz * lincomb(tab.b, ks)
        f1 = fn(t + dt, z1)
    else:
        f1 = ks[-1]
    err = None if tab.e is None else dz * lincomb(tab.e, ks)
    return StepResult(z1=z1, err=err, f1=f1, ks=(*ks, f1))


def dense_weights(solver: Solver, anchor: str = "start") -> tuple[np.ndarray, tuple[int, ...]]:
    """The interpolant reduced to the rows that matter, as a polynomial in ``θ`` from ``θ^0``.

    Args:
        solver: the method.
        anchor: ``"start"`` for ``z(θ) = z0 + dt Σ_i w_i(θ) K_i``; ``"end"`` for the same
            polynomial written around the step's end, ``z(θ) = z1 + dt Σ_i (w_i(θ) - b_i) K_i``
            (the loop keeps ``z1`` anyway, so it need not keep ``z0``).

    Returns:
        ``(P, rows)``: ``P`` of shape ``(m, p + 1)`` (column ``j`` multiplies ``θ^j``) and the
        indices of the ``m`` entries of ``StepResult.ks`` it weights. For FSAL methods the
        end-point row is folded onto the last stage (they are the same vector); all-zero rows
        are dropped.
    """
    s = solver.tableau.num_stages
    p = np.zeros((s + 1, solver.interpolant.shape[1] + 1))
    p[:, 1:] = solver.interpolant
    if anchor == "end":
        p[:s, 0] = -solver.tableau.b
    if solver.tableau.fsal:
        p[s - 1] += p[s]
        p[s] = 0.0
    rows = tuple(int(i) for i in np.nonzero(np.any(p != 0, axis=1))[0])
    return p[list(rows)], rows


def interpolate(p: np.ndarray, kstack: Array, z_ref: Array, dt: Array, theta: Array) -> Array:
    """Dense output ``z_ref + dt Σ_i w_i(θ) K_i`` at a scalar ``θ ∈ [0, 1]``.

    Written as unrolled elementwise arithmetic (Horner in ``θ`` over the vector coefficients
    ``Q_j = Σ_i P_ij K_i``) rather than matrix products, so XLA fuses it into one small kernel.
    Its derivative is written out (:func:`_interpolant`): the reverse pass through a batch of
    save times then costs a few reductions, not one per power of ``θ``.

    Args:
        p: ``(m, p + 1)`` weights from :func:`dense_weights`.
        kstack: ``(m, n)`` the stages those rows weight.
        z_ref: ``(n,)`` the state the weights are anchored at (start or end of the step).
        dt: the step; ``theta``: scalar position in it.
    """
    return _interpolant(tuple(map(tuple, np.asarray(p, np.float64).tolist())))(
        kstack, z_ref, dt, theta
    )


def _horner(p: np.ndarray, ks: list, like: Array, theta: Array) -> Array | None:
    """``Σ_{j ≥ 1} θ^j Σ_i P_ij K_i`` (``None`` when every such weight is zero)."""
    acc = None
    for col in range(p.shape[1] - 1, 0, -1):  # Horner: θ(Q_1 + θ(Q_2 + ...))
        q = lincomb(p[:, col], ks)
        q = jnp.zeros_like(like) if q is None else q
        acc = q if acc is None else q + theta * acc
    return None if acc is None else theta * acc


@functools.cache
def _interpolant(p_rows: tuple) -> Callable:
    """:func:`interpolate` for the weights ``p_rows``, with its JVP written out.

    With ``A(θ) = Σ_i w_i(θ) K_i`` and ``z = z_ref + dt A(θ)``, the tangent is
    ``dz_ref + ddt A + dt (Σ_i w_i(θ) dK_i + dθ A'(θ))``: linear in the tangents, with the
    scalar weights ``w_i(θ)`` and the vector ``A'(θ)`` computed once. Its transpose then reads
    ``z̄`` once per stage and reduces once for ``dθ`` and once for ``ddt``; JAX's transpose of
    the Horner scheme itself reduces for ``dθ`` at every power of ``θ``.
    """
    p = np.asarray(p_rows)
    deriv = p[:, 1:] * np.arange(1, p.shape[1])  # weights of A'(θ), from θ^0

    def accumulate(kstack, z_ref, theta):
        ks = [kstack[i] for i in range(kstack.shape[0])]
        acc = _horner(p, ks, z_ref, theta)
        q0 = lincomb(p[:, 0], ks)
        if q0 is not None:
            acc = q0 if acc is None else q0 + acc
        return jnp.zeros_like(z_ref) if acc is None else acc

    @jax.custom_jvp
    def fn(kstack, z_ref, dt, theta):
        return z_ref + dt * accumulate(kstack, z_ref, theta)

    @fn.defjvp
    def fn_jvp(primals, tangents):
        kstack, z_ref, dt, theta = primals
        dk, dz, ddt, dth = tangents
        ks = [kstack[i] for i in range(kstack.shape[0])]
        acc = accumulate(kstack, z_ref, theta)
        tangent = dz + ddt * acc
        # Σ_i w_i(θ) dK_i with each w_i(θ) a scalar polynomial (Horner).
        th = theta.astype(kstack.dtype)
        for i, row in enumerate(p):
            if not np.any(row):
                continue
            w = functools.reduce(lambda a, c: a * th + float(c), row[::-1][1:], float(row[-1]))
            tangent = tangent + (dt * w) * dk[i]
        slope = lincomb(deriv[:, 0], ks)  # A'(θ)
        rest = _horner(deriv, ks, z_ref, theta)
        slope = rest if slope is None else slope if rest is None else slope + rest
        if slope is not None:
            tangent = tangent + (dt * dth).astype(kstack.dtype) * slope
        return z_ref + dt * acc, tangent

    return fn
