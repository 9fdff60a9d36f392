"""The public entry points :func:`solve` and :func:`odeint`: validation, then one jitted call.

Cheap Python checks run on every call; everything that needs tracing (the check of ``f``'s output,
run-time checks of values, the loop and its differentiation rule) runs inside one
``equinox.filter_jit``, so a second call with new values of the same shapes reuses the compiled
program.
"""

from __future__ import annotations

import contextlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.flatten_util import ravel_pytree

from . import _checks, _events
from ._adjoint import (
    JVP_OF_BACKSOLVE,
    JVP_OF_CHECKPOINT,
    BacksolveAdjoint,
    CheckpointAdjoint,
    ForwardMode,
    forward_only,
    get_adjoint,
    run_adjoint,
)
from ._controller import PIController
from ._events import Event
from ._integrate import Options, Static, flatten_tol, integrate
from ._pack import funnel
from ._solution import Solution, Status
from ._solvers import get_solver
from ._tableau import Solver

__all__ = ["DEFAULT_MAX_STEPS", "odeint", "solve"]

DEFAULT_MAX_STEPS = 4096


@eqx.filter_jit
def _solve_jit(
    f, z0, t0, t1, ts, args, opts: Options, static: Static, adjoint, event=None
) -> Solution:
    _checks.check_vector_field(f, z0, t0, args)
    t0, t1 = funnel(t0, t1)  # see odejax._pack: one kernel, not one per use, reads them
    if ts is not None:
        if static.throw and event is None:  # checked in the solve's own failure check
            static = static._replace(check_ts=1)
        else:
            ts = _checks.check_save_times(ts, t0, t1)
    if event is None:
        return run_adjoint(adjoint, f, z0, t0, t1, ts, args, opts, static)
    _events.check_event(event, z0, t0, args)
    return _solve_with_event(adjoint, f, z0, t0, t1, ts, args, opts, static, event)


_NO_REVERSE_WITH_RESET = (
    "Reverse-mode gradients of a solve with an event that resets or does not stop"
    " (Event(reset=...) or terminal=False) need adjoint='checkpoint' (or adjoint='forward' for"
    " jax.jvp/jax.jacfwd); adjoint='backsolve' (the default) supports terminal events only."
)


@jax.custom_vjp
def _no_reverse(x):
    return x


def _no_reverse_fwd(x):
    return x, None


def _no_reverse_bwd(_, g):
    raise TypeError(_NO_REVERSE_WITH_RESET)


_no_reverse.defvjp(_no_reverse_fwd, _no_reverse_bwd)


def _solve_with_event(adjoint, f, z0, t0, t1, ts, args, opts, static, event) -> Solution:
    """Dispatch a solve with an event by adjoint (the event time is differentiable, see
    :mod:`odejax._events`)."""
    if isinstance(adjoint, CheckpointAdjoint):
        static = static._replace(loop=adjoint.loop, checkpoints=adjoint.checkpoints)
        return integrate(f, z0, t0, t1, ts, args, opts, static, event)
    if isinstance(adjoint, ForwardMode):
        sol = integrate(f, z0, t0, t1, ts, args, opts, static, event)
        return jax.tree.map(lambda x: forward_only(x) if eqx.is_inexact_array(x) else x, sol)
    if not event.stops:
        sol = integrate(f, z0, t0, t1, ts, args, opts, static, event)
        return jax.tree.map(lambda x: _no_reverse(x) if eqx.is_inexact_array(x) else x, sol)
    return _backsolve_terminal_event(adjoint, f, z0, t0, t1, ts, args, opts, static, event)


