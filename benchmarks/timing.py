"""How time is measured: first call (trace + compile + run) and steady state (median of repeats).

Both measurements go round-robin over the implementations being compared, one sample of each in
turn, so that drift in the machine's speed during a run affects them all alike and ratios taken
within one run stay fair.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = [
    "FULL",
    "QUICK",
    "Settings",
    "Timing",
    "first_call_times",
    "fresh_calls",
    "steady_times",
]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How many samples to take.

    Attributes:
        first_call_repeats: fresh functions compiled per implementation; the median is reported.
        rounds: steady-state samples per implementation; the median is reported.
        min_sample_s: each steady sample loops over enough calls to last at least this long.
        grad_first_call_repeats: fresh compilations per implementation in the gradient and
            training workloads (each takes seconds).
        grad_warmup: compile and run each call once, untimed, before the first-call samples
            (else the first build is the only sample and also pays one-off costs).
        memory_max_steps: the ``max_steps`` of the ``memory`` workload.
        max_name_s: a call slower than this per sample budget (seconds, all samples of one
            name together) gets fewer samples, but at least 3 (torch's adjoint at tight
            tolerances takes seconds per call).
        precision_rounds: steady samples per point of the work-precision diagrams.
        ensemble_repeats: timed calls per implementation in the ``ensemble`` workload.
        min_rounds: the fewest steady samples a slow call gets (see ``max_name_s``).
        solvers: the explicit methods of the forward, overhead and precision workloads.
        overhead_saves: the ``overhead`` workload's save patterns: ``"101"`` (the ``vdp`` save
            times) and ``"t1"`` (the final state only, for comparison).
    """

    first_call_repeats: int
    rounds: int
    min_sample_s: float
    grad_first_call_repeats: int
    grad_warmup: bool
    memory_max_steps: tuple[int, ...]
    max_name_s: float
    precision_rounds: int
    ensemble_repeats: int
    min_rounds: int
    solvers: tuple[str, ...]
    overhead_saves: tuple[str, ...]


QUICK = Settings(
    first_call_repeats=1,
    rounds=7,
    min_sample_s=0.02,
    grad_first_call_repeats=1,
    grad_warmup=False,
    memory_max_steps=(1000, 100_000),
    max_name_s=3.0,
    precision_rounds=3,
    ensemble_repeats=5,
    min_rounds=2,
    solvers=("dopri5",),  # the method every peer offers
    overhead_saves=("101",),
)
FULL = Settings(
    first_call_repeats=5,
    rounds=15,
    min_sample_s=0.05,
    grad_first_call_repeats=3,
    grad_warmup=True,
    memory_max_steps=(1000, 10_000, 100_000),
    max_name_s=15.0,
    precision_rounds=3,
    ensemble_repeats=10,
    min_rounds=3,
    solvers=("tsit5", "dopri5"),
    overhead_saves=("101", "t1"),
)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Summary of timing samples in seconds: median and interquartile range relative to it."""

    median: float
    spread: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        med = statistics.median(samples)
        if len(samples) >= 4:
            q1, _, q3 = statistics.quantiles(samples, n=4)
            spread = (q3 - q1) / med
        else:
            spread = (max(samples) - min(samples)) / med
        return cls(med, spread, tuple(samples))


def _run(call: Callable[[], Any]) -> Any:
    return jax.block_until_ready(call())


def first_call_times(
    builders: dict[str, Callable[[], Callable[[], Any]]], repeats: int
) -> dict[str, Timing]:
    """Time the first call of freshly built functions.

    Args:
        builders: per name, a function returning a new zero-argument callable each time it is
            called (a fresh ``jax.jit`` around a fresh vector field, so no trace or compilation
            cache can be hit); its first call traces, compiles and runs once.
        repeats: samples per name.
    """
    samples: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(repeats):
        for name, build in builders.items():
            start = time.perf_counter()
            _run(build())
            samples[name].append(time.perf_counter() - start)
    return {name: Timing.of(s) for name, s in samples.items()}


def fresh_calls(
    builders: dict[str, Callable[[], Callable[[], Any]]], repeats: int
) -> tuple[dict[str, Timing], dict[str, Callable[[], Any]], dict[str, Any], dict[str, Exception]]:
    """:func:`first_call_times` that also keeps the last call built for each name (compiled, for
    steady timing) and its output, and drops a name whose build or call raises.

    Returns:
        ``(timings, calls, outputs, errors)``, the first three keyed by the names that worked.
    """
    samples: dict[str, list[float]] = {name: [] for name in builders}
    calls: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, Any] = {}
    errors: dict[str, Exception] = {}
    for _ in range(repeats):
        for name, build in builders.items():
            if name in errors:
                continue
            try:
                start = time.perf_counter()
                call = build()
                out = _run(call)
                samples[name].append(time.perf_counter() - start)
            except Exception as e:  # a broken implementation must not end the run
                errors[name] = e
                continue
            calls[name], outputs[name] = call, out
    timings = {name: Timing.of(s) for name, s in samples.items() if name not in errors}
    return timings, {n: calls[n] for n in timings}, {n: outputs[n] for n in timings}, errors


def steady_times(calls: dict[str, Callable[[], Any]], settings: Settings) -> dict[str, Timing]:
    """Median time per call of functions already compiled and called once (the warm-up).

    Each function is timed once more, then called in a loop long enough to last
    ``settings.min_sample_s`` (the count is fixed per function from that call), blocking on its
    result every call; ``settings.rounds`` such samples are taken round-robin, with the garbage
    collector off. A name whose samples would together take longer than ``settings.max_name_s``
    is sampled in the first rounds only (at least ``settings.min_rounds``), so one very slow call
    cannot take over the run; its samples are still interleaved with the others', except that
    such a call keeps the timed call that sized its loop as its first sample.
    """
    number, rounds = {}, {}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():
        start = time.perf_counter()
        _run(call)
        once = max(time.perf_counter() - start, 1e-7)
        number[name] = max(1, math.ceil(settings.min_sample_s / once))
        per_sample = number[name] * once
        rounds[name] = min(
            settings.rounds, max(settings.min_rounds, int(settings.max_name_s / per_sample))
        )
        if number[name] == 1 and rounds[name] == settings.min_rounds:
            samples[name].append(once)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(settings.rounds):
            for name, call in calls.items():
                if len(samples[name]) >= rounds[name]:
                    continue
                start = time.perf_counter()
                for _ in range(number[name]):
                    _run(call)
                samples[name].append((time.perf_counter() - start) / number[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing.of(s) for name, s in samples.items()}
