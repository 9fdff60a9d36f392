"""The performance targets for odejax (from the issues) and how each is checked."""

from __future__ import annotations

import dataclasses

from .records import GradResult, MemoryResult, Run
from .workloads import BASE

__all__ = ["TARGETS", "Target", "Verdict", "evaluate", "sci", "summary"]

_BS = ("odejax/backsolve", "diffrax/backsolve")
_CP = ("odejax/checkpoint", "diffrax/checkpoint")


@dataclasses.dataclass(frozen=True)
class Target:
    """One target: odejax's figure over a peer's must be at most ``limit``.

    ``metric``:

    * ``steady``, ``first``, ``error``: forward-solve times or max error against ``peer``'s;
      ``accepted``: ``limit`` bounds the relative difference of accepted steps both ways;
      ``overhead``: time per evaluation over hand-written RK4's (no peer);
    * ``grad_steady``, ``grad_first``: gradient or training-step times of each ``(ours, peer)``
      in ``pairs`` (labels of :data:`benchmarks.variants.METHODS`); ``faster`` words the ratio
      as a speed-up (``limit`` is then 1 / the speed-up asked for);
    * ``seminorm_nfe``: backward nfe with the seminorm over without; ``seminorm_grad``: the
      gradients' relative difference;
    * ``memory_growth``: backsolve temporary memory at the largest ``max_steps`` over at 1000;
      ``memory_vs``: odejax checkpoint's over Diffrax's at each ``max_steps``;
    * ``ensemble``: ``odejax.ensemble``'s time over sharded ``jit(vmap)``'s on 4 simulated
      devices, per layout; ``scaling``: the 1 → 2 core speed-up (reported, no limit).

    ``issue``: the issue that sets the target.
    """

    text: str
    workloads: tuple[str, ...]
    metric: str
    peer: str = ""
    limit: float = 1.0
    pairs: tuple[tuple[str, str], ...] = ()
    faster: bool = False
    issue: int = 2


