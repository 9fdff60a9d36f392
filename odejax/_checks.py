"""Input validation and failure reporting.

Problems visible at trace time raise Python exceptions that name the argument; value problems
inside ``jit`` use ``equinox.error_if``. A failed solve raises (``throw=True``) from one host
callback after the loop, which runs only when the status is not success or the save times are
bad (with ``throw=True`` they are checked there too: one branch in the program for both).
"""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from ._solution import Status

__all__ = [
    "STEP_RULES",
    "OdeSolveError",
    "any_failed",
    "check_nonnegative",
    "check_save_times",
    "check_tolerances",
    "check_vector_field",
    "event_as_success",
    "raise_if_failed",
    "report_failure",
    "save_times_code",
    "state_dtype",
    "tolerances_checked",
]


class OdeSolveError(RuntimeError):
    """A solve failed (max steps, step-size underflow, non-finite state).

    It is raised on the host, inside the compiled program, when the result is computed. JAX
    hands it to Python wrapped in ``jax.errors.JaxRuntimeError`` (whose message starts with
    this error's text), at the call or when the result is first used (dispatch is
    asynchronous). Catch ``(odejax.OdeSolveError, jax.errors.JaxRuntimeError)``, or pass
    ``throw=False`` and test ``sol.succeeded`` / ``sol.result`` instead.

    On a GPU, JAX also keeps the error with the device's latest program that has host callbacks,
    and prints it once more when Python exits ("Exception ignored in atexit callback") unless a
    later such program (any solve with ``throw=True``) ran first. That message changes nothing.
    """


# What a step-size option must be: (test of its value, the rule in words). The tests take a
# Python float (checked at trace time, in odejax.solve) or a traced array (checked at run time,
# in odejax._integrate.integrate). ``dtmax = inf`` is no bound at all; a signed ``dt0`` is fine
# (its sign is taken from t1 - t0); nan fails every rule.
STEP_RULES = {
    "dt0": (lambda x: (abs(x) > 0) & (abs(x) < np.inf), "non-zero and finite"),
    "dtmin": (lambda x: (x >= 0) & (x < np.inf), "non-negative and finite"),
    "dtmax": (lambda x: x > 0, "positive (inf for no bound)"),
}


DTMIN_ABOVE_DTMAX = "dtmin must not exceed dtmax"


def state_dtype(z0) -> jnp.dtype:
    """The floating dtype shared by the leaves of ``z0``; a TypeError for integer states."""
    leaves = jax.tree.leaves(z0)
    if not leaves:
        raise ValueError("z0 has no array leaves: give the initial state as a pytree of arrays.")
    dtypes = []
    for leaf in leaves:
        dt = jnp.result_type(leaf)
        if not jnp.issubdtype(dt, jnp.inexact):
            raise TypeError(
                f"z0 has a leaf of dtype {dt}; ODE states must be floating point. Pass floats,"
                " e.g. jnp.asarray(z0, dtype=float)."
            )
        if jnp.issubdtype(dt, jnp.complexfloating):
            raise TypeError(
                f"z0 has a complex leaf (dtype {dt}); odejax solves real states. Split it into"
                " real and imaginary parts, e.g. z0 = (z.real, z.imag), with f acting on both."
            )
        dtypes.append(dt)
    return jnp.result_type(*dtypes)


def check_nonnegative(name: str, value) -> None:
    """Trace-time check of a Python-number tolerance (arrays are checked in `check_tolerances`)."""
    for leaf in jax.tree.leaves(value):
        if isinstance(leaf, str | bytes) or not (
            isinstance(leaf, numbers.Real) or jnp.issubdtype(jnp.result_type(leaf), jnp.number)
        ):
            raise TypeError(f"{name} must be a number or an array of numbers, got {leaf!r}.")
        if isinstance(leaf, numbers.Real) and not leaf >= 0:
            raise ValueError(f"{name}={leaf} is negative or nan; tolerances must be non-negative.")


