"""Training utilities: :func:`fit` (a jit-compiled optax loop with a progress bar), :func:`save`
and :func:`load` (Equinox's leaf serialisation, no pickle).

The loop minimises ``loss_fn`` over the model's floating-point arrays (``eqx.is_inexact_array``):

.. math::

    θ_{k+1} = θ_k + \\mathrm{update}(\\nabla_θ L(θ_k; b_k)), \\qquad k = 0, …, \\text{steps} - 1,

one ``equinox.filter_jit``-compiled step per batch ``b_k``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import numbers
import time
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

__all__ = ["fit", "load", "save"]


def _aux_scalars(aux: Any) -> dict[str, float]:
    """Numbers to log from a loss's ``aux``: every scalar-able entry of a dict (means of arrays)."""
    if not isinstance(aux, dict):
        return {}
    out = {}
    for k, v in aux.items():
        if isinstance(v, (int, float)) or (eqx.is_array(v) and jnp.issubdtype(v.dtype, jnp.number)):
            out[str(k)] = float(np.mean(np.asarray(v)))
    return out


def _key_argument(loss_fn) -> tuple[bool, bool]:
    """Whether ``loss_fn`` accepts a third positional argument (the per-step key), and whether
    it requires one (a third positional argument without a default)."""
    try:
        params = list(inspect.signature(loss_fn).parameters.values())
    except (TypeError, ValueError):
        return False, False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    takes = len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)
    needs = sum(p.default is p.empty for p in positional) >= 3
    return takes, needs


def _batch_source(batches, key: Array | None, steps: int | None):
    """An iterator over ``(batch, loss_key)`` pairs."""
    if callable(batches):
        if key is None:
            raise ValueError(
                "fit: batches is a callable key -> batch, so fit needs key= (a jax.random key)."
            )
        if steps is None:
            raise ValueError("fit: steps= is required when batches is a callable key -> batch.")
        make = eqx.filter_jit(batches)

        def gen():
            k = key
            while True:
                k, kb, kl = jax.random.split(k, 3)
                yield make(kb), kl

        return gen()
    try:
        it = iter(batches)
    except TypeError:
        raise TypeError(
            f"fit: batches must be an iterable of batches or a callable key -> batch, got"
            f" {type(batches).__name__}."
        ) from None

    def gen_it():
        k = key
        for b in it:
            if k is None:
                yield b, None
            else:
                k, kl = jax.random.split(k)
                yield b, kl

    return gen_it()


def fit(
    model: Any,
    loss_fn: Callable[..., Any],
    batches: Iterable[Any] | Callable[[Array], Any],
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    key: Array | None = None,
    progress: bool = True,
    log_every: int | None = None,
) -> tuple[Any, dict[str, list]]:
    """Train ``model`` with ``optax`` on ``loss_fn``; return the trained model and its history.

    Args:
        model: an ``equinox.Module`` (any pytree); its inexact arrays are trained, everything else
            (static fields, integer arrays, functions) is held fixed.
        loss_fn: ``loss_fn(model, batch) -> loss``, or ``loss_fn(model, batch, key)`` (a fresh
            key each step, when ``key`` is given and ``loss_fn`` takes a third positional
            argument). It may return ``(loss, aux)`` instead (detected automatically); if ``aux``
            is a dict, its scalar entries are logged (their means, for arrays), and an ``"nfe"``
            entry (e.g. ``stats["nfe"].mean()`` from a model's ``with_stats``) is shown in the
            progress bar and recorded in the history.
        batches: either an iterable of batches (any pytrees; training stops early when it runs
            out), or a callable ``key -> batch`` run under ``equinox.filter_jit`` with a fresh
            key each step (a JAX-traceable sampler; needs ``key`` and ``steps``).
        optimizer: an ``optax.GradientTransformation`` (default ``optax.adam(1e-3)``). The
            compiled step is cached on ``(loss_fn, optimizer)``: pass the same objects to train
            several models of one structure (e.g. one per setting) with a single compilation.
            A loss that reads arrays from outside its arguments (a global dataset) gets a fresh
            step each call, so that it sees their current values.
        steps: number of optimisation steps (default: until ``batches`` is exhausted).
        key: a ``jax.random`` key, split each step into a batch key (callable ``batches``) and a
            key for ``loss_fn`` (if it takes one).
        progress: show a ``tqdm.auto`` bar (works in notebooks) with step, loss and nfe.
        log_every: every this many steps, refresh the bar's loss/nfe and write a line
            ``step, loss, nfe, ms/step`` below it (default: refresh every step, no lines).

    Returns:
        ``(model, history)``; ``history`` is a dict of equal-length lists: ``"step"``, ``"loss"``,
        ``"nfe"`` (``nan`` when the loss does not report it), ``"time"`` (wall seconds of each
        step, the first including compilation), plus any other scalar ``aux`` entries (an aux
        entry named ``"step"``, ``"loss"`` or ``"time"`` is recorded as ``"aux_step"``,
        ``"aux_loss"`` or ``"aux_time"``).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from odejax.train import fit
        >>> loss = lambda w, b: jnp.sum((w - b) ** 2)
        >>> w, hist = fit(jnp.zeros(2), loss, [jnp.ones(2)] * 50,
        ...               optimizer=optax.sgd(0.1), progress=False)
        >>> bool(hist["loss"][-1] < 1e-3)
        True
    """
    if progress:
        from tqdm.auto import tqdm
    else:  # no bar: skip tqdm.auto's notebook-widget probe (and its IProgress warning)
        from tqdm import tqdm

    if steps is not None and (not _is_int(steps) or steps < 0):
        raise ValueError(f"fit: steps must be a non-negative int, got {steps!r}.")
    if log_every is not None and (not _is_int(log_every) or log_every < 1):
        raise ValueError(f"fit: log_every must be a positive int, got {log_every!r}.")
    steps = None if steps is None else int(steps)
    log_every = None if log_every is None else int(log_every)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    takes_key, needs_key = _key_argument(loss_fn)
    if key is None and needs_key:
        raise ValueError(
            "fit: loss_fn takes a third argument (a per-step key) with no default, so fit needs"
            " key= (a jax.random key)."
        )
    with_key = key is not None and takes_key
    source = _batch_source(batches, key, steps)

    def call_loss(m, batch, k):
        return _call_loss(loss_fn, with_key, m, batch, k)

    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    history: dict[str, list] = {"step": [], "loss": [], "nfe": [], "time": []}
    step_fn = None
    bar = tqdm(total=steps, disable=not progress, desc="fit", dynamic_ncols=True)
    try:
        # islice stops before drawing a batch past the last step.
        for i, (batch, k) in enumerate(itertools.islice(source, steps)):
            if step_fn is None:
                traced, out, _ = eqx.filter_make_jaxpr(call_loss)(model, batch, k)
                has_aux = isinstance(out, tuple)
                # Values the loss reads from outside its arguments are baked into the compiled
                # step: numbers (a Python float, a NumPy scalar) as literals of the traced
                # program, arrays (a global dataset, say) as its constants. A cached step is
                # reused only for the same program text (so the same literals) and never when
                # the loss captures arrays: a later call must see their values then.
                program = None if traced.consts else str(traced.jaxpr)
                step_fn = _make_step(loss_fn, with_key, optimizer, has_aux, program)
            start = time.perf_counter()
            model, opt_state, loss, aux = step_fn(model, opt_state, batch, k)
            loss = float(loss)  # waits for the step
            elapsed = time.perf_counter() - start
            logged = _aux_scalars(aux)
            nfe = logged.pop("nfe", float("nan"))
            history["step"].append(i)
            history["loss"].append(loss)
            history["nfe"].append(nfe)
            history["time"].append(elapsed)
            for name, v in logged.items():
                if name in _COLUMNS:  # the loop's own column: keep both
                    name = f"aux_{name}"
                history.setdefault(name, [float("nan")] * i).append(v)
            bar.update(1)
            if log_every is None or i % log_every == 0 or (steps is not None and i == steps - 1):
                bar.set_postfix(loss=f"{loss:.4g}", nfe=f"{nfe:.0f}", refresh=False)
            if log_every is not None and progress and i % log_every == 0:
                bar.write(
                    f"step {i:6d}  loss {loss:.6g}  nfe {nfe:6.1f}  {elapsed * 1e3:8.2f} ms/step"
                )
    finally:
        bar.close()
    n = len(history["step"])
    for v in history.values():
        v.extend([float("nan")] * (n - len(v)))
    return model, history


