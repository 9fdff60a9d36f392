"""Gradient workloads: ``grad_vdp`` (time and accuracy of a gradient), ``memory`` (compiled
temporary memory against ``max_steps``), and the timing loop shared with the training workloads.

``grad_vdp``: Van der Pol (μ = 5, z0 = (2, 0), t ∈ [0, 20], 101 saves, float64, dopri5, rtol 1e-6,
atol 1e-9), loss = sum of squares of the saved trajectory, gradient with respect to (z0, μ)
under ``jax.jit(jax.grad(...))``. The reference gradient comes from the forward sensitivity
equations solved by SciPy's DOP853 at rtol = atol = 1e-13, independent of every library timed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .adapters import torch_threads
from .problems import REFERENCE_TOL, VAN_DER_POL
from .records import GradResult, MemoryResult
from .timing import Settings, fresh_calls, steady_times
from .variants import Variant, base_label, jax_trajectory, steps_or_none, variants_for

__all__ = [
    "GRAD_ATOL",
    "GRAD_RTOL",
    "GRAD_VDP_BUILDERS",
    "measure_grad_vdp",
    "measure_memory",
    "measure_variants",
    "vdp_inputs",
    "vdp_loss",
]

GRAD_RTOL, GRAD_ATOL = 1e-6, 1e-9
HOST_IMPLS = ("torchdiffeq",)
MEMORY_LABELS = ("odejax/backsolve", "odejax/checkpoint", "diffrax/checkpoint")


def measure_variants(
    workload: str,
    variants: Sequence[Variant],
    settings: Settings,
    log,
    summarize: Callable[[str, Any], dict],
) -> list[GradResult]:
    """First-call and steady times of each variant, round-robin, as :class:`GradResult` rows.

    With ``settings.grad_warmup`` each variant is first built and run once untimed; then
    ``settings.grad_first_call_repeats`` fresh builds are timed from build to ready result (trace,
    compile, one run), and the last one built is timed in the steady loop. ``summarize(label,
    output)`` turns a call's output into the row's ``steps``, ``loss`` and ``rel_error``.
    """
    builders = {v.label: v.build for v in variants}
    if settings.grad_warmup:
        for label in list(builders):
            try:
                jax.block_until_ready(builders[label]()())
            except Exception as e:  # a broken implementation must not end the run
                log(f"{label} failed on {workload}: {e!r:.300}", keep=True)
                del builders[label]
    first, calls, outputs, errors = fresh_calls(builders, settings.grad_first_call_repeats)
    for label, e in errors.items():
        log(f"{label} failed on {workload}: {e!r:.300}", keep=True)
    steady = steady_times(calls, settings)
    rows = []
    for v in variants:
        if v.label not in calls:
            continue
        rows.append(
            GradResult(
                workload=workload,
                label=v.label,
                impl=v.impl,
                method=v.method,
                kind=v.kind,
                steady_s=steady[v.label].median,
                steady_spread=steady[v.label].spread,
                first_call_s=first[v.label].median,
                **summarize(v.label, outputs[v.label]),
            )
        )
    for r in rows:
        base = base_label(r.kind)
        if base in steady:
            r.steady_ratio = steady[base].median / r.steady_s
            if r.impl not in HOST_IMPLS:  # no compilation there: a first call is just a call
                r.first_ratio = first[base].median / r.first_call_s
    return rows


# --- grad_vdp -----------------------------------------------------------------------------------


def vdp_inputs():
    p = VAN_DER_POL
    return jnp.array(p.z0), jnp.array(p.params[0]), jnp.array(p.ts)


def vdp_loss(label: str, max_steps: int | None = None):
    """``loss(z0, p, ts) -> (loss, (loss, steps))`` around a fresh vector field."""

    def field(z, t, p):
        return VAN_DER_POL.rhs(z, t, p, jnp)

    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    predict = jax_trajectory(label, field, GRAD_RTOL, GRAD_ATOL, save_all=True, **kwargs)

    def loss(z0, p, ts):
        zs, steps = predict(p, z0, ts)
        value = jnp.sum(zs**2)
        return value, (value, steps)

    return loss


def _grad_vdp_jax(label: str) -> Callable[[], Callable[[], Any]]:
    def build():
        fn = jax.jit(jax.grad(vdp_loss(label), argnums=(0, 1), has_aux=True))
        z0, p, ts = vdp_inputs()
        return lambda: fn(z0, p, ts)

    return build


def _grad_vdp_torch(adjoint: bool) -> Callable[[], Callable[[], Any]]:
    def build():
        import torch
        import torchdiffeq

        torch_threads()
        f64 = torch.float64
        problem = VAN_DER_POL

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.p = torch.nn.Parameter(torch.tensor(problem.params[0], dtype=f64))
                self.nfe = 0

            def forward(self, t, z):
                self.nfe += 1
                return problem.rhs(z, t, self.p, torch)

        func = Field()
        ts = torch.tensor(problem.ts, dtype=f64)
        odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

        def call():
            func.p.grad, func.nfe = None, 0
            z0 = torch.tensor(problem.z0, dtype=f64, requires_grad=True)
            zs = odeint(func, z0, ts, rtol=GRAD_RTOL, atol=GRAD_ATOL, method="dopri5")
            nfe = func.nfe
            loss = torch.sum(zs**2)
            loss.backward()
            grad = np.concatenate([z0.grad.numpy(), func.p.grad.numpy()])
            return grad, loss.item(), (nfe - 2) / 6

        return call

    return build


@functools.cache
def vdp_reference_gradient() -> np.ndarray | None:
    """d(loss)/d(z0, μ) from the forward sensitivity equations, SciPy DOP853 at 1e-13."""
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        return None
    problem = VAN_DER_POL
    (mu,) = problem.params[0]

    def f(t, y):
        x, v = y[0], y[1]
        s = y[2:].reshape(2, 3)  # dz/d(z0_0, z0_1, mu)
        jac = np.array([[0.0, 1.0], [-2.0 * mu * x * v - 1.0, mu * (1.0 - x**2)]])
        fp = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, (1.0 - x**2) * v]])
        return np.concatenate([[v, mu * (1.0 - x**2) * v - x], (jac @ s + fp).ravel()])

    y0 = np.concatenate([problem.z0, np.eye(2, 3).ravel()])
    sol = solve_ivp(
        f,
        (problem.t0, problem.t1),
        y0,
        method="DOP853",
        t_eval=problem.ts,
        rtol=REFERENCE_TOL,
        atol=REFERENCE_TOL,
    )
    if not sol.success:
        raise RuntimeError(f"Reference gradient failed: {sol.message}")
    z, s = sol.y[:2].T, sol.y[2:].T.reshape(-1, 2, 3)
    return np.einsum("ti,tij->j", 2 * z, s)


def _summarize_grad_vdp(label: str, out) -> dict:
    if label.startswith("torchdiffeq/"):
        grad, loss, steps = out
    else:
        (g_z0, g_p), (loss, steps) = out
        grad = np.concatenate([np.asarray(g_z0), np.asarray(g_p)])
        steps = steps_or_none(steps)
    ref = vdp_reference_gradient()
    err = None if ref is None else float(np.linalg.norm(grad - ref) / np.linalg.norm(ref))
    return {"steps": steps, "loss": float(loss), "rel_error": err}


GRAD_VDP_BUILDERS: dict[str, Callable[[], Callable[[], Any]]] = {
    "odejax/backsolve": _grad_vdp_jax("odejax/backsolve"),
    "odejax/checkpoint": _grad_vdp_jax("odejax/checkpoint"),
    "jax_ode/adjoint": _grad_vdp_jax("jax_ode/adjoint"),
    "diffrax/backsolve": _grad_vdp_jax("diffrax/backsolve"),
    "diffrax/checkpoint": _grad_vdp_jax("diffrax/checkpoint"),
    "torchdiffeq/adjoint": _grad_vdp_torch(adjoint=True),
    "torchdiffeq/direct": _grad_vdp_torch(adjoint=False),
}


def measure_grad_vdp(impls: Sequence[str], settings: Settings, log) -> list[GradResult]:
    variants = variants_for(GRAD_VDP_BUILDERS, impls, log)
    if vdp_reference_gradient() is None:
        log("grad_vdp: no SciPy, so no reference gradient and no errors", keep=True)
    return measure_variants("grad_vdp", variants, settings, log, _summarize_grad_vdp)


# --- memory -------------------------------------------------------------------------------------


def measure_memory(impls: Sequence[str], settings: Settings, log) -> list[MemoryResult]:
    """``temp_size_in_bytes`` of the compiled ``grad_vdp`` gradient at each ``max_steps``."""
    builders = {label: None for label in MEMORY_LABELS}
    variants = variants_for(builders, impls, log)
    z0, p, ts = vdp_inputs()
    rows = []
    for v in variants:
        for max_steps in settings.memory_max_steps:
            start = time.perf_counter()
            try:
                grad = jax.grad(vdp_loss(v.label, max_steps), argnums=(0, 1), has_aux=True)
                compiled = jax.jit(grad).lower(z0, p, ts).compile()
                temp = compiled.memory_analysis().temp_size_in_bytes
            except Exception as e:  # a broken implementation must not end the run
                log(f"{v.label} failed on memory at max_steps={max_steps}: {e!r:.300}", keep=True)
                continue
            rows.append(
                MemoryResult(
                    label=v.label,
                    impl=v.impl,
                    method=v.method,
                    max_steps=max_steps,
                    temp_bytes=int(temp),
                    compile_s=time.perf_counter() - start,
                )
            )
    return rows