def check_vector_field(f, z0, t0, args) -> None:
    """Trace ``f`` once abstractly and compare its output with ``z0``'s structure/shape/dtype."""
    out = jax.eval_shape(lambda: f(z0, t0, args))
    want = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), z0)
    s_out, s_want = jax.tree.structure(out), jax.tree.structure(want)
    if s_out != s_want:
        raise ValueError(
            "f(z, t, args) must return a pytree with the structure of z0; got\n"
            f"  f returned: {s_out}\n  z0 is:      {s_want}"
        )
    for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
        if o.shape != w.shape or o.dtype != w.dtype:
            raise ValueError(
                "f(z, t, args) must return leaves with the shapes and dtypes of z0; got\n"
                f"  f returned: {jax.tree.map(lambda x: f'{x.dtype}{list(x.shape)}', out)}\n"
                f"  z0 is:      {jax.tree.map(lambda x: f'{x.dtype}{list(x.shape)}', want)}"
            )


def _tolerance_problems(rtol, atol, xp):
    """``(failed, message)`` for each check of the tolerances; ``xp`` is ``jax.numpy`` or
    ``numpy``."""
    return (
        (xp.any(~(rtol >= 0)), "rtol must be non-negative (and not nan)."),
        (xp.any(~(atol >= 0)), "atol must be non-negative (and not nan)."),
        (
            xp.any((rtol == 0) & (atol == 0)),
            "rtol and atol are both zero; give a positive tolerance.",
        ),
    )


def tolerances_checked(rtol, atol) -> bool:
    """Check tolerances whose values are known at trace time; ``True`` if they were (then the
    compiled program needs no run-time check of them, see :func:`check_tolerances`)."""
    if isinstance(rtol, jax.core.Tracer) or isinstance(atol, jax.core.Tracer):
        return False
    for failed, message in _tolerance_problems(np.asarray(rtol), np.asarray(atol), np):
        if failed:
            raise ValueError(message)
    return True


def check_tolerances(rtol, atol):
    """Run-time checks of array tolerances; returns them (tied to the checks)."""
    (neg_r, msg_r), (neg_a, msg_a), (zero, msg_zero) = _tolerance_problems(rtol, atol, jnp)
    rtol = eqx.error_if(rtol, neg_r, msg_r)
    atol = eqx.error_if(atol, neg_a, msg_a)
    atol = eqx.error_if(atol, zero, msg_zero)
    return rtol, atol


def _save_times_messages(name: str) -> tuple[str, str]:
    """The messages of a failed check of save times: codes 1 and 2 of :func:`save_times_code`."""
    return (
        f"{name} must lie within [t0, t1] (and not be nan).",
        f"{name} must be strictly monotone (increasing, or decreasing for a backward solve)"
        " and free of nan (times are cast to the state's floating dtype first).",
    )


def save_times_code(ts, t0, t1, xp=jnp):
    """What is wrong with the save times ``ts``: 0 nothing, 1 not within ``[t0, t1]`` (or nan at
    an end), 2 not strictly monotone in the solve's direction (or nan). ``xp``: ``jax.numpy``,
    or ``numpy`` on the host (with leading batch axes).

    Once ``ts`` is monotone, it lies within [t0, t1] exactly when its ends do: scalar tests,
    where whole-array ones cost the compiled program two more reductions (kernels, compile
    time). A nan anywhere makes a difference nan, which fails ``> 0``; the smallest difference
    is a float reduction (one kernel; a boolean ``any`` is two on XLA:CPU).
    """
    t0, t1 = xp.asarray(t0)[..., None], xp.asarray(t1)[..., None]
    direction = xp.where(t1 >= t0, 1, -1).astype(ts.dtype)
    steps = direction * xp.diff(ts, axis=-1)
    unordered = ~(xp.min(steps, axis=-1, initial=xp.inf) > 0)
    outside = ~((direction * (ts[..., :1] - t0) >= 0) & (direction * (ts[..., -1:] - t1) <= 0))
    return xp.where(unordered, 2, xp.where(outside[..., 0], 1, 0)).astype(xp.int32)


def check_save_times(ts, t0, t1, name: str = "ts"):
    """Run-time checks: ``ts`` strictly monotone in the solve's direction, inside [t0, t1].

    A solve with ``throw=True`` checks ``ts`` in its failure check instead (the ``guard`` in
    :func:`odejax._integrate.integrate`, with :func:`report_failure`): one branch in the
    compiled program for both.
    """
    code = save_times_code(ts, t0, t1)
    # Under vmap equinox reports the message of the largest index over the batch: members that
    # pass have index 0, so the first message is the "outside" one, and "unordered" wins a tie.
    index = jnp.maximum(code - 1, 0)
    return eqx.branched_error_if(ts, code > 0, index, _save_times_messages(name))


