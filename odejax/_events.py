"""Events: stop or jump where a function of the state crosses zero, with a differentiable time.

``solve(..., event=Event(fn, ...))`` watches ``g = fn(z, t, args)`` (a scalar, or a pytree of
scalars for several conditions). After every accepted step the loop compares the signs of ``g``
at the step's two ends; a condition that crossed zero in its ``direction`` is located by root
finding on the step's own dense interpolant ``θ ↦ g(z(θ), t + θh)`` (the step is never cut and
retried): a bracketing Illinois (modified regula falsi) iteration with a bisection fallback,
bounded, to a few ulps of ``t``. With several conditions the earliest crossing wins.

**The event time is differentiable.** The root finder runs on stopped gradients; the located
``θ*`` is then refined by one Newton step on the interpolant,

.. math::

    t^* = t + (θ^* + δ) h, \\qquad δ = -\\frac{g(z(θ^*), t + θ^* h)}{\\mathrm{sg}[\\,dg/dθ\\,]},
    \\qquad z^* = z(θ^*) + \\mathrm{sg}[\\,dz/dθ\\,]\\, δ ,

(``sg`` = stop-gradient). Its value moves by a rounding-level ``δ``; its derivative with respect
to anything upstream (``z0``, ``args``, parameters of ``f`` or of ``fn``) is exactly the implicit
function theorem's ``dt*/dp = -(∂g/∂p)/(dg/dt)``, and ``z*`` picks up ``f · dt*/dp`` on top of its
derivative at fixed time. Reverse mode through ``adjoint="checkpoint"`` and forward mode through
``adjoint="forward"`` differentiate it directly. ``adjoint="backsolve"`` handles a terminal event
by a second solve to the (stopped-gradient) event time, differentiated by backsolve, followed by
the same Newton step; resets need ``"checkpoint"`` or ``"forward"``.

A condition that is exactly zero at the start of a step does not fire in that step; after a
reset, the condition that fired counts as zero, so it fires again only after it has changed sign.
Two crossings of one condition within a single step cancel out and are missed, as in every
step-end sign test; keep ``dtmax`` below the shortest time between crossings if that matters.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.flatten_util import ravel_pytree

__all__ = ["Event", "check_event", "crossings", "find_root", "stop_grad"]


class Event(eqx.Module):
    """A zero crossing to stop at, or to jump at (``solve(..., event=Event(...))``).

    Attributes:
        fn: ``fn(z, t, args)`` returning a scalar, or a pytree of scalars (one condition each).
            May be an ``equinox.Module`` holding parameters (they get gradients).
        direction: ``None`` (either way), ``+1`` (upward: negative to non-negative), ``-1``
            (downward), or a tuple with one of those per condition (in leaf order).
        terminal: stop the solve at the first event (status ``EVENT``). Ignored when ``reset``
            is given.
        reset: optional ``reset(z, t, args) -> z_new``: apply a jump at each event and continue
            (returns a state with ``z``'s structure, shapes and dtypes).
        max_events: with ``reset`` (or ``terminal=False``), the most events allowed; one more
            ends the solve with status ``MAX_EVENTS_REACHED`` (raised with ``throw=True``).
    """

    fn: Callable
    direction: int | tuple | None = eqx.field(static=True, default=None)
    terminal: bool = eqx.field(static=True, default=True)
    reset: Callable | None = None
    max_events: int = eqx.field(static=True, default=100)

    def __check_init__(self):
        if not callable(self.fn):
            raise TypeError(f"event: Event.fn must be callable, got {type(self.fn).__name__}.")
        if self.reset is not None and not callable(self.reset):
            raise TypeError("event: Event.reset must be callable or None.")
        dirs = self.direction if isinstance(self.direction, tuple) else (self.direction,)
        for d in dirs:
            if d not in (None, 1, -1, 0):
                raise ValueError(
                    f"event: Event.direction must be None, +1 or -1 (or a tuple of them), got"
                    f" {self.direction!r}."
                )
        if not isinstance(self.max_events, int) or self.max_events < 1:
            raise ValueError(f"event: max_events must be a positive int, got {self.max_events!r}.")

    @property
    def stops(self) -> bool:
        """Does the first event end the solve?"""
        return self.terminal and self.reset is None

    @property
    def jumps(self) -> bool:
        """Does an event restart the solve from a new state at the event time?"""
        return self.reset is not None


def check_event(event, z0, t0, args) -> int:
    """Trace-time checks of an :class:`Event` against ``z0``; returns its number of conditions."""
    if not isinstance(event, Event):
        raise TypeError(f"event must be an odejax.Event, got {type(event).__name__}.")
    try:
        out = jax.eval_shape(lambda: event.fn(z0, t0, args))
    except Exception as e:
        raise ValueError(f"event: calling Event.fn(z, t, args) failed: {e}") from e
    leaves = jax.tree.leaves(out)
    if not leaves:
        raise ValueError("event: Event.fn(z, t, args) must return a scalar or a pytree of scalars.")
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.number):
            raise ValueError(
                "event: Event.fn(z, t, args) must return a real scalar (or a pytree of real"
                f" scalars, one per condition); got {jax.tree.map(_describe, out)}."
            )
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError("event: Event.fn must return real scalars, not complex ones.")
    m = len(leaves)
    if isinstance(event.direction, tuple) and len(event.direction) != m:
        raise ValueError(
            f"event: Event.direction has {len(event.direction)} entries but Event.fn returns"
            f" {m} condition(s)."
        )
    if event.reset is not None:
        try:
            new = jax.eval_shape(lambda: event.reset(z0, t0, args))
        except Exception as e:
            raise ValueError(f"event: calling Event.reset(z, t, args) failed: {e}") from e
        want = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), z0)
        same = jax.tree.structure(new) == jax.tree.structure(want) and all(
            a.shape == b.shape and a.dtype == b.dtype
            for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want))
        )
        if not same:
            raise ValueError(
                "event: Event.reset(z, t, args) must return a state with the structure, shapes"
                f" and dtypes of z0; got\n  reset returned: {jax.tree.map(_describe, new)}\n"
                f"  z0 is:          {jax.tree.map(_describe, want)}"
            )
    return m


def _describe(x) -> str:
    return f"{x.dtype}{list(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def directions(event: Event, m: int) -> tuple[int, ...]:
    d = event.direction
    d = d if isinstance(d, tuple) else (d,) * m
    return tuple(0 if x is None else int(x) for x in d)


def condition_vector(event: Event, unravel, args, dtype):
    """``g(z_flat, t) -> (m,)``: the event conditions on the flat state."""

    def g(z_flat, t):
        out = event.fn(unravel(z_flat), t, args)
        return ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, dtype), out))[0]

    return g


def crossings(g0: Array, g1: Array, dirs: tuple[int, ...]) -> Array:
    """Which conditions crossed zero between the step ends, in their direction."""
    up = (g0 < 0) & (g1 >= 0)
    down = (g0 > 0) & (g1 <= 0)
    d = jnp.asarray(dirs)
    return jnp.where(d > 0, up, jnp.where(d < 0, down, up | down))


def stop_grad(tree):
    """``lax.stop_gradient`` on the inexact arrays of a pytree (other leaves pass through)."""
    return jax.tree.map(lambda x: lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)


def find_root(h, lo, hi, h_lo, h_hi, xtol, max_iters: int = 100):
    """A root of ``h`` in ``[lo, hi]`` (``h_lo``, ``h_hi`` of opposite signs, or one zero).

    Illinois iteration (regula falsi that halves the stale end's value) with a bisection step
    whenever an iteration shrank the bracket by less than half: superlinear on smooth ``h``,
    never slower than bisection. Stops when the bracket is below ``xtol`` or ``h`` is exactly
    zero, after at most ``max_iters`` evaluations. Returns the end of the final bracket on the
    far side of the crossing (``hi`` side), i.e. a point where the condition has crossed.
    """
    dtype = lo.dtype

    def cond(c):
        *_, it, done = c
        return ~done & (it < max_iters)

    def body(c):
        a, b, fa, fb, side, bisect, it, _ = c
        denom = fb - fa
        x_rf = jnp.where(denom != 0, (a * fb - b * fa) / jnp.where(denom != 0, denom, 1), a)
        mid = 0.5 * (a + b)
        x = jnp.where(bisect | ~(x_rf > a) | ~(x_rf < b), mid, x_rf)
        fx = h(x)
        same_b = jnp.sign(fx) == jnp.sign(fb)
        width = b - a
        # fx on hi's side: the bracket becomes [a, x]; else [x, b]. Illinois: halve the end
        # that stays put twice in a row.
        a_new = jnp.where(same_b, a, x)
        b_new = jnp.where(same_b, x, b)
        fa_new = jnp.where(same_b, jnp.where(side == 1, 0.5 * fa, fa), fx)
        fb_new = jnp.where(same_b, fx, jnp.where(side == -1, 0.5 * fb, fb))
        side_new = jnp.where(same_b, 1, -1).astype(jnp.int32)
        exact = fx == 0
        a_new = jnp.where(exact, x, a_new)
        b_new = jnp.where(exact, x, b_new)
        done = exact | (b_new - a_new <= xtol)
        bisect_next = (b_new - a_new) > 0.5 * width
        return a_new, b_new, fa_new, fb_new, side_new, bisect_next, it + 1, done

    init = (
        lo,
        hi,
        h_lo,
        h_hi,
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), jnp.int32),
        (hi - lo <= xtol) | (h_hi == 0),
    )
    a, b, *_ = lax.while_loop(cond, body, init)
    del a
    return b.astype(dtype)
