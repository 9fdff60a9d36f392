"""Step-size control: Hairer's initial step and a PI controller on the scaled RMS error.

With ``sc = atol + rtol * max(|z0|, |z1|)`` per component and ``q`` the order of the embedded
error estimate, the scaled error of a step is ``ε = rms(err / sc)``; a step is accepted when
``ε ≤ 1``. The next step is ``dt * clip(safety * ε^(-β1) * ε_prev^(β2), factormin, factormax)``
with ``β1 = (pcoeff + icoeff) / (q + 1)`` and ``β2 = pcoeff / (q + 1)`` (Gustafsson's PI
controller; ``pcoeff = 0`` gives the classical I controller). A rejected step never grows.
The defaults ``pcoeff = 0.2, icoeff = 0.65`` are Hairer's DOPRI5 choice (``β2 = 0.04``,
``β1 = 0.17`` for ``q = 4``); in Diffrax's terms they equal ``PIDController(pcoeff=0.2,
icoeff=0.65)``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

__all__ = ["PIController", "initial_step", "rms_norm"]


@dataclasses.dataclass(frozen=True)
class PIController:
    """Coefficients of the PI step-size controller (static data).

    Attributes:
        pcoeff: proportional coefficient (``0`` for a pure I controller).
        icoeff: integral coefficient.
        safety: safety factor applied to every proposal.
        factormin: smallest factor a step may shrink by.
        factormax: largest factor a step may grow by.
    """

    pcoeff: float = 0.2
    icoeff: float = 0.65
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0

    def __post_init__(self):
        if self.icoeff <= 0:
            raise ValueError(f"PIController icoeff must be positive, got {self.icoeff}.")
        if self.pcoeff < 0:
            raise ValueError(f"PIController pcoeff must be non-negative, got {self.pcoeff}.")
        if not 0 < self.safety <= 1:
            raise ValueError(f"PIController safety must lie in (0, 1], got {self.safety}.")
        if not 0 < self.factormin < 1 < self.factormax:
            raise ValueError(
                "PIController needs 0 < factormin < 1 < factormax, got"
                f" factormin={self.factormin}, factormax={self.factormax}."
            )

    def factor(self, log_err: Array, log_err_prev: Array, error_order: int) -> Array:
        """Multiplier for the next step, from this step's and the last accepted scaled errors.

        Works on logarithms, ``safety * exp(-β1 log ε + β2 log ε_prev)``, so a step costs one
        ``log`` and one ``exp``.

        Args:
            log_err: ``log ε`` of this step (``nan``/``inf`` for a non-finite candidate).
            log_err_prev: ``log ε`` of the last accepted step (``0`` at the start).
            error_order: order ``q`` of the embedded estimate.
        """
        k = error_order + 1
        beta1 = (self.pcoeff + self.icoeff) / k
        beta2 = self.pcoeff / k
        finite = jnp.isfinite(log_err)
        # A zero error grows by factormax, a non-finite one shrinks by factormin.
        expo = -beta1 * jnp.where(finite, jnp.maximum(log_err, _LOG_TINY), 0.0)
        if beta2:
            expo = expo + beta2 * log_err_prev
        fac = self.safety * jnp.exp(expo)
        accept = log_err <= 0  # false for nan
        fac = jnp.clip(fac, self.factormin, jnp.where(accept, self.factormax, self.safety))
        return jnp.where(finite, fac, self.factormin)


_LOG_TINY = -23.0  # log(1e-10): errors below this count as 1e-10


def rms_norm(x: Array) -> Array:
    """Root-mean-square norm of a flat vector.

    The square root is taken of ``max(mean, tiny)`` so that its derivative stays finite at zero
    (a zero error or state must not turn reverse-mode gradients into ``nan``). A half-precision
    ``x`` is summed in float32: its squares overflow float16 above 256.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if not x.size:  # an empty state: as a zero vector
        return jnp.sqrt(jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype))
    ms = jnp.mean(x * x)
    return jnp.sqrt(jnp.maximum(ms, jnp.finfo(x.dtype).tiny))


def initial_step(fn, t0, z0, f0, atol, rtol, order: int, direction) -> Array:
    """Hairer's starting step (Hairer, Nørsett & Wanner I, §II.4). One extra evaluation of ``f``.

    Args:
        fn: flat vector field ``fn(t, z)``.
        t0: initial time; ``z0``: ``(n,)`` initial state; ``f0 = fn(t0, z0)``.
        atol, rtol: tolerances (scalars or ``(n,)``).
        order: order of the method.
        direction: ``+1`` or ``-1``, the sign of ``t1 - t0``.

    Returns:
        The signed initial step.
    """
    wide = jnp.promote_types(z0.dtype, jnp.float32)  # half precision: as in rms_norm
    scale = atol.astype(wide) + rtol.astype(wide) * jnp.abs(z0).astype(wide)
    # A component with a zero scale (atol = 0 at z0 = 0) has no size to measure a relative
    # change by: it is left out of the norms below.
    measured = scale > 0
    safe = jnp.where(measured, scale, 1)

    def scaled(x):
        return jnp.where(measured, x.astype(wide) / safe, 0)

    d0 = rms_norm(scaled(z0))
    d1 = rms_norm(scaled(f0))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    h0 = h0.astype(z0.dtype)
    f1 = fn((t0 + direction * h0).astype(t0.dtype), z0 + direction * h0 * f0)
    d2 = rms_norm(scaled(f1 - f0)) / h0
    dmax = jnp.maximum(d1, d2)
    h1 = jnp.where(
        dmax <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(dmax <= 1e-15, 1.0, dmax)) ** (1.0 / order),
    )
    return direction * jnp.minimum(100 * h0, h1)
