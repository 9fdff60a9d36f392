"""Continuous normalising flows: :class:`CNF` (Chen et al. 2018 §4; FFJORD, Grathwohl et al. 2019).

A CNF transports a base density ``p0 = N(0, I)`` at time ``t0`` along the ODE
``dz/dt = f(z, t)`` to a model density ``p1`` at ``t1``. By the instantaneous change of variables
(Chen et al. 2018, Theorem 1) the log-density along a trajectory obeys

.. math::

    \\frac{d}{dt} \\begin{bmatrix} z(t) \\\\ \\log p(z(t)) \\end{bmatrix}
    = \\begin{bmatrix} f(z(t), t) \\\\ -\\operatorname{tr}\\frac{\\partial f}{\\partial z}(z(t), t)
    \\end{bmatrix},

so one solve of the augmented state ``(z, log p)`` from a data point ``x = z(t1)`` back to ``t0``
gives both the base point ``z(t0)`` and the log-density:

.. math::

    \\log p_1(x) = \\log p_0(z(t_0)) - \\int_{t_0}^{t_1}
    \\operatorname{tr}\\frac{\\partial f}{\\partial z}(z(t), t)\\, dt.

The trace is computed exactly with ``jax.jacfwd`` (``D`` Jacobian-vector products; fine for small
``D``) or estimated without bias by Hutchinson's estimator (FFJORD)
``tr(J) = E[εᵀ J ε]`` with ``E[ε εᵀ] = I`` (Rademacher or Gaussian ``ε``), one ``jax.jvp`` per
evaluation, with ``ε`` drawn once and held fixed for the whole solve.

For training, :meth:`CNF.batch_log_prob` solves a whole batch ``(N, D)`` as ONE ODE (one shared
adaptive step size, as FFJORD does): its adjoint then carries one copy of the parameters'
cotangent instead of one per sample (which is what ``jax.vmap(cnf.log_prob)`` does), so a
training step is several times cheaper.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .._solve import DEFAULT_MAX_STEPS, solve

__all__ = ["CNF"]

_TRACES = ("exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")


def _std_normal_log_prob(z: Array) -> Array:
    """``log N(z; 0, I)`` of one ``(D,)`` point: ``-½‖z‖² - (D/2) log 2π``."""
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class _Augmented(eqx.Module):
    """The augmented dynamics ``(z, log p) ↦ (f(z, t), -tr ∂f/∂z)`` as a vector field.

    ``args`` is ``None`` (exact trace) or the fixed Hutchinson noise ``ε`` of shape ``(D,)``.
    A Module (not a closure) so that the field's parameters are inputs of the solve's adjoint.
    """

    field: Any
    trace: str = eqx.field(static=True)

    def __call__(self, state: tuple[Array, Array], t: Array, eps: Array | None):
        z, _ = state

        def fn(z):
            return self.field(z, t, None)

        if self.trace == "exact":
            jac, dz = jax.jacfwd(lambda z: (fn(z), fn(z)), has_aux=True)(z)
            tr = jnp.trace(jac)
        else:
            dz, jv = jax.jvp(fn, (z,), (eps.astype(z.dtype),))
            tr = jnp.vdot(eps.astype(z.dtype), jv)
        return dz, -tr.astype(state[1].dtype)


class _BatchAugmented(eqx.Module):
    """:class:`_Augmented` for a batch ``(N, D)`` solved as one state: ``(zs, log ps)`` ``(N,)``.

    ``args`` is ``None`` (exact trace) or the ``(N, D)`` Hutchinson noise (one row per sample).
    """

    field: Any
    trace: str = eqx.field(static=True)

    def __call__(self, state: tuple[Array, Array], t: Array, eps: Array | None):
        zs, lps = state

        def fn(zs):
            return jax.vmap(self.field, in_axes=(0, None, None))(zs, t, None)

        if self.trace == "exact":

            def one(z):
                jac, dz = jax.jacfwd(lambda z: (self.field(z, t, None),) * 2, has_aux=True)(z)
                return dz, jnp.trace(jac)

            dz, tr = jax.vmap(one)(zs)
        else:
            eps = eps.astype(zs.dtype)
            dz, jv = jax.jvp(fn, (zs,), (eps,))  # row i: J_i ε_i (the samples are independent)
            tr = jnp.sum(eps * jv, axis=-1)
        return dz, -tr.astype(lps.dtype)


class CNF(eqx.Module):
    """A continuous normalising flow on ``D``-dimensional data (FFJORD when ``trace="hutchinson"``).

    The base density ``N(0, I)`` lives at ``t0``, the data at ``t1``: ``sample`` solves from
    ``t0`` to ``t1``, ``log_prob`` solves the augmented state ``(z, log p)`` from ``t1`` back to
    ``t0`` in one solve (see the module docstring for the equations). Every method handles ONE
    sample; use ``jax.vmap`` for a batch (each member keeps its own adaptive step size).

    Attributes:
        field: the vector field ``f(z, t, args)`` mapping ``(D,)`` to ``(D,)`` (e.g.
            ``odejax.nn.MLPField(D, 64, 3, time="concatsquash", key=key)``); called with
            ``args=None``.
        data_size: ``D``.
        t0, t1: the time interval (default ``[0, 1]``).
        trace: ``"exact"`` (``tr`` of the ``jax.jacfwd`` Jacobian, cost ``O(D)`` JVPs per
            evaluation) or ``"hutchinson"`` (one JVP, unbiased; needs ``key=``).
        noise: Hutchinson noise, ``"rademacher"`` (±1, lowest variance) or ``"gaussian"``.
        solver, rtol, atol, max_steps, adjoint: passed to :func:`odejax.solve`.

    Example:
        >>> import jax, jax.numpy as jnp, odejax
        >>> from odejax.nn import CNF, MLPField
        >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        >>> cnf = CNF(MLPField(2, 32, 2, key=k1), trace="hutchinson")
        >>> xs = jax.random.normal(k2, (8, 2))
        >>> logp = jax.vmap(lambda x, k: cnf.log_prob(x, key=k))(xs, jax.random.split(k3, 8))
        >>> logp.shape, cnf.sample(k3, 5).shape
        ((8,), (5, 2))
    """

    field: Any
    data_size: int = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    solver: Any = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    adjoint: Any = eqx.field(static=True)

    def __init__(
        self,
        field: Any,
        data_size: int | None = None,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        trace: str = "exact",
        noise: str = "rademacher",
        solver: Any = "tsit5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        max_steps: int = DEFAULT_MAX_STEPS,
        adjoint: Any = "backsolve",
    ):
        """Args:
        field: vector field ``f(z, t, args)`` on ``(D,)`` states.
        data_size: ``D``; default: ``field.in_size`` when the field has one.
        t0, t1, trace, noise, solver, rtol, atol, max_steps, adjoint: see the class attributes.

        Raises:
            ValueError: an unknown ``trace`` or ``noise``, ``t0 == t1``, or no ``data_size``.
        """
        if data_size is None:
            data_size = getattr(field, "in_size", None)
            if not isinstance(data_size, int):
                raise ValueError(
                    "CNF needs data_size= (the dimension D of the data): the field has no"
                    " integer `in_size` attribute to infer it from."
                )
        if not isinstance(data_size, int) or isinstance(data_size, bool) or data_size < 1:
            raise ValueError(f"data_size must be a positive int, got {data_size!r}.")
        if trace not in _TRACES:
            raise ValueError(f"trace must be one of {_TRACES}, got {trace!r}.")
        if noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {noise!r}.")
        if float(t0) == float(t1):
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}.")
        self.field = field
        self.data_size = data_size
        self.t0 = float(t0)
        self.t1 = float(t1)
        self.trace = trace
        self.noise = noise
        self.solver = solver
        self.rtol = rtol
        self.atol = atol
        self.max_steps = max_steps
        self.adjoint = adjoint

    # --- helpers ----------------------------------------------------------------------------

    def _dtype(self):
        leaves = [x for x in jax.tree.leaves(self.field) if eqx.is_inexact_array(x)]
        return leaves[0].dtype if leaves else jnp.result_type(float)

    def _check_x(self, x, name: str = "x", method: str = "log_prob") -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(self._dtype())
        D = self.data_size  # noqa: N806
        if x.ndim != 1:
            hint = (
                f" For a batch of shape (N, {D}) use jax.vmap, e.g."
                f" jax.vmap(cnf.{method})({name})"
                + (
                    " or, with Hutchinson's estimator,"
                    f" jax.vmap(lambda x, k: cnf.log_prob(x, key=k))({name}, keys)."
                    if method == "log_prob"
                    else "."
                )
                if x.ndim == 2
                else ""
            )
            raise ValueError(
                f"CNF.{method} takes ONE sample: {name} must have shape ({D},), got shape"
                f" {x.shape}.{hint}"
            )
        if x.shape[0] != D:
            raise ValueError(
                f"{name} must have shape ({D},) (the CNF's data_size), got shape {x.shape}."
            )
        return self._check_dtype(x, name, method)

    def _check_dtype(self, x: Array, name: str, method: str) -> Array:
        """``x``, if the parameters' dtype does not widen it; else a ValueError naming both."""
        dtype = self._dtype()
        if jnp.promote_types(x.dtype, dtype) != x.dtype:
            raise ValueError(
                f"CNF.{method}: {name} has dtype {x.dtype} but the CNF's parameters are {dtype}:"
                f" pass {name}.astype(jnp.{dtype}), or build the field with dtype=jnp.{x.dtype}."
            )
        return x

    def _noise(self, key, shape, dtype) -> Array:
        if self.noise == "rademacher":
            return jax.random.rademacher(key, shape, dtype=dtype)
        return jax.random.normal(key, shape, dtype=dtype)

    def _eps(self, key, x: Array) -> Array | None:
        if self.trace == "exact":
            return None
        if key is None:
            raise ValueError(
                "CNF with trace='hutchinson' needs a PRNG key for its noise ε: pass key=."
                " Under jax.vmap give each sample its own key (jax.random.split(key, N))."
            )
        return self._noise(key, x.shape, x.dtype)

    def _solve(self, f, z0, t0, t1, args):
        return solve(
            f,
            z0,
            t0,
            t1,
            args=args,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )

    # --- public API -------------------------------------------------------------------------

    def base_log_prob(self, z: Array) -> Array:
        """``log N(z; 0, I)`` of one ``(D,)`` point of the base distribution (at ``t0``)."""
        return _std_normal_log_prob(z)

    def log_prob_with_stats(self, x: Array, *, key: Array | None = None) -> tuple[Array, dict]:
        """:meth:`log_prob` and the solve's statistics.

        Args:
            x: one data point, shape ``(D,)``.
            key: PRNG key for Hutchinson's noise (required with ``trace="hutchinson"``;
                ignored with ``trace="exact"``).

        Returns:
            ``(log_p, stats)``: the scalar ``log p1(x)`` and the solve's ``stats`` dict
            (``num_steps``, ``num_accepted``, ``num_rejected``, ``nfe``; ``nfe`` counts
            evaluations of the augmented dynamics).
        """
        x = self._check_x(x)
        eps = self._eps(key, x)
        state0 = (x, jnp.zeros((), x.dtype))
        sol = self._solve(_Augmented(self.field, self.trace), state0, self.t1, self.t0, eps)
        z0, delta = jax.tree.map(lambda a: a[-1], sol.zs)
        # delta = ∫_{t0}^{t1} tr(∂f/∂z) dt (the -tr channel integrated backwards from t1).
        return self.base_log_prob(z0) - delta, sol.stats

    def log_prob(self, x: Array, *, key: Array | None = None) -> Array:
        """Log-density ``log p1(x)`` of ONE data point.

        Solves the augmented state ``(z, Δ)`` from ``(x, 0)`` at ``t1`` back to ``t0`` with
        ``dΔ/dt = -tr(∂f/∂z)`` and returns ``log N(z(t0); 0, I) - Δ(t0)``.

        Args:
            x: shape ``(D,)``. A batch ``(N, D)`` raises: use ``jax.vmap(cnf.log_prob)``.
            key: PRNG key for Hutchinson's noise (``trace="hutchinson"`` only). The estimate
                is unbiased over keys; ``ε`` is held fixed for the whole solve.

        Returns:
            Scalar log-density (an unbiased estimate with ``trace="hutchinson"``).

        Raises:
            ValueError: ``x`` is not of shape ``(D,)``, or ``key`` is missing for Hutchinson.
        """
        return self.log_prob_with_stats(x, key=key)[0]

    def batch_log_prob_with_stats(
        self, xs: Array, *, key: Array | None = None
    ) -> tuple[Array, dict]:
        """Log-densities of a batch ``(N, D)`` from ONE solve of the stacked augmented state.

        All samples share the adaptive step size (the error norm runs over the whole batch), so
        the values agree with :meth:`log_prob` to the solver's tolerance, not bit for bit. Under
        reverse mode the adjoint carries one parameter cotangent for the batch instead of one per
        sample: the cheap way to train (FFJORD's). Use :meth:`log_prob` under ``jax.vmap`` when
        each sample should keep its own step size.

        Args:
            xs: data points, shape ``(N, D)``.
            key: PRNG key for Hutchinson's noise (one ``ε`` per sample, drawn from it; required
                with ``trace="hutchinson"``).

        Returns:
            ``(log_ps, stats)``: ``(N,)`` log-densities and the solve's ``stats`` dict (scalars:
            ``nfe`` counts evaluations of the batched dynamics).

        Raises:
            ValueError: ``xs`` is not of shape ``(N, D)``, or ``key`` is missing for Hutchinson.
        """
        xs = jnp.asarray(xs)
        if not jnp.issubdtype(xs.dtype, jnp.floating):
            xs = xs.astype(self._dtype())
        if xs.ndim != 2 or xs.shape[1] != self.data_size:
            raise ValueError(
                f"CNF.batch_log_prob takes a batch: xs must have shape (N, {self.data_size}),"
                f" got shape {xs.shape}."
            )
        xs = self._check_dtype(xs, "xs", "batch_log_prob")
        eps = None
        if self.trace == "hutchinson":
            if key is None:
                raise ValueError(
                    "CNF with trace='hutchinson' needs a PRNG key for its noise ε: pass key=."
                )
            eps = self._noise(key, xs.shape, xs.dtype)
        state0 = (xs, jnp.zeros(xs.shape[:1], xs.dtype))
        dyn = _BatchAugmented(self.field, self.trace)
        sol = self._solve(dyn, state0, self.t1, self.t0, eps)
        z0, delta = jax.tree.map(lambda a: a[-1], sol.zs)
        return jax.vmap(self.base_log_prob)(z0) - delta, sol.stats

    def batch_log_prob(self, xs: Array, *, key: Array | None = None) -> Array:
        """``(N,)`` log-densities of a batch ``(N, D)`` in one solve (see
        :meth:`batch_log_prob_with_stats`)."""
        return self.batch_log_prob_with_stats(xs, key=key)[0]

    def transform(self, z0: Array) -> Array:
        """Push one base point ``z0`` of shape ``(D,)`` through the flow: ``z(t1)``."""
        z0 = self._check_x(z0, "z0", "transform")
        sol = self._solve(self.field, z0, self.t0, self.t1, None)
        return sol.zs[-1]

    def inverse(self, x: Array) -> Array:
        """Pull one data point ``x`` of shape ``(D,)`` back to the base: ``z(t0)``."""
        x = self._check_x(x, method="inverse")
        sol = self._solve(self.field, x, self.t1, self.t0, None)
        return sol.zs[-1]

    def sample(self, key: Array, n: int) -> Array:
        """Draw ``n`` samples: ``z0 ~ N(0, I)`` at ``t0``, solved forward to ``t1``.

        Args:
            key: PRNG key.
            n: number of samples (a Python int).

        Returns:
            Array of shape ``(n, D)``.
        """
        z0 = jax.random.normal(key, (n, self.data_size), dtype=self._dtype())
        return jax.vmap(self.transform)(z0)

    def sample_and_log_prob(self, key: Array, n: int) -> tuple[Array, Array]:
        """Draw ``n`` samples with their log-densities in one augmented forward solve each.

        Starting from ``(z0, log N(z0; 0, I))`` at ``t0`` the augmented state is solved to
        ``t1``, where it holds ``(x, log p1(x))``.

        Args:
            key: PRNG key (also drives Hutchinson's noise, when used).
            n: number of samples.

        Returns:
            ``(xs, log_ps)`` of shapes ``(n, D)`` and ``(n,)``.
        """
        kz, ke = jax.random.split(key)
        dtype = self._dtype()
        z0 = jax.random.normal(kz, (n, self.data_size), dtype=dtype)
        dyn = _Augmented(self.field, self.trace)

        def one(z, k):
            eps = None if self.trace == "exact" else self._noise(k, z.shape, z.dtype)
            sol = self._solve(dyn, (z, self.base_log_prob(z)), self.t0, self.t1, eps)
            return jax.tree.map(lambda a: a[-1], sol.zs)

        return jax.vmap(one)(z0, jax.random.split(ke, n))
