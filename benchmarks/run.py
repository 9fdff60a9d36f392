"""Command line: ``python -m benchmarks.run [--workload W] [--impl I] [--quick] [--out DIR]``.

Runs the chosen workloads on the chosen implementations, prints the markdown report and writes it
with the raw numbers to ``DIR/results.md`` and ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import jax

from . import report
from . import stiff_hook as stiff
from .adapters import ADAPTERS, TORCH_THREADS
from .ensemble import process_cpus
from .gradients import measure_grad_vdp, measure_memory
from .precision import measure_precision, plot_precision
from .records import Run
from .rss import measure_rss
from .targets import evaluate
from .timing import FULL, QUICK
from .training import CUBIC_SPIRAL, TRAIN_NODE, measure_seminorm, measure_training
from .workloads import CASES, QUICK_CASES, WORKLOADS, measure_case, measure_overhead

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _names(values: list[str] | None, allowed, what: str, parser) -> list[str]:
    """Split repeatable comma lists, check the names, keep ``allowed``'s order."""
    if not values:
        return list(allowed)
    chosen = {name.strip() for v in values for name in v.split(",") if name.strip()}
    unknown = chosen - set(allowed)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(allowed)}")
    return [name for name in allowed if name in chosen]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--workload",
        action="append",
        help=f"workloads, repeatable or comma-separated (default all: {', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--impl",
        action="append",
        help=f"implementations, repeatable or comma-separated (default all: {', '.join(ADAPTERS)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a few minutes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's intra-op threads (default: one per core, as XLA's CPU thread pool)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="run every implementation on the first N of this process's CPUs only (before JAX"
        " starts, so XLA's thread pools are sized to them); default: all",
    )
    args = parser.parse_args(argv)
    if args.cpus is not None:
        allowed = process_cpus()
        if not 1 <= args.cpus <= len(allowed):
            parser.error(f"--cpus must be between 1 and {len(allowed)} (this process's CPUs)")
        os.sched_setaffinity(0, allowed[: args.cpus])
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            parser.error("--torch-threads must be at least 1")
        TORCH_THREADS["threads"] = args.torch_threads
    workloads = _names(args.workload, WORKLOADS, "workload", parser)
    impls = _names(args.impl, list(ADAPTERS), "implementation", parser)

    jax.config.update("jax_enable_x64", True)
    settings = QUICK if args.quick else FULL
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    notes = []

    def log(message: str, keep: bool = False) -> None:
        """Progress to stderr; ``keep`` also puts the message in the report's notes."""
        if keep:
            notes.append(message)
        print(("note: " if keep else "") + message, file=sys.stderr, flush=True)

    adapters = []
    for name in impls:
        if ADAPTERS[name].available():
            adapters.append(ADAPTERS[name])
        else:
            log(f"{name} skipped: `{ADAPTERS[name].requires}` is not installed", keep=True)
    available = [a.name for a in adapters]
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # JAX's one-off start-up, untimed

    run = Run()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    start_all = time.perf_counter()
    for workload in workloads:
        start = time.perf_counter()
        cases = QUICK_CASES if args.quick else CASES
        for case in cases.get(workload, CASES.get(workload, ())):
            if case.solver not in settings.solvers:
                continue
            log(f"{workload}/{case.solver} ...")
            run.results += measure_case(workload, case, adapters, settings, log)
        if workload != "overhead" and workload not in CASES:
            log(f"{workload} ...")
        if workload == "overhead":
            log("overhead ...")
            run.overhead = measure_overhead(adapters, settings, log)
        elif workload == "grad_vdp":
            run.grads += measure_grad_vdp(available, settings, log)
        elif workload == "train_node":
            run.grads += measure_training(TRAIN_NODE, available, settings, log)
        elif workload == "cubic_spiral":
            run.grads += measure_training(CUBIC_SPIRAL, available, settings, log)
        elif workload == "seminorm":
            run.seminorm = measure_seminorm(available, settings, log)
        elif workload == "memory":
            run.memory = measure_memory(available, settings, log)
            log("  peak RSS of subprocesses ...")
            steps = settings.memory_max_steps  # RSS: the smallest and largest (quick: largest)
            sizes = steps[-1:] if args.quick else (steps[0], steps[-1])
            run.rss = measure_rss(impls, sizes, log, quick=args.quick)
        elif workload == "precision":
            run.precision = measure_precision(adapters, settings, args.quick, log)
            for path in plot_precision(run.precision, args.out, log):
                log(f"  wrote {path}")
        elif workload == "ensemble":
            if "odejax" in available:
                from . import ensemble

                try:
                    run.ensemble = ensemble.measure(settings.ensemble_repeats, log)
                except Exception as e:  # a failure here must not lose the rest of the run
                    log(f"ensemble failed: {e!r:.500}", keep=True)
        elif workload == "stiff":
            run.stiff = stiff.run(args.quick, args.out, log)
        log(f"  {workload} done in {time.perf_counter() - start:.1f} s")
    log(f"all done in {time.perf_counter() - start_all:.1f} s")

    env = report.environment(command, "quick" if args.quick else "full", settings)
    cores = os.cpu_count() or 1
    if max(load_at_start[0], env["load_average"][0]) > cores:
        notes.append(
            f"the machine was busy (1-minute load average {load_at_start[0]} at the start, "
            f"{env['load_average'][0]} at the end, on {cores} cores): timings are noisier, and "
            "torch with more than one thread slows down severalfold under load"
        )
    env["notes"] = notes
    env["load_average_at_start"] = load_at_start
    env["wall_s"] = round(time.perf_counter() - start_all, 1)
    verdicts = evaluate(run)
    text = report.markdown(env, adapters, run, verdicts, workloads)
    report.write(args.out, env, run, verdicts, text)
    print(text)


if __name__ == "__main__":
    main()
