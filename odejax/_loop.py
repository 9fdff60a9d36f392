"""A bounded, reverse-differentiable ``while`` loop with sublinear memory.

``lax.while_loop`` cannot be differentiated in reverse mode, and a plain ``lax.scan`` over
``max_iters`` iterations stores every iteration's residuals. Here the iterations are split into
``ceil(sqrt(max_iters))`` chunks; each chunk is a ``jax.checkpoint``-ed loop, so reverse mode
stores one carry per chunk and recomputes one chunk at a time. A chunk longer than ``LEAF``
iterations is split the same way again (into about ``sqrt`` of its length sub-chunks, each
checkpointed), down to chunks of at most ``LEAF`` iterations, whose residuals are the only ones
stored in full. An explicit ``checkpoints=k`` instead makes ``k`` chunks, each a plain scan
whose residuals are stored in full (``k=1``: plain reverse mode through every iteration).

Every iteration after ``cond`` turns false is skipped with ``lax.cond``, and so is every chunk
and sub-chunk that starts after it: a skipped chunk costs one stored carry, and only the last
leaf holds unused iterations. The reverse pass of a loop that stops early therefore costs about
its useful iterations plus at most ``LEAF`` more, whatever ``max_iters`` is; the price is one
extra forward recomputation per level of nesting (two levels below the top for
``max_iters`` of a few thousand). Memory: ``O(checkpoints + sqrt(max_iters / checkpoints))``
carries plus ``LEAF`` iterations' residuals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import jax
from jax import lax

__all__ = ["SAVED", "checkpointed_while"]

C = TypeVar("C")

LEAF = 8  # the longest chunk run as a plain scan (its residuals stored)

# Values marked with ``jax.ad_checkpoint.checkpoint_name(x, SAVED)`` in ``body`` are stored by
# every checkpointed chunk, not recomputed. An adaptive solver marks its scaled error: it is a
# difference of nearly equal numbers, so a recomputation compiled differently (the chunk run
# again inside a second-order program) can round it differently in its last digits, pick a
# slightly different step size, and linearise the steps at another point than the forward
# pass took; second derivatives then come out wrong (1e-4 relative, asymmetric Hessians).
# Storing it costs one scalar per iteration.
SAVED = "odejax_saved"


_POLICY = jax.checkpoint_policies.save_only_these_names(SAVED)


def _split(n: int) -> tuple[int, int]:
    """``(chunks, chunk length)`` for ``n`` iterations: about ``sqrt(n)`` of each."""
    k = math.isqrt(max(n - 1, 0)) + 1
    return k, -(-n // k)


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
        checkpoints: if given, the number of checkpointed chunks, each run as a plain scan
            that stores its iterations' residuals (memory ``checkpoints`` carries plus
            ``max_iters / checkpoints`` iterations); default: nested chunks as described above.
    """

    def guarded(c):
        return lax.cond(cond(c), body, lambda c: c, c)

    def leaf(c, n: int):
        c, _ = lax.scan(lambda c, _: (guarded(c), None), c, None, length=n)
        return c

    def run(c, n: int, chunks: int | None = None):
        """At most ``n`` guarded iterations: nested checkpointed chunks, or ``chunks`` leaves."""
        if chunks is None and n <= LEAF:
            return leaf(c, n)
        if chunks is None:
            chunks, size = _split(n)
            chunk = jax.checkpoint(lambda c: run(c, size), policy=_POLICY)
        else:
            chunks = max(1, min(int(chunks), n))
            size = -(-n // chunks)
            chunk = jax.checkpoint(lambda c: leaf(c, size), policy=_POLICY)

        def outer(c, _):
            return lax.cond(cond(c), chunk, lambda c: c, c), None

        c, _ = lax.scan(outer, c, None, length=chunks)
        return c

    return run(init, max_iters, checkpoints)
