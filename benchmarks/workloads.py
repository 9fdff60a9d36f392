"""The forward-solve workloads: which cases each one times, and how a case becomes result rows.

``vdp``, ``lv`` and ``vmap`` time every available implementation on each case; ``overhead``
compares each JAX solver's time per vector-field evaluation with hand-written RK4's. The
gradient workloads live in :mod:`benchmarks.gradients` and :mod:`benchmarks.training`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from .adapters import Adapter
from .baseline import build_rk4
from .counting import Counter
from .problems import (
    DETEST,
    LOTKA_VOLTERRA,
    VAN_DER_POL,
    VAN_DER_POL_BATCH,
    VAN_DER_POL_T1,
    Case,
    reference,
)
from .records import OverheadResult, Result
from .timing import Settings, Timing, first_call_times, steady_times

__all__ = [
    "CASES",
    "QUICK_CASES",
    "WORKLOADS",
    "OverheadResult",
    "Result",
    "measure_case",
    "measure_overhead",
]

SOLVERS = ("tsit5", "dopri5")
CASES: dict[str, tuple[Case, ...]] = {
    "vdp": tuple(Case(VAN_DER_POL, s) for s in SOLVERS),
    "lv": tuple(Case(LOTKA_VOLTERRA, s) for s in SOLVERS),
    "vmap": tuple(Case(VAN_DER_POL_BATCH, s) for s in SOLVERS),
    "detest": tuple(Case(p, "dopri5") for p in DETEST),  # the method every peer offers
}
QUICK_CASES: dict[str, tuple[Case, ...]] = {  # --quick: one DETEST problem (and only the
    # methods of ``QUICK.solvers`` in every workload)
    "detest": tuple(Case(p, "dopri5") for p in DETEST if p.name == "D4"),
}
WORKLOADS = (
    *CASES,
    "overhead",
    "precision",
    "grad_vdp",
    "memory",
    "train_node",
    "seminorm",
    "cubic_spiral",
    "ensemble",
    "stiff",
)
BASE = "odejax"  # ratios are this implementation's figure over the other's


def _compiled(
    adapters: list[Adapter], cases: dict[str, Case], log, times: dict | None = None
) -> tuple[dict[str, Callable], dict[str, object]]:
    """Build, compile and run each adapter on its case once (the warm-up), keeping those that
    support the case and do not fail. Returns the calls and their outputs, by name; ``times``,
    if given, receives the seconds each took from building to the ready result."""
    calls, outputs = {}, {}
    for adapter in adapters:
        case = cases[adapter.name]
        reason = adapter.supports(case)
        if reason is not None:
            log(f"  note: {adapter.name} {reason}; skipped")
            continue
        try:
            start = time.perf_counter()
            call = adapter.build(case)
            outputs[adapter.name] = jax.block_until_ready(call())
            if times is not None:
                times[adapter.name] = time.perf_counter() - start
        except Exception as e:  # a broken implementation must not end the run
            log(
                f"{adapter.name} failed on {case.problem.name}/{case.solver}: {e!r:.300}", keep=True
            )
            continue
        calls[adapter.name] = call
    return calls, outputs


def count_nfe(adapter: Adapter, case: Case) -> int:
    """Vector-field evaluations of one solve, counted on the host (untimed; see counting.py)."""
    counter = Counter()
    jax.block_until_ready(adapter.build(case, counter)())
    return counter.count


def _steps(adapter: Adapter, stats: dict, nfe: int | None):
    """(attempted, accepted, rejected) steps, per-problem means; ``None`` where unknown."""
    if stats:
        acc, rej = (float(np.mean(stats[k])) for k in ("accepted", "rejected"))
        return acc + rej, acc, rej
    if adapter.steps_from_nfe is not None and nfe is not None:
        return adapter.steps_from_nfe(nfe), None, None
    return None, None, None


def measure_case(
    workload: str, case: Case, adapters: list[Adapter], settings: Settings, log
) -> list[Result]:
    """Time every adapter on ``case`` and check its answer against the reference.

    ``log(message, keep=False)`` reports progress; ``keep=True`` marks a note for the report.
    """
    warmup: dict[str, float] = {}
    calls, outputs = _compiled(adapters, {a.name: case for a in adapters}, log, warmup)
    adapters = [a for a in adapters if a.name in calls]
    if not adapters:
        return []
    if settings.grad_warmup:
        first = first_call_times(
            {a.name: (lambda a=a: a.build(case)) for a in adapters}, settings.first_call_repeats
        )
    else:  # quick: the first build is the one sample (one-off costs included)
        first = {name: Timing.of([t]) for name, t in warmup.items()}
    steady = steady_times(calls, settings)
    ref = reference(case.problem)
    results = []
    for adapter in adapters:
        zs, stats = outputs[adapter.name]
        zs = np.asarray(zs).reshape(len(case.problem.params), len(case.problem.save_ts), -1)
        nfe = None if case.problem.batched else count_nfe(adapter, case)
        steps, accepted, rejected = _steps(adapter, stats, nfe)
        results.append(
            Result(
                workload=workload,
                problem=case.problem.name,
                solver=case.solver,
                impl=adapter.name,
                steady_s=steady[adapter.name].median,
                steady_spread=steady[adapter.name].spread,
                first_call_s=first[adapter.name].median,
                steps=steps,
                accepted=accepted,
                rejected=rejected,
                nfe=nfe,
                max_error=None if ref is None else float(np.max(np.abs(zs - ref))),
            )
        )
    if BASE in steady:
        for r in results:
            r.steady_ratio = steady[BASE].median / r.steady_s
            r.first_ratio = first[BASE].median / r.first_call_s
    return results


def measure_overhead(adapters: list[Adapter], settings: Settings, log) -> list[OverheadResult]:
    """Per-evaluation time on ``vdp`` of each JAX solver (each of ``settings.solvers`` it
    offers) and of RK4, saving at the 101 times of ``vdp`` and, for comparison, at t1 only (as
    ``settings.overhead_saves`` asks)."""
    adapters = [a for a in adapters if not a.host]
    problems = {"101": VAN_DER_POL, "t1": VAN_DER_POL_T1}
    cases = {
        f"{a.name}/{s}/{saves}": (a, Case(problems[saves], s))
        for saves in settings.overhead_saves
        for a in adapters
        for s in settings.solvers
        if s in a.solvers
    }
    calls: dict[str, Callable] = {}
    for key, (adapter, case) in cases.items():
        built, _ = _compiled([adapter], {adapter.name: case}, log)
        if adapter.name in built:
            calls[key] = built[adapter.name]
    cases = {key: value for key, value in cases.items() if key in calls}
    nfe = {key: count_nfe(adapter, case) for key, (adapter, case) in cases.items()}
    rk4_steps = {key: max(1, round(n / 4)) for key, n in nfe.items()}
    for key in cases:
        calls[f"rk4/{key}"] = build_rk4(VAN_DER_POL, rk4_steps[key])
        jax.block_until_ready(calls[f"rk4/{key}"]())  # compile and warm up, as the solvers were
    steady = steady_times(calls, settings)
    return [
        OverheadResult(
            impl=adapter.name,
            solver=case.solver,
            nfe=nfe[key],
            steady_s=steady[key].median,
            rk4_steps=rk4_steps[key],
            rk4_steady_s=steady[f"rk4/{key}"].median,
            saves=key.rsplit("/", 1)[1],
        )
        for key, (adapter, case) in cases.items()
    ]
