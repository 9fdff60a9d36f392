"""Neural vector fields: :class:`MLPField` and FFJORD's :class:`ConcatSquashLinear` layer.

A vector field is a callable ``f(z, t, args) -> dz/dt`` (the calling convention of
:func:`odejax.solve`). The fields here act on **one** state ``z`` of shape ``(in_size,)``; a batch
``(batch, in_size)`` is handled by the model, by ``jax.vmap`` over its leading axis (e.g.
``jax.vmap(node)(z0s)``), never by the field. This keeps every batch member's adaptive step size
independent and the field's shape check strict.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["TIME_MODES", "ConcatSquashLinear", "MLPField", "check_state"]

TIME_MODES = (None, "concat", "concatsquash")


def check_state(name: str, z: Any, in_size: int, owner: str) -> None:
    """Raise a readable ``ValueError`` unless ``z`` is one ``(in_size,)`` floating array.

    Args:
        name: the argument's name as the user knows it (``"z"``, ``"z0"``).
        z: the value to check (concrete or traced; only its shape and dtype are read).
        in_size: the expected state dimension ``D``.
        owner: the class doing the check, for the message.
    """
    shape = getattr(z, "shape", None)
    if shape is None:
        raise TypeError(f"{owner}: {name} must be an array of shape ({in_size},), got {type(z)}.")
    if tuple(shape) != (in_size,):
        hint = ""
        if len(shape) == 2 and shape[-1] == in_size:
            hint = (
                f" It looks like a batch of {shape[0]} states: vmap the model over the batch,"
                f" e.g. jax.vmap(model)({name})."
            )
        raise ValueError(
            f"{owner}: {name} must have shape ({in_size},) (the field's in_size), got shape"
            f" {tuple(shape)}.{hint}"
        )


def _time_as(t: Array, like: Array) -> Array:
    """``t`` as a ``(1,)`` array of ``like``'s dtype."""
    return jnp.reshape(jnp.asarray(t, dtype=like.dtype), (1,))


class ConcatSquashLinear(eqx.Module):
    """A linear layer whose output is gated and shifted by time (FFJORD, Grathwohl et al. 2019).

    .. math::

        y = (W x + b) \\odot \\sigma(w_g t + b_g) + w_b t,

    with ``W`` ``(out_size, in_size)``, ``b, w_g, b_g, w_b`` ``(out_size,)`` and ``σ`` the logistic
    sigmoid.

    Attributes:
        linear: the ``x ↦ W x + b`` layer.
        hyper_gate: the ``t ↦ w_g t + b_g`` layer (``1 → out_size``).
        hyper_bias: the ``t ↦ w_b t`` layer (``1 → out_size``, no bias).
    """

    linear: eqx.nn.Linear
    hyper_gate: eqx.nn.Linear
    hyper_bias: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key: Array, dtype=None):
        """Args:
        in_size: input dimension.
        out_size: output dimension.
        key: a ``jax.random`` key for the initialisation.
        dtype: parameter dtype (default: JAX's default float).
        """
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, key=k1, dtype=dtype)
        self.hyper_gate = eqx.nn.Linear(1, out_size, key=k2, dtype=dtype)
        self.hyper_bias = eqx.nn.Linear(1, out_size, use_bias=False, key=k3, dtype=dtype)

    def __call__(self, x: Array, t: Array) -> Array:
        """Apply the layer.

        Args:
            x: ``(in_size,)`` input.
            t: scalar time.

        Returns:
            ``(out_size,)`` output ``(W x + b) * sigmoid(w_g t + b_g) + w_b t``.
        """
        tt = _time_as(t, x)
        return self.linear(x) * jax.nn.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)


class MLPField(eqx.Module):
    """A multilayer-perceptron vector field ``f(z, t, args)`` on a state ``z`` of shape ``(D,)``.

    ``depth`` hidden layers of ``width`` units with ``activation`` between them and a linear
    output of size ``D`` (``D → width → … → width → D``; ``depth=0`` is one linear map).
    How time enters is chosen by ``time``:

    * ``"concat"`` (default): ``t`` is appended to the input, ``f(z, t) = MLP([z, t])``.
    * ``None``: autonomous, ``f(z, t) = MLP(z)``.
    * ``"concatsquash"``: every layer is a :class:`ConcatSquashLinear`,
      ``h ↦ (W h + b) σ(w_g t + b_g) + w_b t`` (FFJORD's choice for CNFs).

    ``args`` is accepted and ignored. The field takes one state; for a batch ``(B, D)`` vmap the
    model (``jax.vmap(NeuralODE(field))(z0s)``), not the field.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> f = MLPField(2, 50, 1, key=jax.random.key(0))
        >>> f(jnp.ones(2), 0.0, None).shape
        (2,)
    """

    layers: tuple
    activation: Callable = eqx.field(static=True)
    time: str | None = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        width: int,
        depth: int,
        *,
        activation: Callable = jnp.tanh,
        time: str | None = "concat",
        key: Array,
        dtype=None,
    ):
        """Args:
        in_size: state dimension ``D``; the output has the same size.
        width: units per hidden layer.
        depth: number of hidden layers (``≥ 0``).
        activation: elementwise nonlinearity between layers (default ``tanh``).
        time: ``"concat"``, ``None`` or ``"concatsquash"`` (see the class docstring).
        key: a ``jax.random`` key for the initialisation.
        dtype: parameter dtype (default: JAX's default float).
        """
        if time not in TIME_MODES:
            raise ValueError(f"MLPField: time must be one of {TIME_MODES}, got {time!r}.")
        for name, v, lo in (("in_size", in_size, 1), ("width", width, 1), ("depth", depth, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"MLPField: {name} must be an int ≥ {lo}, got {v!r}.")
        sizes = [in_size] + [width] * depth + [in_size]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for k, (a, b) in zip(keys, itertools.pairwise(sizes)):
            if time == "concatsquash":
                layers.append(ConcatSquashLinear(a, b, key=k, dtype=dtype))
            else:
                extra = 1 if (time == "concat" and not layers) else 0
                layers.append(eqx.nn.Linear(a + extra, b, key=k, dtype=dtype))
        self.layers = tuple(layers)
        self.activation = activation
        self.time = time
        self.in_size = in_size
        self.width = width
        self.depth = depth

    def __call__(self, z: Array, t: Array, args: Any = None) -> Array:
        """Evaluate ``dz/dt``.

        Args:
            z: ``(D,)`` state.
            t: scalar time.
            args: ignored (present for the ``f(z, t, args)`` convention).

        Returns:
            ``(D,)`` time derivative.

        Raises:
            ValueError: ``z`` is not of shape ``(in_size,)`` (e.g. an un-vmapped batch).
        """
        check_state("z", z, self.in_size, "MLPField")
        h = z
        if self.time == "concat":
            h = jnp.concatenate([z, _time_as(t, z)])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, t) if self.time == "concatsquash" else layer(h)
            if i < last:
                h = self.activation(h)
        return h
