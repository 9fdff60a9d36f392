"""``python -m odejax.demo``: solve the damped pendulum and print what happened.

θ'' = -b θ' - c sin θ with b = 0.25, c = 5, θ(0) = π - 0.1, ω(0) = 0, on t ∈ [0, 10], as the
first-order system [θ', ω'] = [ω, -b ω - c sin θ].
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import odejax


def pendulum(z, t, args):
    theta, omega = z
    b, c = args
    return jnp.stack([omega, -b * omega - c * jnp.sin(theta)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="pendulum.png", help="where to write a PNG ('' for none)")
    parser.add_argument("--solver", default="tsit5")
    opts = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    z0 = jnp.array([np.pi - 0.1, 0.0])
    ts = jnp.linspace(0.0, 10.0, 11)
    solve = jax.jit(
        lambda z0, args: odejax.solve(
            pendulum, z0, 0.0, 10.0, args=args, ts=ts, solver=opts.solver, rtol=1e-8, atol=1e-10
        )
    )
    start = time.perf_counter()
    sol = jax.block_until_ready(solve(z0, (0.25, 5.0)))
    first = time.perf_counter() - start
    start = time.perf_counter()
    sol = jax.block_until_ready(solve(z0, (0.25, 5.0)))
    steady = time.perf_counter() - start

    print(f"damped pendulum, solver={opts.solver}, rtol=1e-8, atol=1e-10")
    print(f"{'t':>6} {'theta':>14} {'omega':>14}")
    for t, (th, om) in zip(np.asarray(sol.ts), np.asarray(sol.zs)):
        print(f"{t:6.2f} {th:14.8f} {om:14.8f}")
    stats = {k: int(v) for k, v in sol.stats.items()}
    print(f"status: {sol.result.name}   stats: {stats}")
    print(
        f"first call (trace + compile + run): {first * 1e3:.1f} ms"
        f"   second call: {steady * 1e3:.3f} ms"
    )

    if opts.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dense = odejax.solve(pendulum, z0, 0.0, 10.0, args=(0.25, 5.0), dense=True, rtol=1e-8)
        tt = jnp.linspace(0.0, 10.0, 500)
        zz = np.asarray(dense.evaluate(tt))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        ax1.plot(tt, zz[:, 0], label="θ")
        ax1.plot(tt, zz[:, 1], label="ω")
        ax1.plot(sol.ts, np.asarray(sol.zs)[:, 0], "o", color="C0")
        ax1.set_xlabel("t")
        ax1.legend()
        ax2.plot(zz[:, 0], zz[:, 1])
        ax2.set_xlabel("θ")
        ax2.set_ylabel("ω")
        ax2.set_title("phase portrait")
        fig.tight_layout()
        fig.savefig(opts.plot, dpi=100)
        print(f"wrote {opts.plot}")


if __name__ == "__main__":
    main()
