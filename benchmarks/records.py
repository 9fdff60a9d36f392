"""The result records of every workload, and :class:`Run`, which holds one run's results."""

from __future__ import annotations

import dataclasses

__all__ = [
    "GradResult",
    "MemoryResult",
    "OverheadResult",
    "Result",
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
    """Time per vector-field evaluation of one solver and of RK4 making as many evaluations."""

    impl: str
    solver: str
    nfe: int
    steady_s: float
    rk4_steps: int
    rk4_steady_s: float

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
        rel_error: ``‖g − g_ref‖ / ‖g_ref‖`` of the gradient (``grad_vdp``).
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
class Run:
    """Everything one run measured."""

    results: list[Result] = dataclasses.field(default_factory=list)
    overhead: list[OverheadResult] = dataclasses.field(default_factory=list)
    grads: list[GradResult] = dataclasses.field(default_factory=list)
    seminorm: list[SeminormResult] = dataclasses.field(default_factory=list)
    memory: list[MemoryResult] = dataclasses.field(default_factory=list)

    def asdict(self) -> dict:
        out = {
            f.name: [dataclasses.asdict(r) for r in getattr(self, f.name)]
            for f in dataclasses.fields(self)
        }
        out["overhead"] = [
            dataclasses.asdict(o)
            | {"per_eval_s": o.per_eval_s, "rk4_per_eval_s": o.rk4_per_eval_s, "ratio": o.ratio}
            for o in self.overhead
        ]
        return out
