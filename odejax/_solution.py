"""What a solve returns: the saved states, statistics, a status and optional dense output."""

from __future__ import annotations

import enum
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._step import interpolate

__all__ = ["DenseInterpolation", "Solution", "Status"]


class Status(enum.IntEnum):
    """Outcome of a solve. ``Solution.status`` holds one of these as an ``int32`` array."""

    SUCCESS = 0
    MAX_STEPS_REACHED = 1
    DT_UNDERFLOW = 2
    NONFINITE = 3
    EVENT = 4  # a terminal event stopped the solve (a success)
    MAX_EVENTS_REACHED = 5

    def __str__(self) -> str:
        return self.name

    @property
    def advice(self) -> str:
        return _ADVICE[self]


_ADVICE = {
    Status.SUCCESS: "",
    Status.MAX_STEPS_REACHED: (
        "the solve used all of max_steps={max_steps} steps; raise `max_steps`, loosen"
        " `rtol`/`atol`, or use a stiff solver if the problem is stiff"
    ),
    Status.DT_UNDERFLOW: (
        "the step size had to shrink below {what}; the problem may be stiff or singular near"
        " this time: loosen `rtol`/`atol`, lower `dtmin`, or check the vector field"
    ),
    Status.NONFINITE: (
        "the vector field returned non-finite values (nan/inf) and shrinking the step did not"
        " help, or `t0`/`t1` is not finite; check `t0`, `t1`, `f`, `z0` and `args` for nan/inf"
        " or a blow-up of the solution"
    ),
    Status.EVENT: "",
    Status.MAX_EVENTS_REACHED: (
        "the event fired more than `max_events` times; raise `odejax.Event(max_events=...)`."
        " Events that pile up (a bouncing ball coming to rest, a reset that leaves the state on"
        " the event surface) fire without end"
    ),
}


class DenseInterpolation(eqx.Module):
    """Piecewise dense output over the accepted steps of a solve (``solve(..., dense=True)``).

    Attributes:
        t_nodes: ``(max_steps + 1,)`` step boundaries; entries past ``num_steps`` repeat the end.
        z_nodes: ``(max_steps, n)`` flat state at the start of each step.
        kstack: ``(max_steps, m, n)`` the stages the interpolant weights.
        num_steps: number of accepted steps.
        h_nodes: ``(max_steps,)`` the step each polynomial was built on, when it can differ from
            ``t_nodes[i + 1] - t_nodes[i]`` (a step cut short by an event); else ``None``.
    """

    t_nodes: Array
    z_nodes: Array
    kstack: Array
    num_steps: Array
    weights: tuple = eqx.field(static=True)  # the interpolant's (m, p) matrix, as nested tuples
    unravel: Callable = eqx.field(static=True)
    h_nodes: Array | None = None

    @eqx.filter_jit
    def evaluate(self, t) -> object:
        """The solution at time(s) ``t`` (any shape), stacked on leading axes of shape ``t.shape``.

        Times outside the solved interval are clamped to its first or last step's polynomial
        (extrapolation), so keep ``t`` inside ``[t0, t1]``.
        """
        t = jnp.asarray(t, dtype=self.t_nodes.dtype)
        shape = t.shape
        flat_t = t.reshape(-1)
        n = self.num_steps
        t0 = self.t_nodes[0]
        direction = jnp.where(self.t_nodes[n] >= t0, 1, -1).astype(t.dtype)
        # Step i covers direction*t in [direction*t_nodes[i], direction*t_nodes[i+1]].
        keys = direction * self.t_nodes[1:]
        idx = jnp.searchsorted(keys, direction * flat_t, side="left")
        idx = jnp.clip(idx, 0, jnp.maximum(n - 1, 0))

        def one(i, tt):
            ta, tb = self.t_nodes[i], self.t_nodes[i + 1]
            dt = tb - ta if self.h_nodes is None else self.h_nodes[i]
            theta = jnp.where(dt == 0, 0.0, (tt - ta) / jnp.where(dt == 0, 1.0, dt))
            return interpolate(np.asarray(self.weights), self.kstack[i], self.z_nodes[i], dt, theta)

        out = jax.vmap(one)(idx, flat_t)
        out = jax.vmap(self.unravel)(out)
        return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), out)


class Solution(eqx.Module):
    """Result of :func:`odejax.solve`.

    Attributes:
        ts: ``(T,)`` save times (the requested ``ts``, or ``[t1]``).
        zs: the state at ``ts``: a pytree like ``z0`` with a leading axis of length ``T``. Rows the
            solve did not reach (after a failure with ``throw=False``) are ``nan``.
        stats: ``num_steps`` (attempted), ``num_accepted``, ``num_rejected``, ``nfe``
            (evaluations of ``f``), as ``int32`` arrays. With a terminal event and the default
            ``"backsolve"`` adjoint the solve runs twice (to locate the event with gradients
            stopped, then to it): the step counts are the first run's, ``nfe`` counts both.
        status: ``int32`` code; ``Status(int(sol.status))`` names it.
        t_final: the time the solve reached (``t1`` on success, the event time after a
            terminal event).
        interpolation: dense output when solved with ``dense=True``, else ``None``.
        event_time: with ``event=``: the time of the latest event (``nan`` if none fired).
        event_index: with ``event=``: which condition fired last (its position among the
            leaves of the event function's output; ``-1`` if none).
        event_state: with ``event=``: the state at the latest event, before any reset (``nan``
            if none).
        num_events: with ``event=``: how many events fired.
        dt_next: the step size the controller proposed before the last step was shortened to
            land on ``t1``: a good ``dt0`` to continue the solve with (not differentiated).
    """

    ts: Array
    zs: object
    stats: dict[str, Array]
    status: Array
    t_final: Array
    interpolation: DenseInterpolation | None = None
    event_time: Array | None = None
    event_index: Array | None = None
    event_state: object | None = None
    num_events: Array | None = None
    dt_next: Array | None = None

    @property
    def result(self) -> Status:
        """The status as a :class:`Status` (only outside ``jit``: it reads a concrete value)."""
        return Status(int(self.status))

    @property
    def succeeded(self) -> Array:
        """True where the solve reached ``t1`` or stopped at a terminal event."""
        return (self.status == Status.SUCCESS) | (self.status == Status.EVENT)

    def evaluate(self, t) -> object:
        """Dense output at time(s) ``t``; needs ``solve(..., dense=True)``."""
        if self.interpolation is None:
            raise ValueError("Solution.evaluate needs a solve with dense=True.")
        return self.interpolation.evaluate(t)
