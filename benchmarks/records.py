"""The result records of every workload, and :class:`Run`, which holds one run's results."""

from __future__ import annotations

import dataclasses

__all__ = [
    "GradResult",
    "MemoryResult",
    "OverheadResult",
    "PrecisionResult",
    "Result",
    "RssResult",
    "Run",
    "SeminormResult",
]


@dataclasses.dataclass
class Result:
    """One implementation on one forward-solve case. Step counts are per problem (batch means for
    ``vmap``).

    ``steady_ratio`` and ``first_ratio`` are odejax's time over this implementation's, from the
    same run; ``None`` where odejax did not run.
    """

    workload: str
    problem: str
    solver: str
    impl: str
    steady_s: float
    steady_spread: float
    first_call_s: float
    steps: float | None
    accepted: float | None
    rejected: float | None
    nfe: int | None
    max_error: float | None
    steady_ratio: float | None = None
    first_ratio: float | None = None


@dataclasses.dataclass
class OverheadResult:
    """Time per vector-field evaluation of one solver and of RK4 making as many evaluations.

    ``saves``: ``"101"`` for the ``vdp`` workload as specified (101 save times), ``"t1"`` for
    the same solve saving only the final state (what the step loop costs without saving).
    """

    impl: str
    solver: str
    nfe: int
    steady_s: float
    rk4_steps: int
    rk4_steady_s: float
    saves: str = "101"

    @property
    def per_eval_s(self) -> float:
        return self.steady_s / self.nfe

    @property
    def rk4_per_eval_s(self) -> float:
        return self.rk4_steady_s / (4 * self.rk4_steps)

    @property
    def ratio(self) -> float:
        return self.per_eval_s / self.rk4_per_eval_s


@dataclasses.dataclass
class GradResult:
    """One way of differentiating a solve (``grad_vdp``) or of taking a training step
    (``train_node``, ``cubic_spiral``).

    Attributes:
        label: ``impl/method``, e.g. ``odejax/backsolve`` or ``torchdiffeq/adjoint``.
        kind: ``backsolve`` (a continuous adjoint: solve backwards in time) or ``discrete``
            (reverse mode through the solver's own steps, with or without checkpointing).
        steps: attempted steps of the forward solve (reported, or derived from counted nfe).
        loss: the loss at the fixed starting point (the same problem everywhere: these agree).
        rel_error: ``‖g − g_ref‖ / ‖g_ref‖`` of the gradient against an independent reference
            (``grad_vdp``: forward sensitivities with SciPy DOP853; training: float64 fine-step
            RK4 differentiated by JAX).
        loss_error: ``|loss − loss_ref| / |loss_ref|`` (training workloads).
        steady_ratio, first_ratio: odejax's time (same ``kind``) over this row's.
    """

    workload: str
    label: str
    impl: str
    method: str
    kind: str
    steady_s: float
    steady_spread: float
    first_call_s: float
    steps: float | None = None
    loss: float | None = None
    rel_error: float | None = None
    loss_error: float | None = None
    steady_ratio: float | None = None
    first_ratio: float | None = None


@dataclasses.dataclass
class SeminormResult:
    """One backward pass of odejax's backsolve on the ``train_node`` neural ODE.

    ``grad_rel_diff``: ``‖g − g_full‖ / ‖g_full‖`` over all parameters as one vector, against
    the full-norm gradient of the same case.
    """

    case: str
    seminorm: bool
    forward_nfe: int
    backward_nfe: int
    backward_steps: int
    backward_accepted: int
    backward_rejected: int
    steady_s: float
    steady_spread: float
    grad_rel_diff: float | None = None


@dataclasses.dataclass
class MemoryResult:
    """Compiled temporary memory of one gradient at one ``max_steps``."""

    label: str
    impl: str
    method: str
    max_steps: int
    temp_bytes: int
    compile_s: float


@dataclasses.dataclass
class RssResult:
    """Peak resident memory of a fresh subprocess computing one gradient once.

    ``base_kib``: peak RSS after importing the libraries, starting JAX and making the inputs;
    ``compiled_kib``: peak after tracing and compiling; ``peak_kib``: peak after the run. torch
    compiles nothing, so its ``compiled_kib`` is ``None``.
    """

    label: str
    impl: str
    method: str
    max_steps: int | None
    base_kib: int
    compiled_kib: int | None
    peak_kib: int

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.base_kib


@dataclasses.dataclass
class PrecisionResult:
    """One point of a work-precision diagram."""

    problem: str
    impl: str
    solver: str
    rtol: float
    atol: float
    steady_s: float
    steady_spread: float
    nfe: int
    max_error: float | None


@dataclasses.dataclass
class Run:
    """Everything one run measured."""

    results: list[Result] = dataclasses.field(default_factory=list)
    overhead: list[OverheadResult] = dataclasses.field(default_factory=list)
    grads: list[GradResult] = dataclasses.field(default_factory=list)
    seminorm: list[SeminormResult] = dataclasses.field(default_factory=list)
    memory: list[MemoryResult] = dataclasses.field(default_factory=list)
    rss: list[RssResult] = dataclasses.field(default_factory=list)
    precision: list[PrecisionResult] = dataclasses.field(default_factory=list)
    ensemble: list[dict] = dataclasses.field(default_factory=list)
    stiff: dict = dataclasses.field(default_factory=dict)

    def asdict(self) -> dict:
        out = {
            f.name: [
                dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r
                for r in getattr(self, f.name)
            ]
            for f in dataclasses.fields(self)
            if f.name not in ("stiff",)
        }
        out["stiff"] = self.stiff
        out["rss"] = [dataclasses.asdict(r) | {"growth_kib": r.growth_kib} for r in self.rss]
        out["overhead"] = [
            dataclasses.asdict(o)
            | {"per_eval_s": o.per_eval_s, "rk4_per_eval_s": o.rk4_per_eval_s, "ratio": o.ratio}
            for o in self.overhead
        ]
        return out
