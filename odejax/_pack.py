"""Shaping the compiled program for XLA:CPU's runtime: packed scalars, and one funnel for inputs.

Two facts about how XLA:CPU runs a program decide the cost of a small solve as much as its
arithmetic does:

* Each array in a loop's carry is a buffer of its own, written by a kernel of its own. A step's
  bookkeeping (time, step size, error memory, counters, status) would be a dozen tiny kernels per
  step. :class:`Scalars` packs a carry's scalars into one vector per dtype; unpacking is slicing,
  which fuses into the consumers.
* Outside loops, kernels run as a dependency graph. Whenever more than eight kernels are ready
  at once, half of them are handed to a thread pool, and the solve then pays for waking threads
  and for handing its result back: on two cores this cost more than the solve's own arithmetic
  (Van der Pol with 101 saves: 0.28 → 0.41 ms, measured on ``jax.experimental.ode``'s own
  program by adding two independent reductions). Every kernel that reads only the program's
  inputs is ready at once, so :func:`funnel` routes the solve's scalar inputs through a single
  kernel: what derives from them waits for it instead of joining the first wave.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Scalars", "funnel", "packed_while", "zeros_after"]


class Scalars:
    """A pytree with its scalars packed into one vector per dtype (dtypes with one scalar, and
    arrays, stay as they are)."""

    def __init__(self, example):
        leaves, self.treedef = jax.tree.flatten(example)
        groups: dict[Any, list[int]] = {}
        for i, x in enumerate(leaves):
            if jnp.ndim(x) == 0 and not jax.dtypes.issubdtype(
                jnp.result_type(x), jax.dtypes.extended
            ):
                groups.setdefault(jnp.result_type(x), []).append(i)
        self.groups = [(d, tuple(ix)) for d, ix in groups.items() if len(ix) > 1]
        self.packed = {i for _, ix in self.groups for i in ix}
        self.num_leaves = len(leaves)

    def pack(self, tree) -> tuple[list, list]:
        leaves = jax.tree.leaves(tree)
        rest = [x for i, x in enumerate(leaves) if i not in self.packed]
        vecs = [
            jnp.stack([lax.convert_element_type(leaves[i], d) for i in ix]) for d, ix in self.groups
        ]
        return rest, vecs

    def unpack(self, packed: tuple[list, list], batched: bool = False):
        """The tree back from :meth:`pack`'s output. ``batched``: the arrays (NumPy ones, on
        the host, say) have leading batch axes, so each scalar is read off the last axis."""
        rest, vecs = packed
        leaves = [None] * self.num_leaves
        for (_, ix), v in zip(self.groups, vecs):
            for j, i in enumerate(ix):
                leaves[i] = v[..., j] if batched else v[j]
        rest = iter(rest)
        leaves = [next(rest) if i not in self.packed else x for i, x in enumerate(leaves)]
        return jax.tree.unflatten(self.treedef, leaves)


def packed_while(cond, body, init):
    """``lax.while_loop`` with the carry's scalars packed (:class:`Scalars`)."""
    packing = Scalars(init)
    out = lax.while_loop(
        lambda p: cond(packing.unpack(p)),
        lambda p: packing.pack(body(packing.unpack(p))),
        packing.pack(init),
    )
    return packing.unpack(out)


def funnel(*scalars):
    """The same scalars (one dtype), computed by one kernel that everything using them waits for.

    The optimisation barrier keeps XLA from slicing the stacked vector back into its sources,
    which would give each user a kernel that reads the program's inputs directly.
    Differentiable and batchable like the identity.
    """
    v = lax.optimization_barrier(jnp.stack(scalars))
    return tuple(v[i] for i in range(len(scalars)))


def zeros_after(anchor, shape, dtype):
    """Zeros of ``shape`` and ``dtype`` computed from ``anchor`` (a float array that broadcasts
    to ``shape``, a scalar say): a kernel that waits for ``anchor`` rather than one more reading
    nothing (which XLA:CPU would start with the program's first wave, see above). Not
    differentiated (the zeros are constant)."""
    a = lax.stop_gradient(anchor)
    zero = jnp.abs(jnp.where(jnp.isfinite(a), a, 0)) * 0
    return jnp.broadcast_to(lax.convert_element_type(zero, dtype), shape)
