"""A tqdm progress bar of ``t`` over ``[t0, t1]``, fed by a host callback every few hundred steps.

Only traced when ``progress=True``; the solve loop carries no extra work otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["PROGRESS_EVERY", "progress_close", "progress_open", "progress_update"]

PROGRESS_EVERY = 200
_BARS: dict[int, object] = {}


def _open(key, t0, t1):
    from tqdm.auto import tqdm

    t0, t1 = float(np.ravel(t0)[0]), float(np.ravel(t1)[0])
    bar = tqdm(total=abs(t1 - t0), unit="t", desc="odejax solve", leave=True)
    bar.set_postfix_str(f"t={t0:.4g}")
    _BARS[int(key)] = (bar, t0)


def _update(key, t, steps):
    entry = _BARS.get(int(key))
    if entry is None:
        return
    bar, t0 = entry
    t = float(np.ravel(t)[0])
    bar.n = min(abs(t - t0), bar.total)
    bar.set_postfix_str(f"t={t:.4g} steps={int(np.ravel(steps)[0])}")
    bar.refresh()


def _close(key, t, steps):
    _update(key, t, steps)
    entry = _BARS.pop(int(key), None)
    if entry is not None:
        entry[0].close()


_counter = iter(range(1, 1 << 62))


def progress_open(t0, t1) -> int:
    key = next(_counter)
    jax.debug.callback(_open, key, t0, t1)
    return key


def progress_update(key: int, t, num_steps) -> None:
    def cb():
        jax.debug.callback(_update, key, t, num_steps)

    lax.cond(jnp.any(num_steps % PROGRESS_EVERY == 0), cb, lambda: None)


def progress_close(key: int, t, num_steps) -> None:
    jax.debug.callback(_close, key, t, num_steps)
