"""Stiff benchmark: ``python -m benchmarks.stiff [--quick] [--out DIR]``.

Robertson (to ``t = 1e5``), Van der Pol (``mu = 1000`` over ``[0, 3000]``), HIRES and OREGO,
solved by odejax ``rodas5`` and ``kvaerno5``, Diffrax ``Kvaerno5`` (``PIDController`` with the
same ``rtol``/``atol``) and SciPy ``Radau``/``BDF`` (with the exact Jacobian). JAX solvers are
jitted, warmed up and timed as medians of repeated calls that block on the result
(:mod:`benchmarks.timing`); SciPy's times are medians of whole ``solve_ivp`` calls.

At ``rtol = 1e-6`` the report gives run time, time relative to Diffrax ``Kvaerno5`` (target for
odejax: at most 0.5), steps and the error against the reference solution (max relative error
over the components). A work-precision sweep (``rtol`` from ``1e-3`` to ``1e-9``) is plotted as
error against run time, one panel per problem. Results go to ``DIR/stiff.md``,
``DIR/stiff.json`` and ``DIR/stiff_work_precision.png`` (default ``DIR``: benchmarks/results).

References: HIRES (``t = 321.8122``) and OREGO (``t = 360``) are the published values of the
Bari test set for IVP solvers (Mazzia & Magherini); Robertson at ``1e5`` and VdP at ``3000`` are
SciPy ``Radau`` solutions at ``rtol = 1e-13`` (see tests/test_stiff.py, which checks the same
values).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import odejax  # noqa: E402

from .timing import QUICK, Settings, steady_times  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.5
MAX_STEPS = 200_000


# --------------------------------------------------------------------------------------------
# Problems: each vector field written once for JAX and NumPy (``xp``), with its Jacobian.
# --------------------------------------------------------------------------------------------


def _rober(y, xp):
    return xp.stack(
        [
            -0.04 * y[0] + 1e4 * y[1] * y[2],
            0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
            3e7 * y[1] ** 2,
        ]
    )


def _rober_jac(y):
    return np.array(
        [
            [-0.04, 1e4 * y[2], 1e4 * y[1]],
            [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
            [0.0, 6e7 * y[1], 0.0],
        ]
    )


def _vdp(y, xp, mu=1000.0):
    return xp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_jac(y, mu=1000.0):
    return np.array([[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]])


def _hires(y, xp):
    return xp.stack(
        [
            -1.71 * y[0] + 0.43 * y[1] + 8.32 * y[2] + 0.0007,
            1.71 * y[0] - 8.75 * y[1],
            -10.03 * y[2] + 0.43 * y[3] + 0.035 * y[4],
            8.32 * y[1] + 1.71 * y[2] - 1.12 * y[3],
            -1.745 * y[4] + 0.43 * y[5] + 0.43 * y[6],
            -280.0 * y[5] * y[7] + 0.69 * y[3] + 1.71 * y[4] - 0.43 * y[5] + 0.69 * y[6],
            280.0 * y[5] * y[7] - 1.81 * y[6],
            -280.0 * y[5] * y[7] + 1.81 * y[6],
        ]
    )


def _hires_jac(y):
    j = np.zeros((8, 8))
    j[0, :3] = [-1.71, 0.43, 8.32]
    j[1, :2] = [1.71, -8.75]
    j[2, 2:5] = [-10.03, 0.43, 0.035]
    j[3, 1:4] = [8.32, 1.71, -1.12]
    j[4, 4:7] = [-1.745, 0.43, 0.43]
    j[5, 3:8] = [0.69, 1.71, -0.43 - 280.0 * y[7], 0.69, -280.0 * y[5]]
    j[6, 5:8] = [280.0 * y[7], -1.81, 280.0 * y[5]]
    j[7, 5:8] = [-280.0 * y[7], 1.81, -280.0 * y[5]]
    return j


def _orego(y, xp):
    return xp.stack(
        [
            77.27 * (y[1] + y[0] * (1 - 8.375e-6 * y[0] - y[1])),
            (y[2] - (1 + y[0]) * y[1]) / 77.27,
            0.161 * (y[0] - y[2]),
        ]
    )


def _orego_jac(y):
    return np.array(
        [
            [77.27 * (1 - 2 * 8.375e-6 * y[0] - y[1]), 77.27 * (1 - y[0]), 0.0],
            [-y[1] / 77.27, -(1 + y[0]) / 77.27, 1 / 77.27],
            [0.161, 0.0, -0.161],
        ]
    )


@dataclasses.dataclass(frozen=True)
class Problem:
    """A stiff test problem.

    Attributes:
        name: label.
        rhs: ``rhs(y, xp)`` (autonomous), for ``xp = jax.numpy`` or ``numpy``.
        jac: NumPy Jacobian (for SciPy).
        y0, t1: initial state at ``t = 0`` and the final time.
        reference: the reference solution at ``t1``.
        atol_factor: ``atol = atol_factor * rtol``.
    """

    name: str
    rhs: Callable
    jac: Callable
    y0: tuple[float, ...]
    t1: float
    reference: tuple[float, ...]
    atol_factor: float

    def error(self, y) -> float:
        ref = np.asarray(self.reference)
        return float(np.max(np.abs(np.asarray(y) - ref) / np.abs(ref)))


PROBLEMS = (
    Problem(
        "Robertson",
        _rober,
        _rober_jac,
        (1.0, 0.0, 0.0),
        1e5,
        (0.017865921142100154, 7.274751468436565e-08, 0.9821340061103905),
        1e-4,
    ),
    Problem(
        "VdP(mu=1000)",
        _vdp,
        _vdp_jac,
        (2.0, 0.0),
        3000.0,
        (-1.5106069367458292, 0.001178380000727482),
        1.0,
    ),
    Problem(
        "HIRES",
        _hires,
        _hires_jac,
        (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057),
        321.8122,
        (
            0.7371312573325668e-3,
            0.1442485726316185e-3,
            0.5888729740967575e-4,
            0.1175651343283149e-2,
            0.2386356198831331e-2,
            0.6238968252742796e-2,
            0.2849998395185769e-2,
            0.2850001604814231e-2,
        ),
        1e-4,
    ),
    Problem(
        "OREGO",
        _orego,
        _orego_jac,
        (1.0, 2.0, 3.0),
        360.0,
        (0.1000814870318523e1, 0.1228178521549917e4, 0.1320554942846706e3),
        1.0,
    ),
)


# --------------------------------------------------------------------------------------------
# Implementations: each returns a jitted (or plain) call ``run(rtol, atol) -> (y1, steps)``.
# --------------------------------------------------------------------------------------------


def _odejax(solver: str):
    def build(p: Problem):
        def f(y, t, args):
            return p.rhs(y, jnp)

        y0 = jnp.asarray(p.y0)

        @jax.jit
        def run(rtol, atol):
            sol = odejax.solve(
                f, y0, 0.0, p.t1, solver=solver, rtol=rtol, atol=atol, max_steps=MAX_STEPS
            )
            return sol.zs[-1], sol.stats["num_steps"]

        return run

    return build


def _diffrax_kvaerno5():
    import diffrax

    def build(p: Problem):
        term = diffrax.ODETerm(lambda t, y, args: p.rhs(y, jnp))
        y0 = jnp.asarray(p.y0)

        @jax.jit
        def run(rtol, atol):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Kvaerno5(),
                0.0,
                p.t1,
                None,
                y0,
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                saveat=diffrax.SaveAt(t1=True),
                max_steps=MAX_STEPS,
            )
            return sol.ys[-1], sol.stats["num_steps"]

        return run

    return build


def _scipy(method: str):
    from scipy.integrate import solve_ivp

    def build(p: Problem):
        def rhs(t, y):
            return p.rhs(y, np)

        def jac(t, y):
            return p.jac(y)

        def run(rtol, atol):
            sol = solve_ivp(rhs, (0.0, p.t1), p.y0, method=method, rtol=rtol, atol=atol, jac=jac)
            if not sol.success:
                raise RuntimeError(f"SciPy {method} failed: {sol.message}")
            return sol.y[:, -1], len(sol.t) - 1

        return run

    return build


def implementations() -> tuple[dict[str, Callable], list[str]]:
    """Builders by name, and notes on what is missing."""
    impls: dict[str, Callable] = {
        "odejax rodas5": _odejax("rodas5"),
        "odejax kvaerno5": _odejax("kvaerno5"),
    }
    notes = []
    try:
        impls["diffrax Kvaerno5"] = _diffrax_kvaerno5()
    except ImportError:
        notes.append("Diffrax is not installed: its column is skipped.")
    try:
        impls["scipy Radau"] = _scipy("Radau")
        impls["scipy BDF"] = _scipy("BDF")
    except ImportError:
        notes.append("SciPy is not installed: its columns are skipped.")
    return impls, notes


JAX_PREFIXES = ("odejax", "diffrax")


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def _block(x):
    return jax.block_until_ready(x)


def _host_median(call: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    p: Problem, runs: dict[str, Callable], rtol: float, settings: Settings, host_repeats: int
):
    """``{impl: {"time": s, "steps": n, "error": e}}`` at one tolerance."""
    atol = rtol * p.atol_factor
    out: dict[str, dict] = {}
    jax_calls = {}
    for name, run in runs.items():
        try:
            if name.startswith(JAX_PREFIXES):
                r, a = jnp.asarray(rtol), jnp.asarray(atol)
                y1, steps = _block(run(r, a))
                jax_calls[name] = lambda run=run, r=r, a=a: run(r, a)
            else:
                y1, steps = run(rtol, atol)
                out[name] = {"time": _host_median(lambda run=run: run(rtol, atol), host_repeats)}
            out.setdefault(name, {}).update(steps=int(steps), error=p.error(y1))
        except Exception as e:  # one failing implementation must not end the run
            out[name] = {"failed": f"{type(e).__name__}: {str(e)[:200]}"}
    if jax_calls:
        for name, timing in steady_times(jax_calls, settings).items():
            out[name]["time"] = timing.median
    return out


def run_benchmark(quick: bool, out_dir: Path) -> dict:
    # Only the steady-state fields are used; the rest come from the harness's defaults.
    settings = dataclasses.replace(
        QUICK, rounds=5 if quick else 15, min_sample_s=0.02 if quick else 0.1
    )
    host_repeats = 1 if quick else 3
    sweep = [1e-3, 1e-7] if quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
    builders, notes = implementations()
    results: dict = {
        "command": "python -m benchmarks.stiff" + (" --quick" if quick else ""),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "notes": notes,
        "rtol": 1e-6,
        "problems": {},
    }
    for p in PROBLEMS[::2] if quick else PROBLEMS:  # quick: Robertson and HIRES
        print(f"[{p.name}] compiling ...", flush=True)
        runs = {name: build(p) for name, build in builders.items()}
        at_1e6 = measure(p, runs, 1e-6, settings, host_repeats)
        wp = {}
        for rtol in sweep:
            print(f"[{p.name}] rtol={rtol:g}", flush=True)
            wp[f"{rtol:g}"] = measure(p, runs, rtol, settings, host_repeats)
        results["problems"][p.name] = {
            "atol_factor": p.atol_factor,
            "at_rtol_1e-6": at_1e6,
            "work_precision": wp,
        }
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def markdown(results: dict) -> str:
    lines = [
        "# Stiff solvers: odejax vs Diffrax vs SciPy",
        "",
        f"Command: `{results['command']}`. Machine: {results['machine']['platform']}, "
        f"JAX {results['machine']['jax']} ({results['machine']['backend']}).",
        "",
        "At rtol = 1e-6 (atol = rtol × the problem's factor: Robertson and HIRES 1e-4, VdP and "
        "OREGO 1). Time: median steady-state run time (JAX: jitted, warmed up, blocking on the "
        "result; SciPy: whole `solve_ivp` calls with the exact Jacobian). Ratio: time / Diffrax "
        f"`Kvaerno5` (target for odejax ≤ {TARGET_RATIO}). Error: max relative error against "
        "the reference solution at t1.",
        "",
    ]
    for note in results["notes"]:
        lines += [f"> {note}", ""]
    impls = None
    rows = []
    for pname, pres in results["problems"].items():
        r = pres["at_rtol_1e-6"]
        impls = impls or list(r)
        base = r.get("diffrax Kvaerno5", {}).get("time")
        for name in r:
            cell = r[name]
            if "failed" in cell:
                rows.append(f"| {pname} | {name} | failed: {cell['failed']} | | | |")
                continue
            ratio = f"{cell['time'] / base:.3f}" if base else "—"
            ok = ""
            if name.startswith("odejax") and base:
                ok = " ✓" if cell["time"] / base <= TARGET_RATIO else " ✗"
            rows.append(
                f"| {pname} | {name} | {_fmt_time(cell['time'])} | {ratio}{ok} | "
                f"{cell['steps']} | {cell['error']:.2e} |"
            )
    lines += [
        "| problem | solver | time | ratio vs Diffrax Kvaerno5 | steps | error |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        "## Steps against SciPy",
        "",
        "| problem | odejax rodas5 | odejax kvaerno5 | scipy Radau | scipy BDF | "
        "best odejax / best SciPy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for pname, pres in results["problems"].items():
        r = pres["at_rtol_1e-6"]
        steps = {k: v.get("steps") for k, v in r.items()}
        ours = [s for k, s in steps.items() if k.startswith("odejax") and s]
        theirs = [s for k, s in steps.items() if k.startswith("scipy") and s]
        ratio = f"{min(ours) / min(theirs):.2f}" if ours and theirs else "—"
        cells = [
            str(steps.get(k, "—"))
            for k in ("odejax rodas5", "odejax kvaerno5", "scipy Radau", "scipy BDF")
        ]
        lines.append(f"| {pname} | {' | '.join(cells)} | {ratio} |")
    lines += [
        "",
        "## Work-precision (error vs time), rtol 1e-3 … 1e-9",
        "",
        "![work-precision](stiff_work_precision.png)",
        "",
    ]
    for pname, pres in results["problems"].items():
        lines += [f"### {pname}", "", "| rtol | " + " | ".join(impls) + " |"]
        lines.append("|---|" + "---:|" * len(impls))
        for rtol, r in pres["work_precision"].items():
            cells = []
            for name in impls:
                c = r.get(name, {})
                if "time" in c:
                    cells.append(f"{_fmt_time(c['time'])}, err {c['error']:.1e}, {c['steps']} st")
                else:
                    cells.append("failed")
            lines.append(f"| {rtol} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    problems = results["problems"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    styles = {
        "odejax rodas5": ("C0", "o"),
        "odejax kvaerno5": ("C1", "s"),
        "diffrax Kvaerno5": ("C2", "^"),
        "scipy Radau": ("C3", "v"),
        "scipy BDF": ("C4", "D"),
    }
    for ax, (pname, pres) in zip(axes.flat, problems.items()):
        wp = pres["work_precision"]
        names = list(next(iter(wp.values())))
        for name in names:
            pts = [
                (c["time"], c["error"])
                for c in (wp[r].get(name, {}) for r in wp)
                if "time" in c and c["error"] > 0
            ]
            if not pts:
                continue
            color, marker = styles.get(name, (None, "x"))
            ax.loglog(*zip(*pts), marker=marker, color=color, label=name)
        ax.set_title(pname)
        ax.set_xlabel("run time (s)")
        ax.set_ylabel("max relative error at t1")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Work-precision, rtol 1e-3 … 1e-9 (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stiff", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, tolerances, problems")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    results = run_benchmark(ns.quick, ns.out)
    if plot(results, ns.out / "stiff_work_precision.png"):
        results["plot"] = "stiff_work_precision.png"
    else:
        results["notes"].append("matplotlib is not installed: no work-precision plot.")
    text = markdown(results)
    (ns.out / "stiff.md").write_text(text + "\n")
    (ns.out / "stiff.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
