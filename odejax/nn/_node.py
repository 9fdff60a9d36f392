"""Neural ODE models: :class:`NeuralODE`, :class:`ODEBlock`, :class:`AugmentedNeuralODE`.

A neural ODE (Chen et al. 2018) maps an input ``z0`` to the solution at ``t1`` of

.. math::

    \\frac{dz}{dt} = f_θ(z(t), t), \\qquad z(t_0) = z_0, \\qquad
    z(t_1) = z_0 + \\int_{t_0}^{t_1} f_θ(z(t), t)\\,dt,

with ``f_θ`` a learnable vector field (e.g. :class:`~odejax.nn.MLPField`). Gradients flow through
:func:`odejax.solve` by the chosen ``adjoint`` (the continuous adjoint by default).

Every model takes **one** input; batch with ``jax.vmap(model)(z0s)`` (each batch member keeps its
own adaptive step size). Solver settings are static fields: changing them makes a new model,
and ``optax``/``eqx.filter_grad`` see only the field's parameters.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._solution import Solution
from .._solve import solve as _solve

__all__ = ["AugmentedNeuralODE", "NeuralODE", "ODEBlock", "check_field_output"]


def check_field_output(owner: str, field: Any, z0: Any, t0: float, args: Any) -> None:
    """Trace ``field(z0, t0, args)`` abstractly; raise a ``ValueError`` naming ``z0`` if it fails.

    Args:
        owner: the model class, for the message.
        field: the vector field.
        z0: the initial state (concrete or traced).
        t0: the initial time.
        args: passed through to the field.

    Raises:
        ValueError: the field cannot be applied to ``z0`` or returns another structure, shape
            or dtype.
    """
    fname = type(field).__name__
    desc = jax.tree.map(lambda x: f"{jnp.result_type(x)}{list(jnp.shape(x))}", z0)
    try:
        out = jax.eval_shape(lambda: field(z0, jnp.asarray(t0, jnp.result_type(float)), args))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{owner}: the field {fname} cannot be applied to the state z0 of shape {desc}: {e}"
        ) from e
    got = jax.tree.map(lambda x: f"{x.dtype}{list(x.shape)}", out)
    if jax.tree.structure(out) != jax.tree.structure(z0) or any(
        o.shape != jnp.shape(w) for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(z0))
    ):
        raise ValueError(
            f"{owner}: the field {fname} maps the state z0 of shape {desc} to an output of shape"
            f" {got}; a vector field must return dz/dt with the shape of z0 (check the field's"
            " in_size, or vmap the model over a batch)."
        )
    wider = [  # an integer z0 is left to the solver's own TypeError
        o.dtype
        for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(z0))
        if jnp.issubdtype(jnp.result_type(w), jnp.inexact) and o.dtype != jnp.result_type(w)
    ]
    if wider:
        raise ValueError(
            f"{owner}: the field {fname} maps the state z0 of {desc} to an output of {got}, of"
            " another dtype (its parameters' dtype, usually). Pass z0 in that dtype"
            f" (z0.astype(jnp.{wider[0]})), or build the field in z0's (MLPField(..., dtype=...))."
        )


def _static_times(ts) -> tuple[float, ...] | None:
    if ts is None:
        return None
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"ts must be a 1-D array of save times, got shape {arr.shape}.")
    return tuple(float(x) for x in arr)


class NeuralODE(eqx.Module):
    """``z0 ↦ z(t1)`` (or ``z`` at the save times ``ts``) for ``dz/dt = field(z, t, args)``.

    Attributes:
        field: the vector field ``f(z, t, args)`` (an ``equinox.Module``; its arrays are the
            trainable parameters).
        t0: initial time, where ``z0`` is given (static float).
        t1: final time (static float; ``t1 < t0`` integrates backwards). With save times the
            solve ends at the last one, so ``t1 == ts[-1]``.
        ts: default save times (a static tuple inside ``[t0, t1]``, monotone in the direction
            of integration) or ``None`` to return only ``z(t1)``.
        solver, rtol, atol, adjoint, max_steps, dt0, throw: passed to :func:`odejax.solve`
            (``dt0`` is required by fixed-step solvers such as ``"euler"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from odejax.nn import MLPField, NeuralODE
        >>> node = NeuralODE(MLPField(2, 16, 1, key=jax.random.key(0)))
        >>> node(jnp.ones(2)).shape, jax.vmap(node)(jnp.ones((5, 2))).shape
        ((2,), (5, 2))
        >>> z1, stats = node.with_stats(jnp.ones(2)); int(stats["nfe"]) > 0
        True
    """

    field: Any
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    ts: tuple[float, ...] | None = eqx.field(static=True)
    solver: Any = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    adjoint: Any = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        field: Any,
        *,
        t0: float = 0.0,
        t1: float | None = None,
        ts=None,
        solver: Any = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-6,
        adjoint: Any = "backsolve",
        max_steps: int = 4096,
        dt0: float | None = None,
        throw: bool = True,
    ):
        if not callable(field):
            raise TypeError(f"field must be callable as field(z, t, args), got {type(field)}.")
        self.field = field
        ts = _static_times(ts)
        if t1 is None:
            t1 = 1.0 if ts is None else ts[-1]
        elif ts is not None and float(t1) != ts[-1]:
            raise ValueError(
                f"NeuralODE: the solve ends at the last save time, so t1 must equal ts[-1];"
                f" got t1={t1} and ts[-1]={ts[-1]} (leave t1 out to use ts[-1])."
            )
        self.t0 = float(t0)
        self.t1 = float(t1)
        self.ts = ts
        self.solver = solver
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.adjoint = adjoint
        self.max_steps = int(max_steps)
        self.dt0 = None if dt0 is None else float(dt0)
        self.throw = bool(throw)

    def solve(self, z0: Any, args: Any = None, *, ts=None) -> Solution:
        """Solve from ``z0`` and return the whole :class:`odejax.Solution` (states, stats, status).

        Args:
            z0: initial state ``z(t0)``, e.g. ``(D,)``.
            args: passed to the field as its third argument.
            ts: save times overriding the model's ``ts`` (a ``(T,)`` array; may be traced, e.g.
                a per-sample time grid under ``vmap``). The solve then runs from ``t0`` to
                ``ts[-1]``: ``z0`` is still the state at the model's ``t0``.

        Returns:
            The solution; ``sol.zs`` has a leading axis of length ``T`` (``len(ts)``, or 1).
        """
        check_field_output(type(self).__name__, self.field, z0, self.t0, args)
        t1 = self.t1
        if ts is None and self.ts is not None:
            ts = jnp.asarray(self.ts)
        elif ts is not None:
            ts = jnp.asarray(ts)
            if ts.ndim != 1 or ts.shape[0] < 1:
                raise ValueError(f"ts must be a 1-D array of save times, got shape {ts.shape}.")
            t1 = ts[-1]
        return _solve(
            self.field,
            z0,
            self.t0,
            t1,
            args=args,
            ts=ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=self.throw,
        )

    def _output(self, zs: Any, ts) -> Any:
        """The saved states ``zs`` as the model returns them: ``z(t1)`` when no ``ts`` is set."""
        if ts is None and self.ts is None:
            return jax.tree.map(lambda x: x[0], zs)
        return zs

    def __call__(self, z0: Any, args: Any = None, *, ts=None) -> Any:
        """``z(t1)`` with the shape of ``z0``, or ``(T, *z0.shape)`` states at the save times.

        Args:
            z0: initial state, e.g. ``(D,)``.
            args: passed to the field.
            ts: optional save times overriding the model's ``ts``.
        """
        return self._output(self.solve(z0, args, ts=ts).zs, ts)

    def with_stats(self, z0: Any, args: Any = None, *, ts=None) -> tuple[Any, dict[str, Array]]:
        """Like ``__call__`` but also return the solve's statistics.

        Returns:
            ``(out, stats)`` with ``stats`` the dict ``num_steps, num_accepted, num_rejected, nfe``
            of ``int32`` arrays (batched under ``vmap``).
        """
        sol = self.solve(z0, args, ts=ts)
        return self._output(sol.zs, ts), sol.stats


class ODEBlock(NeuralODE):
    """A :class:`NeuralODE` over ``[0, 1]`` returning ``z(1)``: the drop-in for a residual stack.

    ``ODEBlock(field, **kwargs)`` takes the solver settings of :class:`NeuralODE` except the times.
    """

    def __init__(self, field: Any, **kwargs):
        bad = kwargs.keys() & {"t0", "t1", "ts"}
        if bad:
            raise TypeError(f"ODEBlock integrates over [0, 1]; it does not take {sorted(bad)}.")
        super().__init__(field, t0=0.0, t1=1.0, ts=None, **kwargs)


class AugmentedNeuralODE(eqx.Module):
    """Augmented neural ODE (Dupont, Doucet & Teh 2019): solve in ``D + augment`` dimensions.

    The input ``x`` of shape ``(D,)`` is zero-padded to ``z0 = [x, 0_augment]`` of shape
    ``(D + augment,)`` and ``dz/dt = field(z, t)`` is solved there; the field must therefore have
    ``in_size = D + augment``. The extra dimensions let trajectories pass each other, so maps that
    a ``D``-dimensional flow (a homeomorphism) cannot represent, such as separating concentric
    circles, become learnable.

    The model returns the **full augmented state** ``z(t1)`` of shape ``(D + augment,)`` (or
    ``(T, D + augment)`` at ``ts``). Read it off as ``out[..., :D]`` for the original coordinates
    and ``out[..., D:]`` for the augmented ones; a classifier usually puts a linear layer on all of
    it (as Dupont et al. do).

    Attributes:
        node: the :class:`NeuralODE` run on the augmented state.
        augment: number of zero dimensions appended (static).
    """

    node: NeuralODE
    augment: int = eqx.field(static=True)

    def __init__(self, field: Any, augment: int, **kwargs):
        """Args:
        field: vector field on ``(D + augment,)`` states.
        augment: number of zero dimensions to append (``≥ 0``).
        **kwargs: the settings of :class:`NeuralODE` (``t0``, ``t1``, ``ts``, ``solver``, ...).
        """
        if not isinstance(augment, int) or isinstance(augment, bool) or augment < 0:
            raise ValueError(f"augment must be an int ≥ 0, got {augment!r}.")
        self.node = NeuralODE(field, **kwargs)
        self.augment = augment

    @property
    def field(self) -> Any:
        return self.node.field

    def pad(self, x: Array) -> Array:
        """``(D,) ↦ (D + augment,)``: append ``augment`` zeros to the last axis."""
        x = jnp.asarray(x)
        if x.ndim != 1:
            raise ValueError(
                f"AugmentedNeuralODE: x must have shape (D,), got shape {x.shape}; vmap the"
                " model over a batch, e.g. jax.vmap(model)(x)."
            )
        return jnp.concatenate([x, jnp.zeros((self.augment,), x.dtype)])

    def solve(self, x: Array, args: Any = None, *, ts=None) -> Solution:
        """The :class:`odejax.Solution` of the augmented solve (``zs`` of width ``D + augment``)."""
        z0 = self.pad(x)
        check_field_output("AugmentedNeuralODE", self.node.field, z0, self.node.t0, args)
        return self.node.solve(z0, args, ts=ts)

    def __call__(self, x: Array, args: Any = None, *, ts=None) -> Array:
        """``(D + augment,)`` augmented ``z(t1)``, or ``(T, D + augment)`` at save times."""
        return self.node._output(self.solve(x, args, ts=ts).zs, ts)

    def with_stats(self, x: Array, args: Any = None, *, ts=None) -> tuple[Array, dict]:
        """``(out, stats)`` as :meth:`NeuralODE.with_stats`."""
        sol = self.solve(x, args, ts=ts)
        return self.node._output(sol.zs, ts), sol.stats