def _backsolve_terminal_event(adjoint, f, z0, t0, t1, ts, args, opts, static, event):
    """Backsolve with a terminal event: locate the event on stopped gradients, solve again to
    that time by backsolve, then take one Newton step on ``g`` (implicit-function theorem)."""
    sg = _events.stop_grad
    first = integrate(sg(f), sg(z0), sg(t0), sg(t1), sg(ts), sg(args), sg(opts), static, sg(event))
    hit = first.status == Status.EVENT
    t_stop = jnp.where(hit, first.event_time, sg(t1))
    direction = jnp.where(t1 >= t0, 1, -1).astype(t0.dtype)
    # Solve again to t_stop, saving at the save times before it and at t_stop itself.
    after = None
    ts_c = None
    if ts is not None:
        after = direction * (ts - t_stop) > 0
        ts_c = jnp.concatenate([jnp.where(after, t_stop, ts), t_stop[None]])
    second = run_adjoint(adjoint, f, z0, t0, t_stop, ts_c, args, opts, static._replace(throw=False))
    z_end = jax.tree.map(lambda x: x[-1], second.zs)
    z_flat, unravel = ravel_pytree(z_end)
    k = jnp.maximum(first.event_index, 0)

    def gk(zf, t):
        out = event.fn(unravel(zf), t, args)
        return ravel_pytree(out)[0][k]

    fz = ravel_pytree(f(z_end, t_stop, args))[0]
    g_at, gdot = jax.jvp(gk, (z_flat, t_stop), (lax.stop_gradient(fz), jnp.ones_like(t_stop)))
    gdot = lax.stop_gradient(gdot)
    ok = hit & (gdot != 0)
    delta = jnp.where(ok, -g_at / jnp.where(ok, gdot, 1), 0)
    t_ev = t_stop + delta.astype(t_stop.dtype)
    z_ev = unravel(z_flat + lax.stop_gradient(fz) * delta)
    if ts is None:
        zs = jax.tree.map(lambda x: x[None], z_ev)
    else:

        def mask(a):
            gone = jnp.reshape(after, after.shape + (1,) * (a.ndim - 1))
            return jnp.where(gone, jnp.nan, a[:-1])

        zs = jax.tree.map(mask, second.zs)
    # Rows the first solve did not reach (a failure with throw=False) stay nan.
    zs = jax.tree.map(lambda a, b: jnp.where(jnp.isnan(b), b, a), zs, first.zs)
    nan_t = jnp.full_like(t_ev, jnp.nan)
    return Solution(
        ts=first.ts if ts is None else ts,
        zs=zs,
        # Both runs' evaluations, and the one of fz above.
        stats={**first.stats, "nfe": first.stats["nfe"] + second.stats["nfe"] + 1},
        status=first.status,
        t_final=jnp.where(hit, t_ev, first.t_final),
        interpolation=first.interpolation,
        event_time=jnp.where(hit, t_ev, nan_t),
        event_index=first.event_index,
        event_state=jax.tree.map(lambda a, b: jnp.where(hit, a, b), z_ev, first.event_state),
        num_events=first.num_events,
        dt_next=first.dt_next,
    )


def _arrays_for_floats(args):
    """Python floats in ``args`` become arrays: new values do not recompile (ints stay static)."""
    return jax.tree.map(
        lambda x: jnp.asarray(x) if isinstance(x, float | complex) else x,
        args,
    )


def _as_time(x, dtype, name: str) -> Array:
    try:
        arr = jnp.asarray(x)
    except TypeError:
        raise TypeError(f"{name} must be a number or array, got {type(x).__name__}.") from None
    if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr.astype(dtype)


MAX_STEPS_LIMIT = int(np.iinfo(np.int32).max)


