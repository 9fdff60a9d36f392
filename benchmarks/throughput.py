"""Throughput of large ensembles (solves per second) on the default device: issue 7's GPU figure.

Run ``python -m benchmarks.throughput`` (``--help`` for options) on a machine with an
accelerator; on a CPU it runs too (use small ``--members``). The batch is the ``ensemble``
workload's (:mod:`benchmarks.ensemble`): Van der Pol, ``z0 = (2, 0)``, ``t ∈ [0, t1]``, ``mu``
evenly spaced in ``[0.5, 50]`` and sorted, float64, tsit5, rtol 1e-6, atol 1e-9, saved at ``t1``,
``throw=False``. Rows:

* ``odejax.ensemble``: the whole batch in one adaptive loop per device (one loop here, on one
  device), which runs until its slowest member is done;
* ``odejax.ensemble, chunk_size=N/8``: the same in eight sequential chunks (``lax.map``), each
  running only as long as its own slowest member (the members are sorted by ``mu``);
* Diffrax ``jit(vmap(diffeqsolve))``, its PID controller set to odejax's defaults (when
  Diffrax is installed).

Times: median over ``--repeats`` calls after one warm-up call (which also compiles), each call
blocked on. A sample of members is checked against SciPy's DOP853 at rtol = atol = 1e-12.
Writes ``throughput.json`` and ``throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from .ensemble import MU_RANGE, SAMPLE, _reference_t1

OPTS = dict(solver="tsit5", rtol=1e-6, atol=1e-9, max_steps=100_000, throw=False)


def _impls(n: int, t1: float, with_diffrax: bool):
    """``{label: (call, steps)}``: zero-argument calls returning the final states ``(n, 2)``,
    and a function giving the per-member step counts (or ``None``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import odejax

    def vdp(z, t, mu):
        x, y = z
        return jnp.stack([y, mu * (1 - x**2) * y - x])

    mus = jnp.asarray(np.linspace(*MU_RANGE, n))
    z0s = jnp.tile(jnp.array([2.0, 0.0]), (n, 1))
    ts = jnp.array([0.0, t1])

    def run(chunk):
        def call():
            return odejax.ensemble(vdp, z0s, ts, mus, chunk_size=chunk, **OPTS)[:, -1]

        def steps():
            sol = odejax.ensemble(vdp, z0s, ts, mus, chunk_size=chunk, return_solution=True, **OPTS)
            return np.asarray(sol.stats["num_steps"]), np.asarray(sol.status)

        return call, steps

    out = {"odejax.ensemble": run(None)}
    if n % 8 == 0:
        out[f"odejax.ensemble, chunk_size={n // 8}"] = run(n // 8)
    if with_diffrax:
        import diffrax

        from .adapters import diffrax_controller

        term = diffrax.ODETerm(lambda t, z, mu: vdp(z, t, mu))
        controller = diffrax_controller(OPTS["rtol"], OPTS["atol"])

        def one(z0, mu):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Tsit5(),
                0.0,
                t1,
                None,
                z0,
                mu,
                stepsize_controller=controller,
                max_steps=OPTS["max_steps"],
                throw=False,
            )
            return sol.ys[-1], sol.stats["num_steps"], sol.result._value

        fn = jax.jit(jax.vmap(one))
        out["diffrax jit(vmap)"] = (
            lambda: fn(z0s, mus)[0],
            lambda: tuple(np.asarray(x) for x in fn(z0s, mus)[1:]),
        )
    return out, np.linspace(*MU_RANGE, n)


def measure(members: list[int], t1: float, repeats: int, with_diffrax: bool, log) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    device = jax.devices()[0]
    result = {
        "device": getattr(device, "device_kind", str(device)),
        "num_devices": len(jax.devices()),
        "jax": jax.__version__,
        "t1": t1,
        "rows": [],
    }
    for n in members:
        impls, mus = _impls(n, t1, with_diffrax)
        for label, (call, steps) in impls.items():
            start = time.perf_counter()
            z = np.asarray(jax.block_until_ready(call()))
            first = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times.append(time.perf_counter() - start)
            counts, status = steps()
            pick = np.linspace(0, n - 1, SAMPLE).round().astype(int)
            err = max(float(np.max(np.abs(_reference_t1(float(mus[i]), t1) - z[i]))) for i in pick)
            row = {
                "members": n,
                "impl": label,
                "first_call_s": first,
                "time_s": statistics.median(times),
                "min_s": min(times),
                "solves_per_s": n / statistics.median(times),
                "max_steps": int(counts.max()),
                "mean_steps": float(counts.mean()),
                "succeeded": bool(np.all(status == 0)),
                "max_error": err,
            }
            result["rows"].append(row)
            log(
                f"{n:>9,} {label:38s} {row['time_s'] * 1e3:9.1f} ms"
                f" {row['solves_per_s']:>14,.0f} solves/s  first call {first:.1f} s"
                f"  steps max {row['max_steps']} mean {row['mean_steps']:.0f}"
                f"  error {err:.1e}  ok {row['succeeded']}"
            )
    return result


def table(result: dict, command: str) -> str:
    lines = [
        f"Command: `{command}` · {result['device']} ({result['num_devices']} device(s)), JAX"
        f" {result['jax']} · Van der Pol mu in [{MU_RANGE[0]}, {MU_RANGE[1]}] (sorted),"
        f" t1 = {result['t1']}, tsit5, rtol 1e-6, atol 1e-9, float64",
        "",
        "| members | implementation | time (s) | solves/s | first call (s) | steps: max, mean |"
        " all succeeded | max error (sample) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['members']:,} | {r['impl']} | {r['time_s']:.3f} | {r['solves_per_s']:,.0f} |"
            f" {r['first_call_s']:.1f} | {r['max_steps']}, {r['mean_steps']:.0f} |"
            f" {'yes' if r['succeeded'] else 'NO'} | {r['max_error']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--t1", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-diffrax", action="store_true", help="leave Diffrax out")
    parser.add_argument("--out", default="benchmarks/results/throughput")
    args = parser.parse_args(argv)
    try:
        import diffrax  # noqa: F401

        with_diffrax = not args.no_diffrax
    except ImportError:
        print("diffrax is not installed: its rows are skipped", flush=True)
        with_diffrax = False
    members = [int(m) for m in args.members.split(",")]
    result = measure(members, args.t1, args.repeats, with_diffrax, lambda s: print(s, flush=True))
    command = "python -m benchmarks.throughput " + " ".join(argv if argv else sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump({**result, "command": command.strip()}, f, indent=1)
    md = table(result, command.strip())
    with open(os.path.join(args.out, "throughput.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
