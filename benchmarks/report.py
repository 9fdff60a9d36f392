"""Reporting: the run's environment, the markdown tables and the JSON file."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import jax

from .adapters import Adapter
from .ensemble import process_cpus
from .ensemble import table as ensemble_table
from .records import (
    GradResult,
    MemoryResult,
    OverheadResult,
    PrecisionResult,
    Result,
    RssResult,
    Run,
    SeminormResult,
)
from .targets import Verdict, sci, summary
from .timing import Settings
from .variants import METHODS

__all__ = ["environment", "markdown", "write"]

_PACKAGES = (
    "jax",
    "jaxlib",
    "diffrax",
    "equinox",
    "optax",
    "scipy",
    "numpy",
    "torch",
    "torchdiffeq",
    "torchode",
    "odejax",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """The repository's commit, marked ``+dirty`` when odejax has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "odejax"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def environment(command: str, mode: str, settings: Settings) -> dict:
    """What the numbers depend on: command, machine, versions, measuring settings."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": len(process_cpus()) or os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "x64": bool(jax.config.jax_enable_x64),
        "python": platform.python_version(),
        "versions": versions,
        "odejax_commit": _git_commit(),
        "mode": mode,
        "settings": dataclasses.asdict(settings),
        "torch_threads": _torch_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _torch_threads() -> int | None:
    """torch's intra-op threads as the torch adapters set them (``None`` without torch)."""
    try:
        from .adapters import torch_threads

        return torch_threads()
    except ImportError:
        return None


