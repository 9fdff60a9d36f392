"""``odejax.ensemble`` (one adaptive loop per device) vs ``jit(vmap(solve))`` on a sharded batch.

Run ``python -m benchmarks.ensemble`` (``--help`` for options). The parent process starts one child
process per device layout, each with ``XLA_FLAGS`` set before JAX is imported:

* ``--xla_force_host_platform_device_count=N`` simulates ``N`` CPU devices;
* ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` keeps XLA from spreading
  one device's ops over several threads, so a device is one thread of execution;
* the 1- and 2-device scaling runs are pinned with ``taskset`` to 1 and 2 real cores.

The batch: Van der Pol, ``z0 = (2, 0)``, ``t ∈ [0, t1]``, ``mu`` evenly spaced in ``[0.5, 50]``
(step counts differ ~4×), float64, tsit5, rtol 1e-6, atol 1e-9, saved at ``t1``, ``throw=False``
for both (with ``throw=True`` the sharded ``jit(vmap)`` gathers the status to device 0 for its
host callback). Two layouts of the same members: ``blocked`` (sorted by ``mu``: device 0 gets
the easiest quarter, the last device the hardest) and ``mixed`` (member ``i`` on device
``i mod N``: every device gets the same spread). Both implementations get the same arrays,
already sharded over the batch axis (``NamedSharding(mesh, P("batch"))``); their results are
checked equal bit for bit. Times: median over round-robin repeats, each call blocked on.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MU_RANGE = (0.5, 50.0)
SAMPLE = 8  # members whose final state is checked against SciPy's DOP853


def process_cpus() -> list[int]:
    """The CPUs this process may run on, sorted (``benchmarks.run --cpus`` restricts them);
    empty where the platform cannot tell."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _child(devices: int, batch: int, t1: float, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    jax.config.update("jax_enable_x64", True)
    import odejax

    try:
        ensemble = odejax.ensemble
    except AttributeError:  # not exported yet
        from odejax._ensemble import ensemble

    assert len(jax.devices()) == devices, jax.devices()

    def vdp(z, t, mu):
        x, y = z
        return jnp.stack([y, mu * (1 - x**2) * y - x])

    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    ts = jnp.array([0.0, t1])
    opts = dict(solver="tsit5", rtol=1e-6, atol=1e-9, max_steps=100_000, throw=False)
    vmapped = jax.jit(jax.vmap(lambda z, mu: odejax.odeint(vdp, z, ts, mu, **opts)))

    mus_sorted = np.linspace(*MU_RANGE, batch)
    layouts = {
        "blocked": mus_sorted,
        "mixed": mus_sorted.reshape(-1, devices).T.reshape(-1),
    }
    out = {"devices": devices, "batch": batch, "t1": t1, "layouts": {}}
    for name, mus in layouts.items():
        mus = jax.device_put(mus, sharding)
        z0s = jax.device_put(np.tile([2.0, 0.0], (batch, 1)), sharding)
        impls = {
            "ensemble": lambda z0s=z0s, mus=mus: ensemble(vdp, z0s, ts, mus, mesh=mesh, **opts),
            "jit_vmap": lambda z0s=z0s, mus=mus: vmapped(z0s, mus),
        }
        results = {k: np.asarray(fn().block_until_ready()) for k, fn in impls.items()}
        for fn in impls.values():  # warm up
            fn().block_until_ready()
        times = {k: [] for k in impls}
        for _ in range(repeats):  # round-robin: a slow spell of the machine hits both alike
            for k, fn in impls.items():
                start = time.perf_counter()
                fn().block_until_ready()
                times[k].append(time.perf_counter() - start)
        if name == "blocked":  # a few members, for their error against SciPy's DOP853
            pick = np.linspace(0, batch - 1, SAMPLE).round().astype(int)
            out["sample"] = {
                "mu": mus_sorted[pick].tolist(),
                "z_t1": results["ensemble"][pick, -1].tolist(),
            }
        sol = ensemble(vdp, z0s, ts, mus, mesh=mesh, return_solution=True, **opts)
        steps = np.asarray(sol.stats["num_steps"]).reshape(devices, -1)
        out["layouts"][name] = {
            "time_s": {k: statistics.median(v) for k, v in times.items()},
            "min_s": {k: min(v) for k, v in times.items()},
            "identical": bool(np.array_equal(results["ensemble"], results["jit_vmap"])),
            "succeeded": bool(np.all(np.asarray(sol.status) == 0)),
            "max_steps_per_device": steps.max(axis=1).tolist(),
            "mean_steps": float(steps.mean()),
        }
    return out


def _run_child(devices: int, cores: list[int] | None, args) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {THREAD_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "benchmarks.ensemble", "--child", str(devices)]
    cmd += ["--batch", str(args.batch), "--t1", str(args.t1), "--repeats", str(args.repeats)]
    if cores is not None:
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    result = json.loads(line)
    result["cores"] = "all" if cores is None else len(cores)
    return result


