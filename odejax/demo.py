"""``python -m odejax.demo``: fit a neural ODE to the cubic spiral (torchdiffeq's ``ode_demo``).

Data: the trajectory of ``dz/dt = (z**3) @ A``, ``A = [[-0.1, 2], [-2, -0.1]]``, ``z(0) = [2, 0]``
on 1000 points of ``t ∈ [0, 25]``. Model: ``f(z) = MLP(z**3)`` with an MLP 2 → 50 → 2 (tanh),
trained with Adam on random batches of 20 windows of 10 consecutive points, loss
``mean |ẑ - z|`` (ode_demo's setting). Prints the loss, the solver's nfe and the time per step,
the full-trajectory loss before and after training and their ratio, and writes a PNG of the fitted
vs true trajectory and phase portrait.
"""

from __future__ import annotations

import argparse
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from odejax import datasets
from odejax.nn import MLPField, NeuralODE
from odejax.train import fit


class CubicField(eqx.Module):
    """``f(z, t) = MLP(z**3)``: ode_demo's field, autonomous, on cubed features."""

    mlp: MLPField

    def __call__(self, z, t, args=None):
        return self.mlp(z**3, t, args)


def make_model(key, rtol: float = 1e-3, atol: float = 1e-4) -> NeuralODE:
    """The neural ODE of ode_demo: ``MLPField(2, 50, 1, time=None)`` on ``z**3``."""
    field = CubicField(MLPField(2, 50, 1, time=None, key=key))
    return NeuralODE(field, solver="tsit5", rtol=rtol, atol=atol)


def window_loss(model: NeuralODE, batch):
    """``mean |ẑ - z|`` over a batch of windows; aux reports the mean forward nfe."""
    z0s, ts, targets = batch
    preds, stats = jax.vmap(lambda z0: model.with_stats(z0, ts=ts))(z0s)
    return jnp.mean(jnp.abs(preds - targets)), {"nfe": jnp.mean(stats["nfe"])}


@eqx.filter_jit
def trajectory(model: NeuralODE, z0, ts):
    """The model's trajectory from ``z0`` at ``ts`` (``(T, 2)``)."""
    return model(z0, ts=ts)


def _positive(text: str) -> int:
    """An argparse type: a positive int."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_positive, default=1000, help="training steps")
    parser.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate")
    parser.add_argument("--log-every", type=_positive, default=100, help="print every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", default="cubic_spiral.png", help="where to write a PNG ('' for none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    opts = parser.parse_args(argv)

    ts = jnp.linspace(0.0, 25.0, 1000)
    true_zs = datasets.cubic_spiral(ts)
    z0 = true_zs[0]
    key_model, key_fit = jax.random.split(jax.random.key(opts.seed))
    model = make_model(key_model)
    sampler = functools.partial(datasets.cubic_spiral_batches, true_zs=true_zs, ts=ts)

    def full_loss(m):
        return float(jnp.mean(jnp.abs(trajectory(m, z0, ts) - true_zs)))

    print("cubic spiral dz/dt = (z**3) @ A; model f(z) = MLP(z**3), 2 -> 50 -> 2, tanh")
    print(f"adam(lr={opts.lr}, cosine decay), {opts.steps} steps, 20 windows x 10 points")
    before = full_loss(model)
    start = time.perf_counter()
    schedule = optax.cosine_decay_schedule(opts.lr, max(opts.steps, 1), alpha=0.05)
    model, hist = fit(
        model,
        window_loss,
        lambda k: sampler(k),
        optimizer=optax.adam(schedule),
        steps=opts.steps,
        key=key_fit,
        progress=not opts.no_progress,
        log_every=opts.log_every,
    )
    total = time.perf_counter() - start
    after = full_loss(model)

    losses = np.asarray(hist["loss"])
    times = np.asarray(hist["time"])
    nfe = np.asarray(hist["nfe"])
    if opts.no_progress:
        for i in range(0, len(losses), opts.log_every):
            print(f"step {i:5d}  loss {losses[i]:.5f}  nfe {nfe[i]:6.1f}  {times[i] * 1e3:8.2f} ms")
    head, tail = losses[: min(10, len(losses))].mean(), losses[-min(10, len(losses)) :].mean()
    print(f"batch loss: first 10 steps {head:.5f}, last 10 {tail:.5f}, ratio {head / tail:.1f}x")
    print(
        f"whole-trajectory loss: before {before:.5f}, after {after:.5f},"
        f" ratio {before / after:.1f}x"
    )
    steady = times[1:] if len(times) > 1 else times
    print(
        f"time per step: {np.median(steady) * 1e3:.2f} ms (median, after compile);"
        f" first step {times[0]:.2f} s; total {total:.1f} s; mean nfe {np.nanmean(nfe):.1f}"
    )

    if opts.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pred = np.asarray(trajectory(model, z0, ts))
        true = np.asarray(true_zs)
        t = np.asarray(ts)
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
        ax1.plot(t, true[:, 0], "g-", label="true x")
        ax1.plot(t, true[:, 1], "b-", label="true y")
        ax1.plot(t, pred[:, 0], "g--", label="fit x")
        ax1.plot(t, pred[:, 1], "b--", label="fit y")
        ax1.set_xlabel("t")
        ax1.set_title("trajectories")
        ax1.legend(fontsize=7)
        ax2.plot(true[:, 0], true[:, 1], "g-", label="true")
        ax2.plot(pred[:, 0], pred[:, 1], "b--", label="fit")
        ax2.set_title("phase portrait")
        ax2.legend(fontsize=7)
        g = np.mgrid[-2:2:21j, -2:2:21j]
        grid = jnp.asarray(np.stack([g[0].ravel(), g[1].ravel()], axis=1), dtype=true_zs.dtype)
        field = np.asarray(jax.vmap(lambda z: model.field(z, 0.0, None))(grid))
        field = field / (np.linalg.norm(field, axis=1, keepdims=True) + 1e-9)
        ax3.quiver(g[0].ravel(), g[1].ravel(), field[:, 0], field[:, 1], color="k")
        ax3.set_title("learned vector field (direction)")
        fig.tight_layout()
        fig.savefig(opts.plot, dpi=100)
        plt.close(fig)
        print(f"wrote {opts.plot}")
    return {"before": before, "after": after, "history": hist}


if __name__ == "__main__":
    main()
