"""The integration loop: one step at a time, inside ``lax.while_loop`` (or a checkpointed loop).

Each iteration tries one step of the Runge–Kutta method, scores it with the embedded error,
accepts or rejects it (PI control of the next step), and save times that an accepted step passed
are read off the method's dense interpolant. Steps are never shortened to hit a save time; only
the last step is shortened to land on ``t1`` exactly.

Three drivers share the step:

* ``loop="while"`` (forward solves, backsolve adjoint): a ``lax.scan`` over the save times, each
  running a ``lax.while_loop`` of steps until the save time is passed. No buffer of saved states
  rides in the loop carry, so the loop is lean, also under ``vmap``.
* ``loop="checkpoint"`` (discretise-then-optimise gradients, the default
  :class:`odejax.CheckpointAdjoint`): the same loop under a reverse-mode rule of its own that
  stores carries at a few levels and differentiates one step at a time
  (:mod:`odejax._checkpoint`); first derivatives, and forward over reverse.
* ``loop="checkpoint-ad"`` (``CheckpointAdjoint(higher_order=True)``): one bounded loop whose
  iterations either take a step or write one save time, in nested checkpointed scans
  (:mod:`odejax._loop`) that JAX differentiates itself, to any order and in either mode.

The state is raveled to one flat vector so a step is a handful of fused vector updates whatever
the pytree; ``f`` sees (and returns) the user's pytree.

The step is chosen at trace time from the solver's static kind: an explicit Runge–Kutta tableau
(:mod:`odejax._step`), an ESDIRK method with simplified Newton (:mod:`odejax._implicit`) or a
Rosenbrock method (:mod:`odejax._rosenbrock`). Events (:mod:`odejax._events`) add a sign test
after each accepted step and, on a crossing, a root search on that step's interpolant. Without
an event and with an explicit solver the compiled loop is exactly the plain one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.ad_checkpoint import checkpoint_name
from jax.flatten_util import ravel_pytree

from . import _checks, _events, _progress
from ._checkpoint import LoopFns, run_loop, solve_loop, write_buffers
from ._controller import PIController, initial_step, rms_norm
from ._implicit import esdirk_step
from ._loop import SAVED, checkpointed_while
from ._pack import Scalars, zeros_after
from ._rosenbrock import rosenbrock_step
from ._solution import DenseInterpolation, Solution, Status
from ._step import dense_weights, interpolate, rk_step
from ._tableau import Solver

__all__ = ["Options", "Static", "integrate"]

_RUNNING = -1


class _LoopState(NamedTuple):
    """Carry of the solve loop. ``z``/``f0`` are flat ``(n,)`` vectors."""

    t: Array  # time reached (start of the next step)
    z: Array  # state at t
    f0: Array  # f(t, z): first stage of the next step
    dt: Array  # signed size of the next step to try
    log_err_prev: Array  # log scaled error of the last accepted step (PI memory)
    last: tuple  # (dt, kstack) of the latest attempted step, when saving at ts
    saved: tuple  # (save_index, zs buffer) for the "checkpoint-ad" driver, else ()
    num_steps: Array
    num_accepted: Array
    status: Array  # _RUNNING while stepping, then a Status code
    dense: tuple  # (t_nodes, z_nodes, kstack[, h_nodes with an event]) when dense=True, else ()
    extra: tuple = ()  # stiff solvers: (nfe, num_linear_solves) counters
    event: tuple = ()  # with an event: (g_prev, num_events, t_event, index, z_event)


class Static(NamedTuple):
    """Everything that shapes the compiled loop (hashable, so it can key the jit cache)."""

    solver: Solver  # or a stiff solver (ImplicitSolver, RosenbrockSolver)
    controller: PIController
    max_steps: int
    dense: bool = False
    throw: bool = True
    progress: bool = False
    has_dt0: bool = False
    has_dtmin: bool = False
    has_dtmax: bool = False
    # "while", or reverse-differentiable: "checkpoint" (a custom rule, first derivatives) or
    # "checkpoint-ad" (JAX's own reverse mode through nested checkpoints, any order).
    loop: str = "while"
    checkpoints: int | None = None  # stored carries of the checkpointed loop
    # Error norm by channels: the ends of consecutive slices of the flat state; the norm is the
    # largest RMS over them, and components past the last end are left out (a seminorm).
    norm_channels: tuple[int, ...] | None = None
    backward: bool = False  # this is an adjoint's backward solve (for error messages)
    check_tols: bool = True  # check the tolerances at run time (False: checked at trace time)
    check_steps: bool = True  # check dt0/dtmin/dtmax at run time (False: checked at trace time)
    # Check the save times in the failure check (with throw=True): 1 all of ts, 2 all but its
    # ends (ts is then [t0, the user's save times..., t1]); 0 no check (done by the caller).
    check_ts: int = 0


class Options(NamedTuple):
    """Run-time numbers of a solve (a pytree of arrays; ``None`` where not given)."""

    rtol: Array
    atol: Array
    dt0: Array | None = None
    dtmin: Array | None = None
    dtmax: Array | None = None


def flatten_tol(tol, z0, dtype):
    """A tolerance as a scalar array, or ravelled per component when given as a pytree like z0."""
    leaves, treedef = jax.tree.flatten(tol)
    if not leaves:
        raise ValueError("Tolerances must be numbers or a pytree of numbers like z0.")
    # One number: the same for every component (a bare number, or a pytree like z0's).
    alike = jax.tree_util.treedef_is_leaf(treedef) or treedef == jax.tree.structure(z0)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0 and alike:
        return jnp.asarray(leaves[0], dtype)
    try:
        full = jax.tree.map(
            lambda t, z: jnp.broadcast_to(jnp.asarray(t, dtype), jnp.shape(z)), tol, z0
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"A per-component tolerance must be a pytree matching z0 (broadcastable leaves): {e}"
        ) from None
    return ravel_pytree(full)[0]


def channel_norm(x: Array, channels: tuple[int, ...] | None) -> Array:
    """RMS norm of ``x``, or the largest RMS over the slices ending at ``channels``.

    Entries after ``channels[-1]`` are left out (the seminorm).
    """
    if channels is None:
        return rms_norm(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # as rms_norm: half precision overflows
    bounds = [(a, b) for a, b in zip((0, *channels[:-1]), channels) if b > a]
    if len(bounds) > 8:  # many channels (parameter leaves): one segmented reduction
        ids = np.concatenate([np.full(b - a, i) for i, (a, b) in enumerate(bounds)])
        sizes = np.array([b - a for a, b in bounds], dtype=x.dtype)
        sq = jax.ops.segment_sum(
            x[: bounds[-1][1]] ** 2, ids, num_segments=len(bounds), indices_are_sorted=True
        )
        return jnp.sqrt(jnp.maximum(jnp.max(sq / sizes), jnp.finfo(x.dtype).tiny))
    norms = [rms_norm(x[a:b]) for a, b in bounds]
    out = norms[0]
    for v in norms[1:]:
        out = jnp.maximum(out, v)
    return out


def _identity(x):
    return x


def flatten(tree) -> tuple[Array, Callable]:
    """``ravel_pytree``, with a fast path for a state that is already one 1-D array."""
    if isinstance(tree, jax.Array) and tree.ndim == 1:
        return tree, _identity
    return ravel_pytree(tree)


@jax.custom_jvp
def _at_start(z: Array, t_out: Array, t_ref: Array, f0: Array) -> Array:
    """``z``, the state at ``t_ref`` before any step, read off as the state at ``t_out == t_ref``.

    No step of the solver has a say in that value, so differentiating the loop would give it no
    dependence on ``t_out`` or ``t_ref``. The computed solution has one: a step of any length
    ``h`` from ``z`` gives ``z + h f0 + O(h²)``. The JVP adds that first-order term,
    ``f0 (dt_out - dt_ref)``, so time derivatives at the start are those of the steps that would
    follow (as the backsolve adjoint gives them). The value is ``z`` itself.
    """
    del t_out, t_ref, f0
    return z


@_at_start.defjvp
def _at_start_jvp(primals, tangents):
    z, _, _, f0 = primals
    dz, dt_out, dt_ref, _ = tangents
    return z, dz + (dt_out - dt_ref).astype(z.dtype) * f0


_STIFF_STEPS = {"esdirk": esdirk_step, "rosenbrock": rosenbrock_step}


def _check_differentiable(solver, fn, t0, z):
    """Stiff solvers need ``∂f/∂z`` by forward mode: fail at trace time, naming the cause."""

    def probe(dt, dz):
        return jax.jvp(fn, (t0, z), (dt, dz))

    try:
        # Batched, as the Jacobian is built: an unbatched jvp of a custom_vjp function passes
        # jax.eval_shape without complaint.
        jax.eval_shape(jax.vmap(probe), jnp.ones((1,), t0.dtype), jnp.ones((1, *z.shape), z.dtype))
    except (TypeError, ValueError, NotImplementedError) as e:
        raise ValueError(
            f"solver={solver.name!r} is implicit and needs the Jacobian of f by forward-mode"
            " autodiff (jax.jvp), but f cannot be differentiated that way: "
            f"{type(e).__name__}: {e}\nMake f differentiable (e.g. wrap host callbacks in"
            " jax.custom_jvp; custom_vjp functions support reverse mode only), or use an"
            " explicit solver such as 'tsit5'."
        ) from e


@eqx.filter_jit
def integrate(f, z0, t0, t1, ts, args, opts: Options, static: Static, event=None) -> Solution:
    """Solve ``dz/dt = f(z, t, args)`` from ``(t0, z0)`` to ``t1``, saving at ``ts`` (or ``t1``).

    Inputs are assumed validated (see :func:`odejax.solve`); ``ts`` may repeat ``t0``/``t1``.
    ``event`` is an optional :class:`odejax.Event` (validated by ``solve``).
    """
    solver, ctrl = static.solver, static.controller
    kind = getattr(solver, "kind", "explicit")
    stiff = kind != "explicit"
    has_event = event is not None
    rtol, atol, dt0, dtmin, dtmax = opts
    save_ts = ts is not None
    z_flat, unravel = flatten(z0)
    dtype = z_flat.dtype
    tdtype = t0.dtype

    def fn(t, y):
        return flatten(f(unravel(y), t, args))[0].astype(dtype)

    direction = jnp.where(t1 >= t0, 1, -1).astype(tdtype)
    if static.check_tols:
        rtol, atol = _checks.check_tolerances(rtol, atol)
    if stiff:
        _check_differentiable(solver, fn, t0, z_flat)

    if static.check_steps and not static.backward:  # a backward solve's come from its forward

        def checked(x, name):
            ok, rule = _checks.STEP_RULES[name]
            return eqx.error_if(x, ~ok(x), f"{name} must be {rule}.")

        dt0 = checked(dt0, "dt0") if static.has_dt0 else dt0
        dtmin = checked(dtmin, "dtmin") if static.has_dtmin else dtmin
        dtmax = checked(dtmax, "dtmax") if static.has_dtmax else dtmax
        if static.has_dtmin and static.has_dtmax:
            dtmin = eqx.error_if(dtmin, dtmin > dtmax, f"{_checks.DTMIN_ABOVE_DTMAX}.")

    def bounded(dt):
        """``dt`` with its size kept within ``[dtmin, dtmax]`` (those given)."""
        if static.has_dtmax:
            dt = direction * jnp.minimum(jnp.abs(dt), dtmax)
        if static.has_dtmin and solver.adaptive:
            dt = direction * jnp.maximum(jnp.abs(dt), dtmin)
        return dt

    f0 = fn(t0, z_flat)
    nfe0 = 1
    if static.has_dt0:
        dt_init = direction * jnp.abs(dt0)
    else:
        dt_init = initial_step(fn, t0, z_flat, f0, atol, rtol, solver.order, direction)
        nfe0 += 1
    dt_init = bounded(dt_init).astype(tdtype)

    if stiff:
        weights = solver.dense_weights("start")
        end_weights = solver.dense_weights("end")
        num_dense = weights.shape[0]
    else:
        weights, rows = dense_weights(solver)
        end_weights, _ = dense_weights(solver, anchor="end")
        num_dense = len(rows)
    n = z_flat.shape[0]
    last, saved = (), ()
    if save_ts:
        # Zeros (dt = 0 makes the interpolant z itself), computed from f0 rather than as a
        # constant: a kernel that waits for f0 instead of starting with the program's inputs.
        last = (jnp.zeros((), dtype), zeros_after(f0, (num_dense, n), dtype))
        if has_event:  # the polynomial's own end, which an event may leave behind
            last = (*last, t0, z_flat)
    dense = ()
    if static.dense:
        t_nodes = jnp.full((static.max_steps + 1,), t0, tdtype)
        dense = (
            t_nodes,
            jnp.zeros((static.max_steps, n), dtype),
            jnp.zeros((static.max_steps, num_dense, n), dtype),
        )
        if has_event:
            dense = (*dense, jnp.zeros((static.max_steps,), tdtype))

    extra = ()
    if stiff:
        extra = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        stiff_step = _STIFF_STEPS[kind]

    ev_state = ()
    if has_event:
        gvec = _events.condition_vector(event, unravel, args, dtype)
        num_cond = _events.check_event(event, z0, t0, args)
        dirs = _events.directions(event, num_cond)
        ev_state = (
            gvec(z_flat, t0),
            jnp.zeros((), jnp.int32),
            jnp.full((), jnp.nan, tdtype),
            jnp.full((), -1, jnp.int32),
            jnp.full((n,), jnp.nan, dtype),
        )

    zero = jnp.zeros((), jnp.int32)
    state = _LoopState(
        t=t0,
        z=z_flat,
        f0=f0,
        dt=dt_init,
        log_err_prev=jnp.zeros((), dtype),
        last=last,
        saved=saved,
        num_steps=zero,
        num_accepted=zero,
        # t0 or t1 nan or infinite: no step can be taken (nan fails every comparison).
        status=jnp.where(
            ~(jnp.isfinite(t0) & jnp.isfinite(t1)),
            Status.NONFINITE,
            jnp.where(t0 == t1, Status.SUCCESS, _RUNNING),
        ).astype(jnp.int32),
        dense=dense,
        extra=extra,
        event=ev_state,
    )

    if static.progress:  # the loop starts from a t0 tied to the bar's opening
        pkey, t_start = _progress.progress_open(t0, t1)
        state = state._replace(t=t_start)

    def cond(st: _LoopState):
        return st.status == _RUNNING

    def locate(t, dt, z1, kstack, g0, g1, trig):
        """The earliest crossing in the step: ``(θ*, condition)``, on stopped gradients."""
        t, dt, z1, kstack, g0, g1 = _events.stop_grad((t, dt, z1, kstack, g0, g1))
        g_sg = _events.condition_vector(
            _events.stop_grad(event), unravel, _events.stop_grad(args), dtype
        )
        dz = dt.astype(dtype)
        eps = jnp.finfo(tdtype).eps
        span = jnp.maximum(jnp.abs(t), jnp.abs(t + dt))
        xtol = ((4 * eps * span + jnp.finfo(tdtype).tiny) / jnp.abs(dt)).astype(dtype)

        def one(k, a_lo, a_hi, go):
            def h(theta):
                zz = interpolate(end_weights, kstack, z1, dz, theta)
                return g_sg(zz, t + theta.astype(tdtype) * dt)[k]

            th = _events.find_root(h, jnp.zeros((), dtype), jnp.ones((), dtype), a_lo, a_hi, xtol)
            return jnp.where(go, th, jnp.inf)

        ks = jnp.arange(num_cond)
        # A condition that did not cross starts its search already finished.
        thetas = jax.vmap(one)(ks, jnp.where(trig, g0, -1.0), jnp.where(trig, g1, 0.0), trig)
        k = jnp.argmin(thetas)
        return thetas[k], k

    def on_event(t, dt, z1, kstack, g0, g1, trig):
        """Where and how the step ends after a crossing: the located event (differentiable)."""
        theta, k = locate(t, dt, z1, kstack, g0, g1, trig)
        dz = dt.astype(dtype)

        def along(th):
            zz = interpolate(end_weights, kstack, z1, dz, th)
            return zz, gvec(zz, t + th.astype(tdtype) * dt)[k]

        (z_at, g_at), (zdot, gdot) = jax.jvp(along, (theta,), (jnp.ones((), dtype),))
        zdot, gdot = lax.stop_gradient((zdot, gdot))
        ok = gdot != 0
        # One Newton step on the interpolant: the implicit-function-theorem derivative.
        delta = jnp.where(ok, -g_at / jnp.where(ok, gdot, 1), 0)
        t_ev = t + (theta + delta).astype(tdtype) * dt
        z_ev = z_at + zdot * delta
        return t_ev, z_ev, k

    # Rounding noise in t is relative to the largest time in play (t0 too: a fixed-step solve
    # counts its steps from it). The loop bodies read these times from one vector: one operand
    # of the loop, computed by one kernel before it, not one per value (see odejax._pack).
    t_big = jnp.maximum(jnp.abs(t0), jnp.abs(t1))
    # (A floor for the shrinking of non-finite steps, eps² t_big, rides along: computed here,
    # not by a kernel of its own.)
    eps = float(jnp.finfo(tdtype).eps)
    in_loop = jnp.stack([t0, t1, direction, t_big, eps * eps * t_big])

    def times():
        """``(t0, t1, direction, t_big)`` inside a loop body."""
        return in_loop[0], in_loop[1], in_loop[2], in_loop[3]

    def land(t_try, t):
        """The end of a step from ``t`` aimed at ``t_try``: exactly ``t1`` if what is left is
        rounding noise (steps that add up to t1 in exact arithmetic) and at most 1% of the
        step, so the stretched step is hardly longer (far from t = 0 a step may be only a few
        dozen ulps of t long)."""
        _, t1, direction, t_big = times()
        noise = 64 * jnp.finfo(tdtype).eps * jnp.maximum(jnp.abs(t_try), t_big)
        slack = jnp.minimum(noise, 0.01 * jnp.abs(t_try - t))
        return jnp.where(direction * (t1 - t_try) <= slack, t1, t_try)

    def attempt(st: _LoopState) -> tuple[_LoopState, tuple]:
        """One attempted step; also the dense output's writes (``(index, value)`` pairs)."""
        t0, t1, direction, _ = times()
        t, z = st.t, st.z
        if solver.adaptive:
            t_try = t + st.dt
        elif not has_event:  # count fixed steps from t0 so rounding does not accumulate
            t_try = t0 + (st.num_accepted + 1).astype(tdtype) * st.dt
        else:  # an event may stop a step between grid points: on to the next one after t
            x = (t - t0) / st.dt  # t on the grid, in steps; its rounding grows with it
            k = jnp.floor(x + (1e-6 + 8 * jnp.finfo(tdtype).eps * jnp.abs(x))) + 1
            t_try = t0 + k * st.dt
        t_next = land(t_try, t)
        final_step = t_next == t1
        dt = t_next - t
        if stiff:
            step = stiff_step(solver, fn, t, z, dt, st.f0, rtol, atol)
        else:
            step = rk_step(solver, fn, t, z, dt, st.f0)

        if solver.adaptive:
            # At least float32: a half-precision error over a tolerance overflows (or the
            # tolerance underflows to zero) long before the step is really bad.
            wide = jnp.promote_types(dtype, jnp.float32)
            size = jnp.maximum(jnp.abs(z), jnp.abs(step.z1)).astype(wide)
            scale = atol.astype(wide) + rtol.astype(wide) * size
            # A zero scale (atol = 0 where z stays 0) counts a zero error as zero, any other as
            # too large.
            scale = jnp.where(scale > 0, scale, jnp.finfo(wide).tiny)
            scaled = step.err.astype(wide) / scale
            err = channel_norm(scaled, static.norm_channels)
            log_err = jnp.log(err)
            if static.loop == "checkpoint-ad":
                # Kept, not recomputed, by the checkpointed loop (see odejax._loop: SAVED).
                log_err = checkpoint_name(log_err, SAVED)
            accept = log_err <= 0  # false for nan
            finite = jnp.isfinite(log_err)
            factor = ctrl.factor(log_err, st.log_err_prev, solver.error_order)
            if stiff:  # a failed Newton solve rejects the step and halves it
                accept = accept & ~step.fail
                factor = jnp.where(step.fail & finite, jnp.minimum(factor, 0.5), factor)
            dt_new = (dt * factor.astype(tdtype)).astype(tdtype)
            # Floor the PI memory at ε = 1e-4, so a lucky tiny error does not overshoot next.
            log_err_prev = jnp.where(accept, jnp.maximum(log_err, -9.2), st.log_err_prev)
        else:
            finite = jnp.all(jnp.isfinite(step.z1))
            accept = finite
            dt_new = st.dt
            log_err_prev = st.log_err_prev
        dt_new = bounded(dt_new)
        # The step cannot shrink any more: it vanishes in t, or (t too coarse for it) the next
        # attempt would end where the rejected one did.
        underflow = (t + dt_new == t) | (land(t + dt_new, t) == t_next) | ~jnp.isfinite(dt_new)
        # A non-finite candidate (nan in the state, or f blowing up) stops shrinking at the
        # resolution of t, but no lower than eps² t_big: near t = 0 the test above would wait
        # for denormal steps, hundreds of rejections. (The resolution of the largest time in
        # play, eps t_big, was too coarse near t = 0 for a long interval: with t1 = 1e4 in
        # float32 a step of 1e-3 could not be tried.)
        underflow = underflow | (
            ~finite & (jnp.abs(dt_new) <= jnp.maximum(eps * jnp.abs(t), in_loop[4]))
        )
        if static.has_dtmin:  # a step of dtmin (or a shorter last one) failed: no shrinking
            underflow = underflow | (jnp.abs(st.dt) <= dtmin) | (jnp.abs(dt) <= dtmin)
        if not solver.adaptive:
            underflow = ~finite

        # No progress: a rejected step that cannot shrink, or a step so short that t + dt == t.
        stalled = (~accept & underflow) | (t_next == t)
        t_new = jnp.where(accept, t_next, t)
        z_new = jnp.where(accept, step.z1, z)
        f0_new = jnp.where(accept, step.f1, st.f0)

        last = st.last
        if stiff:
            kstack = step.dense
        elif save_ts or static.dense or has_event:
            kstack = jnp.stack([step.ks[i] for i in rows])

        ev = st.event
        if has_event:
            g_prev, num_ev, t_ev_last, k_last, z_ev_last = ev
            g1 = gvec(step.z1, t_next)
            trig = _events.crossings(g_prev, g1, dirs) & accept
            fired = jnp.any(trig)
            too_many = fired & (num_ev >= event.max_events) & (not event.stops)
            truncate = event.stops | event.jumps

            def with_event(_):
                t_ev, z_ev, k = on_event(t, dt, step.z1, kstack, g_prev, g1, trig)
                dt_go, lep_go = dt_new, log_err_prev
                if event.jumps:
                    z_go = ravel_pytree(event.reset(unravel(z_ev), t_ev, args))[0].astype(dtype)
                    z_go = jnp.where(too_many, z_ev, z_go)
                    f_go = fn(t_ev, z_go)
                    g_go = gvec(z_go, t_ev)
                    # The condition that fired counts as zero: it must change sign to fire again.
                    g_go = jnp.where(jnp.arange(num_cond) == k, 0, g_go)
                    if solver.adaptive:  # a jump makes the step-size history moot: restart
                        dt_go = initial_step(
                            fn, t_ev, z_go, f_go, atol, rtol, solver.order, direction
                        )
                        dt_go = bounded(dt_go).astype(tdtype)
                        lep_go = jnp.zeros_like(log_err_prev)
                elif truncate:
                    z_go, f_go, g_go = z_ev, f0_new, g1
                else:  # record only; the step stands
                    z_go, f_go, g_go = z_new, f0_new, g1
                t_go = t_ev if truncate else t_new
                out = (t_go, z_go, f_go, g_go, dt_go, lep_go)
                return (*out, t_ev, k.astype(jnp.int32), z_ev)

            def without(_):
                g_keep = jnp.where(accept, g1, g_prev)
                out = (t_new, z_new, f0_new, g_keep, dt_new, log_err_prev)
                return (*out, t_ev_last, k_last, z_ev_last)

            t_new, z_new, f0_new, g_new, dt_new, log_err_prev, t_ev_last, k_last, z_ev_last = (
                lax.cond(fired, with_event, without, None)
            )
            ev = (g_new, num_ev + fired.astype(jnp.int32), t_ev_last, k_last, z_ev_last)

        if save_ts:
            # The step that ends a run of the save loop below is always an accepted one, so
            # its end is the loop's (t, z): only dt and the stages need keeping (and the
            # polynomial's own end, which an event may cut short).
            last = (dt.astype(dtype), kstack)
            if has_event:
                last = (*last, t_next, step.z1)
        dense_writes = ()
        if static.dense:  # one node per accepted step: (index, value) for each dense array
            slot = jnp.where(accept, st.num_accepted, static.max_steps).astype(jnp.int32)
            dense_writes = (
                (slot + 1, t_new if has_event else t_next),
                (slot, z),
                (slot, kstack),
            )
            if has_event:
                dense_writes = (*dense_writes, (slot, dt))

        num_steps = st.num_steps + 1
        keep_dt = accept & final_step  # the last step's proposal is kept (solve ended)
        if has_event and (event.jumps or event.stops):
            keep_dt = keep_dt & ~fired  # ... unless an event cut it short
        if has_event:
            done = accept & final_step & (t_new == t1)
            status = jnp.where(
                fired & event.stops,
                Status.EVENT,
                jnp.where(
                    too_many, Status.MAX_EVENTS_REACHED, jnp.where(done, Status.SUCCESS, _RUNNING)
                ),
            )
            status = jnp.where(
                status != _RUNNING,
                status,
                jnp.where(
                    num_steps >= static.max_steps,
                    Status.MAX_STEPS_REACHED,
                    jnp.where(
                        stalled,
                        jnp.where(finite, Status.DT_UNDERFLOW, Status.NONFINITE),
                        _RUNNING,
                    ),
                ),
            ).astype(jnp.int32)
        else:
            status = jnp.where(
                accept & final_step,
                Status.SUCCESS,
                jnp.where(
                    num_steps >= static.max_steps,
                    Status.MAX_STEPS_REACHED,
                    jnp.where(
                        stalled,
                        jnp.where(finite, Status.DT_UNDERFLOW, Status.NONFINITE),
                        _RUNNING,
                    ),
                ),
            ).astype(jnp.int32)
        extra = st.extra
        if stiff:
            extra = (st.extra[0] + step.nfe, st.extra[1] + step.nlin)
        if static.progress:
            t_new = _progress.progress_update(pkey, t_new, num_steps, st.status == _RUNNING)
        new = _LoopState(
            t=t_new,
            z=z_new,
            f0=f0_new,
            dt=jnp.where(keep_dt, st.dt, dt_new),
            log_err_prev=log_err_prev.astype(dtype),
            last=last,
            saved=st.saved,
            num_steps=num_steps,
            num_accepted=st.num_accepted + accept.astype(jnp.int32),
            status=status,
            dense=st.dense,
            extra=extra,
            event=ev,
        )
        return new, dense_writes

    def body(st: _LoopState) -> _LoopState:
        """One attempted step, its dense output written into the carry."""
        st, writes = attempt(st)
        return st._replace(dense=write_buffers(st.dense, writes))

    def read_off(st: _LoopState, ti):
        """The state at save time ``ti``, which the last accepted step has passed (or nan)."""
        if has_event:
            dt_a, kstack, t_ref, z_ref = st.last
        else:
            (dt_a, kstack), t_ref, z_ref = st.last, st.t, st.z
        theta = 1 + (ti - t_ref).astype(dtype) / jnp.where(dt_a == 0, 1, dt_a)
        zi = interpolate(end_weights, kstack, z_ref, dt_a, theta)
        # At the state's own time, its exact value, with the interpolant's derivative (w.r.t.
        # ti too: the derivative from inside the step, as at any other save time).
        at_t = lax.stop_gradient(st.z) + (zi - lax.stop_gradient(zi))
        zi = jnp.where(ti == st.t, at_t, zi)
        # Before any step (a save at the start), the time derivative of the steps to come.
        zi = jnp.where(dt_a == 0, _at_start(zi, ti, st.t, st.f0), zi)
        return jnp.where(times()[2] * (st.t - ti) >= 0, zi, jnp.nan)

    def before(st: _LoopState, ti):
        """Whether the solve has yet to reach save time ``ti``."""
        return times()[2] * (st.t - ti) < 0

    guard = None
    if static.throw:
        # One check on everything the loop returned, before any output is derived from it: it
        # runs whichever output is used. Its scalars go in packed, as the "while" loop leaves
        # them. It also checks the save times (static.check_ts): one branch in the program for
        # both, and the host works out what failed.
        checked = ts if static.check_ts and save_ts else None  # the save times to check
        inner = lambda ts: ts if static.check_ts == 1 else ts[..., 1:-1]  # noqa: E731
        bad_ts = jnp.zeros((), bool)
        if checked is not None:  # the verdict's code is worked out on the host, if it fails
            bad_ts = _checks.save_times_code(inner(checked), t0, t1) > 0

        def ok_status(status, xp=jnp):
            return _checks.event_as_success(status, xp) if has_event else status

        def guard(packing, packed, zs, carry=lambda tree: tree[0]):
            st = carry(packing.unpack(packed))
            failed = _checks.any_failed(ok_status(st.status), bad_ts)

            def describe(x):
                packed, _, in_loop, ts = x
                st = carry(packing.unpack(packed, batched=True))
                t0, t1 = in_loop[..., 0], in_loop[..., 1]
                _checks.report_failure(
                    ok_status(st.status, np),
                    st.t,
                    t1,
                    None if ts is None else _checks.save_times_code(inner(ts), t0, t1, np),
                    static.max_steps,
                    backward=static.backward,
                    has_dtmin=static.has_dtmin,
                )

            x = _checks.raise_if_failed((packed, zs, in_loop, checked), failed, describe)
            return x[0], x[1]

    if static.loop == "while":
        # Step until each save time is passed, then read it off the last step's interpolant;
        # dense nodes go to buffers beside the carry.
        fns = LoopFns(attempt, cond, before, read_off) if save_ts else LoopFns(attempt, cond)
        final, zs, dense_out = run_loop(
            fns, ts if save_ts else None, t1, state._replace(dense=()), state.dense, guard
        )
        final = final._replace(dense=dense_out)
    elif static.loop == "checkpoint":
        # The same loop under the checkpoint adjoint's own reverse-mode rule. A step
        # overwrites `last` without reading it, so stored carries leave it out.
        init = state._replace(dense=())
        keep = jax.tree.map(lambda _: True, init)
        keep = keep._replace(last=jax.tree.map(lambda _: False, init.last))
        final, zs, dense_out = solve_loop(
            attempt,
            cond,
            before,
            read_off,
            init,
            state.dense,
            ts if save_ts else None,
            t1,
            static.max_steps,
            static.checkpoints,
            keep,
        )
        final = final._replace(dense=dense_out)
    else:  # "checkpoint-ad"
        zs = None
        # JAX's own reverse mode (any order) through one bounded loop whose iterations either
        # take a step or save the next save time the last step passed.
        num_save = ts.shape[0] if save_ts else 0

        def pending(st: _LoopState):
            if not save_ts:
                return jnp.zeros((), bool)
            i = st.saved[0]
            return (i < num_save) & ~before(st, ts[jnp.minimum(i, num_save - 1)])

        def save_point(st: _LoopState) -> _LoopState:
            i, buf = st.saved
            buf = lax.dynamic_update_slice_in_dim(buf, read_off(st, ts[i])[None], i, axis=0)
            return st._replace(saved=(i + 1, buf))

        def ck_body(st):
            return lax.cond(pending(st), save_point, body, st) if save_ts else body(st)

        if save_ts:
            zs0 = jnp.full((num_save, n), jnp.nan, dtype)
            state = state._replace(saved=(jnp.zeros((), jnp.int32), zs0))
        final = checkpointed_while(
            lambda st: cond(st) | pending(st),
            ck_body,
            state,
            static.max_steps + num_save + 1,
            static.checkpoints,
        )
        if save_ts:
            zs = final.saved[1]
    if guard is not None and static.loop != "while":  # run_loop ran it on the "while" loop
        packing = Scalars(final)
        packed, zs = guard(packing, packing.pack(final), zs, carry=lambda tree: tree)
        final = packing.unpack(packed)
    trivial = t0 == t1
    if not save_ts:
        ok = final.status == Status.SUCCESS
        if has_event:
            ok = ok | (final.status == Status.EVENT)
        # With t1 == t0 no step is taken: the end state is the start, with the time derivatives
        # of the steps that a later t1 would take.
        z_end = jnp.where(trivial, _at_start(final.z, t1, final.t, final.f0), final.z)
        zs = jnp.where(ok, z_end, jnp.nan)[None]
    if static.progress:
        zs = _progress.progress_close(pkey, zs, final.t, final.num_steps)

    if stiff:
        nfe = nfe0 + final.extra[0]
    else:
        stage_evals = solver.tableau.num_stages - (1 if solver.tableau.fsal else 0)
        nfe = nfe0 + stage_evals * final.num_steps
    if has_event and event.jumps:  # after each reset: f at the new state, Hairer's extra one
        nfe = nfe + final.event[1] * (2 if solver.adaptive else 1)
    stats = {
        "num_steps": final.num_steps,
        "num_accepted": final.num_accepted,
        "num_rejected": final.num_steps - final.num_accepted,
        "nfe": jnp.where(trivial, 0, nfe).astype(jnp.int32),
    }
    if stiff:  # one Jacobian (or linearisation) per attempted step
        stats["num_jacobians"] = final.num_steps
        stats["num_linear_solves"] = final.extra[1]
    interp = None
    if static.dense:
        t_nodes, z_nodes, k_nodes = final.dense[:3]
        # Unused tail nodes repeat the end time so the search over nodes stays sorted. Node 0 is
        # t0 itself, not the buffer's initial value (which the checkpoint adjoint does not
        # differentiate): the first step's interpolant depends on t0.
        idx = jnp.arange(static.max_steps + 1)
        t_nodes = jnp.where(idx == 0, t0, jnp.where(idx <= final.num_accepted, t_nodes, final.t))
        # With no step accepted (t0 == t1, or a failure at once) the only node is the start.
        z_nodes = z_nodes.at[0].set(jnp.where(final.num_accepted > 0, z_nodes[0], z_flat))
        interp = DenseInterpolation(
            t_nodes=t_nodes,
            z_nodes=z_nodes,
            kstack=k_nodes,
            num_steps=final.num_accepted,
            weights=tuple(map(tuple, weights.tolist())),
            unravel=unravel,
            h_nodes=final.dense[3] if has_event else None,
        )
    ev_out = {}
    if has_event:
        _, num_ev, t_ev, k_ev, z_ev = final.event
        ev_out = dict(
            event_time=t_ev, event_index=k_ev, event_state=unravel(z_ev), num_events=num_ev
        )
    return Solution(
        ts=ts if save_ts else t1[None],
        zs=jax.vmap(unravel)(zs),
        stats=stats,
        status=final.status,
        # t1 itself when no step is taken (t1 == t0): its derivative is d t1, as with a step.
        t_final=jnp.where(trivial, t1, final.t),
        interpolation=interp,
        dt_next=lax.stop_gradient(final.dt),  # a suggestion, not differentiated
        **ev_out,
    )
