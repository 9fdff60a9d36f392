"""Ensembles of solves spread over every device JAX sees: :func:`ensemble`.

The batch axis is sharded over one axis of a :class:`jax.sharding.Mesh` (by default a 1-D mesh of
all of ``jax.devices()``, every host's devices after ``jax.distributed.initialize()``), and each
device solves its own slice under ``jax.vmap`` inside ``jax.shard_map``. So every device runs its
own adaptive ``while_loop``: a device whose members are easy finishes after its own number of
steps instead of stepping (masked) until the hardest member anywhere is done, as the loop of
``jax.jit(jax.vmap(solve))`` on a sharded batch must (its loop condition is one global
``any``).

Per member, the arithmetic is that of a plain ``jax.vmap`` of :func:`odejax.odeint` over the
device's slice (or chunk): a batched loop freezes finished members with a select, so no member
sees another. Results equal a whole-batch ``vmap`` bitwise when XLA emits the same code for the
slice as for the whole batch. On the CPU its code for very small slices (1 or 2 members) and
for chunks can round differently in the last bit, and an adaptive solve can carry such a
difference into a different step-size decision: results then agree to within the solver's
tolerance (seen: 4e-14 for 4 devices, 3e-10 with ``chunk_size``, float64, rtol 1e-6).
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from . import _checks
from ._adjoint import CheckpointAdjoint, get_adjoint
from ._solve import DEFAULT_MAX_STEPS, explain_jvp_error, solve

__all__ = ["ensemble"]

_DEFAULT_AXIS = "batch"
_RESERVED = ("ts", "t0", "t1", "args")


def ensemble(
    f,
    z0s,
    ts,
    args: Any = None,
    *,
    args_axes: Any = 0,
    mesh: Mesh | None = None,
    axis_name: str | None = None,
    chunk_size: int | None = None,
    return_solution: bool = False,
    **solve_opts,
):
    """Solve a batch of initial value problems, sharded over devices, each with its own loop.

    Equivalent to ``jax.vmap(lambda z, a: odejax.odeint(f, z, ts, a, **solve_opts))(z0s, args)``
    (with ``in_axes=(0, args_axes)``), but the batch is split over the devices of ``mesh`` and
    every device runs its own adaptive loop on its slice (``jax.shard_map`` around a vmapped
    solve), so devices with easy members do not wait every step for devices with hard ones.

    Args:
        f: vector field ``f(z, t, args)``, shared by all members (see :func:`odejax.solve`).
        z0s: initial states: any pytree whose leaves all have the batch size ``B`` as their
            leading axis (numpy arrays, or global ``jax.Array`` s on a multi-host mesh).
        ts: ``(T,)`` save times shared by all members; ``ts[0]`` is the initial time.
        args: pytree passed to ``f``; by default every leaf is batched on axis 0 (size ``B``).
        args_axes: ``0`` (default), ``None`` (share all of ``args``), or a pytree prefix of
            ``args`` giving ``None`` (shared) or an int (the batch axis) per leaf/subtree, as
            ``in_axes`` of ``jax.vmap``.
        mesh: a ``jax.sharding.Mesh``; default: all of ``jax.devices()`` in a 1-D mesh. The
            batch is sharded over one of its axes and replicated over any others.
        axis_name: the mesh axis to shard the batch over (default: the mesh's first axis).
        chunk_size: solve each device's slice in sequential chunks of this many members
            (``lax.map`` over vmapped chunks), to bound memory; the last chunk is padded.
        return_solution: return the batched :class:`odejax.Solution` (``ts``, ``zs``, per-member
            ``stats``, ``status``, ``t_final``, each with a leading batch axis) instead of
            ``zs``.
        **solve_opts: options of :func:`odejax.solve` (``solver``, ``rtol``, ``atol``,
            ``dt0``, ``max_steps``, ``adjoint``, ``throw``, ...).

    Returns:
        A pytree like ``z0s`` whose leaves have shape ``(B, T, ...)``, or a :class:`Solution`
        with a leading batch axis on every array if ``return_solution=True``.

    When ``B`` is not a multiple of the number of devices on the batch axis (times
    ``chunk_size``), the batch is padded by repeating its last member and the padding is dropped
    from the result: the extra solves cost time on the last device but change nothing else.

    Gradients flow through it with every adjoint: ``jax.grad`` with ``adjoint="backsolve"`` or
    ``"checkpoint"``, ``jax.jvp`` with ``adjoint="forward"``.

    Example:
        >>> import jax.numpy as jnp, odejax
        >>> zs = odejax.ensemble(lambda z, t, k: -k * z, jnp.ones((8, 2)), jnp.linspace(0, 1, 3),
        ...                      jnp.linspace(1.0, 2.0, 8))
        >>> zs.shape
        (8, 3, 2)
    """
    reserved = {*_RESERVED} if return_solution else {*_RESERVED, "dense"}
    bad = sorted(solve_opts.keys() & reserved)
    if bad:
        raise TypeError(f"ensemble does not take {bad} as solve options.")

    z_leaves, z_def = jax.tree.flatten(z0s)
    batch = _batch_size(z_leaves, z0s)
    arg_leaves, arg_def, axes = _split_args(args, args_axes, batch)
    mesh, axis_name = _resolve_mesh(mesh, axis_name)
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool):
            raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    try:
        ts = jnp.asarray(ts)
    except TypeError:
        raise TypeError(f"ts must be an array of times, got {type(ts).__name__}.") from None
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times, got shape {ts.shape}.")

    num_devices = mesh.shape[axis_name]
    local = -(-batch // num_devices)  # members per device before chunking
    chunk = None if chunk_size is None else min(int(chunk_size), local)
    if chunk is not None:
        local = -(-local // chunk) * chunk
    plan = _Plan(
        mesh=mesh,
        axis_name=axis_name,
        batch=batch,
        padded=local * num_devices,
        chunk=chunk,
        z_def=z_def,
        arg_def=arg_def,
        axes=tuple(axes),
        return_solution=bool(return_solution),
    )
    # Batched arguments move their batch axis to the front; shared ones are split into arrays
    # (inputs of the compiled program) and everything else (static, like solve's ints).
    batched = [
        jnp.moveaxis(x, ax, 0) if ax else x for x, ax in zip(arg_leaves, axes) if ax is not None
    ]
    shared = [x for x, ax in zip(arg_leaves, axes) if ax is None]
    adjoint = get_adjoint(solve_opts.get("adjoint"))
    if solve_opts.get("event") is not None and isinstance(adjoint, CheckpointAdjoint):
        if not adjoint.higher_order:  # its rule's closure conversion fails inside shard_map
            raise NotImplementedError(
                "ensemble with an event and adjoint='checkpoint' is not supported: use"
                " adjoint=odejax.CheckpointAdjoint(higher_order=True) or 'backsolve', or"
                " jax.vmap over odejax.solve."
            )
    with explain_jvp_error(adjoint):
        return _run(f, z_leaves, ts, batched, shared, solve_opts, plan)


class _Plan(eqx.Module):
    """The static layout of one ensemble call (hashable: it keys the compile cache)."""

    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)
    batch: int = eqx.field(static=True)
    padded: int = eqx.field(static=True)
    chunk: int | None = eqx.field(static=True)
    z_def: Any = eqx.field(static=True)
    arg_def: Any = eqx.field(static=True)
    axes: tuple = eqx.field(static=True)
    return_solution: bool = eqx.field(static=True)


def _batch_size(leaves, z0s) -> int:
    if not leaves:
        raise ValueError("z0s has no array leaves; give the initial states with a batch axis.")
    shapes = [np.shape(x) for x in leaves]
    if any(len(s) == 0 for s in shapes):
        raise ValueError(
            f"z0s leaves need a leading batch axis, got shapes {jax.tree.map(np.shape, z0s)}."
        )
    sizes = {s[0] for s in shapes}
    if len(sizes) != 1:
        raise ValueError(
            "z0s leaves must share the batch size (leading axis), got shapes"
            f" {jax.tree.map(np.shape, z0s)}."
        )
    batch = sizes.pop()
    if batch == 0:
        raise ValueError("z0s has batch size 0; give at least one initial state.")
    return int(batch)


def _split_args(args, args_axes, batch: int):
    """Flatten ``args`` and give each leaf its batch axis (``None``: shared)."""
    # Python floats become arrays, as solve does, so new values do not recompile.
    args = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, float | complex) else x, args)
    leaves, treedef = jax.tree.flatten(args)
    if args_axes is None or isinstance(args_axes, (int, np.integer)):
        axes = [args_axes] * len(leaves)
    else:
        ax_leaves, ax_def = jax.tree.flatten(args_axes, is_leaf=lambda x: x is None)
        try:
            subtrees = ax_def.flatten_up_to(args)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"args_axes must be None, an int, or a pytree prefix of args: {e}"
            ) from None
        axes = [ax for ax, sub in zip(ax_leaves, subtrees) for _ in jax.tree.leaves(sub)]
    for ax in axes:
        if ax is not None and (not isinstance(ax, (int, np.integer)) or isinstance(ax, bool)):
            raise ValueError(f"args_axes entries must be None or an int, got {ax!r}.")
    out_axes = []
    for i, (x, ax) in enumerate(zip(leaves, axes)):
        if ax is None:
            out_axes.append(None)
            continue
        if not hasattr(x, "shape") and not isinstance(x, (int, np.number, bool)):
            raise ValueError(
                f"args leaf {i} ({type(x).__name__}) is not an array and cannot be batched; pass"
                " args_axes=None (or None for that leaf) to share it."
            )
        shape = np.shape(x)
        if not -len(shape) <= ax < len(shape):
            raise ValueError(
                f"args leaf {i} of shape {shape} has no axis {ax} to batch over; pass"
                " args_axes=None (or None for that leaf) to share it."
            )
        ax = int(ax) % len(shape)
        if shape[ax] != batch:
            raise ValueError(
                f"args leaf {i} has batch size {shape[ax]} (shape {shape}, axis {ax}) but z0s has"
                f" batch size {batch}."
            )
        out_axes.append(ax)
    return leaves, treedef, out_axes


def _resolve_mesh(mesh, axis_name):
    if mesh is None:
        name = _DEFAULT_AXIS if axis_name is None else axis_name
        return Mesh(np.asarray(jax.devices()), (name,)), name
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    if axis_name is None:
        return mesh, mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"mesh has no axis named {axis_name!r} (axis_name); its axes are {mesh.axis_names}."
        )
    return mesh, axis_name


def _pad(x, padded: int):
    extra = padded - x.shape[0]
    if extra == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])


@eqx.filter_jit
def _run(f, z_leaves, ts, batched, shared, solve_opts, plan: _Plan):
    # Arrays of f, ts, shared args and options enter the per-device program as replicated
    # inputs; the rest (functions, ints, strings) is closed over.
    rep_dyn, rep_static = eqx.partition((f, ts, shared, solve_opts), eqx.is_array)
    z_leaves = [_pad(x, plan.padded) for x in z_leaves]
    batched = [_pad(x, plan.padded) for x in batched]

    def member(z_leaves, batched, rep_dyn):
        f, ts, shared, opts = eqx.combine(rep_dyn, rep_static)
        b, s = iter(batched), iter(shared)
        arg_leaves = [next(s) if ax is None else next(b) for ax in plan.axes]
        args = jax.tree.unflatten(plan.arg_def, arg_leaves)
        z0 = jax.tree.unflatten(plan.z_def, z_leaves)
        # No failure check on a device: a device whose check raised would leave the others
        # waiting at the gather below for ever. The statuses are checked once, after it.
        sol = solve(f, z0, ts[0], ts[-1], args=args, ts=ts, **{**opts, "throw": False})
        return (sol if plan.return_solution else sol.zs), sol.status, sol.t_final

    def per_device(z_leaves, batched, rep_dyn):
        solve_batch = jax.vmap(member, in_axes=(0, 0, None))
        if plan.chunk is None:
            out = solve_batch(z_leaves, batched, rep_dyn)
        else:
            c = plan.chunk
            split = lambda x: x.reshape(x.shape[0] // c, c, *x.shape[1:])  # noqa: E731
            merge = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])  # noqa: E731
            out = jax.lax.map(
                lambda zb: solve_batch(*zb, rep_dyn), jax.tree.map(split, (z_leaves, batched))
            )
            out = jax.tree.map(merge, out)
        out, status, t_final = out
        if not solve_opts.get("throw", True):
            return out
        # Every device checks every member's status (gathered first), so that all of them
        # raise, or none: one device raising alone would leave the others waiting at the next
        # collective for ever (XLA then aborts the process).
        gather = functools.partial(jax.lax.all_gather, axis_name=plan.axis_name, tiled=True)
        t1 = eqx.combine(rep_dyn, rep_static)[1][-1]
        return _raise_if_any_failed(
            out, gather(status), gather(t_final), t1, solve_opts, plan.batch
        )

    spec = PartitionSpec(plan.axis_name)
    out = jax.shard_map(
        per_device,
        mesh=plan.mesh,
        in_specs=(spec, spec, PartitionSpec()),
        out_specs=spec,
        check_vma=False,
    )(z_leaves, batched, rep_dyn)
    if plan.padded != plan.batch:
        out = jax.tree.map(lambda x: x[: plan.batch], out)
    return out


def _raise_if_any_failed(out, status, t_final, t1, solve_opts, batch):
    """``out`` unchanged; raises :class:`odejax.OdeSolveError` for the first failed member
    (of the first ``batch``: the rest is padding)."""
    status = _checks.event_as_success(status)
    failed = _checks.any_failed(status, jnp.zeros((), bool))  # unbatched, even under vmap

    def describe(x):
        _, status, t_final, t1 = x
        _checks.report_failure(
            status[:batch],
            t_final[:batch],
            t1,
            None,
            solve_opts.get("max_steps", DEFAULT_MAX_STEPS),
            False,
            solve_opts.get("dtmin") is not None,
        )

    return _checks.raise_if_failed((out, status, t_final, t1), failed, describe)[0]
