"""The adaptive solve: one ``lax.while_loop`` over attempted steps.

Each iteration tries one step of the Runge–Kutta method, scores it with the embedded error,
accepts or rejects it (PI control of the next step), and writes any requested save times that the
accepted step passed through the method's dense interpolant. Steps are never shortened to hit a
save time; only the last step is shortened to land on ``t1`` exactly.

The state is raveled to one flat vector so a step is a handful of fused vector updates whatever
the pytree; ``f`` sees (and returns) the user's pytree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.flatten_util import ravel_pytree

from . import _checks, _progress
from ._controller import PIController, initial_step, rms_norm
from ._solution import DenseInterpolation, Solution, Status
from ._solvers import get_solver
from ._step import dense_weights, interpolate, rk_step
from ._tableau import Solver

__all__ = ["odeint", "solve"]

_RUNNING = -1
DEFAULT_MAX_STEPS = 4096


class _LoopState(NamedTuple):
    """Carry of the solve loop. ``z``/``f0`` are flat ``(n,)`` vectors."""

    t: Array  # time reached (start of the next step)
    z: Array  # state at t
    f0: Array  # f(t, z): first stage of the next step
    dt: Array  # signed size of the next step to try
    err_prev: Array  # scaled error of the last accepted step (PI memory)
    last: tuple  # (t, z, dt, kstack) of the latest attempted step, when saving at ts
    num_steps: Array
    num_accepted: Array
    num_rejected: Array
    status: Array  # _RUNNING while stepping, then a Status code
    dense: tuple  # (t_nodes, z_nodes, kstack) when dense=True, else ()


class _Static(NamedTuple):
    """Everything that shapes the compiled loop (hashable, so it can key the jit cache)."""

    solver: Solver
    controller: PIController
    max_steps: int
    dense: bool
    save_ts: bool  # saving at requested ts (else only at t1)
    throw: bool
    progress: bool
    has_dt0: bool
    has_dtmin: bool
    has_dtmax: bool


def _flatten_tol(tol, z0, dtype):
    """A tolerance as a scalar array, or ravelled per component when given as a pytree like z0."""
    if not jax.tree.leaves(tol):
        raise ValueError("Tolerances must be numbers or a pytree of numbers like z0.")
    if len(jax.tree.leaves(tol)) == 1 and jnp.ndim(jax.tree.leaves(tol)[0]) == 0:
        return jnp.asarray(jax.tree.leaves(tol)[0], dtype)
    try:
        full = jax.tree.map(
            lambda t, z: jnp.broadcast_to(jnp.asarray(t, dtype), jnp.shape(z)), tol, z0
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"A per-component tolerance must be a pytree matching z0 (broadcastable leaves): {e}"
        ) from None
    return ravel_pytree(full)[0]


@eqx.filter_jit
def _solve_core(f, z0, t0, t1, ts, args, rtol, atol, dt0, dtmin, dtmax, static: _Static):
    solver, ctrl = static.solver, static.controller
    z_flat, unravel = ravel_pytree(z0)
    dtype = z_flat.dtype
    tdtype = t0.dtype

    def fn(t, y):
        return ravel_pytree(f(unravel(y), t, args))[0].astype(dtype)

    direction = jnp.where(t1 >= t0, 1, -1).astype(tdtype)
    rtol, atol = _checks.check_tolerances(rtol, atol)
    if static.save_ts:
        ts = _checks.check_save_times(ts, t0, t1)

    f0 = fn(t0, z_flat)
    nfe0 = 1
    if static.has_dt0:
        dt_init = direction * jnp.abs(dt0)
    else:
        dt_init = initial_step(fn, t0, z_flat, f0, atol, rtol, solver.order, direction)
        nfe0 += 1
    if static.has_dtmax:
        dt_init = direction * jnp.minimum(jnp.abs(dt_init), dtmax)
    dt_init = dt_init.astype(tdtype)

    weights, rows = dense_weights(solver)
    last = ()
    if static.save_ts:
        last = (t0, z_flat, jnp.zeros((), dtype), jnp.zeros((len(rows), z_flat.shape[0]), dtype))
    dense = ()
    if static.dense:
        m, n = len(rows), z_flat.shape[0]
        t_nodes = jnp.full((static.max_steps + 1,), t0, tdtype)
        dense = (
            t_nodes,
            jnp.zeros((static.max_steps, n), dtype),
            jnp.zeros((static.max_steps, m, n), dtype),
        )

    zero = jnp.zeros((), jnp.int32)
    state = _LoopState(
        t=t0,
        z=z_flat,
        f0=f0,
        dt=dt_init,
        err_prev=jnp.ones((), dtype),
        last=last,
        num_steps=zero,
        num_accepted=zero,
        num_rejected=zero,
        status=jnp.where(t0 == t1, Status.SUCCESS, _RUNNING).astype(jnp.int32),
        dense=dense,
    )

    if static.progress:
        pkey = _progress.progress_open(t0, t1)

    def cond(st: _LoopState):
        return st.status == _RUNNING

    def body(st: _LoopState) -> _LoopState:
        t, z = st.t, st.z
        if solver.adaptive:
            t_try = t + st.dt
        else:  # count fixed steps from t0 so rounding does not accumulate
            t_try = t0 + (st.num_accepted + 1).astype(tdtype) * st.dt
        # Land exactly on t1, folding in a remainder that is only rounding noise.
        slack = 64 * jnp.finfo(tdtype).eps * jnp.maximum(jnp.abs(t_try), jnp.abs(t1))
        final_step = direction * (t1 - t_try) <= slack
        t_next = jnp.where(final_step, t1, t_try)
        dt = t_next - t
        step = rk_step(solver, fn, t, z, dt.astype(dtype), st.f0)

        if solver.adaptive:
            scale = atol + rtol * jnp.maximum(jnp.abs(z), jnp.abs(step.z1))
            err = rms_norm(step.err / scale)
            accept = err <= 1  # false for nan
            finite = jnp.isfinite(err)
            factor = ctrl.factor(err, st.err_prev, solver.error_order)
            dt_new = (dt * factor.astype(tdtype)).astype(tdtype)
            err_prev = jnp.where(accept, jnp.maximum(err, 1e-4), st.err_prev).astype(dtype)
        else:
            finite = jnp.all(jnp.isfinite(step.z1))
            accept = finite
            dt_new = st.dt
            err_prev = st.err_prev
        if static.has_dtmax:
            dt_new = direction * jnp.minimum(jnp.abs(dt_new), dtmax)
        underflow = t + dt_new == t
        if static.has_dtmin:
            underflow = underflow | (jnp.abs(dt_new) < dtmin)
        if not solver.adaptive:
            underflow = ~finite

        t_new = jnp.where(accept, t_next, t)
        z_new = jnp.where(accept, step.z1, z)
        f0_new = jnp.where(accept, step.f1, st.f0)

        dense, last = st.dense, st.last
        if static.save_ts or static.dense:
            kstack = jnp.stack([step.ks[i] for i in rows])
        if static.save_ts:
            # The step that ends a run of the save loop below is always an accepted one.
            last = (t, z, dt.astype(dtype), kstack)
        if static.dense:
            t_nodes, z_nodes, k_nodes = dense
            slot = jnp.where(accept, st.num_accepted, static.max_steps)  # out of range: dropped
            dense = (
                t_nodes.at[slot + 1].set(t_next, mode="drop"),
                z_nodes.at[slot].set(z, mode="drop"),
                k_nodes.at[slot].set(kstack, mode="drop"),
            )

        num_steps = st.num_steps + 1
        status = jnp.where(
            accept & final_step,
            Status.SUCCESS,
            jnp.where(
                num_steps >= static.max_steps,
                Status.MAX_STEPS_REACHED,
                jnp.where(
                    ~accept & underflow,
                    jnp.where(finite, Status.DT_UNDERFLOW, Status.NONFINITE),
                    _RUNNING,
                ),
            ),
        ).astype(jnp.int32)
        if static.progress:
            _progress.progress_update(pkey, t_new, num_steps)
        return _LoopState(
            t=t_new,
            z=z_new,
            f0=f0_new,
            dt=jnp.where(accept & final_step, st.dt, dt_new),
            err_prev=err_prev,
            last=last,
            num_steps=num_steps,
            num_accepted=st.num_accepted + accept.astype(jnp.int32),
            num_rejected=st.num_rejected + (~accept).astype(jnp.int32),
            status=status,
            dense=dense,
        )

    if static.save_ts:
        # Step until each save time is passed, then read it off the last step's interpolant.
        # The scan ends with t1 itself (its value dropped), so the loop body is compiled once.
        def save_one(st: _LoopState, ti):
            st = lax.while_loop(lambda s: cond(s) & (direction * (s.t - ti) < 0), body, st)
            t_a, z_a, dt_a, kstack = st.last
            theta = (ti - t_a).astype(dtype) / jnp.where(dt_a == 0, 1, dt_a)
            zi = interpolate(weights, kstack, z_a, dt_a, theta)
            zi = jnp.where(ti == st.t, st.z, zi)
            return st, jnp.where(direction * (st.t - ti) >= 0, zi, jnp.nan)

        final, zs = lax.scan(save_one, state, jnp.concatenate([ts, t1[None]]))
        zs = zs[:-1]
    else:
        final = lax.while_loop(cond, body, state)
        zs = jnp.where(final.status == Status.SUCCESS, final.z, jnp.nan)[None]
    if static.progress:
        _progress.progress_close(pkey, final.t, final.num_steps)

    if static.throw:
        zs = _checks.raise_if_failed(
            zs, final.status, final.t, t1, static.max_steps, has_dtmin=static.has_dtmin
        )
    stage_evals = solver.tableau.num_stages - (1 if solver.tableau.fsal else 0)
    trivial = t0 == t1
    stats = {
        "num_steps": final.num_steps,
        "num_accepted": final.num_accepted,
        "num_rejected": final.num_rejected,
        "nfe": jnp.where(trivial, 0, nfe0 + stage_evals * final.num_steps).astype(jnp.int32),
    }
    interp = None
    if static.dense:
        t_nodes, z_nodes, k_nodes = final.dense
        # Unused tail nodes repeat the end time so the search over nodes stays sorted.
        idx = jnp.arange(static.max_steps + 1)
        t_nodes = jnp.where(idx <= final.num_accepted, t_nodes, final.t)
        interp = DenseInterpolation(
            t_nodes=t_nodes,
            z_nodes=z_nodes,
            kstack=k_nodes,
            num_steps=final.num_accepted,
            weights=tuple(map(tuple, weights.tolist())),
            unravel=unravel,
        )
    return Solution(
        ts=ts if static.save_ts else t1[None],
        zs=jax.vmap(unravel)(zs),
        stats=stats,
        status=final.status,
        t_final=final.t,
        interpolation=interp,
    )


def _as_time(x, dtype, name: str) -> Array:
    try:
        arr = jnp.asarray(x)
    except TypeError:
        raise TypeError(f"{name} must be a number or array, got {type(x).__name__}.") from None
    if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr.astype(dtype)


def solve(
    f,
    z0,
    t0,
    t1,
    *,
    args: Any = None,
    ts=None,
    solver: str | Solver = "tsit5",
    rtol=1e-6,
    atol=1e-9,
    dt0=None,
    dtmin=None,
    dtmax=None,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: PIController | None = None,
    dense: bool = False,
    throw: bool = True,
    progress: bool = False,
) -> Solution:
    """Solve ``dz/dt = f(z, t, args)`` from ``z(t0) = z0`` to ``t1``.

    Args:
        f: vector field ``f(z, t, args)`` returning a pytree with the structure, shapes and dtypes
            of ``z``. May be a pytree itself (an ``equinox.Module`` holding parameters).
        z0: initial state, any pytree of floating arrays.
        t0, t1: initial and final times; ``t1 < t0`` solves backwards in time.
        args: any pytree passed through to ``f``.
        ts: optional ``(T,)`` strictly monotone save times inside ``[t0, t1]``; the solution is
            read off the method's dense interpolant there. Default: save at ``t1`` only.
        solver: a name (``"tsit5"``, ``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"euler"``,
            ``"midpoint"``, ``"heun"``, ``"rk4"``) or a :class:`Solver`.
        rtol, atol: relative and absolute tolerances, scalars or pytrees like ``z0``.
        dt0: initial step (adaptive solvers; default: Hairer's estimate) or the step size
            (fixed-step solvers, required).
        dtmin, dtmax: optional bounds on the step size; a step pushed below ``dtmin`` ends the
            solve with status ``DT_UNDERFLOW``.
        max_steps: the most steps (accepted and rejected) the solve may take.
        controller: :class:`PIController` coefficients (default ``PIController()``).
        dense: keep every step's interpolant so ``sol.evaluate(t)`` works on the whole interval.
        throw: raise :class:`OdeSolveError` at run time if the solve fails; with ``False`` the
            partial solution is returned with its ``status``.
        progress: show a tqdm bar of ``t`` (updated every few hundred steps).

    Returns:
        A :class:`Solution`.

    Example:
        >>> import jax.numpy as jnp, odejax
        >>> sol = odejax.solve(lambda z, t, a: -z, jnp.ones(2), 0.0, 1.0)
        >>> sol.zs.shape
        (1, 2)
    """
    solver = get_solver(solver)
    if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, bool):
        raise TypeError(f"max_steps must be an int, got {type(max_steps).__name__}.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    if not solver.adaptive and dt0 is None:
        raise ValueError(f"The fixed-step solver {solver.name!r} needs a step size: pass dt0=.")
    if isinstance(dt0, (int, float)) and dt0 == 0:
        raise ValueError("dt0 must be non-zero.")
    controller = PIController() if controller is None else controller
    if not isinstance(controller, PIController):
        raise TypeError(f"controller must be an odejax.PIController, got {type(controller)}.")
    _checks.check_nonnegative("rtol", rtol)
    _checks.check_nonnegative("atol", atol)

    dtype = _checks.state_dtype(z0)
    z0 = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), z0)
    tdtype = jnp.finfo(dtype).dtype  # real dtype of the state (float32/float64)
    t0 = _as_time(t0, tdtype, "t0")
    t1 = _as_time(t1, tdtype, "t1")
    if t0.ndim or t1.ndim:
        raise ValueError(f"t0 and t1 must be scalars, got shapes {t0.shape} and {t1.shape}.")
    if ts is not None:
        ts = _as_time(ts, tdtype, "ts")
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"ts must be a 1-D array of save times, got shape {ts.shape}.")
    _checks.check_vector_field(f, z0, t0, args)

    rtol_arr = _flatten_tol(rtol, z0, tdtype)
    atol_arr = _flatten_tol(atol, z0, tdtype)
    opt = lambda x, name: None if x is None else _as_time(x, tdtype, name)  # noqa: E731
    static = _Static(
        solver=solver,
        controller=controller,
        max_steps=int(max_steps),
        dense=bool(dense),
        save_ts=ts is not None,
        throw=bool(throw),
        progress=bool(progress),
        has_dt0=dt0 is not None,
        has_dtmin=dtmin is not None,
        has_dtmax=dtmax is not None,
    )
    return _solve_core(
        f,
        z0,
        t0,
        t1,
        ts,
        args,
        rtol_arr,
        atol_arr,
        opt(dt0, "dt0"),
        opt(dtmin, "dtmin"),
        opt(dtmax, "dtmax"),
        static,
    )


def odeint(
    f,
    z0,
    ts,
    args: Any = None,
    *,
    solver: str | Solver = "tsit5",
    rtol=1e-6,
    atol=1e-9,
    dt0=None,
    max_steps: int = DEFAULT_MAX_STEPS,
    **kwargs,
):
    """Solve ``dz/dt = f(z, t, args)`` and return the state at every time in ``ts``.

    Args:
        f: vector field ``f(z, t, args)`` (see :func:`solve`).
        z0: initial state at ``ts[0]``, any pytree of floating arrays.
        ts: ``(T,)`` strictly monotone times, ``T ≥ 2``; ``ts[0]`` is the initial time.
        args: any pytree passed through to ``f``.
        solver, rtol, atol, dt0, max_steps: as in :func:`solve`; further keywords
            (``dtmin``, ``dtmax``, ``controller``, ``throw``, ``progress``) pass through.

    Returns:
        A pytree like ``z0`` whose leaves have a new leading axis of length ``T``;
        ``zs[0]`` equals ``z0`` exactly.

    Example:
        >>> import jax.numpy as jnp, odejax
        >>> zs = odejax.odeint(lambda z, t, a: -a * z, jnp.ones(3), jnp.linspace(0, 1, 5), 2.0)
        >>> zs.shape
        (5, 3)
    """
    if kwargs.keys() & {"ts", "dense", "t0", "t1"}:
        raise TypeError(
            f"odeint does not take {sorted(kwargs.keys() & {'ts', 'dense', 't0', 't1'})}."
        )
    try:
        ts_arr = jnp.asarray(ts)
    except TypeError:
        raise TypeError(f"ts must be an array of times, got {type(ts).__name__}.") from None
    if ts_arr.ndim != 1 or ts_arr.shape[0] < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times, got shape {ts_arr.shape}.")
    sol = solve(
        f,
        z0,
        ts_arr[0],
        ts_arr[-1],
        args=args,
        ts=ts_arr,
        solver=solver,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        max_steps=max_steps,
        **kwargs,
    )
    return sol.zs