def _table(runs: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}` · batch {runs[0]['batch']}, Van der Pol mu in"
        f" [{MU_RANGE[0]}, {MU_RANGE[1]}], t1 = {runs[0]['t1']}, tsit5, rtol 1e-6, float64 ·"
        f" {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| devices | real cores | layout | max steps per device | ensemble (ms) |"
        " jit(vmap), sharded (ms) | ensemble / jit(vmap) | ensemble solves/s | identical |"
        " max error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        err = "—" if r.get("max_error") is None else f"{r['max_error']:.1e}"
        for name, lay in r["layouts"].items():
            te, tv = lay["time_s"]["ensemble"], lay["time_s"]["jit_vmap"]
            lines.append(
                f"| {r['devices']} | {r['cores']} | {name} | {lay['max_steps_per_device']} |"
                f" {1e3 * te:.1f} | {1e3 * tv:.1f} | {te / tv:.2f} | {r['batch'] / te:,.0f} |"
                f" {'yes' if lay['identical'] else 'NO'} | {err} |"
            )
    scaling = {r["devices"]: r for r in runs if r["cores"] != "all"}
    if 1 in scaling and 2 in scaling:
        lines.append("")
        for name in scaling[1]["layouts"]:
            t1c = scaling[1]["layouts"][name]["time_s"]
            t2c = scaling[2]["layouts"][name]["time_s"]
            lines.append(
                f"Scaling 1 → 2 real cores ({name}):"
                f" ensemble {t1c['ensemble'] / t2c['ensemble']:.2f}×,"
                f" jit(vmap) {t1c['jit_vmap'] / t2c['jit_vmap']:.2f}× (ideal 2×)."
            )
    return "\n".join(lines)


@functools.cache
def _reference_t1(mu: float, t1: float):
    """Van der Pol's state at ``t1`` from SciPy's DOP853 at rtol = atol = 1e-12."""
    from scipy.integrate import solve_ivp

    sol = solve_ivp(
        lambda t, y: [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]],
        (0.0, t1),
        [2.0, 0.0],
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    return sol.y[:, -1]


def sample_error(run: dict) -> float | None:
    """Largest absolute error at ``t1`` of the sampled members against SciPy's DOP853 at
    rtol = atol = 1e-12 (``None`` without SciPy)."""
    try:
        import scipy.integrate  # noqa: F401
    except ImportError:
        return None
    import numpy as np

    return max(
        float(np.max(np.abs(_reference_t1(mu, run["t1"]) - np.asarray(z))))
        for mu, z in zip(run["sample"]["mu"], run["sample"]["z_t1"])
    )


def measure(repeats: int, log, batch: int = 128, t1: float = 50.0) -> list[dict]:
    """The three layouts (4 simulated devices on all cores; 1 and 2 devices pinned to 1 and 2
    real cores) as :func:`main` runs them, for ``benchmarks.run``; each run dict gains
    ``max_error`` (see :func:`sample_error`)."""
    args = argparse.Namespace(batch=batch, t1=t1, repeats=repeats)
    cpus = process_cpus()
    pin = shutil.which("taskset") is not None and len(cpus) >= 2
    if not pin:
        log("ensemble: cannot pin to 1 and 2 cores (no taskset or < 2 cores)", keep=True)
    runs = []
    layouts = ((4, None), (1, cpus[:1] if pin else None), (2, cpus[:2] if pin else None))
    for devices, cores in layouts:
        log(f"  ensemble: {devices} device(s), {'all' if cores is None else len(cores)} core(s)")
        run = _run_child(devices, cores, args)
        run["max_error"] = sample_error(run)
        runs.append(run)
    return runs


def table(runs: list[dict], command: str) -> str:
    """The markdown table of :func:`measure`'s or :func:`main`'s runs."""
    return _table(runs, command)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="members (multiple of 4)")
    parser.add_argument("--t1", type=float, default=50.0, help="end time")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per implementation")
    parser.add_argument("--quick", action="store_true", help="5 repeats")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 5
    if args.child is not None:
        print(json.dumps(_child(args.child, args.batch, args.t1, args.repeats)))
        return
    if args.batch % 4:
        parser.error("--batch must be a multiple of 4")

    cpus = process_cpus()
    pin = shutil.which("taskset") is not None and len(cpus) >= 2
    runs = [_run_child(4, None, args)]
    runs.append(_run_child(1, cpus[:1] if pin else None, args))
    runs.append(_run_child(2, cpus[:2] if pin else None, args))
    for run in runs:
        run["max_error"] = sample_error(run)
    command = "python -m benchmarks.ensemble " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(_table(runs, command.strip()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(runs, fh, indent=1)


if __name__ == "__main__":
    main()