def report_failure(status, t_final, t1, ts_code, max_steps, backward, has_dtmin):
    """Raise (on the host) for the first failed member of a batch of solves, if any.

    ``ts_code`` (or ``None``) is :func:`save_times_code`'s verdict on the save times; a bad
    ``ts`` is reported before any failure of the solve (which it may have caused).
    """
    if ts_code is not None and np.any(ts_code > 0):
        raise ValueError(_save_times_messages("ts")[int(np.max(ts_code)) - 1])
    status = np.asarray(status)
    bad = status != Status.SUCCESS
    if not np.any(bad):
        return
    code = Status(int(status[bad].flat[0]))
    t_reached = float(np.broadcast_to(t_final, bad.shape)[bad].flat[0])
    t_end = float(np.broadcast_to(t1, bad.shape)[bad].flat[0])
    which = "The backward (adjoint) solve" if backward else "The ODE solve"
    extra = f" ({int(bad.sum())} of {bad.size} batch members failed)" if bad.size > 1 else ""
    what = "`dtmin`" if has_dtmin else "the floating-point resolution of t"
    advice = code.advice.format(max_steps=max_steps, what=what)
    if backward:
        advice += (
            ". If the backward pass re-integrates the state backwards in time (the default with"
            " an explicit solver), that is unstable for stiff or strongly contracting dynamics"
            " whatever the solver: use adjoint=odejax.BacksolveAdjoint(state='interpolate')"
            " (the state read off the forward solve) or adjoint='checkpoint' (exact gradients,"
            " sublinear memory) there"
        )
    instead = (
        "Pass throw=False to get nan gradients instead of this error."
        if backward
        else "Pass throw=False to get the partial solution and its status instead."
    )
    raise OdeSolveError(
        f"{which} stopped with status {code.name} at t={t_reached:.10g} before reaching"
        f" t1={t_end:.10g}{extra}: {advice}. {instead}"
    )


def event_as_success(status, xp=jnp):
    """``status`` with a terminal event counted as a success (as every failure check counts
    it); ``xp`` is ``jax.numpy`` or ``numpy``."""
    return xp.where(status == Status.EVENT, Status.SUCCESS, status).astype(status.dtype)


@custom_vmap
def any_failed(status, bad_ts):
    """Whether any status is a failure or any ``bad_ts`` true: one unbatched boolean, even
    under ``jax.vmap``."""
    return jnp.any(status != Status.SUCCESS) | jnp.any(bad_ts)


@any_failed.def_vmap
def _any_failed_vmap(axis_size, in_batched, status, bad_ts):
    return any_failed(status, bad_ts), False


def raise_if_failed(x, failed, describe):
    """Pass ``x`` through; at run time, if ``failed``, call ``describe(x)`` on the host (with
    NumPy arrays, a leading batch axis under ``vmap``), which raises.

    ``x`` is a pytree of arrays: everything the solve loop returned, so that the check runs
    whichever output the caller derives from it (a check tied to one output only would be dead
    code, removed by XLA, when that output is not used). The host callback sits in the failing
    branch of a ``lax.cond`` and passes ``x`` through, so a successful solve pays for the
    predicate only. Give ``x``'s scalars packed (:class:`odejax._pack.Scalars`, as a loop leaves
    them), one operand per dtype, and ``describe`` unpacks them: on XLA:CPU each operand read
    apart is a kernel of its own. ``failed`` must be unbatched (:func:`any_failed`), so the
    ``cond`` stays a ``cond`` under ``vmap`` (not a ``select`` running both branches).
    Tangents pass straight through.
    """
    leaves, treedef = jax.tree.flatten(x)

    def report(leaves):
        describe(jax.tree.unflatten(treedef, [np.asarray(v) for v in leaves]))
        return leaves

    @jax.custom_jvp
    def check(leaves, failed):
        def fail(leaves):
            structs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves]
            return jax.pure_callback(report, structs, leaves, vmap_method="broadcast_all")

        return lax.cond(failed, fail, lambda v: v, leaves)

    @check.defjvp
    def _(primals, tangents):
        return check(*primals), tangents[0]

    return jax.tree.unflatten(treedef, check(leaves, failed))
