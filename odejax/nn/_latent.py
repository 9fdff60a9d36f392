"""Latent ODEs for irregularly-sampled time series (Rubanova, Chen & Duvenaud 2019) and an RNN
baseline.

:class:`LatentODE` is a variational auto-encoder whose generative model is an ODE in a latent
space:

.. math::

    z_0 \\sim \\mathcal N(0, I), \\qquad z(t) = z_0 + \\int_{t_0}^{t} f_θ(z(s))\\, ds, \\qquad
    y_i \\sim \\mathcal N(g_θ(z(t_i)), σ^2 I),

and whose recognition model ``q_φ(z_0 | y) = N(μ, diag(s²))`` is an **ODE-RNN** run backwards in
time over the observations: the hidden state ``h`` jumps at each observation by a GRU cell and
flows between observation times by its own neural ODE ``dh/dt = f_φ(h)``,

.. math::

    h_{T-1} = \\mathrm{GRU}([y_{T-1} ⊙ m_{T-1}, m_{T-1}], 0), \\qquad
    h_i = \\mathrm{GRU}\\big([y_i ⊙ m_i, m_i],\\;
    \\mathrm{ODESolve}(f_φ, h_{i+1}, t_{i+1} \\to t_i)\\big),

(the GRU update is skipped at a time with no observed entry), then ``(μ, log s) = W h_0``. With
``encoder="rnn"`` the encoder is instead a plain GRU run backwards over the observations with the
time gap as an extra input (Chen et al. 2018 §5.1): ``h_i = GRU([y_i ⊙ m_i, m_i, t_j - t_i], h_j)``,
``t_j`` the next observed time (``0`` at the last one); no solves, so it is much cheaper. The loss
is the negative evidence lower bound, one reparameterised sample ``z_0 = μ + s ⊙ ε``:

.. math::

    \\mathrm{ELBO} = \\sum_{i,d} m_{id} \\log \\mathcal N(y_{id}; g_θ(z(t_i))_d, σ^2)
    - \\mathrm{KL}\\big(\\mathcal N(μ, s^2) \\,\\|\\, \\mathcal N(0, I)\\big),
    \\qquad \\mathrm{KL} = \\tfrac12 \\sum_l \\big(μ_l^2 + s_l^2 - 1 - 2 \\log s_l\\big).

Observation times may differ between samples: put all samples on the union grid ``ts`` of their
times and mark which entries each one observed with ``mask`` (shape ``(T,)`` or ``(T, D)``).

:class:`RNNBaseline` is the paper's autoregressive RNN baseline: a GRU reads ``[y ⊙ m, m, Δt]``
forwards in time and predicts the next observation from its hidden state and the time step.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from .._solve import DEFAULT_MAX_STEPS, solve
from ._fields import MLPField

__all__ = ["LatentODE", "RNNBaseline"]

_LOG_2PI = float(np.log(2 * np.pi))


# --- input checks ---------------------------------------------------------------------------


def check_increasing(ts: Any, name: str, owner: str, *, min_len: int = 1) -> Array:
    """``ts`` as a 1-D array, checked to be strictly increasing.

    Checked in Python when ``ts`` is concrete (a clear ``ValueError`` at trace time), else with
    ``equinox.error_if`` at run time (under ``jax.jit`` with traced times).

    Args:
        ts: the times.
        name: the argument's name, for the message.
        owner: the calling method, for the message.
        min_len: the fewest times allowed.

    Returns:
        ``ts`` as an array (wrapped in a run-time check when traced).

    Raises:
        ValueError: ``ts`` is not 1-D with at least ``min_len`` entries, or not strictly increasing.
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < min_len:
        raise ValueError(
            f"{owner}: {name} must be a 1-D array of at least {min_len} times, got shape"
            f" {ts.shape}. For a batch with one time grid per sample, use jax.vmap."
        )
    msg = (
        f"{owner}: {name} must be strictly increasing (put every sample on the sorted union of"
        " their observation times and mark the unobserved entries with `mask`)"
    )
    concrete = _concrete(ts)
    if concrete is None:
        return eqx.error_if(ts, jnp.any(jnp.diff(ts) <= 0) | jnp.any(jnp.isnan(ts)), msg + ".")
    bad = np.flatnonzero(~(np.diff(concrete) > 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{msg}; got {name}[{i}] = {concrete[i]:.6g} followed by {name}[{i + 1}] ="
            f" {concrete[i + 1]:.6g}."
        )
    return ts


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array when its value is known at trace time; ``None`` when traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_series(ts, ys, mask, owner: str, data_size: int, dtype, names=("ts", "ys", "mask")):
    """Validate one series: ``ts`` ``(T,)`` increasing, ``ys`` ``(T, D)``, ``mask`` → ``(T, D)``."""
    tn, yn, mn = names
    ts = check_increasing(ts, tn, owner, min_len=2)
    T = ts.shape[0]  # noqa: N806
    ys = jnp.asarray(ys)
    if ys.ndim == 3:
        raise ValueError(
            f"{owner}: {yn} must be ONE series of shape ({T}, {data_size}), got the batch shape"
            f" {ys.shape}; use jax.vmap over the batch (or the model's batched `loss`)."
        )
    if ys.shape != (T, data_size):
        raise ValueError(
            f"{owner}: {yn} must have shape (len({tn}), data_size) = ({T}, {data_size}), got"
            f" {ys.shape}."
        )
    ys = ys.astype(dtype)
    if mask is None:
        mask = jnp.ones((T, data_size), dtype)
    else:
        mask = jnp.asarray(mask)
        if mask.shape == (T,):
            mask = jnp.broadcast_to(mask[:, None], (T, data_size))
        elif mask.shape != (T, data_size):
            raise ValueError(
                f"{owner}: {mn} must have shape ({T},) (per time) or ({T}, {data_size}) (per"
                f" entry), got {mask.shape}."
            )
        mask = mask.astype(dtype)
    ys = jnp.where(mask > 0, ys, 0)  # unobserved entries may hold anything, even nan
    return ts, ys, mask


def _param_dtype(module) -> Any:
    leaves = [x for x in jax.tree.leaves(module) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)


def _check_batch(ts, ys, mask, owner: str, data_size: int, dtype):
    """Validate a batch: ``ys`` ``(N, T, D)``, ``ts`` ``(T,)`` shared or ``(N, T)``, ``mask``
    ``None``, ``(N, T)`` or ``(N, T, D)`` → ``(ts, ys, mask (N, T, D))``."""
    ts = jnp.asarray(ts)
    ys = jnp.asarray(ys)
    if ys.ndim != 3:
        raise ValueError(
            f"{owner}: ys must be one series (T, {data_size}) or a batch (N, T, {data_size}), got"
            f" shape {ys.shape}."
        )
    if ts.ndim == 2 and ts.shape[0] != ys.shape[0]:
        raise ValueError(
            f"{owner}: ts of shape {ts.shape} gives one time grid per series but ys holds"
            f" {ys.shape[0]} series; pass ts of shape (T,) (shared) or ({ys.shape[0]}, T)."
        )
    if mask is not None:
        mask = jnp.asarray(mask)
        want = ((ys.shape[0], ys.shape[1]), ys.shape)
        if mask.shape not in want:
            raise ValueError(
                f"{owner}: the mask of a batch must have shape {want[0]} or {want[1]} (one row"
                f" per series, like ys of shape {ys.shape}), got {mask.shape}."
            )
    ts_axis = 0 if ts.ndim == 2 else None
    m_axis = None if mask is None else 0

    def one(t, y, m):
        return _check_series(t, y, m, owner, data_size, dtype)

    return jax.vmap(one, in_axes=(ts_axis, 0, m_axis), out_axes=(ts_axis, 0, 0))(ts, ys, mask)


@eqx.filter_jit
def _jit_call(fn, *args):
    """``fn(*args)`` compiled once per function and argument shapes (``fn`` is static)."""
    return fn(*args)


# --- latent ODE -------------------------------------------------------------------------------


class LatentODE(eqx.Module):
    """Latent ODE with an ODE-RNN (Rubanova et al. 2019) or GRU encoder, for ONE series at a time.

    Shapes: ``T`` times, ``D = data_size`` observed channels, ``L = latent_size``,
    ``H = hidden_size``. Each method takes one series (``ts`` ``(T,)``, ``ys`` ``(T, D)``,
    ``mask`` ``(T,)`` or ``(T, D)``, 1 = observed); :meth:`loss` also takes a batch
    ``(N, T, D)`` and vmaps. ``z0`` lives at the first time ``ts[0]`` of the grid.

    Attributes:
        encoder_cell: GRU cell, input ``[y ⊙ m, m]`` (``2D``; ``[y ⊙ m, m, Δt]``, ``2D + 1``,
            with ``encoder="rnn"``) → hidden ``H``.
        encoder_field: the hidden state's ODE ``dh/dt = f_φ(h)`` between observations
            (``None`` with ``encoder="rnn"``).
        to_posterior: ``h_0 ↦ (μ, log s)``, ``H → 2L``.
        latent_field: the latent dynamics ``dz/dt = f_θ(z)`` (autonomous :class:`MLPField`).
        decoder: ``z ↦ ŷ``, ``L → D`` (an ``eqx.nn.MLP``; ``decoder_depth=0`` is linear).
        obs_std: the fixed observation noise ``σ`` of the Gaussian likelihood.
        solver, rtol, atol, max_steps, adjoint, dt0: the latent solve's settings (``dt0`` is
            the step of a fixed-step solver, or the initial step of an adaptive one).
        encoder_solver, encoder_rtol, encoder_atol, encoder_dt0: the encoder's solves
            (``encoder_dt0`` is needed by fixed-step solvers such as ``"euler"``).
        encoder: ``"odernn"`` (default) or ``"rnn"`` (static; see the module docstring).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from odejax.nn import LatentODE
        >>> model = LatentODE(2, 4, 16, key=jax.random.key(0))
        >>> ts = jnp.linspace(0.0, 1.0, 10); ys = jnp.zeros((10, 2)); mask = jnp.ones(10)
        >>> model.elbo(ts, ys, mask, jax.random.key(1)).shape
        ()
        >>> model.predict(ts, ys, mask, jnp.linspace(0.0, 2.0, 20)).shape
        (20, 2)
    """

    encoder_cell: eqx.nn.GRUCell
    encoder_field: MLPField | None
    to_posterior: eqx.nn.Linear
    latent_field: MLPField
    decoder: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    solver: Any = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    adjoint: Any = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    encoder_solver: Any = eqx.field(static=True)
    encoder_rtol: float = eqx.field(static=True)
    encoder_atol: float = eqx.field(static=True)
    encoder_dt0: float | None = eqx.field(static=True)
    encoder: str = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int = 4,
        hidden_size: int = 25,
        *,
        field_width: int = 64,
        field_depth: int = 2,
        encoder_width: int = 64,
        encoder_depth: int = 1,
        decoder_width: int = 64,
        decoder_depth: int = 1,
        activation=jnp.tanh,
        obs_std: float = 0.1,
        solver: Any = "tsit5",
        rtol: float = 1e-3,
        atol: float = 1e-5,
        max_steps: int = DEFAULT_MAX_STEPS,
        adjoint: Any = "backsolve",
        dt0: float | None = None,
        encoder_solver: Any = "tsit5",
        encoder_rtol: float = 1e-3,
        encoder_atol: float = 1e-4,
        encoder_dt0: float | None = None,
        encoder: str = "odernn",
        key: Array,
        dtype=None,
    ):
        """Args:
        data_size: ``D``, channels per observation.
        latent_size: ``L``.
        hidden_size: ``H``, the encoder's hidden state.
        field_width, field_depth: the latent field's MLP (``L → width × depth → L``).
        encoder_width, encoder_depth: the encoder's hidden-state ODE MLP.
        decoder_width, decoder_depth: the decoder MLP (``depth=0``: linear).
        activation: nonlinearity of the fields and the decoder.
        obs_std: fixed observation noise ``σ``.
        solver, rtol, atol, max_steps, adjoint, dt0: settings of the latent solve.
        encoder_solver, encoder_rtol, encoder_atol, encoder_dt0: settings of the encoder's
            solves between observations (also use ``max_steps`` and ``adjoint``).
        encoder: ``"odernn"``: an ODE-RNN (a solve between consecutive observations);
            ``"rnn"``: a GRU with the time gaps as input (no solves; the ``encoder_*`` solver
            settings and ``encoder_width``/``encoder_depth`` are then unused).
        key: PRNG key for the initialisation.
        dtype: parameter dtype (default: JAX's default float).
        """
        for name, v in (("data_size", data_size), ("latent_size", latent_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LatentODE: {name} must be a positive int, got {v!r}.")
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 1:
            raise ValueError(f"LatentODE: hidden_size must be a positive int, got {hidden_size!r}.")
        if not obs_std > 0:
            raise ValueError(f"LatentODE: obs_std must be positive, got {obs_std!r}.")
        if encoder not in ("odernn", "rnn"):
            raise ValueError(f"LatentODE: encoder must be 'odernn' or 'rnn', got {encoder!r}.")
        k = jax.random.split(key, 5)
        cell_in = 2 * data_size + (1 if encoder == "rnn" else 0)
        self.encoder_cell = eqx.nn.GRUCell(cell_in, hidden_size, dtype=dtype, key=k[0])
        self.encoder_field = None
        if encoder == "odernn":
            self.encoder_field = MLPField(
                hidden_size,
                encoder_width,
                encoder_depth,
                activation=activation,
                time=None,
                key=k[1],
                dtype=dtype,
            )
        self.to_posterior = eqx.nn.Linear(hidden_size, 2 * latent_size, dtype=dtype, key=k[2])
        self.latent_field = MLPField(
            latent_size,
            field_width,
            field_depth,
            activation=activation,
            time=None,
            key=k[3],
            dtype=dtype,
        )
        self.decoder = eqx.nn.MLP(
            latent_size,
            data_size,
            decoder_width,
            decoder_depth,
            activation=activation,
            dtype=dtype,
            key=k[4],
        )
        self.data_size = data_size
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.obs_std = float(obs_std)
        self.solver = solver
        self.rtol = rtol
        self.atol = atol
        self.max_steps = int(max_steps)
        self.adjoint = adjoint
        self.dt0 = dt0
        self.encoder_solver = encoder_solver
        self.encoder_rtol = encoder_rtol
        self.encoder_atol = encoder_atol
        self.encoder_dt0 = encoder_dt0
        self.encoder = encoder

    def _check(self, ts, ys, mask, names=("ts", "ys", "mask"), owner="LatentODE"):
        return _check_series(ts, ys, mask, owner, self.data_size, _param_dtype(self), names)

    def _encode_rnn(self, ts, ys, mask) -> Array:
        """GRU backwards over a checked series, time gaps as input → the final hidden state."""
        dtype = ys.dtype
        observed = jnp.any(mask > 0, axis=-1)

        def step(carry, x):
            h, t_next, seen = carry
            t, y, m, obs = x
            dt = jnp.where(seen, t_next - t, 0).astype(dtype)
            h_new = self.encoder_cell(jnp.concatenate([y * m, m, dt[None]]), h)
            return (
                jnp.where(obs, h_new, h),
                jnp.where(obs, t, t_next),
                seen | obs,
            ), None

        rev = slice(None, None, -1)
        init = (jnp.zeros(self.hidden_size, dtype), ts[-1], jnp.zeros((), bool))
        (h, _, _), _ = lax.scan(step, init, (ts[rev], ys[rev], mask[rev], observed[rev]))
        return h

    def _encode(self, ts, ys, mask) -> tuple[Array, Array, Array]:
        """The encoder backwards over a checked series → ``(mean, log_std, encoder nfe)``."""
        if self.encoder == "rnn":
            out = self.to_posterior(self._encode_rnn(ts, ys, mask))
            nfe = jnp.zeros((), jnp.int32)
            return out[: self.latent_size], out[self.latent_size :], nfe
        dtype = ys.dtype
        observed = jnp.any(mask > 0, axis=-1)

        def update(h, y, m, obs):
            h_new = self.encoder_cell(jnp.concatenate([y * m, m]), h)
            return jnp.where(obs, h_new, h)

        h = update(jnp.zeros(self.hidden_size, dtype), ys[-1], mask[-1], observed[-1])

        def step(carry, x):
            h, seen = carry
            t_hi, t_lo, y, m, obs = x
            sol = solve(
                self.encoder_field,
                h,
                t_hi,
                t_lo,
                solver=self.encoder_solver,
                rtol=self.encoder_rtol,
                atol=self.encoder_atol,
                dt0=self.encoder_dt0,
                max_steps=self.max_steps,
                adjoint=self.adjoint,
            )
            # Until the last observation is reached (from the end) h stays at its start: unobserved
            # trailing times (padding to a union of times) leave the encoding unchanged.
            h = jnp.where(seen, sol.zs[-1], h)
            return (update(h, y, m, obs), seen | obs), sol.stats["nfe"]

        rev = slice(None, None, -1)
        xs = (ts[1:][rev], ts[:-1][rev], ys[:-1][rev], mask[:-1][rev], observed[:-1][rev])
        (h, _), nfes = lax.scan(step, (h, observed[-1]), xs)
        nfe = jnp.sum(nfes)
        out = self.to_posterior(h)
        return out[: self.latent_size], out[self.latent_size :], nfe

    def encode(self, ts: Array, ys: Array, mask: Array | None = None) -> tuple[Array, Array]:
        """The posterior ``q(z0 | y) = N(mean, exp(log_std)²)`` of one series.

        Args:
            ts: ``(T,)`` strictly increasing observation times.
            ys: ``(T, D)`` observations (unobserved entries may hold anything, even nan).
            mask: ``(T,)`` or ``(T, D)``, 1 where observed (default: all observed).

        Returns:
            ``(mean, log_std)``, each ``(L,)``.
        """
        ts, ys, mask = self._check(ts, ys, mask)
        mean, log_std, _ = _jit_call(LatentODE._encode, self, ts, ys, mask)
        return mean, log_std

    def _latent_solve(self, z0, t0, ts):
        return solve(
            self.latent_field,
            z0,
            t0,
            ts[-1],
            ts=ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )

    def _decode(self, z0, t0, ts):
        return jax.vmap(self.decoder)(self._latent_solve(z0, t0, ts).zs)

    def decode(self, z0: Array, t0: Array, ts: Array) -> Array:
        """Solve the latent ODE from ``z(t0) = z0`` and decode at ``ts``.

        Args:
            z0: ``(L,)`` latent initial state.
            t0: scalar initial time.
            ts: ``(T,)`` increasing output times, all ``≥ t0``.

        Returns:
            ``(T, D)`` predicted means ``g(z(ts))``.
        """
        ts = check_increasing(ts, "ts", "LatentODE.decode")
        t0 = jnp.asarray(t0, ts.dtype)
        return _jit_call(LatentODE._decode, self, jnp.asarray(z0), t0, ts)

    def _posterior_sample(self, ts, ys, mask, key):
        mean, log_std, enc_nfe = self._encode(ts, ys, mask)
        z0 = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        return z0, mean, log_std, enc_nfe

    def _elbo_terms(self, ys, mask, zs, mean, log_std):
        """``(log_lik, kl)`` of one series from its latent path ``zs`` ``(T, L)``."""
        pred = jax.vmap(self.decoder)(zs)
        sigma = self.obs_std
        log_n = -0.5 * ((ys - pred) / sigma) ** 2 - math.log(sigma) - 0.5 * _LOG_2PI
        log_lik = jnp.sum(mask * log_n)
        kl = 0.5 * jnp.sum(mean**2 + jnp.exp(2.0 * log_std) - 1.0 - 2.0 * log_std)
        return log_lik, kl

    def _elbo(self, ts, ys, mask, key):
        z0, mean, log_std, enc_nfe = self._posterior_sample(ts, ys, mask, key)
        sol = self._latent_solve(z0, ts[0], ts)
        log_lik, kl = self._elbo_terms(ys, mask, sol.zs, mean, log_std)
        info = dict(log_lik=log_lik, kl=kl, nfe=sol.stats["nfe"], encoder_nfe=enc_nfe)
        return log_lik - kl, info

    def _batch_elbos(self, ts, ys, mask, keys):
        """ELBOs of a batch on a shared grid, the latent paths solved as ONE ODE ``(N, L)``."""
        z0, mean, log_std, _ = jax.vmap(self._posterior_sample, in_axes=(None, 0, 0, 0))(
            ts, ys, mask, keys
        )

        def field(zs, t, args):
            return jax.vmap(self.latent_field, in_axes=(0, None, None))(zs, t, args)

        sol = solve(
            field,
            z0,
            ts[0],
            ts[-1],
            ts=ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            dt0=self.dt0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
        )
        zs = jnp.swapaxes(sol.zs, 0, 1)  # (T, N, L) -> (N, T, L)
        log_lik, kl = jax.vmap(self._elbo_terms)(ys, mask, zs, mean, log_std)
        return log_lik - kl

    def elbo_with_stats(
        self, ts: Array, ys: Array, mask: Array | None, key: Array
    ) -> tuple[Array, dict]:
        """:meth:`elbo` and diagnostics.

        Returns:
            ``(elbo, info)``, ``info`` a dict of scalars: ``log_lik``, ``kl``, ``nfe`` (the
            latent solve's) and ``encoder_nfe`` (summed over the encoder's solves).
        """
        ts, ys, mask = self._check(ts, ys, mask)
        return _jit_call(LatentODE._elbo, self, ts, ys, mask, key)

    def elbo(self, ts: Array, ys: Array, mask: Array | None, key: Array) -> Array:
        """One-sample reparameterised ELBO of one series (see the module docstring).

        Args:
            ts: ``(T,)`` strictly increasing times (``T ≥ 2``; the union grid of a batch).
            ys: ``(T, D)`` observations.
            mask: ``(T,)`` or ``(T, D)``, 1 where observed; ``None`` for all observed.
            key: PRNG key of the sample ``z0 = μ + s ⊙ ε``.

        Returns:
            Scalar ``Σ m log N(y; ŷ, σ²) - KL(q(z0) ‖ N(0, I))``.

        Raises:
            ValueError: ``ts`` not strictly increasing (checked when tracing if concrete, else
                at run time by ``equinox.error_if``) or inconsistent shapes.
        """
        return self.elbo_with_stats(ts, ys, mask, key)[0]

    def _loss(self, ts, ys, mask, key):
        keys = jax.random.split(key, ys.shape[0])
        if ts.ndim == 1:
            return -jnp.mean(self._batch_elbos(ts, ys, mask, keys))
        elbos, _ = jax.vmap(self._elbo, in_axes=(0, 0, 0, 0))(ts, ys, mask, keys)
        return -jnp.mean(elbos)

    def loss(self, ts: Array, ys: Array, mask: Array | None, key: Array) -> Array:
        """Negative ELBO of one series, or its mean over a batch.

        For a batch on a shared grid (``ts`` of shape ``(T,)``) the latent paths of all series
        are solved as ONE ODE on the stacked ``(N, L)`` state (one adaptive step size for the
        batch; the adjoint then carries one cotangent of the latent field's parameters instead
        of one per series, several times faster to train); with one grid per series
        (``(N, T)``) every series is solved on its own (vmapped).

        Args:
            ts: ``(T,)`` shared times, or ``(N, T)`` one grid per series.
            ys: ``(T, D)`` one series or ``(N, T, D)`` a batch.
            mask: ``(T,)``/``(T, D)``, or ``(N, T)``/``(N, T, D)`` for a batch; ``None`` for
                all observed.
            key: PRNG key (split over the batch).

        Returns:
            Scalar ``-ELBO`` or ``mean_n(-ELBO_n)``.
        """
        ys = jnp.asarray(ys)
        if ys.ndim == 2:
            return -self.elbo(ts, ys, mask, key)
        ts, ys, mask = _check_batch(
            ts, ys, mask, "LatentODE.loss", self.data_size, _param_dtype(self)
        )
        return _jit_call(LatentODE._loss, self, ts, ys, mask, key)

    def _predict(self, ts_obs, ys, mask, ts_out, key):
        mean, log_std, _ = self._encode(ts_obs, ys, mask)
        z0 = mean
        if key is not None:
            z0 = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        return self._decode(z0, ts_obs[0], ts_out)

    def predict(
        self,
        ts_obs: Array,
        ys: Array,
        mask: Array | None,
        ts_out: Array,
        key: Array | None = None,
    ) -> Array:
        """Reconstruct or extrapolate: encode the observed series, decode at ``ts_out``.

        Args:
            ts_obs: ``(T,)`` strictly increasing observation times.
            ys: ``(T, D)`` observations.
            mask: ``(T,)`` or ``(T, D)`` observed entries (``None``: all).
            ts_out: ``(T_out,)`` strictly increasing output times ``≥ ts_obs[0]`` (may run past
                ``ts_obs[-1]``: extrapolation).
            key: PRNG key to sample ``z0 ~ q``; ``None`` uses the posterior mean.

        Returns:
            ``(T_out, D)`` predicted observation means.
        """
        owner = "LatentODE.predict"
        ts_obs, ys, mask = self._check(ts_obs, ys, mask, ("ts_obs", "ys", "mask"), owner)
        ts_out = check_increasing(ts_out, "ts_out", owner).astype(ts_obs.dtype)
        out, obs = _concrete(ts_out), _concrete(ts_obs)
        # Traced: the solve's own run-time check of its save times applies.
        if out is not None and obs is not None and out[0] < obs[0]:
            raise ValueError(
                f"{owner}: ts_out must start at or after ts_obs[0] (z0 lives there), got"
                f" ts_out[0] = {out[0]:.6g} < ts_obs[0] = {obs[0]:.6g}."
            )
        return _jit_call(LatentODE._predict, self, ts_obs, ys, mask, ts_out, key)


# --- RNN baseline -----------------------------------------------------------------------------


class RNNBaseline(eqx.Module):
    """Autoregressive GRU with time gaps as input: the latent ODE's baseline (Rubanova et al. 2019,
    Table 2; Chen et al. 2018, Fig. 8).

    With ``Δt_k = t_k - t_{k-1}`` (``Δt_0 = 0``), for ONE series:

    .. math::

        h_k = \\mathrm{GRU}([y_k ⊙ m_k, m_k, Δt_k], h_{k-1}), \\qquad
        \\hat y_{k} = g([h_{k-1}, Δt_k]),

    trained by one-step-ahead squared error on the observed entries; :meth:`predict` rolls out
    past the last observation feeding back its own predictions (with ``m = 1``).

    Attributes:
        cell: GRU cell, ``2D + 1 → H``.
        decoder: ``[h, Δt] ↦ ŷ``, ``H + 1 → D``.
    """

    cell: eqx.nn.GRUCell
    decoder: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        hidden_size: int = 25,
        *,
        decoder_width: int = 64,
        decoder_depth: int = 1,
        key: Array,
        dtype=None,
    ):
        """Args:
        data_size: ``D``.
        hidden_size: ``H``.
        decoder_width, decoder_depth: the decoder MLP (``depth=0``: linear).
        key: PRNG key.
        dtype: parameter dtype.
        """
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(2 * data_size + 1, hidden_size, dtype=dtype, key=k1)
        self.decoder = eqx.nn.MLP(
            hidden_size + 1, data_size, decoder_width, decoder_depth, dtype=dtype, key=k2
        )
        self.data_size = data_size
        self.hidden_size = hidden_size

    def _check(self, ts, ys, mask, names=("ts", "ys", "mask"), owner="RNNBaseline"):
        return _check_series(ts, ys, mask, owner, self.data_size, _param_dtype(self), names)

    def _read(self, ts, ys, mask) -> tuple[Array, Array]:
        """Hidden states after each observation ``(T, H)``, and the ``Δt`` ``(T,)``."""
        dts = jnp.concatenate([jnp.zeros((1,), ts.dtype), jnp.diff(ts)]).astype(ys.dtype)

        def step(h, x):
            y, m, dt = x
            h = self.cell(jnp.concatenate([y * m, m, dt[None]]), h)
            return h, h

        _, hs = lax.scan(step, jnp.zeros(self.hidden_size, ys.dtype), (ys, mask, dts))
        return hs, dts

    def _one_step(self, ts, ys, mask):
        hs, dts = self._read(ts, ys, mask)
        return jax.vmap(lambda h, dt: self.decoder(jnp.append(h, dt)))(hs[:-1], dts[1:])

    def one_step(self, ts: Array, ys: Array, mask: Array | None = None) -> Array:
        """One-step-ahead predictions ``ŷ_k`` for ``k = 1 … T-1`` of one series.

        Args:
            ts: ``(T,)`` strictly increasing times; ys: ``(T, D)``; mask: ``(T,)``/``(T, D)``
                or ``None``.

        Returns:
            ``(T-1, D)`` predictions of ``ys[1:]``.
        """
        ts, ys, mask = self._check(ts, ys, mask)
        return _jit_call(RNNBaseline._one_step, self, ts, ys, mask)

    def _sq_err(self, ts, ys, mask):
        m = mask[1:]
        return jnp.sum(m * (self._one_step(ts, ys, mask) - ys[1:]) ** 2), jnp.sum(m)

    def _loss(self, ts, ys, mask):
        if ys.ndim == 2:
            se, n = self._sq_err(ts, ys, mask)
        else:
            ts_axis = 0 if ts.ndim == 2 else None
            se, n = jax.vmap(self._sq_err, in_axes=(ts_axis, 0, 0))(ts, ys, mask)
            se, n = jnp.sum(se), jnp.sum(n)
        return se / jnp.maximum(n, 1)

    def loss(self, ts: Array, ys: Array, mask: Array | None, key: Array | None = None) -> Array:
        """Mean squared one-step-ahead error over the observed entries.

        Args:
            ts: ``(T,)`` shared times, or ``(N, T)`` one grid per series.
            ys: ``(T, D)`` one series or ``(N, T, D)`` a batch.
            mask: like :meth:`LatentODE.loss`; ``None`` for all observed.
            key: unused (same signature as :meth:`LatentODE.loss`).

        Returns:
            Scalar ``Σ m (ŷ - y)² / Σ m`` over ``k ≥ 1`` (and the batch).
        """
        ys = jnp.asarray(ys)
        if ys.ndim == 2:
            ts, ys, mask = self._check(ts, ys, mask)
        else:
            ts, ys, mask = _check_batch(
                ts, ys, mask, "RNNBaseline.loss", self.data_size, _param_dtype(self)
            )
        return _jit_call(RNNBaseline._loss, self, ts, ys, mask)

    def _predict(self, ts_obs, ys, mask, ts_out):
        hs, _ = self._read(ts_obs, ys, mask)
        ones = jnp.ones((self.data_size,), ys.dtype)

        def step(carry, t):
            h, t_prev = carry
            dt = t - t_prev
            y = self.decoder(jnp.append(h, dt))
            h = self.cell(jnp.concatenate([y, ones, dt[None]]), h)
            return (h, t), y

        _, preds = lax.scan(step, (hs[-1], ts_obs[-1].astype(ys.dtype)), ts_out)
        return preds

    def predict(
        self,
        ts_obs: Array,
        ys: Array,
        mask: Array | None,
        ts_out: Array,
        key: Array | None = None,
    ) -> Array:
        """Read the observations, then roll out autoregressively at ``ts_out``.

        Args:
            ts_obs: ``(T,)`` strictly increasing observation times.
            ys: ``(T, D)``; mask: ``(T,)``/``(T, D)`` or ``None``.
            ts_out: ``(T_out,)`` strictly increasing times after ``ts_obs[-1]`` (extrapolation).
            key: unused (same signature as :meth:`LatentODE.predict`).

        Returns:
            ``(T_out, D)`` predictions.
        """
        owner = "RNNBaseline.predict"
        ts_obs, ys, mask = self._check(ts_obs, ys, mask, ("ts_obs", "ys", "mask"), owner)
        ts_out = check_increasing(ts_out, "ts_out", owner).astype(ys.dtype)
        out, obs = _concrete(ts_out), _concrete(ts_obs)
        if out is None or obs is None:
            ts_out = eqx.error_if(
                ts_out, ts_out[0] <= ts_obs[-1], f"{owner}: ts_out must start after ts_obs[-1]."
            )
        elif out[0] <= obs[-1]:
            raise ValueError(
                f"{owner}: ts_out must start after ts_obs[-1] (the rollout extrapolates), got"
                f" ts_out[0] = {out[0]:.6g} <= ts_obs[-1] = {obs[-1]:.6g}."
            )
        return _jit_call(RNNBaseline._predict, self, ts_obs, ys, mask, ts_out)
