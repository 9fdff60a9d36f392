"""Regularised neural ODEs (Finlay, Jacobsen, Nurbekyan & Oberman 2020, "How to train your
neural ODE"): kinetic energy and Jacobian Frobenius norm integrated in the same solve.

The state is augmented with two accumulators that ride along with ``z``:

.. math::

    \\frac{d}{dt}\\begin{bmatrix} z \\\\ E_k \\\\ E_J \\end{bmatrix}
    = \\begin{bmatrix} f(z, t) \\\\ \\lVert f(z, t)\\rVert^2 \\\\
      \\lVert \\partial f / \\partial z\\,(z, t)\\rVert_F^2 \\end{bmatrix},
    \\qquad E_k(t_0) = E_J(t_0) = 0,

and the model returns ``z(t1)`` with the penalty
``reg = λ_k E_k(t1) + λ_J E_J(t1)`` to add to the loss. These regularisers favour straight,
constant-speed trajectories, which an adaptive solver integrates in fewer steps.

The Frobenius norm is exact (``jax.jacfwd``, ``D`` Jacobian-vector products per evaluation; for
small ``D``) or Hutchinson's unbiased estimate ``‖J‖_F² = E[‖J ε‖²]`` with ``E[εεᵀ] = I``, one
``jax.jvp`` per evaluation that also yields ``f``, with ``ε`` drawn from ``key`` and held fixed
for the whole solve.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree

from .._solution import Solution
from ._node import NeuralODE, check_field_output

__all__ = ["RegularisedNeuralODE"]

_TRACES = ("hutchinson", "exact")
_NOISES = ("gaussian", "rademacher")


def _sq_norm(tree) -> Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


class _RegularisedField(eqx.Module):
    """``(z, e) ↦ (f(z, t), s [‖f‖², ‖∂f/∂z‖_F²])``; ``args = (user_args, ε or None, s)``.

    ``s = sign(t1 - t0)``: the energies are integrals over ``|dt|``, positive backwards in time too.
    """

    field: Any
    jacobian: bool = eqx.field(static=True)
    estimate: str = eqx.field(static=True)

    def __call__(self, state, t, args):
        z, _ = state
        user_args, eps, sign = args

        def f(z):
            return self.field(z, t, user_args)

        if not self.jacobian:
            dz, jac = f(z), jnp.zeros((), jnp.result_type(t))
        elif self.estimate == "hutchinson":
            dz, jeps = jax.jvp(f, (z,), (eps,))
            jac = _sq_norm(jeps)
        else:
            dz = f(z)
            flat, unravel = ravel_pytree(z)
            jac = _sq_norm(jax.jacfwd(lambda x: ravel_pytree(f(unravel(x)))[0])(flat))
        dt_dtype = jax.tree.leaves(z)[0].dtype
        return dz, (sign * jnp.stack([_sq_norm(dz), jac])).astype(dt_dtype)


class RegularisedNeuralODE(eqx.Module):
    """A :class:`NeuralODE` that also returns ``λ_k ∫‖f‖² dt + λ_J ∫‖∂f/∂z‖_F² dt``.

    ``model(z0, key=key)`` returns ``(out, reg)``: ``out`` as :class:`NeuralODE` would return it
    (``z(t1)`` or the states at ``ts``) and ``reg`` a scalar, the weighted penalty at ``t1``, to
    add to the loss (``loss = task_loss + reg``; average it over a vmapped batch). Both integrals
    are computed in the same adaptive solve as ``z`` (module docstring). The unweighted integrals
    are in ``model.solve(z0, key=key).zs[1]`` (``(T, 2)``: ``[E_k, E_J]`` at each save time).

    Attributes:
        node: the underlying :class:`NeuralODE` (holds the field and the solver settings).
        kinetic: ``λ_k ≥ 0`` (static).
        jacobian: ``λ_J ≥ 0`` (static).
        estimate: ``"hutchinson"`` (default; needs ``key``) or ``"exact"``.
        noise: Hutchinson noise, ``"gaussian"`` (default, as Finlay et al.) or ``"rademacher"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from odejax.nn import MLPField, RegularisedNeuralODE
        >>> m = RegularisedNeuralODE(MLPField(2, 8, 1, key=jax.random.key(0)),
        ...                          kinetic=0.01, jacobian=0.01)
        >>> z1, reg = m(jnp.ones(2), key=jax.random.key(1)); z1.shape, reg.shape
        ((2,), ())
    """

    node: NeuralODE
    kinetic: float = eqx.field(static=True)
    jacobian: float = eqx.field(static=True)
    estimate: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)

    def __init__(
        self,
        field: Any,
        *,
        kinetic: float = 0.01,
        jacobian: float = 0.01,
        estimate: str = "hutchinson",
        noise: str = "gaussian",
        **kwargs,
    ):
        """Args:
        field: the vector field ``f(z, t, args)``.
        kinetic: weight ``λ_k`` of the kinetic energy ``∫‖f‖² dt``.
        jacobian: weight ``λ_J`` of ``∫‖∂f/∂z‖_F² dt`` (``0`` skips the Jacobian entirely).
        estimate: ``"hutchinson"`` or ``"exact"`` Frobenius norm.
        noise: ``"gaussian"`` or ``"rademacher"`` Hutchinson noise.
        **kwargs: the settings of :class:`NeuralODE` (``t0``, ``t1``, ``ts``, ``solver``, ...).
        """
        if estimate not in _TRACES:
            raise ValueError(f"estimate must be one of {_TRACES}, got {estimate!r}.")
        if noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {noise!r}.")
        for name, lam in (("kinetic", kinetic), ("jacobian", jacobian)):
            if not float(lam) >= 0:
                raise ValueError(f"{name} must be a non-negative weight, got {lam!r}.")
        self.node = NeuralODE(field, **kwargs)
        self.kinetic = float(kinetic)
        self.jacobian = float(jacobian)
        self.estimate = estimate
        self.noise = noise

    @property
    def field(self) -> Any:
        return self.node.field

    def _noise(self, z0, key):
        if self.jacobian == 0 or self.estimate == "exact":
            return None
        if key is None:
            raise ValueError(
                "RegularisedNeuralODE: the Hutchinson Jacobian estimate needs key=; pass a"
                " jax.random key, or use estimate='exact' (small D) or jacobian=0."
            )
        leaves, treedef = jax.tree.flatten(z0)
        keys = jax.random.split(key, len(leaves))
        if self.noise == "gaussian":
            eps = [
                jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)
            ]
        else:
            eps = [
                jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x))
                for k, x in zip(keys, leaves)
            ]
        return jax.tree.unflatten(treedef, eps)

    def solve(self, z0: Any, args: Any = None, *, key: Array | None = None, ts=None) -> Solution:
        """The :class:`odejax.Solution` of the augmented solve; ``sol.zs == (zs, E)`` with ``E``
        of shape ``(T, 2)`` holding the unweighted ``[E_k, E_J]`` at each save time.

        Args:
            z0: initial state, e.g. ``(D,)``.
            args: passed to the field.
            key: ``jax.random`` key for the Hutchinson noise (needed unless
                ``estimate="exact"`` or ``jacobian == 0``).
            ts: optional save times overriding the model's ``ts``.
        """
        check_field_output("RegularisedNeuralODE", self.node.field, z0, self.node.t0, args)
        dtype = jax.tree.leaves(z0)[0].dtype if jax.tree.leaves(z0) else jnp.float32
        state0 = (z0, jnp.zeros((2,), jnp.result_type(dtype)))
        aug = _RegularisedField(self.node.field, self.jacobian > 0, self.estimate)
        node = eqx.tree_at(lambda n: n.field, self.node, aug)
        # The solve ends at t1, or at the last of the save times that override the model's.
        t_end = self.node.t1 if ts is None else jnp.asarray(ts)[-1]
        sign = jnp.where(jnp.asarray(t_end) >= jnp.asarray(self.node.t0), 1, -1)
        return node.solve(state0, (args, self._noise(z0, key), sign.astype(dtype)), ts=ts)

    def __call__(
        self, z0: Any, args: Any = None, *, key: Array | None = None, ts=None
    ) -> tuple[Any, Array]:
        """``(out, reg)``: ``z(t1)`` (or the states at ``ts``) and the scalar weighted penalty."""
        out, reg, _ = self.with_stats(z0, args, key=key, ts=ts)
        return out, reg

    def with_stats(
        self, z0: Any, args: Any = None, *, key: Array | None = None, ts=None
    ) -> tuple[Any, Array, dict[str, Array]]:
        """``(out, reg, stats)``: as ``__call__`` plus the solve's statistics."""
        sol = self.solve(z0, args, key=key, ts=ts)
        zs, energies = sol.zs
        out = self.node._output(zs, ts)
        e = energies[-1]
        reg = self.kinetic * e[0] + self.jacobian * e[1]
        return out, reg, sol.stats
