"""Small synthetic data sets for neural ODEs, generated on the fly (no downloads).

* :func:`cubic_spiral` / :func:`cubic_spiral_batches`: torchdiffeq's ``ode_demo`` problem.
* :func:`spirals`: the 2-D spirals of Chen et al. (2018) §5.1 for latent ODEs.
* :func:`concentric_circles`: the augmented-NODE failure case (Dupont et al. 2019).
* :func:`rings`, :func:`two_moons`, :func:`eight_gaussians`: 2-D densities for CNFs (FFJORD).
* :func:`digits`: scikit-learn's bundled 8×8 digits (optional ``odejax[examples]`` extra).

Every random generator takes a ``jax.random`` key first and is a pure JAX function (jit-able).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._solve import odeint

__all__ = [
    "CUBIC_A",
    "SpiralData",
    "concentric_circles",
    "cubic_spiral",
    "cubic_spiral_batches",
    "cubic_spiral_field",
    "digits",
    "eight_gaussians",
    "rings",
    "spirals",
    "two_moons",
]

# --- torchdiffeq's ode_demo ------------------------------------------------------------------

CUBIC_A = ((-0.1, 2.0), (-2.0, -0.1))
"""The matrix ``A`` of the cubic spiral ``dz/dt = (z**3) @ A``."""


def cubic_spiral_field(z: Array, t: Array, args=None) -> Array:
    """``dz/dt = (z**3) @ A``, ``A = [[-0.1, 2.0], [-2.0, -0.1]]``, for ``z`` of shape ``(2,)``."""
    return (z**3) @ jnp.asarray(CUBIC_A, dtype=z.dtype)


def cubic_spiral(ts=None, z0=(2.0, 0.0), *, rtol: float = 1e-7, atol: float = 1e-9) -> Array:
    """The true trajectory of torchdiffeq's ``ode_demo``: ``dz/dt = (z**3) @ A``.

    Args:
        ts: ``(T,)`` increasing times (default ``linspace(0, 25, 1000)``, ode_demo's grid).
        z0: ``(2,)`` initial state (default ``[2, 0]``).
        rtol, atol: tolerances of the reference solve (``dopri5``; raised to ``10 × eps`` of the
            dtype if tighter).

    Returns:
        ``(T, 2)`` states at ``ts``.
    """
    ts = jnp.linspace(0.0, 25.0, 1000) if ts is None else jnp.asarray(ts)
    z0 = jnp.asarray(z0, dtype=jnp.result_type(float))
    if z0.shape != (2,):
        raise ValueError(f"cubic_spiral: z0 must have shape (2,), got {z0.shape}.")
    eps = float(jnp.finfo(z0.dtype).eps)
    return odeint(
        cubic_spiral_field,
        z0,
        ts.astype(z0.dtype),
        solver="dopri5",
        rtol=max(rtol, 10 * eps),
        atol=atol,
        max_steps=100_000,
    )


def cubic_spiral_batches(
    key: Array, true_zs: Array, ts: Array, batch_size: int = 20, batch_time: int = 10
) -> tuple[Array, Array, Array]:
    """Random windows of a trajectory, like ``get_batch`` in torchdiffeq's ``ode_demo``.

    Draws ``batch_size`` distinct start indices ``s`` in ``[0, T - batch_time)``.

    Args:
        key: a ``jax.random`` key.
        true_zs: ``(T, D)`` trajectory (e.g. :func:`cubic_spiral`).
        ts: ``(T,)`` its times.
        batch_size: ``B``, number of windows.
        batch_time: ``W``, points per window.

    Returns:
        ``(z0s, batch_ts, windows)``: ``(B, D)`` start states ``true_zs[s]``, ``(W,)`` times
        ``ts[:W]`` (every window starts at ``ts[0]``; the field is autonomous) and
        ``(B, W, D)`` targets ``true_zs[s + i]``. Note the batch-first layout (torchdiffeq's is
        ``(W, B, D)``), which is what ``jax.vmap(NeuralODE(..., ts=batch_ts))(z0s)`` returns.
    """
    n = true_zs.shape[0]
    if n <= batch_time:
        raise ValueError(f"true_zs has {n} points; need more than batch_time={batch_time}.")
    s = jax.random.choice(key, n - batch_time, (batch_size,), replace=False)
    idx = s[:, None] + jnp.arange(batch_time)[None, :]
    return true_zs[s], ts[:batch_time], true_zs[idx]


# --- spirals (Chen et al. 2018, §5.1) ----------------------------------------------------------


class SpiralData(NamedTuple):
    """Noisy 2-D spirals for latent ODEs (:func:`spirals`).

    Attributes:
        ts: ``(S,)`` common time grid of every sample (``S = n_sample``), starting at 0.
        true: ``(n, S, 2)`` noiseless trajectories on ``ts``.
        ys: ``(n, S, 2)`` noisy observations on ``ts``.
        mask: ``(n, S)`` bool, the observed grid points of each sample (all ``True`` unless
            ``n_obs`` is given).
        obs_ts: ``(n, n_obs)`` sorted observation times of each sample (``ts[mask[i]]``).
        obs: ``(n, n_obs, 2)`` the noisy observations at ``obs_ts``.
        clockwise: ``(n,)`` bool, the rotation of each sample.
        ts_extrap: ``(E,)`` times after the window (``E = extrapolate``), continuing ``ts``.
        true_extrap: ``(n, E, 2)`` noiseless continuation, the extrapolation target.
    """

    ts: Array
    true: Array
    ys: Array
    mask: Array
    obs_ts: Array
    obs: Array
    clockwise: Array
    ts_extrap: Array
    true_extrap: Array


def spirals(
    key: Array,
    n: int,
    *,
    n_total: int = 1000,
    n_sample: int = 100,
    n_obs: int | None = None,
    extrapolate: int = 0,
    stop: float = 6 * math.pi,
    a: float = 0.0,
    b: float = 0.3,
    noise_std: float = 0.1,
) -> SpiralData:
    """The paper's 2-D spirals (Chen et al. 2018 §5.1; ``latent_ode.py``'s ``generate_spiral2d``).

    Two Archimedean spirals on ``θ ∈ [0, stop]`` sampled at ``n_total`` points: a
    counter-clockwise one ``r = a + b θ`` centred at ``(+5, 0)`` and a clockwise one with
    ``θ' = stop + 1 - θ``, ``r = a + 50 b / θ'`` centred at ``(-5, 0)``. Each sample picks a
    rotation at random and a window of ``n_sample`` consecutive points starting at a uniform index
    in ``[n_sample, n_total - n_sample - E)`` (so that the ``E = extrapolate`` points after the
    window lie on the spiral too), adds Gaussian noise, and optionally keeps only ``n_obs``
    random points of the window (irregular sampling).

    Args:
        key: a ``jax.random`` key.
        n: number of spirals.
        n_total: points on the full spiral.
        n_sample: points per window ``S``.
        n_obs: observed points per sample (``≤ n_sample``; default all), chosen without
            replacement independently per sample.
        extrapolate: number ``E`` of points after the window returned noiseless for
            extrapolation (``≤ n_sample``).
        stop: the last angle.
        a, b: spiral parameters.
        noise_std: standard deviation of the observation noise.

    Returns:
        A :class:`SpiralData`.
    """
    if n_sample < 1:
        raise ValueError(f"n_sample must be at least 1, got {n_sample}.")
    n_obs = n_sample if n_obs is None else n_obs
    if not 1 <= n_obs <= n_sample:
        raise ValueError(f"n_obs must be in [1, n_sample={n_sample}], got {n_obs}.")
    if not 0 <= extrapolate <= n_sample:
        raise ValueError(f"extrapolate must be in [0, n_sample={n_sample}], got {extrapolate}.")
    if 2 * n_sample + extrapolate >= n_total:
        raise ValueError(
            "need 2 * n_sample + extrapolate < n_total (windows start at index n_sample or later"
            f" and must end on the spiral), got {n_sample=}, {extrapolate=}, {n_total=}."
        )
    orig_ts = jnp.linspace(0.0, stop, n_total)
    th_cw = stop + 1.0 - orig_ts
    r_cw = a + b * 50.0 / th_cw
    cw = jnp.stack([r_cw * jnp.cos(th_cw) - 5.0, r_cw * jnp.sin(th_cw)], axis=-1)
    r_cc = a + b * orig_ts
    cc = jnp.stack([r_cc * jnp.cos(orig_ts) + 5.0, r_cc * jnp.sin(orig_ts)], axis=-1)

    k_start, k_dir, k_noise, k_obs = jax.random.split(key, 4)
    start = jax.random.randint(k_start, (n,), n_sample, n_total - n_sample - extrapolate)
    clockwise = jax.random.bernoulli(k_dir, 0.5, (n,))
    full = jnp.where(clockwise[:, None, None], cw[None], cc[None])  # (n, n_total, 2)
    window = start[:, None] + jnp.arange(n_sample + extrapolate)[None, :]  # < n_total
    traj = jnp.take_along_axis(full, window[..., None], axis=1)
    true, true_extrap = traj[:, :n_sample], traj[:, n_sample:]
    ys = true + noise_std * jax.random.normal(k_noise, true.shape)
    ts = orig_ts[:n_sample]
    dt = orig_ts[1] - orig_ts[0]
    ts_extrap = ts[-1] + dt * jnp.arange(1, extrapolate + 1)

    scores = jax.random.uniform(k_obs, (n, n_sample))
    idx = jnp.sort(jnp.argsort(scores, axis=1)[:, :n_obs], axis=1)  # (n, n_obs)
    mask = jnp.zeros((n, n_sample), bool).at[jnp.arange(n)[:, None], idx].set(True)
    obs = jnp.take_along_axis(ys, idx[..., None], axis=1)
    return SpiralData(ts, true, ys, mask, ts[idx], obs, clockwise, ts_extrap, true_extrap)


# --- classification: concentric circles (Dupont et al. 2019) -----------------------------------


def concentric_circles(
    key: Array, n: int, r1: float = 0.5, r2: float = 1.0, r3: float = 1.5, dim: int = 2
) -> tuple[Array, Array]:
    """Points inside ``r1`` (label −1) and in the annulus ``r2 ≤ ‖x‖ ≤ r3`` (label +1).

    The function ``g(x) = −1`` for ``‖x‖ ≤ r1``, ``+1`` for ``r2 ≤ ‖x‖ ≤ r3`` cannot be represented
    by a ``dim``-dimensional neural ODE followed by a linear map (the flow is a homeomorphism and
    cannot pull the inner disc out of the ring); an augmented neural ODE can. Half the points lie
    in each class, with a uniformly distributed direction and a radius uniform in its range.

    Args:
        key: a ``jax.random`` key.
        n: number of points (``n // 2`` inside, the rest in the annulus).
        r1: radius of the inner ball.
        r2, r3: inner and outer radii of the annulus (``r1 < r2 < r3``).
        dim: dimension (2 for circles).

    Returns:
        ``(x, y)``: ``(n, dim)`` points and ``(n,)`` labels in ``{−1., +1.}``.
    """
    if not 0 < r1 < r2 < r3:
        raise ValueError(f"need 0 < r1 < r2 < r3, got {r1}, {r2}, {r3}.")
    k_dir, k_r = jax.random.split(key)
    d = jax.random.normal(k_dir, (n, dim))
    d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
    n_in = n // 2
    u = jax.random.uniform(k_r, (n,))
    r = jnp.where(jnp.arange(n) < n_in, r1 * u, r2 + (r3 - r2) * u)
    y = jnp.where(jnp.arange(n) < n_in, -1.0, 1.0)
    return d * r[:, None], y


# --- 2-D densities (FFJORD's toy data) ---------------------------------------------------------


def rings(key: Array, n: int, noise_std: float = 0.08) -> Array:
    """``(n, 2)`` samples on four concentric circles of radii 0.75, 1.5, 2.25, 3 plus noise."""
    k_r, k_th, k_noise = jax.random.split(key, 3)
    radius = 0.75 * (1 + jax.random.randint(k_r, (n,), 0, 4))
    th = jax.random.uniform(k_th, (n,), maxval=2 * math.pi)
    x = radius[:, None] * jnp.stack([jnp.cos(th), jnp.sin(th)], axis=-1)
    return x + noise_std * jax.random.normal(k_noise, x.shape)


def two_moons(key: Array, n: int, noise_std: float = 0.1) -> Array:
    """``(n, 2)`` samples of two interleaved half circles (sklearn's ``make_moons``), scaled by
    2 and shifted by ``(-1, -0.2)`` as in FFJORD."""
    k_side, k_th, k_noise = jax.random.split(key, 3)
    upper = jax.random.bernoulli(k_side, 0.5, (n,))
    th = jax.random.uniform(k_th, (n,), maxval=math.pi)
    outer = jnp.stack([jnp.cos(th), jnp.sin(th)], axis=-1)
    inner = jnp.stack([1 - jnp.cos(th), 0.5 - jnp.sin(th)], axis=-1)
    x = jnp.where(upper[:, None], outer, inner)
    x = x + noise_std * jax.random.normal(k_noise, x.shape)
    return 2 * x + jnp.array([-1.0, -0.2])


def eight_gaussians(key: Array, n: int, scale: float = 4.0, std: float = 0.5) -> Array:
    """``(n, 2)`` samples of a mixture of 8 Gaussians on a circle of radius ``scale``, divided by
    1.414 (FFJORD's ``8gaussians``)."""
    k_c, k_noise = jax.random.split(key)
    angles = jnp.arange(8) * (2 * math.pi / 8)
    centres = scale * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    c = centres[jax.random.randint(k_c, (n,), 0, 8)]
    return (c + std * jax.random.normal(k_noise, (n, 2))) / 1.414


# --- real small data ---------------------------------------------------------------------------


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, no download).

    Returns:
        ``(x, y)``: ``(1797, 64)`` float32 pixels scaled to ``[0, 1]`` and ``(1797,)`` int32
        labels in ``0..9``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install "odejax[examples]"``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "odejax.datasets.digits needs scikit-learn, an optional dependency: install it with"
            ' pip install "odejax[examples]" (or pip install scikit-learn).'
        ) from e
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)
