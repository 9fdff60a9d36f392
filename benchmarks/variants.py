"""Ways of differentiating a solve, shared by the gradient and training workloads.

A :class:`Variant` is one library with one gradient method (``odejax/backsolve``,
``diffrax/checkpoint``, ``torchdiffeq/adjoint``, ...). Its ``build`` makes a zero-argument call
from freshly made functions (a new vector-field object and a new ``jax.jit``), so the first call
traces and compiles. :func:`jax_trajectory` is the one place where each JAX library is called;
:class:`TorchMLPField` is the torch twin of :func:`mlp`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .adapters import MAX_STEPS, diffrax_controller

__all__ = [
    "METHODS",
    "Variant",
    "base_label",
    "jax_trajectory",
    "mlp",
    "torch_field",
    "variants_for",
]

# label: (implementation, kind, how the gradient is taken)
METHODS: dict[str, tuple[str, str, str]] = {
    "odejax/backsolve": ("odejax", "backsolve", "`BacksolveAdjoint()` (the default)"),
    "odejax/checkpoint": ("odejax", "discrete", "`CheckpointAdjoint()`"),
    "diffrax/backsolve": ("diffrax", "backsolve", "`BacksolveAdjoint()`"),
    "diffrax/checkpoint": ("diffrax", "discrete", "`RecursiveCheckpointAdjoint()` (the default)"),
    "jax_ode/adjoint": ("jax_ode", "backsolve", "`odeint`'s own adjoint"),
    "torchdiffeq/adjoint": ("torchdiffeq", "backsolve", "`odeint_adjoint`"),
    "torchdiffeq/direct": ("torchdiffeq", "discrete", "`odeint`, autograd through the solver"),
}
_REQUIRES = {
    "odejax": "odejax",
    "diffrax": "diffrax",
    "jax_ode": "jax.experimental.ode",
    "torchdiffeq": "torchdiffeq",
}


def base_label(kind: str) -> str:
    """The odejax variant that rows of ``kind`` are compared with."""
    return "odejax/backsolve" if kind == "backsolve" else "odejax/checkpoint"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One library and gradient method on one workload; ``build()`` returns a fresh call."""

    label: str
    build: Callable[[], Callable[[], Any]]

    @property
    def impl(self) -> str:
        return METHODS[self.label][0]

    @property
    def kind(self) -> str:
        return METHODS[self.label][1]

    @property
    def method(self) -> str:
        return METHODS[self.label][2]


def available(impl: str) -> bool:
    try:
        return importlib.util.find_spec(_REQUIRES[impl]) is not None
    except ModuleNotFoundError:
        return False


def variants_for(
    builders: dict[str, Callable[[], Callable[[], Any]]], impls: Sequence[str], log
) -> list[Variant]:
    """The variants whose implementation was chosen on the command line and is installed;
    the library is imported here, so that its import time is not counted as a first call."""
    out, missing = [], set()
    for label, build in builders.items():
        impl = METHODS[label][0]
        if impl not in impls:
            continue
        if not available(impl):
            missing.add(impl)
            continue
        importlib.import_module(_REQUIRES[impl])
        out.append(Variant(label, build))
    for impl in sorted(missing):
        log(f"{impl} skipped: `{_REQUIRES[impl]}` is not installed", keep=True)
    return out


def jax_trajectory(
    label: str,
    field: Callable,
    rtol: float,
    atol: float,
    save_all: bool,
    max_steps: int = MAX_STEPS,
) -> Callable:
    """``predict(args, y0, ts) -> (zs, steps)`` with dopri5, for a JAX variant ``label``.

    ``field(z, t, args)``; ``zs`` holds the states at every ``ts`` (``save_all``) or at
    ``ts[-1]`` only (shape ``(1, ...)``); ``steps`` is the forward solve's attempted steps (``-1``
    where the library does not report them). Controllers: odejax's default, the same in Diffrax.
    """
    if label.startswith("odejax/"):
        import odejax

        adjoint = {
            "odejax/backsolve": odejax.BacksolveAdjoint(),
            "odejax/checkpoint": odejax.CheckpointAdjoint(),
        }[label]

        def predict(args, y0, ts):
            sol = odejax.solve(
                field,
                y0,
                ts[0],
                ts[-1],
                args=args,
                ts=ts if save_all else None,
                solver="dopri5",
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
                adjoint=adjoint,
            )
            return sol.zs, sol.stats["num_steps"]

        return predict
    if label.startswith("diffrax/"):
        import diffrax

        adjoint = {
            "diffrax/backsolve": diffrax.BacksolveAdjoint(),
            "diffrax/checkpoint": diffrax.RecursiveCheckpointAdjoint(),
        }[label]
        term = diffrax.ODETerm(lambda t, z, args: field(z, t, args))
        controller = diffrax_controller(rtol, atol)

        def predict(args, y0, ts):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Dopri5(),
                ts[0],
                ts[-1],
                None,
                y0,
                args,
                saveat=diffrax.SaveAt(ts=ts) if save_all else diffrax.SaveAt(t1=True),
                stepsize_controller=controller,
                max_steps=max_steps,
                adjoint=adjoint,
            )
            return sol.ys, sol.stats["num_steps"]

        return predict
    if label == "jax_ode/adjoint":
        from jax.experimental.ode import odeint

        def predict(args, y0, ts):
            zs = odeint(field, y0, ts, args, rtol=rtol, atol=atol)
            return (zs if save_all else zs[-1:]), jnp.array(-1)

        return predict
    raise ValueError(f"no JAX variant {label!r}")


def steps_or_none(steps) -> float | None:
    steps = float(np.asarray(steps))
    return None if steps < 0 else steps


# --- the MLP vector fields -----------------------------------------------------------------------


def mlp(params, z, activation=jnp.tanh):
    """A plain MLP on one row ``z``: ``params`` is a list of ``(W, b)`` with ``W`` of shape
    ``(in, out)``; ``activation`` after every layer but the last."""
    for i, (w, b) in enumerate(params):
        z = z @ w + b
        if i < len(params) - 1:
            z = activation(z)
    return z


def torch_field(params: list[tuple[np.ndarray, np.ndarray]], cube: bool, dtype: str = "float32"):
    """A torch ``nn.Module`` ``f(t, z)`` equal to ``mlp(params, z**3 if cube else z)`` row-wise,
    initialised with the same numbers; it counts its evaluations in ``.nfe``."""
    import torch
    from torch import nn

    class TorchMLPField(nn.Module):
        def __init__(self):
            super().__init__()
            layers: list[nn.Module] = []
            for i, (w, b) in enumerate(params):
                linear = nn.Linear(*w.shape, dtype=getattr(torch, dtype))
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                    linear.bias.copy_(torch.from_numpy(b))
                layers.append(linear)
                if i < len(params) - 1:
                    layers.append(nn.Tanh())
            self.net = nn.Sequential(*layers)
            self.nfe = 0

        def forward(self, t, z):
            self.nfe += 1
            return self.net(z**3 if cube else z)

    return TorchMLPField()