_COLUMNS = ("step", "loss", "time")  # history columns fit writes itself ("nfe" comes from aux)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _call_loss(loss_fn, with_key: bool, m, batch, k):
    return loss_fn(m, batch, k) if with_key else loss_fn(m, batch)


def _make_step(loss_fn, with_key: bool, optimizer, has_aux: bool, program: str | None):
    """The jitted training step, cached on ``program`` (the text of the loss's traced program):
    repeated ``fit`` calls with the same ``loss_fn`` and ``optimizer`` objects (e.g. one model
    per setting in a loop) reuse its compilation while the loss traces to the same program.
    ``program=None`` (the loss captures arrays) builds a fresh step: a cached one would keep
    their values from its first call."""
    if program is not None:
        try:
            return _cached_step(loss_fn, with_key, optimizer, has_aux, program)
        except TypeError:  # an unhashable loss_fn or optimizer: build a fresh step
            pass
    return _build_step(loss_fn, with_key, optimizer, has_aux)


def _build_step(loss_fn, with_key: bool, optimizer, has_aux: bool, program: str | None = None):
    """The jitted step; ``program`` is not used here, only by ``_cached_step``'s key."""

    def loss_aux(m, batch, k):
        out = _call_loss(loss_fn, with_key, m, batch, k)
        return out if has_aux else (out, None)

    @eqx.filter_jit
    def step(model, opt_state, batch, k):
        (loss, aux), grads = eqx.filter_value_and_grad(loss_aux, has_aux=True)(model, batch, k)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss, aux

    return step


_cached_step = functools.lru_cache(maxsize=8)(_build_step)


def save(path, model: Any) -> None:
    """Write the array leaves of ``model`` to ``path`` (``equinox.tree_serialise_leaves``).

    Only leaves are stored (no pickle): load them into a model of the same structure with
    :func:`load`.
    """
    eqx.tree_serialise_leaves(path, model)


def load(path, like: Any) -> Any:
    """Read leaves written by :func:`save` into a copy of ``like`` (same structure and shapes).

    Args:
        path: the file written by :func:`save`.
        like: a model of the same structure, e.g. freshly constructed with any key.

    Returns:
        ``like`` with its leaves replaced by the saved ones.

    Raises:
        ValueError: the file holds more or fewer leaves than ``like`` (a model of another
            structure); a leaf of another shape or dtype raises equinox's own error, which
            names the leaf.
    """
    with open(path, "rb") as f:
        try:
            model = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            if not _ran_out(e):  # a leaf of another shape or dtype: equinox's message names it
                raise
            raise ValueError(
                f"load: {path!s} holds fewer leaves than `like` ({len(jax.tree.leaves(like))}):"
                " it was saved from a model of another structure."
            ) from e
        if f.read(1):
            raise ValueError(
                f"load: {path!s} holds more leaves than `like` ({len(jax.tree.leaves(like))}):"
                " it was saved from a model of another structure."
            )
    return model


def _ran_out(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is an ``EOFError``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EOFError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
