"""The checkpoint adjoint's reverse-mode rule: exact gradients of the steps, sublinear memory.

``lax.while_loop`` cannot be differentiated in reverse mode, and storing every step's
intermediates costs memory proportional to ``max_steps``. :func:`solve_loop` runs the
integration loop (:func:`run_loop`: a scan over the save times, each a ``while`` loop of steps;
:mod:`odejax._integrate` runs plain solves with it too) under a ``jax.custom_vjp`` of its own:

* **forward pass**: the plain loop, which also stores its carry every ``spans[0]`` steps
  (``spans`` from :func:`spans`), and keeps the carries of its last ``w`` steps in a ring. A
  stored carry leaves out what a step overwrites without reading (``keep``; the solver's
  record of its last step's stages, most of the carry);
* **backward pass**: back over those stretches, last first. Each is run forward again from its
  stored carry, storing at most ``w`` carries of it (every ``ceil(length / w)`` steps, so a short
  stretch is stored step by step at once), and so on down to single steps. A step is then
  differentiated on its own with ``jax.vjp``, so its intermediates exist only while that step
  is reversed.

With ``L`` levels of at most ``w`` stored carries each (``w ** L >= max_steps``), memory is about
``L * w`` carries plus one step's intermediates, and the backward pass costs, per step taken,
at most ``L - 1`` forward recomputations and one vector-Jacobian product. Every loop runs over
the steps actually taken, never over ``max_steps``; a solve of at most ``w`` steps (a neural
ODE's usual few) is reversed straight from the ring, recomputing nothing.

Every loop here carries its scalars packed, one vector per dtype (:mod:`odejax._pack`): on XLA:CPU
each carried array is a buffer written by a kernel of its own.

The saved states never ride in a stored carry: the cotangent of save ``k`` is applied to the
state just after the step that passed ``ts[k]`` (read off that step's interpolant), found again
in the backward pass by walking the save times down alongside the steps. Buffers that a step
writes (each slot at most once, e.g. the dense output's nodes) are outputs too: the cotangent of
a write ``(index, value)`` is the buffer's cotangent at ``index``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from ._guard import forward_only
from ._pack import Scalars, packed_while, zeros_after

__all__ = ["WIDTH", "LoopFns", "run_loop", "solve_loop", "spans", "write_buffers"]

SECOND_ORDER = (
    "Reverse-over-reverse derivatives (jax.grad or jax.jacrev of a gradient) through"
    " CheckpointAdjoint() are not supported: its backward pass is a while loop. Take second"
    " derivatives forward over reverse (jax.hessian, jax.jacfwd(jax.grad(loss))), or pass"
    " adjoint=odejax.CheckpointAdjoint(higher_order=True), which differentiates the solver's"
    " loop with JAX's own autodiff."
)

WIDTH = 24  # the most carries stored per level
READ_CHUNK = 8  # the most saves reversed in one vectorised read


def spans(n: int, checkpoints: int | None = None) -> tuple[int, ...]:
    """Steps between stored carries at each level of the backward pass, down to 1.

    By default ``L`` levels of ``w = ceil(n ** (1 / L))`` carries each, ``L`` the fewest with
    ``w <= WIDTH``. ``checkpoints`` fixes the number of carries the forward pass stores (the
    top level); the levels below are chosen as by default.

    >>> spans(4096), spans(1000, checkpoints=10), spans(1)
    ((256, 16, 1), (100, 10, 1), (1,))
    """
    n = max(int(n), 1)
    if checkpoints is not None:
        top = -(-n // max(1, min(int(checkpoints), n)))
        return (top, *spans(top)) if top > 1 else (1,)
    levels = 1
    while _root(n, levels) > WIDTH:
        levels += 1
    w = _root(n, levels)
    return tuple(w**k for k in range(levels - 1, -1, -1))


def _root(n: int, k: int) -> int:
    """The least ``w`` with ``w ** k >= n``."""
    w = max(1, round(n ** (1 / k)))
    while w**k < n:
        w += 1
    while w > 1 and (w - 1) ** k >= n:
        w -= 1
    return w


def write_buffers(buffers: tuple, writes: tuple) -> tuple:
    """``buffers[k].at[i].set(v)`` for each ``writes[k] = (i, v)``; an index out of range
    (``i >= len(buffers[k])``) writes nothing."""
    return tuple(b.at[i].set(v.astype(b.dtype), mode="drop") for b, (i, v) in zip(buffers, writes))


class LoopFns(NamedTuple):
    """The loop's pieces.

    ``step(c) -> (c, writes)`` attempts one step; ``running(c)`` is false once the solve has
    ended; ``before(c, ti)`` is true while the state has not yet reached save time ``ti``;
    ``read(c, ti)`` reads the state at ``ti`` off the step that just passed it.
    """

    step: Any
    running: Any
    before: Any = None
    read: Any = None


class _Reverse(NamedTuple):
    """Carry of the backward pass."""

    c_bar: Any  # cotangent of the carry (None at its integer leaves)
    step_bar: Any  # cotangents of the arrays ``step`` closes over
    read_bar: Any  # ... and of those ``read`` closes over
    ts_bar: Array  # cotangent of the save times
    pending: Array  # saves not yet reversed: ts[:pending]


def solve_loop(
    step, running, before, read, init, buffers, ts, t_end, max_steps, checkpoints, keep=None
):
    """Run the integration loop with the checkpoint adjoint's reverse-mode rule.

    Args:
        step, running, before, read: see :class:`LoopFns` (``before``/``read`` unused when
            ``ts`` is ``None``).
        init: the initial carry (a pytree of arrays).
        buffers: arrays that ``step`` writes into (their initial values get no gradient).
        ts: save times, shape ``(num_save,)``, or ``None`` (only the final carry is wanted).
        t_end: the end time; stepping continues towards it after the last save time.
        max_steps: the most steps the loop may take.
        checkpoints: carries stored by the forward pass (default: see :func:`spans`).
        keep: a pytree of bools like ``init`` (default: all true): false at the leaves that
            ``step`` overwrites without reading them (a record of the last step, say). Those
            are left out of every stored carry; a carry restored from the store holds
            ``init``'s values there.

    Returns:
        ``(final carry, zs, buffers)``: ``zs`` of shape ``(num_save, ...)`` (``None`` without
        ``ts``). Differentiable in reverse mode (first derivatives) with respect to ``init``'s
        inexact leaves, ``ts`` and every array the functions close over.
    """
    # Every array the functions close over (integers too) becomes an input of the rule.
    fns = LoopFns(eqx.filter_closure_convert(step, init), eqx.filter_closure_convert(running, init))
    if ts is not None:
        fns = fns._replace(
            before=eqx.filter_closure_convert(before, init, ts[0]),
            read=eqx.filter_closure_convert(read, init, ts[0]),
        )
    else:
        ts = jnp.zeros((0,), t_end.dtype)
    dyn, static = eqx.partition(fns, eqx.is_array)
    plan = spans(max_steps, checkpoints)
    num_leaves = len(jax.tree.leaves(init))
    mask = (True,) * num_leaves if keep is None else tuple(bool(k) for k in jax.tree.leaves(keep))
    if len(mask) != num_leaves or not any(mask):
        raise ValueError("solve_loop: keep must be a pytree of bools like init, not all false.")
    return _loop(static, (plan, mask), int(max_steps), init, buffers, ts, t_end, dyn)


class _Rows:
    """Stored carries as a few 2-D arrays, one per dtype: row ``j`` is one carry, raveled (the
    backward pass also sums the weights' cotangents in a one-row store, :meth:`accumulate`).

    One array per dtype (not one per leaf) keeps a store to a couple of buffers, written with
    one update per dtype. Only the leaves marked in ``mask`` are stored; :meth:`get` takes the
    others from ``scratch`` (by default ``example``'s own).
    """

    def __init__(self, example, mask: tuple[bool, ...], scratch: tuple | None = None):
        leaves, self.treedef = jax.tree.flatten(example)
        self.mask = mask
        self.scratch = (
            tuple(x for x, k in zip(leaves, mask) if not k) if scratch is None else scratch
        )
        kept = [x for x, k in zip(leaves, mask) if k]
        self.shapes = [jnp.shape(x) for x in kept]
        self.dtypes = [jnp.result_type(x) for x in kept]
        self.groups = sorted({d.name: d for d in self.dtypes}.values(), key=lambda d: d.name)

    def _pack(self, c) -> list:
        leaves = [x for x, k in zip(jax.tree.leaves(c), self.mask) if k]
        return [
            jnp.concatenate([jnp.ravel(x) for x, d in zip(leaves, self.dtypes) if d == g])
            for g in self.groups
        ]

    def empty(self, rows: int, fill=None, anchor=None) -> list:
        """``rows`` rows (all ``fill``'s carry, or zeros: computed from ``anchor`` when given,
        see :func:`odejax._pack.zeros_after`)."""
        if fill is not None:
            return [jnp.broadcast_to(v, (rows, v.shape[0])) for v in self._pack(fill)]
        sizes = [
            sum(int(np.prod(s)) for s, d in zip(self.shapes, self.dtypes) if d == g)
            for g in self.groups
        ]
        if anchor is None:
            return [jnp.zeros((rows, n), g) for n, g in zip(sizes, self.groups)]
        return [zeros_after(anchor, (rows, n), g) for n, g in zip(sizes, self.groups)]

    def put(self, store: list, j, c) -> list:
        return [a.at[j].set(v) for a, v in zip(store, self._pack(c))]

    def accumulate(self, store: list, c) -> list:
        """``c`` added to every row (to the one row of an accumulator)."""
        return [a + v for a, v in zip(store, self._pack(c))]

    def get(self, store: list, j):
        rows = [a[j] for a in store]
        offsets = [0] * len(self.groups)
        kept = []
        for shape, d in zip(self.shapes, self.dtypes):
            g = self.groups.index(d)
            n = int(np.prod(shape))
            kept.append(rows[g][offsets[g] : offsets[g] + n].reshape(shape))
            offsets[g] += n
        kept, scratch = iter(kept), iter(self.scratch)
        return jax.tree.unflatten(self.treedef, [next(kept if k else scratch) for k in self.mask])


def run_loop(fns: LoopFns, ts, t_end, init, buffers: tuple, guard=None):
    """The solve loop, plain (no gradient rule): ``(final carry, zs, buffers)``.

    A ``lax.scan`` over the save times ``ts`` (``None``: none), each running a ``while_loop`` of
    ``fns.step`` until ``fns.before`` turns false, then ``fns.read``; the same loop is the
    forward pass of :func:`solve_loop`'s rule. ``guard(packing, packed, zs) -> (packed, zs)``
    (optional) sees the loop's output as it leaves the loop, its scalars still packed
    (``packing.unpack(packed)`` is ``(carry, buffers)``): a check of the result there reads no
    scalar apart (see :func:`odejax._checks.raise_if_failed`).
    """
    if ts is None:
        ts = jnp.zeros((0,), t_end.dtype)
    (c, bufs, _, _), zs = _forward(fns, ts, t_end, init, buffers, None, 1, guard=guard)
    return c, zs, bufs


def _forward(fns: LoopFns, ts, t_end, init, buffers, store, span, rows=None, guard=None):
    """The loop itself. With ``store = (snaps, ring)`` it also counts its steps and stores the
    carry before steps ``0, span, 2 span, ...`` in ``snaps`` and before each of the last
    ``len(ring)`` steps in ``ring`` (step ``n`` in row ``n % len(ring)``). Its carry's scalars
    ride packed (:class:`odejax._pack.Scalars`); ``guard`` as in :func:`run_loop`."""

    def one_step(s):
        c, bufs, store, n = s
        if store is not None:  # slot ceil(n / span) ends up holding the carry before its step
            snaps, ring = store
            snaps = rows.put(snaps, (n + span - 1) // span, c)
            if ring is not None:
                ring = rows.put(ring, n % ring[0].shape[0], c)
            store, n = (snaps, ring), n + 1
        c, writes = fns.step(c)
        return c, write_buffers(bufs, writes), store, n

    n0 = jnp.zeros((), jnp.int32) if store is not None else None  # the count only when storing
    s = (init, buffers, store, n0)
    # The scan and the step loops inside it share one packing: no unpacking between them.
    packing = Scalars(s)

    def packed_step(p):
        return packing.pack(one_step(packing.unpack(p)))

    def running(p):
        return fns.running(packing.unpack(p)[0])

    if fns.read is None:
        p, zs = lax.while_loop(running, packed_step, packing.pack(s)), None
    else:

        def save_one(p, ti):
            def keep(p):
                c = packing.unpack(p)[0]
                return fns.running(c) & fns.before(c, ti)

            p = lax.while_loop(keep, packed_step, p)
            return p, fns.read(packing.unpack(p)[0], ti)

        # The scan ends with t_end itself (its value dropped), so the step is compiled once.
        p, zs = lax.scan(save_one, packing.pack(s), jnp.concatenate([ts, t_end[None]]))
    if guard is not None:
        p, zs = guard(packing, p, zs)
    return packing.unpack(p), None if zs is None else zs[:-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _loop(static, layout, max_steps, init, buffers, ts, t_end, dyn):
    return run_loop(eqx.combine(dyn, static), ts, t_end, init, buffers)


def _primal(tree):
    """The values inside ``jax.custom_vjp``'s primal wrappers (``symbolic_zeros=True``)."""
    is_primal = lambda x: isinstance(x, CustomVJPPrimal)  # noqa: E731
    return jax.tree.map(lambda x: x.value if is_primal(x) else x, tree, is_leaf=is_primal)


def _loop_fwd(static, layout, max_steps, init, buffers, ts, t_end, dyn):
    init, buffers, ts, t_end, dyn = _primal((init, buffers, ts, t_end, dyn))
    fns = eqx.combine(dyn, static)
    plan, mask = layout
    num = -(-max_steps // plan[0]) + 1
    rows = _Rows(init, mask)
    snaps = rows.empty(num, fill=init)  # row 0 holds the start also when no step is taken
    # The ring and the integer stores wait for a sum over the start (see odejax._pack): made
    # from the inputs, they would be ready with the other stores, in one wave.
    late = jnp.sum(next(a[0] for a in snaps if _inexact(a)))
    snaps = [a if _inexact(a) else a + zeros_after(late, (), a.dtype) for a in snaps]
    ring = rows.empty(-(-plan[0] // plan[1]), anchor=late) if len(plan) > 1 else None
    (c, bufs, (snaps, ring), total), zs = _forward(
        fns, ts, t_end, init, buffers, (snaps, ring), plan[0], rows
    )
    return (c, zs, bufs), (snaps, ring, total, ts, t_end, dyn, c, rows.scratch)


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _diff(tree):
    """The inexact (differentiable) leaves of ``tree``; ``None`` at the others."""
    return jax.tree.map(lambda x: x if _inexact(x) else None, tree)


def _merge(diff, full):
    """``full`` with its inexact leaves taken from ``diff``."""
    return jax.tree.map(
        lambda d, x: d if _inexact(x) else x, diff, full, is_leaf=lambda x: x is None
    )


def _add(acc, new):
    return jax.tree.map(jnp.add, acc, new)


def _first_float(tree, default):
    """A float scalar of ``tree`` (its first non-empty inexact leaf), else ``default``."""
    for x in jax.tree.leaves(tree):
        if _inexact(x) and jnp.size(x) > 0 and not jnp.iscomplexobj(x):
            return jnp.ravel(x)[0]
    return default


def _loop_bwd(static, layout, max_steps, res, ct):
    snaps, ring, total, ts, t_end, dyn, final, scratch = res
    plan, mask = layout
    rows = _Rows(final, mask, scratch)  # restored carries hold init's unstored leaves
    fns = eqx.combine(dyn, static)
    # Cotangents of outputs the caller does not use arrive as symbolic zeros; their buffers are
    # made here, once a cotangent that is used has arrived (see odejax._pack).
    is_zero = lambda x: isinstance(x, SymbolicZero)  # noqa: E731
    used = [x for x in jax.tree.leaves(ct, is_leaf=is_zero) if not is_zero(x)]
    anchor = _first_float(used, t_end)

    def instantiate(b):
        if not is_zero(b):
            return b
        if jnp.issubdtype(b.dtype, jnp.inexact):
            return zeros_after(anchor, b.shape, b.dtype)
        return np.zeros(b.shape, b.dtype)  # float0: the cotangent of an integer output

    c_bar, zs_bar, bufs_bar = jax.tree.map(instantiate, ct, is_leaf=is_zero)
    c_bar = jax.tree.map(lambda b, x: b.astype(x.dtype), _diff(c_bar), _diff(final))

    def accumulator(tree):
        """The cotangents of the arrays ``tree`` holds (a network's weights, say) accumulate in
        one row per dtype, not one buffer per array: one zero buffer to start from, one kernel
        per reversed step to add to (see odejax._pack)."""
        tree = _diff(tree)
        return _Rows(tree, (True,) * len(jax.tree.leaves(tree)))

    step_rows, read_rows = accumulator(dyn.step), accumulator(dyn.read)

    chunk = max(1, min(READ_CHUNK, ts.shape[0]))

    def read_back(c, passed, r: _Reverse) -> _Reverse:
        """Reverse of reading saves ``ts[k]``, ``k = pending - 1, pending - 2, ...`` (at most
        ``chunk`` of them, while ``passed(k)`` holds) off carry ``c``: cotangents onto ``c`` and
        ``ts``. The chunk is read in one vectorised call; its rows past the first ``k`` for
        which ``passed`` fails read ``ts[pending - 1]`` again, with a zero cotangent."""
        k = r.pending - 1 - jnp.arange(chunk)
        ok = (k >= 0) & jax.vmap(passed)(jnp.maximum(k, 0))
        ok = jnp.cumprod(ok.astype(jnp.int32)).astype(bool)  # a run from pending - 1 down
        k_safe = jnp.where(ok, k, r.pending - 1)

        def fn(d, ti, p):
            read = eqx.combine(_merge(p, dyn.read), static.read)
            return jax.vmap(read, in_axes=(None, 0))(_merge(d, c), ti)

        _, vjp = jax.vjp(fn, _diff(c), ts[k_safe], _diff(dyn.read))
        zk_bar = jax.tree.map(
            lambda b: jnp.where(ok.reshape((-1,) + (1,) * (b.ndim - 1)), b[k_safe], 0), zs_bar
        )
        d_bar, ti_bar, p_bar = vjp(zk_bar)
        return r._replace(
            c_bar=_add(r.c_bar, d_bar),
            read_bar=read_rows.accumulate(r.read_bar, p_bar),
            ts_bar=r.ts_bar.at[jnp.where(ok, k, ts.shape[0])].add(ti_bar, mode="drop"),
            pending=r.pending - jnp.sum(ok.astype(jnp.int32)),
        )

    def reverse_step(c, r: _Reverse) -> _Reverse:
        """Reverse of one step from carry ``c`` and of the saves read off right after it."""

        def fn(d, p):
            out, writes = eqx.combine(_merge(p, dyn.step), static.step)(_merge(d, c))
            return (_diff(out), tuple(v for _, v in writes)), (out, tuple(i for i, _ in writes))

        _, vjp, (after, idx) = jax.vjp(fn, _diff(c), _diff(dyn.step), has_aux=True)
        if fns.read is not None:  # the saves this step passed: ts[k] not yet reached at c

            def passed(k):
                return fns.before(c, ts[k])

            def more(r):
                k = r.pending - 1
                return (k >= 0) & passed(jnp.maximum(k, 0))

            r = packed_while(more, lambda r: read_back(after, passed, r), r)
        w_bar = tuple(
            jnp.where(i < b.shape[0], b[jnp.minimum(i, b.shape[0] - 1)], 0)
            for i, b in zip(idx, bufs_bar)
        )
        d_bar, p_bar = vjp((r.c_bar, w_bar))
        return r._replace(c_bar=d_bar, step_bar=step_rows.accumulate(r.step_bar, p_bar))

    def advance(c, count):
        """``count`` steps from ``c``."""
        step = lambda s: (s[0] + 1, fns.step(s[1])[0])  # noqa: E731
        return packed_while(lambda s: s[0] < count, step, (0, c))[1]

    def stretches(level, c0, i0, end):
        """Run steps ``i0 .. end - 1`` from ``c0``, storing the carry at the start of each
        stretch of ``span`` steps: ``(store, span, num)``."""
        width = -(-plan[level - 1] // plan[level])  # carries stored at this level
        # The shortest stretch that fits (at most plan[level]): a short chunk is stored step
        # by step at once, and the levels below it recompute nothing.
        span = jnp.maximum((end - i0 + width - 1) // width, 1).astype(jnp.int32)
        num = (end - i0 + span - 1) // span  # stretches of `span` steps, the last maybe shorter
        store = rows.put(rows.empty(width), 0, c0)

        def forward(s):  # every stretch but the last is whole
            j, c, store = s
            c = advance(c, span)
            return j + 1, c, rows.put(store, j, c)

        _, _, store = packed_while(lambda s: s[0] < num, forward, (1, c0, store))
        return store, span, num

    def walk_back(level, store, span, num, i0, end, r: _Reverse) -> _Reverse:
        """Reverse of the stretches in ``store``, last first."""

        def back(s):
            j, r = s
            start = i0 + j * span
            r = reverse(level + 1, rows.get(store, j), start, jnp.minimum(start + span, end), r)
            return j - 1, r

        return packed_while(lambda s: s[0] >= 0, back, (num - 1, r))[1]

    def reverse(level, c0, i0, end, r: _Reverse) -> _Reverse:
        """Reverse of steps ``i0 .. end - 1`` (at most ``plan[level - 1]``) from carry ``c0``."""
        if level == len(plan):
            return reverse_step(c0, r)
        store, span, num = stretches(level, c0, i0, end)
        return walk_back(level, store, span, num, i0, end, r)

    def top(s):
        j, r = s
        start = j * plan[0]
        stop = jnp.minimum(start + plan[0], total)
        if ring is None:
            return j - 1, reverse(1, rows.get(snaps, j), start, stop, r)
        # The forward pass kept the carries of its last steps: a last stretch short enough
        # (a whole short solve, typically) is reversed from them without recomputation.
        width = ring[0].shape[0]

        def from_ring(_):
            store = [jnp.roll(a, -(start % width), axis=0) for a in ring]
            return store, jnp.ones((), jnp.int32), (stop - start).astype(jnp.int32)

        def recompute(_):
            store, span, num = stretches(1, rows.get(snaps, j), start, stop)
            return store, span, num.astype(jnp.int32)

        short = (stop == total) & (stop - start <= width)
        store, span, num = lax.cond(short, from_ring, recompute, None)
        return j - 1, walk_back(1, store, span, num, start, stop, r)

    # The zeros below are computed from the incoming cotangent: they wait for it, rather than
    # join the first kernels of the whole program (see odejax._pack).
    pending = jnp.zeros((), jnp.int32)
    if fns.read is not None:  # the saves the solve reached
        reached = jax.vmap(lambda ti: ~fns.before(final, ti))(ts)
        pending = jnp.sum(reached.astype(jnp.int32))
    r = _Reverse(
        c_bar=c_bar,
        step_bar=step_rows.empty(1, anchor=anchor),
        read_bar=read_rows.empty(1, anchor=anchor),
        ts_bar=zeros_after(anchor, ts.shape, ts.dtype),
        pending=pending,
    )
    num = (total + plan[0] - 1) // plan[0]
    r = packed_while(lambda s: s[0] >= 0, top, (num - 1, r))[1]
    if fns.read is not None:  # saves at the start, before any step
        init = rows.get(snaps, 0)

        def every(k):  # every save still pending is at the start
            return jnp.ones((), bool)

        r = packed_while(lambda r: r.pending > 0, lambda r: read_back(init, every, r), r)
    # Zero cotangents go back as None (symbolic zeros): no buffers.
    dyn_bar = LoopFns(
        step_rows.get(r.step_bar, 0),
        jax.tree.map(lambda _: None, dyn.running),
        jax.tree.map(lambda _: None, dyn.before),
        read_rows.get(r.read_bar, 0),
    )
    bufs0_bar = tuple(None for _ in bufs_bar)
    out = (r.c_bar, bufs0_bar, r.ts_bar, None, dyn_bar)
    # Differentiating these cotangents again works forward (jvp) but not in reverse.
    return jax.tree.map(lambda x: forward_only(x, SECOND_ORDER), out)


_loop.defvjp(_loop_fwd, _loop_bwd, symbolic_zeros=True)
