"""Classifiers: the ODE-Net (Chen et al. 2018 §3) and its ResNet counterpart.

Both are ``encoder → dynamics → decoder`` on **one** input (vmap over a batch):

* :class:`ODENetClassifier`: ``logits = decoder(ODEBlock(encoder(x)))``, one ODE solve over
  ``[0, 1]`` in place of a stack of residual blocks (the paper's f2 → ODE → f3).
* :class:`ResNet`: ``L`` residual blocks ``h_{l+1} = h_l + (1/L) f_l(h_l, t_l)``,
  ``t_l = l / L``. With ``shared=True`` every block uses the same ``f`` and the stack is exactly
  the explicit Euler discretisation of the ODE block with step ``1/L``; with ``shared=False``
  each block has its own parameters (a standard ResNet with ``L`` times the parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["ODENetClassifier", "ResNet", "count_params"]


def count_params(model: Any) -> int:
    """The number of trainable scalars: the sizes of ``eqx.filter(model, eqx.is_inexact_array)``.

    Example:
        >>> import jax, equinox as eqx
        >>> count_params(eqx.nn.Linear(3, 2, key=jax.random.key(0)))
        8
    """
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))))


class ODENetClassifier(eqx.Module):
    """``x ↦ logits = decoder(z(1))`` with ``z(0) = encoder(x)`` and ``dz/dt = f(z, t)``.

    Attributes:
        encoder: any callable module ``x ↦ z(0)`` (e.g. ``eqx.nn.Linear`` or an MLP).
        block: the dynamics, e.g. :class:`~odejax.nn.ODEBlock` or an
            :class:`~odejax.nn.AugmentedNeuralODE`; must provide ``with_stats``.
        decoder: ``z(1) ↦ logits`` (usually an ``eqx.nn.Linear``).

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx
        >>> from odejax.nn import MLPField, ODEBlock, ODENetClassifier
        >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        >>> net = ODENetClassifier(eqx.nn.Linear(64, 16, key=k1),
        ...                        ODEBlock(MLPField(16, 32, 1, key=k2)),
        ...                        eqx.nn.Linear(16, 10, key=k3))
        >>> jax.vmap(net)(jnp.ones((4, 64))).shape
        (4, 10)
    """

    encoder: Any
    block: Any
    decoder: Any

    def __call__(self, x: Array) -> Array:
        """``(in,) ↦ (num_classes,)`` logits."""
        return self.with_stats(x)[0]

    def with_stats(self, x: Array) -> tuple[Array, dict[str, Array]]:
        """``(logits, stats)`` with the ODE solve's ``num_steps``/``nfe`` statistics."""
        z1, stats = self.block.with_stats(self.encoder(x))
        return self.decoder(z1), stats

    @property
    def num_params(self) -> int:
        """Trainable parameter count (see :func:`count_params`)."""
        return count_params(self)


class ResNet(eqx.Module):
    """``x ↦ logits`` through ``L`` residual blocks ``h ← h + (1/L) f_l(h, l/L, None)``.

    Attributes:
        encoder: callable ``x ↦ h_0``.
        decoder: callable ``h_L ↦ logits``.
        fields: the block functions ``f_l(h, t, args)`` (one entry if shared).
        num_blocks: ``L`` (static).
        shared: whether all blocks use ``fields[0]`` (static).
    """

    encoder: Any
    decoder: Any
    fields: tuple
    num_blocks: int = eqx.field(static=True)
    shared: bool = eqx.field(static=True)

    def __init__(
        self,
        encoder: Any,
        decoder: Any,
        field: Any | Sequence[Any],
        num_blocks: int,
        shared: bool = True,
    ):
        """Args:
        encoder: input module ``x ↦ h_0``.
        decoder: output module ``h_L ↦ logits``.
        field: a vector field ``f(h, t, args)`` (e.g. :class:`~odejax.nn.MLPField`). With
            ``shared=False`` either a sequence of ``num_blocks`` fields, or one field that is
            copied ``num_blocks`` times (the copies start equal and are trained independently;
            pass a list for distinct initialisations).
        num_blocks: number of residual blocks ``L ≥ 1``.
        shared: use the same ``f`` in every block (the Euler discretisation of an ODE block).
        """
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int ≥ 1, got {num_blocks!r}.")
        if isinstance(field, (list, tuple)):
            if shared:
                raise ValueError("shared=True takes one field, got a sequence.")
            if len(field) != num_blocks:
                raise ValueError(
                    f"field: got {len(field)} fields for num_blocks={num_blocks}; give one each."
                )
            fields = tuple(field)
        else:
            fields = (field,) if shared else (field,) * num_blocks
        self.encoder = encoder
        self.decoder = decoder
        self.fields = fields
        self.num_blocks = num_blocks
        self.shared = bool(shared)

    def features(self, x: Array) -> Array:
        """``h_L``: the state after the residual blocks (before the decoder)."""
        h = self.encoder(x)
        n = self.num_blocks
        for l in range(n):
            f = self.fields[0 if self.shared else l]
            h = h + f(h, jnp.asarray(l / n, h.dtype), None) / n
        return h

    def __call__(self, x: Array) -> Array:
        """``(in,) ↦ (num_classes,)`` logits."""
        return self.decoder(self.features(x))

    @property
    def num_params(self) -> int:
        """Trainable parameter count (see :func:`count_params`)."""
        return count_params(self)