def _num(x: float | None, fmt: str) -> str:
    if x is None:
        return "—"
    if fmt == "steps":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    if fmt == "ratio":
        return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"
    return format(x, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _results_table(results: list[Result]) -> str:
    header = ["case", "solver", "impl", "steady ms (IQR)", "odejax ÷ impl", "first call s"]
    header += ["odejax ÷ impl", "steps", "accepted", "rejected", "nfe", "max error"]
    rows = [
        [
            r.workload if r.workload != "detest" else f"DETEST {r.problem}",
            r.solver,
            r.impl,
            f"{r.steady_s * 1e3:.3g} ({r.steady_spread:.0%})",
            _num(r.steady_ratio, "ratio"),
            f"{r.first_call_s:.3g}",
            _num(r.first_ratio, "ratio"),
            _num(r.steps, "steps"),
            _num(r.accepted, "steps"),
            _num(r.rejected, "steps"),
            _num(r.nfe, "d"),
            _num(r.max_error, ".1e"),
        ]
        for r in results
    ]
    return _table(header, rows)


def _overhead_table(overhead: list[OverheadResult]) -> str:
    header = ["impl", "solver", "saves", "nfe", "steady ms", "ns / eval", "RK4 steps"]
    header += ["RK4 ns / eval"]
    rows = [
        [
            o.impl,
            o.solver,
            "101 times" if o.saves == "101" else "t1 only",
            str(o.nfe),
            f"{o.steady_s * 1e3:.3g}",
            f"{o.per_eval_s * 1e9:.0f}",
            str(o.rk4_steps),
            f"{o.rk4_per_eval_s * 1e9:.0f}",
            f"{o.ratio:.2f}",
        ]
        for o in overhead
    ]
    return _table([*header, "ratio"], rows)


def _grads_table(rows: list[GradResult], training: bool) -> str:
    header = ["impl", "gradient", "kind", "steady ms (IQR)", "odejax ÷ impl", "first call s"]
    header += ["odejax ÷ impl", "fwd steps", "loss"]
    header += ["loss rel. error", "gradient rel. error"] if training else ["gradient rel. error"]
    body = [
        [
            r.impl,
            r.method,
            r.kind,
            f"{r.steady_s * 1e3:.3g} ({r.steady_spread:.0%})",
            _num(r.steady_ratio, "ratio"),
            f"{r.first_call_s:.3g}",
            _num(r.first_ratio, "ratio"),
            _num(r.steps, "steps"),
            _num(r.loss, ".6g"),
            *([_num(r.loss_error, ".1e")] if training else []),
            _num(r.rel_error, ".1e"),
        ]
        for r in rows
    ]
    return _table(header, body)


def _precision_table(rows: list[PrecisionResult], problem: str) -> str:
    mine = [r for r in rows if r.problem == problem]
    rtols = sorted({r.rtol for r in mine}, reverse=True)
    index = {(r.impl, r.solver, r.rtol): r for r in mine}
    header = ["impl", "solver"] + [f"rtol {r:.0e}".replace("e-0", "e-") for r in rtols]
    body = []
    for impl, solver in dict.fromkeys((r.impl, r.solver) for r in mine):
        cells = []
        for rtol in rtols:
            r = index.get((impl, solver, rtol))
            cells.append(
                "—"
                if r is None
                else f"{r.steady_s * 1e3:.3g} ms · {_num(r.max_error, '.0e')} · {r.nfe}"
            )
        body.append([impl, solver, *cells])
    return _table(header, body)


def _rss_table(rows: list[RssResult]) -> str:
    header = ["impl", "gradient", "max_steps", "after imports MiB", "after compile MiB"]
    header += ["peak MiB", "peak − after imports MiB"]
    mib = lambda k: "—" if k is None else f"{k / 1024:.0f}"  # noqa: E731
    body = [
        [
            r.impl,
            r.method,
            "—" if r.max_steps is None else sci(r.max_steps),
            mib(r.base_kib),
            mib(r.compiled_kib),
            mib(r.peak_kib),
            mib(r.growth_kib),
        ]
        for r in rows
    ]
    return _table(header, body)


def _seminorm_table(rows: list[SeminormResult]) -> str:
    header = ["case", "backward norm", "fwd nfe", "bwd nfe", "bwd steps (acc. + rej.)"]
    header += ["steady ms (IQR)", "gradient rel. diff."]
    body = [
        [
            s.case,
            "seminorm (z, a)" if s.seminorm else "full (z, a, θ̄)",
            str(s.forward_nfe),
            str(s.backward_nfe),
            f"{s.backward_steps} ({s.backward_accepted} + {s.backward_rejected})",
            f"{s.steady_s * 1e3:.3g} ({s.steady_spread:.0%})",
            _num(s.grad_rel_diff, ".1e"),
        ]
        for s in rows
    ]
    return _table(header, body)


def _memory_table(rows: list[MemoryResult]) -> str:
    sizes = sorted({m.max_steps for m in rows})
    labels = list(dict.fromkeys(m.label for m in rows))
    index = {(m.label, m.max_steps): m for m in rows}
    header = ["impl", "gradient"] + [f"max_steps {sci(n)}" for n in sizes]
    body = []
    for label in labels:
        cells = []
        for n in sizes:
            m = index.get((label, n))
            cells.append("—" if m is None else f"{m.temp_bytes / 1024:.1f} KiB")
        body.append([METHODS[label][0], METHODS[label][2], *cells])
    return _table(header, body)


def _targets_table(verdicts: list[Verdict], workloads: list[str]) -> str:
    rows = [list(row) for row in summary(verdicts, workloads)]
    return _table(["issue", "target (odejax vs peer)", "met", "measured"], rows)


LEGEND = """\
Times are medians; IQR is the interquartile range over the median. "odejax ÷ impl" is odejax's
time over this row's, from the same run (below 1: odejax is faster). Steady: one compiled call,
blocking on the result. First call: a fresh `jax.jit` around a fresh vector field, timed from the
call to the ready result (trace + compile + one run); for SciPy and torch, which compile nothing,
just the first call. Steps are attempted steps (accepted + rejected); for `jax_ode`, `scipy` and
`torchdiffeq`, which report no step counts, they are derived from the counted evaluations as
(nfe − 2) / 6. nfe is counted on the host in a separate untimed run. Max error: largest absolute
difference from SciPy DOP853 (rtol = atol = 1e-13) over all save times and components. `vmap`
rows: 1024 problems in one call; steps are means per problem; nfe not counted."""

GRAD_LEGEND = """\
Van der Pol (μ = 5, z0 = (2, 0), t ∈ [0, 20], 101 saves, float64, dopri5, rtol 1e-6, atol 1e-9),
loss = sum of squares of the saved states, gradient with respect to (z0, μ) under
`jax.jit(jax.grad(...))` (torchdiffeq: `loss.backward()`, float64). "odejax ÷ impl" compares
odejax's gradient of the same kind: `backsolve` (continuous adjoint) rows with odejax's
`BacksolveAdjoint`, `discrete` rows (reverse mode through the solver's steps) with its
`CheckpointAdjoint`. First call: a fresh `jax.jit(jax.grad(...))` of a fresh loss, trace +
compile + one run (torch: one call; no ratio). fwd steps: attempted steps of the forward solve.
Gradient rel. error: ‖g − g_ref‖ / ‖g_ref‖ against the forward sensitivity equations solved by
SciPy DOP853 at rtol = atol = 1e-13."""

TRAIN_LEGEND = """\
One training step (forward solve, backward pass, optimiser update) in one jitted call (torch:
eager), from the same parameters, optimiser state and batch every call; JAX and torch start
from the same numbers, so the losses agree. The batch is ONE ODE on the (B, 2) state (as
torchdiffeq does), the MLP applied to each row with `jax.vmap`; float32, JAX's x64 mode off.
`train_node`: MLP 2→64→64→2 tanh, B = 256, t ∈ [0, 1], dopri5 rtol = atol = 1e-5, MSE of z(1),
Adam(1e-3). `cubic_spiral`: torchdiffeq's ode_demo: MLP(z³) 2→50→2 tanh, 20 windows of 10
times, dopri5 rtol 1e-7, atol 1e-9, mean |error|, RMSprop(1e-3). Ratios, first call and steps as
in the gradient table."""


PRECISION_LEGEND = """\
Each cell: steady time per solve · max absolute error against SciPy DOP853 (rtol = atol = 1e-13)
over all save times and components · counted nfe. atol = 1e-3 · rtol, `max_steps` 200000,
float64, otherwise the forward-solve settings above; at each tolerance every implementation is
timed round-robin. The plots show the same numbers: error against time (one point per
tolerance, lower left is better) and nfe against tolerance."""

RSS_LEGEND = """\
A fresh Python process per row (`python -m benchmarks.rss LABEL [MAX_STEPS]`) computes the
`grad_vdp` gradient once; peak resident memory is read after
importing the libraries and making the inputs, after tracing + compiling, and after the run
(`VmHWM` of `/proc/self/status`).
Compilation sets the peak of every JAX row (XLA's compiler works in the process), and the
gradients' own buffers (the temporaries above, under 1 MiB) are far below the resolution of a
process's RSS; torch has nothing to compile and runs the eager gradient (its baseline includes
torch and JAX being imported)."""

ENSEMBLE_LEGEND = """\
`odejax.ensemble` (one adaptive loop per device, `shard_map` around a vmapped solve) against
`jax.jit(jax.vmap(odejax.odeint))` on the same batch, already sharded over the devices. Each row
is a child process with `XLA_FLAGS=--xla_force_host_platform_device_count=N` and one thread per
device; the 1- and 2-device rows are pinned to 1 and 2 real cores with `taskset`. `blocked`: the
batch sorted by mu (device 0 the easiest quarter); `mixed`: member i on device i mod N. Max
error: the largest error at t1 of 8 members (mu from 0.5 to 50) against SciPy DOP853 at
rtol = atol = 1e-12."""


def markdown(env: dict, adapters: list[Adapter], run: Run, verdicts, workloads) -> str:
    """The whole report as markdown."""
    v = env["versions"]
    s = env["settings"]
    cores = f"{env['cores']} core{'s' if env['cores'] != 1 else ''}"
    lines = [
        "# odejax benchmarks",
        "",
        f"- Command: `{env['command']}` ({env['mode']} mode), {env['date']}",
        f"- Machine: {env['cpu']}, {cores}, JAX backend {env['backend']}; load "
        f"average at the start {' / '.join(map(str, env['load_average_at_start']))}, at the end "
        f"{' / '.join(map(str, env['load_average']))} (1 / 5 / 15 min); {env['wall_s']:.0f} s",
        f"- Versions: Python {env['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, diffrax "
        f"{v['diffrax']}, equinox {v['equinox']}, optax {v['optax']}, scipy {v['scipy']}, numpy "
        f"{v['numpy']}, torch {v['torch']}, torchdiffeq {v['torchdiffeq']}, torchode "
        f"{v['torchode']}, odejax {v['odejax']} at {env['odejax_commit']}",
        f"- Timing: steady = median of {s['rounds']} samples of ≥ {s['min_sample_s'] * 1e3:.0f} ms"
        f" each; first call = median of {s['first_call_repeats']} fresh compilations (gradient "
        f"and training workloads: {s['grad_first_call_repeats']}, "
        + ("after an untimed warm-up)" if s["grad_warmup"] else "no warm-up)"),
        f"- torch: {env['torch_threads']} intra-op threads (`torch.set_num_threads`), CPU",
        "- XLA_FLAGS: "
        + (f"`{env['xla_flags']}`" if env.get("xla_flags") else "not set (XLA's defaults)"),
        f"- Device: {env.get('device', '?')}; float32 matrix products at JAX's "
        + (
            f"`{env['matmul_precision']}` precision"
            if env.get("matmul_precision")
            else "default precision (TF32 on recent NVIDIA GPUs, full float32 on the CPU)"
        ),
        "- Forward solves: rtol 1e-6, atol 1e-9, float64, every JAX solve under `jax.jit`",
    ]
    lines += [f"  - {a.name}: {a.settings}" for a in adapters]
    lines += [f"- Note: {note}" for note in env["notes"]]
    if run.results:
        lines += ["", "## Forward solves", "", _results_table(run.results), "", LEGEND]
    if run.overhead:
        lines += [
            "",
            "## Overhead",
            "",
            "Time per vector-field evaluation of a solve of `vdp` (steady time / nfe) over that of "
            "hand-written fixed-step RK4 in a `lax.fori_loop` making the same number of "
            "evaluations (nfe / 4 steps) on the same problem. The targets use the `vdp` solve as "
            "specified (101 save times); the `t1 only` rows save only the final state, to show "
            "what the step loop costs without the saving.",
            "",
            _overhead_table(run.overhead),
        ]
    if run.precision:
        lines += ["", "## Work-precision (`precision`)", ""]
        for problem in dict.fromkeys(r.problem for r in run.precision):
            lines += [
                f"### {problem}",
                "",
                f"![error vs time, {problem}](work_precision_{problem}.png)"
                f" ![nfe vs tolerance, {problem}](nfe_{problem}.png)",
                "",
                _precision_table(run.precision, problem),
                "",
            ]
        lines += [PRECISION_LEGEND]
    grads = [g for g in run.grads if g.workload == "grad_vdp"]
    if grads:
        lines += ["", "## Gradients (`grad_vdp`)", "", _grads_table(grads, False), ""]
        lines += [GRAD_LEGEND]
    for name in ("train_node", "cubic_spiral"):
        rows = [g for g in run.grads if g.workload == name]
        if rows:
            lines += ["", f"## Training step (`{name}`)", "", _grads_table(rows, True), ""]
            lines += [TRAIN_LEGEND]
    if run.seminorm:
        lines += [
            "",
            "## Seminorm (`seminorm`)",
            "",
            _seminorm_table(run.seminorm),
            "",
            "odejax's `BacksolveAdjoint(record_stats=True)` with and without `seminorm=True` on "
            "the `train_node` gradient (float32, rtol = atol = 1e-5); backward counts from "
            "`odejax.backward_stats()`, summed over the pass. Gradient rel. diff.: ‖g − g_full‖ / "
            "‖g_full‖ over all parameters as one vector. Steady times include the stats "
            "callback. Second case: every weight matrix ×4, a less trivial field.",
        ]
    if run.memory:
        lines += [
            "",
            "## Memory (`memory`)",
            "",
            _memory_table(run.memory),
            "",
            "`temp_size_in_bytes` of `jax.jit(jax.grad(loss)).lower(...).compile()"
            ".memory_analysis()` for the `grad_vdp` gradient, at each `max_steps`.",
        ]
    if run.rss:
        lines += ["", "### Peak RSS of a subprocess", "", _rss_table(run.rss), "", RSS_LEGEND]
    if run.ensemble:
        lines += ["", "## Ensemble across devices (`ensemble`)", ""]
        lines += [ensemble_table(run.ensemble, env["command"])]
        lines += ["", ENSEMBLE_LEGEND]
    if run.stiff:
        lines += ["", "## Stiff problems (`stiff`)", "", run.stiff.get("summary", "")]
    if verdicts or workloads:
        lines += ["", "## Targets", "", _targets_table(verdicts, workloads)]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, env: dict, run: Run, verdicts, text: str) -> None:
    """Write ``results.md`` and ``results.json`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(text)
    data = {
        "environment": env,
        **run.asdict(),
        "targets": [dataclasses.asdict(v) for v in verdicts],
    }
    (out_dir / "results.json").write_text(json.dumps(data, indent=2) + "\n")