def _known(x) -> bool:
    """Whether ``x``'s value is known at trace time (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def _step_size(x, dtype, name: str) -> Array:
    """``dt0``/``dtmin``/``dtmax`` as a scalar of the time dtype; a value known at trace time
    is checked here (a traced one at run time, in :func:`odejax._integrate.integrate`)."""
    arr = _as_time(x, dtype, name)
    if arr.ndim:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}.")
    ok, rule = _checks.STEP_RULES[name]
    if _known(arr) and not ok(float(arr)):
        raise ValueError(f"{name} must be {rule}, got {float(arr)}.")
    return arr


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
    adjoint=None,
    event: Event | None = None,
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
            ``"midpoint"``, ``"heun"``, ``"rk4"``; stiff: ``"rodas5"``, ``"kvaerno5"``) or a
            solver object (:class:`Solver`, ``odejax.Rodas5(linear_solver="matrix_free")``, ...).
        rtol, atol: relative and absolute tolerances, scalars or pytrees like ``z0``.
        dt0: initial step (adaptive solvers; default: Hairer's estimate) or the step size
            (fixed-step solvers, required).
        dtmin, dtmax: optional bounds on the size of the adaptive steps (``dtmin <= dtmax``):
            the controller's steps, and the initial step, are kept within them (the last step
            may be shorter, to land on ``t1``). A step of ``dtmin`` or less that fails the error
            test ends the solve with status ``DT_UNDERFLOW``: it could only shrink below
            ``dtmin``. Fixed-step solvers ignore them.
        max_steps: the most steps (accepted and rejected) the solve may take.
        controller: :class:`PIController` coefficients (default ``PIController()``).
        dense: keep every step's interpolant so ``sol.evaluate(t)`` works on the whole interval.
        throw: raise :class:`OdeSolveError` at run time if the solve fails; with ``False`` the
            partial solution is returned with its ``status``.
        progress: show a tqdm bar of ``t`` (updated every few hundred steps).
        adjoint: how gradients are taken: ``"backsolve"`` (default; the continuous adjoint,
            O(1) memory), ``"checkpoint"`` (exact gradient of the discretisation, sublinear
            memory), ``"forward"`` (forward mode only), or an object such as
            ``odejax.BacksolveAdjoint(seminorm=True)``. With a stiff solver backsolve reads
            the state off the forward interpolant (``BacksolveAdjoint(state="interpolate")``).
        event: an :class:`odejax.Event`: stop (``terminal=True``) or jump (``reset=``) where
            ``event.fn(z, t, args)`` crosses zero, located by root finding on the dense
            interpolant. ``sol.event_time``, ``sol.event_index``, ``sol.event_state`` and
            ``sol.num_events`` report it; a terminal stop has status ``EVENT``, save times after
            it are ``nan``. The event time is differentiable (implicit-function theorem) with
            every adjoint for terminal events; resets need ``"checkpoint"`` or ``"forward"``.

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
    if max_steps > MAX_STEPS_LIMIT:
        raise ValueError(
            f"max_steps must be at most 2**31 - 1 = {MAX_STEPS_LIMIT} (steps are counted in"
            f" int32), got {max_steps}."
        )
    if not solver.adaptive and dt0 is None:
        raise ValueError(f"The fixed-step solver {solver.name!r} needs a step size: pass dt0=.")
    controller = PIController() if controller is None else controller
    if not isinstance(controller, PIController):
        raise TypeError(f"controller must be an odejax.PIController, got {type(controller)}.")
    _checks.check_nonnegative("rtol", rtol)
    _checks.check_nonnegative("atol", atol)

    dtype = _checks.state_dtype(z0)
    z0 = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), z0)
    tdtype = jnp.finfo(dtype).dtype  # real dtype of the state (float32/float64)
    with jax.ensure_compile_time_eval():  # numbers stay concrete: checked at trace time
        t0 = _as_time(t0, tdtype, "t0")
        t1 = _as_time(t1, tdtype, "t1")
    if t0.ndim or t1.ndim:
        raise ValueError(f"t0 and t1 must be scalars, got shapes {t0.shape} and {t1.shape}.")
    for name, t in (("t0", t0), ("t1", t1)):
        if _known(t) and not np.isfinite(np.asarray(t)):
            raise ValueError(f"{name} must be finite, got {np.asarray(t)}.")
    if ts is not None:
        ts = _as_time(ts, tdtype, "ts")
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"ts must be a 1-D array of save times, got shape {ts.shape}.")
    adjoint = get_adjoint(adjoint)
    opt = lambda x, name: None if x is None else _step_size(x, tdtype, name)  # noqa: E731
    with jax.ensure_compile_time_eval():  # options given as numbers stay concrete arrays
        rtol, atol = flatten_tol(rtol, z0, tdtype), flatten_tol(atol, z0, tdtype)
        opts = Options(
            rtol=rtol,
            atol=atol,
            dt0=opt(dt0, "dt0"),
            dtmin=opt(dtmin, "dtmin"),
            dtmax=opt(dtmax, "dtmax"),
        )
    if dtmin is not None and dtmax is not None and _known(opts.dtmin) and _known(opts.dtmax):
        if float(opts.dtmin) > float(opts.dtmax):
            raise ValueError(
                f"{_checks.DTMIN_ABOVE_DTMAX}, got dtmin={float(opts.dtmin)} and"
                f" dtmax={float(opts.dtmax)}."
            )
    static = Static(
        solver=solver,
        controller=controller,
        max_steps=int(max_steps),
        dense=bool(dense),
        throw=bool(throw),
        progress=bool(progress),
        has_dt0=dt0 is not None,
        has_dtmin=dtmin is not None,
        has_dtmax=dtmax is not None,
        check_tols=not _checks.tolerances_checked(opts.rtol, opts.atol),
        check_steps=not all(_known(x) for x in (opts.dt0, opts.dtmin, opts.dtmax)),
    )
    if event is not None and not isinstance(event, Event):
        raise TypeError(f"event must be an odejax.Event or None, got {type(event).__name__}.")
    args = _arrays_for_floats(args)
    with explain_jvp_error(adjoint):
        return _solve_jit(f, z0, t0, t1, ts, args, opts, static, adjoint, event)


@contextlib.contextmanager
def explain_jvp_error(adjoint):
    """Turn JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function" into a
    message naming ``adjoint`` and the one to use instead."""
    try:
        yield
    except TypeError as e:
        if isinstance(adjoint, BacksolveAdjoint) and "custom_vjp" in str(e):
            raise TypeError(JVP_OF_BACKSOLVE) from e
        if isinstance(adjoint, CheckpointAdjoint) and "custom_vjp" in str(e):
            raise TypeError(JVP_OF_CHECKPOINT) from e
        raise


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
    adjoint=None,
    **kwargs,
):
    """Solve ``dz/dt = f(z, t, args)`` and return the state at every time in ``ts``.

    Args:
        f: vector field ``f(z, t, args)`` (see :func:`solve`).
        z0: initial state at ``ts[0]``, any pytree of floating arrays.
        ts: ``(T,)`` strictly monotone times, ``T ≥ 2``; ``ts[0]`` is the initial time.
        args: any pytree passed through to ``f``.
        solver, rtol, atol, dt0, max_steps, adjoint: as in :func:`solve`; further keywords
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
        adjoint=adjoint,
        **kwargs,
    )
    return sol.zs
