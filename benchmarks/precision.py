"""Work-precision: error against time, and nfe against tolerance, over rtol 1e-3 … 1e-10.

On Van der Pol (the ``vdp`` problem), for each implementation and each method it offers
(tsit5, dopri5), the forward solve is built and timed at every tolerance (``atol = 1e-3 ·
rtol``, as in the forward workloads), with ``max_steps`` raised to :data:`MAX_STEPS` so the
tight tolerances fit. At each tolerance all implementations are timed round-robin in one
:func:`steady_times` call; the error is the largest absolute difference from SciPy's DOP853 at
1e-13 over every save time and component, and nfe is counted on the host in a separate untimed
run. The plots go to ``OUT/work_precision_<problem>.png`` (error vs time) and
``OUT/nfe_<problem>.png`` (nfe vs rtol).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .adapters import Adapter
from .problems import VAN_DER_POL, Case, Problem, reference
from .records import PrecisionResult
from .timing import Settings, steady_times
from .workloads import _compiled, count_nfe

__all__ = ["MAX_STEPS", "measure_precision", "plot_precision", "precision_setup"]

MAX_STEPS = 200_000
FULL_RTOLS = tuple(10.0**-k for k in range(3, 11))
QUICK_RTOLS = (1e-4, 1e-8)


def precision_setup(quick: bool) -> tuple[tuple[Problem, ...], tuple[float, ...]]:
    """The problems and tolerances of a quick or full run."""
    return (VAN_DER_POL,), QUICK_RTOLS if quick else FULL_RTOLS


def measure_precision(
    adapters: list[Adapter], settings: Settings, quick: bool, log
) -> list[PrecisionResult]:
    """Time, error and nfe of every implementation and method at every tolerance."""
    problems, rtols = precision_setup(quick)
    settings = dataclasses.replace(settings, rounds=settings.precision_rounds)
    rows: list[PrecisionResult] = []
    for problem in problems:
        ref = reference(problem)
        for rtol in rtols:
            log(f"  precision {problem.name} rtol {rtol:.0e}")
            cases: dict[str, tuple[Adapter, Case]] = {}
            for adapter in adapters:
                for solver in settings.solvers:
                    case = Case(problem, solver, rtol, 1e-3 * rtol, MAX_STEPS)
                    if adapter.supports(case) is None:
                        cases[f"{adapter.name}/{solver}"] = (adapter, case)
            calls: dict[str, Callable] = {}
            outputs = {}
            for key, (adapter, case) in cases.items():
                built, out = _compiled([adapter], {adapter.name: case}, log)
                if adapter.name in built:
                    calls[key], outputs[key] = built[adapter.name], out[adapter.name]
            steady = steady_times(calls, settings)
            for key in calls:
                adapter, case = cases[key]
                zs = np.asarray(outputs[key][0]).reshape(1, len(problem.save_ts), -1)
                rows.append(
                    PrecisionResult(
                        problem=problem.name,
                        impl=adapter.name,
                        solver=case.solver,
                        rtol=rtol,
                        atol=case.atol,
                        steady_s=steady[key].median,
                        steady_spread=steady[key].spread,
                        nfe=count_nfe(adapter, case),
                        max_error=None if ref is None else float(np.max(np.abs(zs - ref))),
                    )
                )
    return rows


_STYLE = {
    "odejax": ("C0", "-"),
    "diffrax": ("C1", "-"),
    "jax_ode": ("C2", "-"),
    "scipy": ("C3", "-"),
    "torchdiffeq": ("C4", "-"),
    "torchode": ("C5", "-"),
}


def plot_precision(rows: list[PrecisionResult], out_dir: Path, log) -> list[Path]:
    """Write the work-precision and nfe plots; returns the files written (none without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("precision: matplotlib is not installed, so no plots", keep=True)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for problem in dict.fromkeys(r.problem for r in rows):
        mine = [r for r in rows if r.problem == problem]
        lines = dict.fromkeys((r.impl, r.solver) for r in mine)
        rtols = sorted({r.rtol for r in mine})
        span = f"{rtols[-1]:.0e} … {rtols[0]:.0e}".replace("e-0", "e-")
        for kind in ("work_precision", "nfe"):
            fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
            for impl, solver in lines:
                pts = sorted(
                    (r for r in mine if (r.impl, r.solver) == (impl, solver)), key=lambda r: -r.rtol
                )
                color, _ = _STYLE.get(impl, ("k", "-"))
                style = "-o" if solver == "tsit5" else "--s"
                if kind == "work_precision":
                    pts = [r for r in pts if r.max_error is not None]
                    x = [r.steady_s * 1e3 for r in pts]
                    y = [max(r.max_error, 1e-16) for r in pts]
                else:
                    x = [r.rtol for r in pts]
                    y = [r.nfe for r in pts]
                ax.plot(x, y, style, color=color, ms=4, lw=1.2, label=f"{impl} {solver}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            if kind == "work_precision":
                ax.set_xlabel("steady time per solve (ms)")
                ax.set_ylabel("max abs error vs DOP853 at 1e-13")
                ax.set_title(f"{problem}: error vs time, rtol {span} (atol = 1e-3·rtol)")
            else:
                ax.set_xlabel("rtol (atol = 1e-3·rtol)")
                ax.set_ylabel("vector-field evaluations (counted)")
                ax.invert_xaxis()
                ax.set_title(f"{problem}: nfe vs tolerance")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"{kind}_{problem}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written
