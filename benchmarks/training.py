"""Training-step workloads: ``train_node`` and ``cubic_spiral``, and ``seminorm`` on the former.

Each step is one jitted call doing the forward solve, the backward pass and the optimiser
update, from the same fixed parameters, optimiser state and batch every call (so every call does
the same work); torch does the same eagerly (parameters copied back, a fresh optimiser). The
vector field is a plain MLP (``params`` a list of ``(W, b)``) applied to each row of the state by
``jax.vmap``; the whole batch is solved as ONE ODE on the ``(B, 2)`` state, as torchdiffeq does,
so the batch shares one step size. JAX and torch start from the same numbers (one NumPy
initialisation copied into both). Everything here is float32 with JAX's x64 mode off.

* ``train_node``: MLP 2→64→64→2 tanh (PyTorch's default ``nn.Linear`` initialisation), 256 states
  drawn from N(0, I), targets the states rotated by π/4, t ∈ [0, 1], dopri5 rtol = atol = 1e-5,
  loss = MSE of z(1) against the targets, Adam(1e-3).
* ``cubic_spiral``: torchdiffeq's ``examples/ode_demo.py``: data from dz/dt = (z³)A,
  A = [[-0.1, 2], [-2, -0.1]], z0 = (2, 0), 1000 times on [0, 25]; a batch of 20 windows of 10
  consecutive times (fixed random starts), solved as one (20, 2) ODE over the first 10 times
  (all windows share their relative times); f(z) = MLP(z³), 2→50→2 tanh, weights N(0, 0.1²),
  zero biases; dopri5 at torchdiffeq's defaults rtol = 1e-7, atol = 1e-9 (in float32, as
  ode_demo); loss = mean |z − data| over the window; RMSprop(1e-3) with torch's defaults
  (decay 0.99, eps 1e-8 outside the square root).
* ``seminorm``: the ``train_node`` gradient (no update) with odejax's
  ``BacksolveAdjoint(record_stats=True)`` and ``BacksolveAdjoint(seminorm=True,
  record_stats=True)``: backward nfe from ``odejax.backward_stats()``, and the relative
  difference of the two gradients (all parameters as one vector).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .adapters import torch_threads
from .gradients import measure_variants
from .records import GradResult, SeminormResult
from .timing import Settings, steady_times
from .variants import jax_trajectory, mlp, steps_or_none, torch_field, variants_for

__all__ = [
    "CUBIC_SPIRAL",
    "TRAIN_NODE",
    "TrainSpec",
    "measure_seminorm",
    "measure_training",
]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """One training-step workload (see the module docstring)."""

    name: str
    sizes: tuple[int, ...]
    cube: bool  # f(z) = MLP(z**3)
    rtol: float
    atol: float
    final_only: bool  # the loss sees z(t1) only (else every save time)
    loss: str  # "mse" or "l1"
    optimizer: str  # "adam" or "rmsprop"
    learning_rate: float = 1e-3


TRAIN_NODE = TrainSpec("train_node", (2, 64, 64, 2), False, 1e-5, 1e-5, True, "mse", "adam")
CUBIC_SPIRAL = TrainSpec("cubic_spiral", (2, 50, 2), True, 1e-7, 1e-9, False, "l1", "rmsprop")


def _rk4_trajectory(f, z0: np.ndarray, t: np.ndarray, substeps: int = 20) -> np.ndarray:
    """Fixed-step RK4 in float64 at the times ``t`` (``substeps`` steps between them)."""
    out, z = [z0], z0
    for t0, t1 in itertools.pairwise(t):
        h = (t1 - t0) / substeps
        for _ in range(substeps):
            k1 = f(z)
            k2 = f(z + h / 2 * k1)
            k3 = f(z + h / 2 * k2)
            k4 = f(z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(z)
    return np.stack(out)


@functools.cache
def data(spec: TrainSpec):
    """``(params, y0, ts, target)`` as float32 NumPy arrays; ``params`` a list of ``(W, b)``."""
    rng = np.random.default_rng(0)
    params = []
    for fan_in, fan_out in zip(spec.sizes[:-1], spec.sizes[1:]):
        if spec.name == "cubic_spiral":  # ode_demo: N(0, 0.1²) weights, zero biases
            w, b = rng.normal(0.0, 0.1, (fan_in, fan_out)), np.zeros(fan_out)
        else:  # PyTorch's nn.Linear default: U(±1/sqrt(fan_in)) for both
            k = 1 / np.sqrt(fan_in)
            w, b = rng.uniform(-k, k, (fan_in, fan_out)), rng.uniform(-k, k, fan_out)
        params.append((w.astype(np.float32), b.astype(np.float32)))
    if spec.name == "cubic_spiral":
        a = np.array([[-0.1, 2.0], [-2.0, -0.1]])
        t = np.linspace(0.0, 25.0, 1000)
        true_y = _rk4_trajectory(lambda z: (z**3) @ a, np.array([2.0, 0.0]), t)
        batch_time, batch_size = 10, 20
        s = rng.choice(len(t) - batch_time, batch_size, replace=False)
        y0 = true_y[s]
        ts = t[:batch_time]
        target = np.stack([true_y[s + i] for i in range(batch_time)])  # (T, B, 2)
    else:
        y0 = rng.standard_normal((256, 2))
        theta = np.pi / 4
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        ts = np.array([0.0, 1.0])
        target = y0 @ rot.T
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return params, f32(y0), f32(ts), f32(target)


def _jax_field(spec: TrainSpec) -> Callable:
    """A fresh ``f(z, t, params)``: the MLP on each row of the ``(B, 2)`` state."""
    cube = spec.cube

    def field(z, t, params):
        return jax.vmap(lambda row: mlp(params, row**3 if cube else row))(z)

    return field


def _jax_loss(spec: TrainSpec, pred, target):
    diff = pred - target
    return jnp.mean(diff**2) if spec.loss == "mse" else jnp.mean(jnp.abs(diff))


def _optax(spec: TrainSpec):
    import optax

    if spec.optimizer == "adam":
        return optax.adam(spec.learning_rate)
    return optax.rmsprop(spec.learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False)


def _jax_step(spec: TrainSpec, label: str) -> Callable[[], Callable[[], Any]]:
    def build():
        import optax

        predict = jax_trajectory(
            label, _jax_field(spec), spec.rtol, spec.atol, save_all=not spec.final_only
        )
        opt = _optax(spec)

        def loss(params, y0, ts, target):
            zs, steps = predict(params, y0, ts)
            return _jax_loss(spec, zs[-1] if spec.final_only else zs, target), steps

        @jax.jit
        def step(params, opt_state, y0, ts, target):
            (value, steps), grads = jax.value_and_grad(loss, has_aux=True)(params, y0, ts, target)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value, steps, grads

        params, opt_state, y0, ts, target = _jax_inputs(spec)
        return lambda: step(params, opt_state, y0, ts, target)

    return build


@functools.cache
def _jax_inputs(spec: TrainSpec):
    """Parameters, optimiser state and batch as JAX arrays (made once, outside any timing)."""
    params, y0, ts, target = data(spec)
    params = jax.tree.map(jnp.asarray, params)
    return params, _optax(spec).init(params), jnp.asarray(y0), jnp.asarray(ts), jnp.asarray(target)


def _torch_step(spec: TrainSpec, adjoint: bool) -> Callable[[], Callable[[], Any]]:
    def build():
        import torch
        import torchdiffeq

        torch_threads()
        params, y0, ts, target = data(spec)
        func = torch_field(params, spec.cube)
        initial = [p.detach().clone() for p in func.parameters()]
        y0, ts, target = (torch.from_numpy(x) for x in (y0, ts, target))
        odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        if spec.optimizer == "adam":
            make_opt = functools.partial(torch.optim.Adam, lr=spec.learning_rate)
        else:
            make_opt = functools.partial(torch.optim.RMSprop, lr=spec.learning_rate)

        def call():
            with torch.no_grad():
                for p, p0 in zip(func.parameters(), initial):
                    p.copy_(p0)
                    p.grad = None
            opt = make_opt(func.parameters())
            func.nfe = 0
            zs = odeint(func, y0, ts, rtol=spec.rtol, atol=spec.atol, method="dopri5")
            nfe = func.nfe
            diff = (zs[-1] if spec.final_only else zs) - target
            loss = torch.mean(diff**2) if spec.loss == "mse" else torch.mean(torch.abs(diff))
            loss.backward()
            opt.step()
            layers = [m for m in func.net if isinstance(m, torch.nn.Linear)]
            grads = [(m.weight.grad.numpy().T.copy(), m.bias.grad.numpy().copy()) for m in layers]
            return loss.item(), (nfe - 2) / 6, grads

        return call

    return build


def _summarize_step(spec: TrainSpec, label: str, out) -> dict:
    if label.startswith("torchdiffeq/"):
        loss, steps, grads = out
    else:
        _, _, loss, steps, grads = out
        steps = steps_or_none(steps)
    ref_loss, ref_grads = reference_gradient(spec)
    g = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(grads)])
    g_ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref_grads)])
    return {
        "loss": float(loss),
        "steps": steps,
        "rel_error": float(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)),
        "loss_error": abs(float(loss) - ref_loss) / abs(ref_loss),
    }


REFERENCE_SUBSTEPS = 200  # RK4 steps per save interval of the reference gradient


@functools.cache
def reference_gradient(spec: TrainSpec) -> tuple[float, list]:
    """The loss and its gradient at the starting parameters, independent of every library timed:
    fixed-step RK4 (:data:`REFERENCE_SUBSTEPS` steps per save interval) in float64,
    differentiated by JAX. Its error is far below float32 rounding."""
    params, y0, ts, target = data(spec)
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
        params = jax.tree.map(f64, params)
        y0, ts, target = f64(y0), f64(ts), f64(target)
        cube = spec.cube

        def f(z, p):
            return jax.vmap(lambda row: mlp(p, row**3 if cube else row))(z)

        def loss(p):
            def interval(z, bounds):
                t0, t1 = bounds
                h = (t1 - t0) / REFERENCE_SUBSTEPS

                def step(z, _):
                    k1 = f(z, p)
                    k2 = f(z + h / 2 * k1, p)
                    k3 = f(z + h / 2 * k2, p)
                    k4 = f(z + h * k3, p)
                    return z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

                z, _ = jax.lax.scan(step, z, None, length=REFERENCE_SUBSTEPS)
                return z, z

            _, zs = jax.lax.scan(interval, y0, (ts[:-1], ts[1:]))
            zs = jnp.concatenate([y0[None], zs])
            return _jax_loss(spec, zs[-1] if spec.final_only else zs, target)

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return float(value), jax.tree.map(np.asarray, grads)


def _builders(spec: TrainSpec) -> dict[str, Callable[[], Callable[[], Any]]]:
    jax_labels = (
        "odejax/backsolve",
        "odejax/checkpoint",
        "diffrax/backsolve",
        "diffrax/checkpoint",
        "jax_ode/adjoint",
    )
    out = {label: _jax_step(spec, label) for label in jax_labels}
    out["torchdiffeq/adjoint"] = _torch_step(spec, adjoint=True)
    out["torchdiffeq/direct"] = _torch_step(spec, adjoint=False)
    return out


def measure_training(
    spec: TrainSpec, impls: Sequence[str], settings: Settings, log
) -> list[GradResult]:
    """Time one training step of every available variant (float32, x64 off)."""
    try:
        import optax  # noqa: F401
    except ImportError:
        log(f"{spec.name} skipped: optax is not installed", keep=True)
        return []
    with jax.enable_x64(False):
        variants = variants_for(_builders(spec), impls, log)
        jax.block_until_ready(_jax_inputs(spec))  # made before any timing
        reference_gradient(spec)  # computed before any timing
        summarize = functools.partial(_summarize_step, spec)
        return measure_variants(spec.name, variants, settings, log, summarize)


# --- seminorm ----------------------------------------------------------------------------------


SEMINORM_CASES = (("initial weights", 1.0), ("weights ×4", 4.0))


def measure_seminorm(impls: Sequence[str], settings: Settings, log) -> list[SeminormResult]:
    """Backward nfe of odejax's backsolve on ``train_node`` with and without the seminorm.

    Two cases: the ``train_node`` network at its initial weights (the workload as specified),
    and the same network with every weight matrix multiplied by 4, a less trivial field (at the
    initial weights the solves take 3 steps each way, leaving the seminorm nothing to cut).
    """
    if "odejax" not in impls:
        return []
    import odejax

    spec = TRAIN_NODE
    rows = []
    with jax.enable_x64(False):
        params0, _, y0, _, target = _jax_inputs(spec)
        calls, grads, stats = {}, {}, {}
        for case, scale in SEMINORM_CASES:
            params = [(w * scale, b) for w, b in params0]
            for seminorm in (False, True):
                adjoint = odejax.BacksolveAdjoint(seminorm=seminorm, record_stats=True)
                field = _jax_field(spec)

                def loss(params, y0, target, field=field, adjoint=adjoint):
                    sol = odejax.solve(
                        field,
                        y0,
                        0.0,
                        1.0,
                        args=params,
                        solver="dopri5",
                        rtol=spec.rtol,
                        atol=spec.atol,
                        adjoint=adjoint,
                    )
                    return _jax_loss(spec, sol.zs[-1], target), sol.stats["nfe"]

                key = (case, seminorm)
                fn = jax.jit(jax.grad(loss, has_aux=True))
                calls[key] = functools.partial(fn, params, y0, target)
                grads[key] = jax.block_until_ready(calls[key]())
                jax.effects_barrier()
                stats[key] = odejax.backward_stats()
        steady = steady_times(calls, settings)
    for (case, seminorm), (grad, forward_nfe) in grads.items():
        s = stats[case, seminorm]
        full = ravel_pytree(grads[case, False][0])[0]
        diff = float(jnp.linalg.norm(ravel_pytree(grad)[0] - full) / jnp.linalg.norm(full))
        rows.append(
            SeminormResult(
                case=case,
                seminorm=seminorm,
                forward_nfe=int(forward_nfe),
                backward_nfe=int(s["nfe"]),
                backward_steps=int(s["num_steps"]),
                backward_accepted=int(s["num_accepted"]),
                backward_rejected=int(s["num_rejected"]),
                steady_s=steady[case, seminorm].median,
                steady_spread=steady[case, seminorm].spread,
                grad_rel_diff=diff if seminorm else None,
            )
        )
    return rows