TARGETS = (
    Target("steady ≤ 1.0× jax_ode", ("vdp", "lv"), "steady", "jax_ode", 1.0),
    Target("steady ≤ 0.4× Diffrax", ("vdp", "lv"), "steady", "diffrax", 0.4),
    Target("first call ≤ 1.0× jax_ode", ("vdp", "lv"), "first", "jax_ode", 1.0),
    Target("first call ≤ 0.5× Diffrax", ("vdp", "lv"), "first", "diffrax", 0.5),
    Target("accepted steps within ±5% of Diffrax", ("vdp", "lv"), "accepted", "diffrax", 0.05),
    Target("max error ≤ 2× Diffrax's", ("vdp", "lv"), "error", "diffrax", 2.0),
    Target("vmap steady ≤ 0.7× Diffrax", ("vmap",), "steady", "diffrax", 0.7),
    Target("time per evaluation ≤ 3× hand-written RK4", ("overhead",), "overhead", "", 3.0),
    Target(
        "overhead: run time ≤ 1.5× a hand-written `fori_loop` making as many evaluations",
        ("overhead",),
        "overhead",
        "",
        1.5,
        issue=6,
    ),
    Target(
        "grad_vdp: backsolve steady ≤ 1.0× jax_ode",
        ("grad_vdp",),
        "grad_steady",
        limit=1.0,
        pairs=(("odejax/backsolve", "jax_ode/adjoint"),),
        issue=3,
    ),
    Target(
        "grad_vdp: backsolve steady ≤ 0.5× Diffrax BacksolveAdjoint",
        ("grad_vdp",),
        "grad_steady",
        limit=0.5,
        pairs=(_BS,),
        issue=3,
    ),
    Target(
        "grad_vdp: checkpoint steady ≤ 0.5× Diffrax RecursiveCheckpointAdjoint",
        ("grad_vdp",),
        "grad_steady",
        limit=0.5,
        pairs=(_CP,),
        issue=3,
    ),
    Target(
        "grad_vdp: first call of jit(grad) ≤ 0.3× Diffrax's",
        ("grad_vdp",),
        "grad_first",
        limit=0.3,
        pairs=(_BS, _CP),
        issue=3,
    ),
    Target(
        "train_node: step ≤ 0.8× Diffrax (same adjoint kind)",
        ("train_node",),
        "grad_steady",
        limit=0.8,
        pairs=(_BS, _CP),
        issue=3,
    ),
    Target(
        "train_node: step ≥ 7× faster than torchdiffeq odeint_adjoint",
        ("train_node",),
        "grad_steady",
        limit=1 / 7,
        pairs=(("odejax/backsolve", "torchdiffeq/adjoint"),),
        faster=True,
        issue=3,
    ),
    Target("seminorm: ≥ 30% fewer backward nfe", ("seminorm",), "seminorm_nfe", limit=0.7, issue=3),
    Target(
        "seminorm: gradients within 1e-3 relative",
        ("seminorm",),
        "seminorm_grad",
        limit=1e-3,
        issue=3,
    ),
    Target(
        "memory: backsolve temp at max_steps 1e5 ≤ 1.05× at 1e3",
        ("memory",),
        "memory_growth",
        limit=1.05,
        issue=3,
    ),
    Target(
        "memory: checkpoint temp ≤ Diffrax RecursiveCheckpointAdjoint's (same max_steps)",
        ("memory",),
        "memory_vs",
        limit=1.0,
        issue=3,
    ),
    Target(
        "cubic_spiral: step ≥ 20× faster than torchdiffeq",
        ("cubic_spiral",),
        "grad_steady",
        limit=1 / 20,
        pairs=(
            ("odejax/backsolve", "torchdiffeq/adjoint"),
            ("odejax/checkpoint", "torchdiffeq/direct"),
        ),
        faster=True,
        issue=4,
    ),
    Target(
        "cubic_spiral: step ≤ 0.8× Diffrax (same adjoint kind)",
        ("cubic_spiral",),
        "grad_steady",
        limit=0.8,
        pairs=(_BS, _CP),
        issue=4,
    ),
    Target(
        "ensemble: per-device loops ≤ 0.7× sharded jit(vmap) (4 simulated CPU devices)",
        ("ensemble",),
        "ensemble",
        limit=0.7,
        issue=7,
    ),
    Target(
        "ensemble: scaling from 1 to 2 real cores reported",
        ("ensemble",),
        "scaling",
        limit=float("inf"),
        issue=7,
    ),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One target checked on one case."""

    target: str
    case: str
    measured: str
    ok: bool


def _check(target: Target, ours, peer) -> tuple[str, bool] | None:
    if target.metric == "accepted":
        if ours.accepted is None or peer.accepted is None:
            return None
        diff = ours.accepted / peer.accepted - 1
        return f"{diff:+.1%} ({ours.accepted:.0f} vs {peer.accepted:.0f})", abs(
            diff
        ) <= target.limit
    field = {
        "steady": "steady_s",
        "first": "first_call_s",
        "error": "max_error",
        "grad_steady": "steady_s",
        "grad_first": "first_call_s",
    }[target.metric]
    a, b = getattr(ours, field), getattr(peer, field)
    if a is None or b is None:
        return None
    ratio = a / b
    text = f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.3f}×"
    if target.faster:
        text += f" ({1 / ratio:.1f}× faster)"
    return text, ratio <= target.limit


def sci(n: int) -> str:
    """``100000`` as ``1e5``."""
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def _pair_case(ours: str, peer: str) -> str:
    return f"{ours.split('/', 1)[1]} vs {peer}"


def _grad_verdicts(target: Target, grads: list[GradResult]) -> list[Verdict]:
    out = []
    for workload in target.workloads:
        index = {g.label: g for g in grads if g.workload == workload}
        for ours, peer in target.pairs:
            if ours in index and peer in index:
                checked = _check(target, index[ours], index[peer])
                if checked is not None:
                    out.append(Verdict(target.text, _pair_case(ours, peer), *checked))
    return out


def _memory_verdicts(target: Target, memory: list[MemoryResult]) -> list[Verdict]:
    index = {(m.label, m.max_steps): m.temp_bytes for m in memory}
    out = []
    if target.metric == "memory_growth":
        sizes = sorted(s for label, s in index if label == "odejax/backsolve")
        if len(sizes) >= 2 and sizes[0] == 1000:
            lo, hi = index["odejax/backsolve", sizes[0]], index["odejax/backsolve", sizes[-1]]
            ratio = hi / lo
            out.append(
                Verdict(
                    target.text,
                    f"backsolve {sci(sizes[-1])} / {sci(sizes[0])}",
                    f"{ratio:.2f}× ({hi} vs {lo} B)",
                    ratio <= target.limit,
                )
            )
        return out
    for (label, size), ours in sorted(index.items(), key=lambda kv: kv[0][1]):
        peer = index.get(("diffrax/checkpoint", size))
        if label != "odejax/checkpoint" or peer is None:
            continue
        ratio = ours / peer
        out.append(
            Verdict(
                target.text,
                f"max_steps {sci(size)}",
                f"{ratio:.2f}× ({ours} vs {peer} B)",
                ratio <= target.limit,
            )
        )
    return out


def _ensemble_verdicts(target: Target, runs: list[dict]) -> list[Verdict]:
    out = []
    if target.metric == "ensemble":
        for r in runs:
            if r["devices"] != 4:
                continue
            for layout, lay in r["layouts"].items():
                ratio = lay["time_s"]["ensemble"] / lay["time_s"]["jit_vmap"]
                out.append(
                    Verdict(target.text, f"{layout} layout", f"{ratio:.2f}×", ratio <= target.limit)
                )
        return out
    pinned = {r["devices"]: r for r in runs if r["cores"] != "all"}
    if 1 in pinned and 2 in pinned:
        for layout in pinned[1]["layouts"]:
            one, two = (pinned[n]["layouts"][layout]["time_s"] for n in (1, 2))
            speedup = one["ensemble"] / two["ensemble"]
            vmap = one["jit_vmap"] / two["jit_vmap"]
            text = f"ensemble {speedup:.2f}×, jit(vmap) {vmap:.2f}× (ideal 2×)"
            out.append(Verdict(target.text, f"{layout} layout", text, True))
    return out


def evaluate(run: Run) -> list[Verdict]:
    """Every target on every case where both sides were measured."""
    verdicts = []
    index = {(r.workload, r.problem, r.solver, r.impl): r for r in run.results}
    for target in TARGETS:
        if target.metric == "overhead":
            verdicts += [
                Verdict(target.text, f"vdp/{o.solver}", f"{o.ratio:.2f}×", o.ratio <= target.limit)
                for o in run.overhead
                if o.impl == BASE and o.saves == "101"
            ]
        elif target.metric in ("ensemble", "scaling"):
            verdicts += _ensemble_verdicts(target, run.ensemble)
        elif target.metric.startswith("grad_"):
            verdicts += _grad_verdicts(target, run.grads)
        elif target.metric.startswith("memory_"):
            verdicts += _memory_verdicts(target, run.memory)
        elif target.metric == "seminorm_nfe":
            rows = {(s.case, s.seminorm): s for s in run.seminorm}
            for (case, seminorm), s in rows.items():
                full = rows.get((case, False))
                if not seminorm or full is None:
                    continue
                ratio = s.backward_nfe / full.backward_nfe
                verdicts.append(
                    Verdict(
                        target.text,
                        case,
                        f"{s.backward_nfe} vs {full.backward_nfe} ({ratio - 1:+.0%})",
                        ratio <= target.limit,
                    )
                )
        elif target.metric == "seminorm_grad":
            verdicts += [
                Verdict(
                    target.text,
                    s.case,
                    f"{s.grad_rel_diff:.1e}",
                    s.grad_rel_diff <= target.limit,
                )
                for s in run.seminorm
                if s.seminorm and s.grad_rel_diff is not None
            ]
        else:
            for (workload, problem, solver, impl), ours in index.items():
                peer = index.get((workload, problem, solver, target.peer))
                if impl != BASE or workload not in target.workloads or peer is None:
                    continue
                checked = _check(target, ours, peer)
                if checked is not None:
                    verdicts.append(Verdict(target.text, f"{workload}/{solver}", *checked))
    return verdicts


def summary(verdicts: list[Verdict], workloads: list[str]) -> list[tuple[str, str, str, str]]:
    """One row per target of the workloads run: ``(issue, target, met, measured)``; ``met`` is ✓
    when every case meets it, ✗ when none does, "✗ (partly)" in between, and "—" when nothing
    could be measured (a peer missing)."""
    rows = []
    for target in sorted(TARGETS, key=lambda t: t.issue):
        if not set(target.workloads) & set(workloads):
            continue
        mine = [v for v in verdicts if v.target == target.text]
        if not mine:
            missing = "not measured (an implementation is missing)"
            rows.append((f"#{target.issue}", target.text, "—", missing))
            continue
        met = sum(v.ok for v in mine)
        mark = "✓" if met == len(mine) else "✗" if met == 0 else "✗ (partly)"
        measured = "; ".join(f"{v.case} {v.measured} {'✓' if v.ok else '✗'}" for v in mine)
        rows.append((f"#{target.issue}", target.text, mark, measured))
    return rows
