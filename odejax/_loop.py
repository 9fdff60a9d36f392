"""A bounded, reverse-differentiable ``while`` loop with sublinear memory.

``lax.while_loop`` cannot be differentiated in reverse mode, and a plain ``lax.scan`` over
``max_iters`` iterations stores every iteration's residuals. Here the iterations are split into
``checkpoints`` chunks of ``ceil(max_iters / checkpoints)``; each chunk is a ``jax.checkpoint``-ed
scan, so reverse mode stores one carry per chunk and recomputes one chunk at a time: memory
``O(checkpoints + max_iters / checkpoints)`` carries, ``O(sqrt(max_iters))`` by default, for one
extra forward pass. Iterations after ``cond`` turns false are skipped with ``lax.cond``, and so
are whole chunks, so a loop that finishes early costs little more than its useful iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import jax
from jax import lax

__all__ = ["checkpointed_while"]

C = TypeVar("C")


def checkpointed_while(
    cond: Callable[[C], jax.Array],
    body: Callable[[C], C],
    init: C,
    max_iters: int,
    checkpoints: int | None = None,
) -> C:
    """``while cond(c): c = body(c)`` for at most ``max_iters`` iterations, differentiably.

    Args:
        cond: loop predicate (a scalar boolean).
        body: one iteration.
        init: initial carry.
        max_iters: the most iterations that may run.
        checkpoints: number of stored carries (chunks); default ``ceil(sqrt(max_iters))``.
    """
    n_outer = checkpoints if checkpoints is not None else math.isqrt(max(max_iters - 1, 0)) + 1
    n_outer = max(1, min(int(n_outer), max_iters))
    n_inner = -(-max_iters // n_outer)

    def guarded(c):
        return lax.cond(cond(c), body, lambda c: c, c)

    @jax.checkpoint
    def chunk(c):
        c, _ = lax.scan(lambda c, _: (guarded(c), None), c, None, length=n_inner)
        return c

    def outer(c, _):
        return lax.cond(cond(c), chunk, lambda c: c, c), None

    out, _ = lax.scan(outer, init, None, length=n_outer)
    return out
