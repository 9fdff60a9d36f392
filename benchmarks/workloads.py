"""The forward-solve workloads: which cases each one times, and how a case becomes result rows.

``vdp``, ``lv`` and ``vmap`` time every available implementation on each case; ``overhead``
compares each JAX solver's time per vector-field evaluation with hand-written RK4's. The
gradient workloads live in :mod:`benchmarks.gradients` and :mod:`benchmarks.training`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from .adapters import Adapter
from .baseline import build_rk4
from .counting import Counter
from .problems import LOTKA_VOLTERRA, VAN_DER_POL, VAN_DER_POL_BATCH, Case, reference
from .records import OverheadResult, Result
from .timing import Settings, first_call_times, steady_times

__all__ = ["CASES", "WORKLOADS", "OverheadResult", "Result", "measure_case", "measure_overhead"]

SOLVERS = ("tsit5", "dopri5")
CASES: dict[str, tuple[Case, ...]] = {
    "vdp": tuple(Case(VAN_DER_POL, s) for s in SOLVERS),
    "lv": tuple(Case(LOTKA_VOLTERRA, s) for s in SOLVERS),
    "vmap": tuple(Case(VAN_DER_POL_BATCH, s) for s in SOLVERS),
}
WORKLOADS = (*CASES, "overhead", "grad_vdp", "memory", "train_node", "seminorm", "cubic_spiral")
BASE = "odejax"  # ratios are this implementation's figure over the other's


def _compiled(
    adapters: list[Adapter], cases: dict[str, Case], log
) -> tuple[dict[str, Callable], dict[str, object]]:
    """Build, compile and run each adapter on its case once (the warm-up), keeping those that
    support the case and do not fail. Returns the calls and their outputs, by name."""
    calls, outputs = {}, {}
    for adapter in adapters:
        case = cases[adapter.name]
        reason = adapter.supports(case)
        if reason is not None:
            log(f"  note: {adapter.name} {reason}; skipped")
            continue
        try:
            call = adapter.build(case)
            outputs[adapter.name] = jax.block_until_ready(call())
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
    calls, outputs = _compiled(adapters, {a.name: case for a in adapters}, log)
    adapters = [a for a in adapters if a.name in calls]
    if not adapters:
        return []
    first = first_call_times(
        {a.name: (lambda a=a: a.build(case)) for a in adapters}, settings.first_call_repeats
    )
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
    """Per-evaluation time on ``vdp`` of each JAX solver (tsit5 where offered) and of RK4."""
    adapters = [a for a in adapters if not a.host]
    cases = {
        a.name: Case(VAN_DER_POL, "tsit5" if "tsit5" in a.solvers else "dopri5") for a in adapters
    }
    calls, _ = _compiled(adapters, cases, log)
    cases = {name: case for name, case in cases.items() if name in calls}
    by_name = {a.name: a for a in adapters}
    nfe = {name: count_nfe(by_name[name], case) for name, case in cases.items()}
    rk4_steps = {name: max(1, round(n / 4)) for name, n in nfe.items()}
    for name in cases:
        calls[f"rk4/{name}"] = build_rk4(VAN_DER_POL, rk4_steps[name])
    steady = steady_times(calls, settings)
    return [
        OverheadResult(
            impl=name,
            solver=case.solver,
            nfe=nfe[name],
            steady_s=steady[name].median,
            rk4_steps=rk4_steps[name],
            rk4_steady_s=steady[f"rk4/{name}"].median,
        )
        for name, case in cases.items()
    ]
