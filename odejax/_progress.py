"""A tqdm progress bar of ``t`` over ``[t0, t1]``, fed by a host callback every few hundred steps.

Only traced when ``progress=True``; the solve loop carries no extra work otherwise. Each
callback passes one of the solve's own values through (so it is never dead code) and is called
once per event even under ``jax.vmap``: a batch of solves shares one bar, showing the fraction of
their summed time spans done and how many members have finished.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

__all__ = ["PROGRESS_EVERY", "progress_close", "progress_open", "progress_update"]

PROGRESS_EVERY = 200
_BARS: dict[int, tuple] = {}


def _open(key, t0, t1):
    from tqdm.auto import tqdm

    t0, t1 = np.ravel(t0).astype(float), np.ravel(t1).astype(float)
    if t0.size == 1:
        bar = tqdm(total=abs(t1[0] - t0[0]), unit="t", desc="odejax solve", leave=True)
        bar.set_postfix_str(f"t={t0[0]:.4g}")
    else:  # a batch: the fraction of the members' summed time spans
        bar = tqdm(total=1.0, desc=f"odejax solve ({t0.size} members)", leave=True)
    _BARS[int(np.ravel(key)[0])] = (bar, t0, t1)


def _update(key, t, steps, done=None):
    entry = _BARS.get(int(np.ravel(key)[0]))
    if entry is None:
        return
    bar, t0, t1 = entry
    t, steps = np.ravel(t).astype(float), np.ravel(steps)
    if t0.size == 1:
        bar.n = min(abs(t[0] - t0[0]), bar.total)
        bar.set_postfix_str(f"t={t[0]:.4g} steps={int(steps[0])}")
    else:
        span = np.sum(np.abs(t1 - t0))
        bar.n = float(np.sum(np.abs(t - t0)) / span) if span > 0 else 1.0
        finished = int(np.sum(np.ravel(done))) if done is not None else 0
        bar.set_postfix_str(f"done={finished}/{t0.size} max steps={int(np.max(steps))}")
    bar.refresh()


def _close(key, t, steps):
    _update(key, t, steps, np.ones(np.size(t), bool))
    entry = _BARS.pop(int(np.ravel(key)[0]), None)
    if entry is not None:
        entry[0].close()


def _tap(host_fn, x, *info):
    """``x`` unchanged; ``host_fn(*info)`` runs on the host when ``x`` is computed, once with
    batched arrays under ``jax.vmap``. Tangents of ``x`` pass straight through."""

    @jax.custom_jvp
    def tap(x, info):
        def callback(x, *info):
            host_fn(*info)
            return x

        struct = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
        return jax.pure_callback(callback, struct, x, *info, vmap_method="broadcast_all")

    @tap.defjvp
    def _(primals, tangents):
        return tap(*primals), tangents[0]

    return tap(x, info)


@custom_vmap
def _due(num_steps, running):
    """Whether to update the bar now: one unbatched boolean, so the ``cond`` around the
    callback stays a ``cond`` under ``jax.vmap``."""
    return running & (num_steps % PROGRESS_EVERY == 0)


@_due.def_vmap
def _due_vmap(axis_size, in_batched, num_steps, running):
    # The most steps among the running members: it grows by one per iteration of the batched
    # loop, so the bar is updated about every PROGRESS_EVERY iterations.
    if not in_batched[0]:
        num_steps = jnp.broadcast_to(num_steps, (axis_size,))
    if not in_batched[1]:
        running = jnp.broadcast_to(running, (axis_size,))
    most = jnp.max(jnp.where(running, num_steps, -1))
    return (most >= 0) & (most % PROGRESS_EVERY == 0), False


_counter = iter(range(1, 1 << 62))


def progress_open(t0, t1):
    """Open a bar; returns ``(key, t0)`` with ``t0`` tied to the callback (use it)."""
    key = next(_counter)
    return key, _tap(_open, t0, np.int64(key), t0, t1)


def progress_update(key: int, t, num_steps, running):
    """``t`` unchanged; the bar shows it every ``PROGRESS_EVERY`` steps."""
    return lax.cond(
        _due(num_steps, running),
        lambda t: _tap(_update, t, np.int64(key), t, num_steps, ~running),
        lambda t: t,
        t,
    )


def progress_close(key: int, x, t, num_steps):
    """``x`` unchanged (give the solve's main output); closes the bar at ``t``."""
    return _tap(_close, x, np.int64(key), t, num_steps)
