"""One small adapter per implementation: how to call it on a :class:`Case`.

An adapter's ``make(rhs, case)`` returns ``solve(z0, ts, p) -> (zs, stats)`` for one problem,
where ``zs`` holds the states at ``case.problem.save_ts`` and ``stats`` the accepted and rejected
step counts when the library reports them. :meth:`Adapter.build` adds ``jax.jit`` (and
``jax.vmap`` over a batch) for JAX libraries. A library that is not installed is reported by
:meth:`Adapter.available` and skipped by the harness; the optional imports happen only inside
``make``.

Adaptive solvers share one configuration: odejax's default PI controller (its coefficients are
read from ``odejax.PIController()`` and given to Diffrax's and torchode's ``PIDController``) and
``MAX_STEPS``. ``jax_ode``, torchdiffeq and SciPy have no controller options.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .counting import Counter
from .ensemble import process_cpus
from .problems import Case

__all__ = ["ADAPTERS", "MAX_STEPS", "Adapter"]

MAX_STEPS = 4096
# Hairer's DOPRI5 coefficients, odejax's defaults; used only if odejax itself is missing.
_HAIRER = {"pcoeff": 0.2, "icoeff": 0.65, "safety": 0.9, "factormin": 0.2, "factormax": 10.0}
TORCH_DTYPE = "float64"


def controller_settings() -> dict[str, float]:
    """odejax's default PI controller: ``pcoeff``, ``icoeff``, ``safety``, ``factormin``,
    ``factormax`` (the same meaning in Diffrax's and torchode's ``PIDController``)."""
    try:
        import odejax
    except ImportError:
        return dict(_HAIRER)
    c = odejax.PIController()
    return {k: getattr(c, k) for k in _HAIRER}


def diffrax_controller(rtol, atol):
    """Diffrax's ``PIDController`` with odejax's default coefficients."""
    import diffrax

    return diffrax.PIDController(rtol=rtol, atol=atol, **controller_settings())


TORCH_THREADS: dict[str, int] = {}  # {"threads": n} from --torch-threads


def torch_threads() -> int:
    """Set and return torch's intra-op threads: ``--torch-threads``, by default one per core
    this process may run on (as XLA's CPU thread pool)."""
    import torch

    threads = TORCH_THREADS.get("threads") or len(process_cpus()) or os.cpu_count() or 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _odejax(rhs, case: Case):
    import odejax

    save_ts = case.problem.num_saves > 1

    def solve(z0, ts, p):
        sol = odejax.solve(
            rhs,
            z0,
            ts[0],
            ts[-1],
            args=p,
            ts=ts if save_ts else None,
            solver=case.solver,
            rtol=case.rtol,
            atol=case.atol,
            max_steps=case.max_steps,
        )
        stats = sol.stats
        return sol.zs, {"accepted": stats["num_accepted"], "rejected": stats["num_rejected"]}

    return solve


def _diffrax(rhs, case: Case):
    import diffrax

    method = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}[case.solver]()
    term = diffrax.ODETerm(lambda t, z, p: rhs(z, t, p))
    controller = diffrax_controller(case.rtol, case.atol)
    save_ts = case.problem.num_saves > 1

    def solve(z0, ts, p):
        saveat = diffrax.SaveAt(ts=ts) if save_ts else diffrax.SaveAt(t1=True)
        sol = diffrax.diffeqsolve(
            term,
            method,
            ts[0],
            ts[-1],
            None,
            z0,
            p,
            saveat=saveat,
            stepsize_controller=controller,
            max_steps=case.max_steps,
        )
        stats = sol.stats
        return sol.ys, {
            "accepted": stats["num_accepted_steps"],
            "rejected": stats["num_rejected_steps"],
        }

    return solve


def _jax_ode(rhs, case: Case):
    from jax.experimental.ode import odeint

    save_ts = case.problem.num_saves > 1

    def solve(z0, ts, p):
        zs = odeint(rhs, z0, ts, p, rtol=case.rtol, atol=case.atol)
        return (zs if save_ts else zs[-1:]), {}

    return solve


def _scipy(rhs, case: Case):
    from scipy.integrate import solve_ivp

    method = {"dopri5": "RK45"}[case.solver]
    t_eval = case.problem.save_ts

    def solve(z0, ts, p):
        sol = solve_ivp(
            lambda t, z: rhs(z, t, p),
            (ts[0], ts[-1]),
            z0,
            method=method,
            t_eval=t_eval,
            rtol=case.rtol,
            atol=case.atol,
        )
        return sol.y.T, {}

    return solve


def _torchdiffeq(rhs, case: Case):
    import torch
    from torchdiffeq import odeint

    torch_threads()
    save_ts = case.problem.num_saves > 1

    def solve(z0, ts, p):
        with torch.no_grad():
            zs = odeint(
                lambda t, z: rhs(z, t, p), z0, ts, rtol=case.rtol, atol=case.atol, method="dopri5"
            )
        return (zs if save_ts else zs[-1:]).numpy(), {}

    return solve


def _torchode(rhs, case: Case):
    import torch
    import torchode

    torch_threads()
    # torchode is batch-first, (B, n); the problems' fields take (n, B).
    term = torchode.ODETerm(lambda t, z, p: rhs(z.T, t, p).T, with_args=True)
    method = {"tsit5": torchode.Tsit5, "dopri5": torchode.Dopri5}[case.solver](term=term)
    c = controller_settings()
    controller = torchode.PIDController(
        atol=case.atol,
        rtol=case.rtol,
        pcoeff=c["pcoeff"],
        icoeff=c["icoeff"],
        dcoeff=0.0,
        term=term,
        safety=c["safety"],
        factor_min=c["factormin"],
        factor_max=c["factormax"],
    )
    solver = torchode.AutoDiffAdjoint(method, controller, max_steps=case.max_steps)
    save_ts = case.problem.num_saves > 1

    def solve(z0, ts, p):
        with torch.no_grad():
            problem = torchode.InitialValueProblem(y0=z0[None], t_eval=ts[None])
            sol = solver.solve(problem, args=p)
        if int(sol.status[0]) != 0:
            raise RuntimeError(f"torchode failed with status {int(sol.status[0])}")
        accepted, steps = (int(sol.stats[k].reshape(-1)[0]) for k in ("n_accepted", "n_steps"))
        zs = sol.ys[0]
        return (zs if save_ts else zs[-1:]).numpy(), {
            "accepted": accepted,
            "rejected": steps - accepted,
        }

    return solve


def _dopri5_attempts(nfe: int) -> float:
    """Attempted steps of a Dormand–Prince solver that starts with Hairer's initial step:
    2 evaluations to start (``f(z0)`` and the trial step), then 6 per attempted step (FSAL)."""
    return (nfe - 2) / 6


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One implementation.

    Attributes:
        name: label in the tables and on the command line.
        requires: module that must be importable for the adapter to run.
        solvers: methods it offers, by odejax's names.
        make: ``make(rhs, case) -> solve(z0, ts, p)``, see the module docstring.
        host: host code (not traced), which gets NumPy arrays and cannot run batches; else JAX
            code, jitted (and vmapped over a batch) by :meth:`build`.
        xp: array module the vector field is written with; ``"torch"`` also turns the host
            inputs into torch tensors of ``TORCH_DTYPE``.
        steps_from_nfe: for a library that reports no step counts, attempted steps as a
            function of the counted evaluations.
        settings: how it is configured, for the report.
    """

    name: str
    requires: str
    solvers: tuple[str, ...]
    make: Callable
    host: bool = False
    xp: str = "jax.numpy"
    steps_from_nfe: Callable[[int], float] | None = None
    settings: str = ""

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.requires) is not None
        except ModuleNotFoundError:
            return False

    def supports(self, case: Case) -> str | None:
        """Why ``case`` cannot run here, or ``None`` if it can."""
        if case.solver not in self.solvers:
            return f"has no {case.solver}"
        if case.problem.batched and self.host:
            return "does not batch"
        return None

    def build(self, case: Case, counter: Counter | None = None) -> Callable[[], object]:
        """A zero-argument call solving ``case`` with freshly made (uncompiled) functions.

        The vector field is wrapped in a new function object each time, so no cache keyed on it
        (``jax.jit``'s, or one inside a library) can be hit: the first call traces and compiles.
        """
        problem = case.problem
        xp = importlib.import_module(self.xp)

        def rhs(z, t, p):
            return problem.rhs(z, t, p, xp)

        if counter is not None:
            rhs = counter.wrap_host(rhs) if self.host else counter.wrap_jax(rhs)
        solve = self.make(rhs, case)
        if self.host:
            z0, ts, p = np.array(problem.z0), problem.ts, np.array(problem.params[0])
            if self.xp == "torch":
                z0, ts, p = (xp.tensor(x, dtype=getattr(xp, TORCH_DTYPE)) for x in (z0, ts, p))
            return lambda: solve(z0, ts, p)
        z0, ts, params = (jnp.array(x) for x in (problem.z0, problem.ts, problem.params))
        if problem.batched:
            fn = jax.jit(jax.vmap(solve, in_axes=(None, None, 0)))
            return lambda: fn(z0, ts, params)
        fn = jax.jit(solve)
        p0 = params[0]  # sliced here: an indexing op per call (~40 us) would be timed too
        return lambda: fn(z0, ts, p0)


_C = controller_settings()
_PI = (
    f"odejax's default PI controller (pcoeff={_C['pcoeff']}, icoeff={_C['icoeff']}, safety "
    f"{_C['safety']}, factors in [{_C['factormin']}, {_C['factormax']}]), max_steps={MAX_STEPS}"
)
ADAPTERS = {
    a.name: a
    for a in (
        Adapter(
            "odejax",
            "odejax",
            ("tsit5", "dopri5"),
            _odejax,
            settings=f"`solve` with its defaults: {_PI}, throw=True",
        ),
        Adapter(
            "diffrax",
            "diffrax",
            ("tsit5", "dopri5"),
            _diffrax,
            settings=f"`diffeqsolve`, `PIDController` set to {_PI}, throw=True (default; "
            "EQX_ON_ERROR unset)",
        ),
        Adapter(
            "jax_ode",
            "jax.experimental.ode",
            ("dopri5",),
            _jax_ode,
            steps_from_nfe=_dopri5_attempts,
            settings="`jax.experimental.ode.odeint`: its own dopri5 and I controller, mxstep=inf",
        ),
        Adapter(
            "scipy",
            "scipy",
            ("dopri5",),
            _scipy,
            host=True,
            xp="numpy",
            steps_from_nfe=_dopri5_attempts,
            settings="`solve_ivp(method='RK45', t_eval=...)` on a NumPy vector field, no jit",
        ),
        Adapter(
            "torchdiffeq",
            "torchdiffeq",
            ("dopri5",),
            _torchdiffeq,
            host=True,
            xp="torch",
            steps_from_nfe=_dopri5_attempts,
            settings="`torchdiffeq.odeint(method='dopri5')`, its own controller, torch float64 on "
            "the CPU under `torch.no_grad()`, eager (no TorchScript)",
        ),
        Adapter(
            "torchode",
            "torchode",
            ("tsit5", "dopri5"),
            _torchode,
            host=True,
            xp="torch",
            settings=f"`AutoDiffAdjoint(Dopri5 | Tsit5, PIDController)` with {_PI}, batch of "
            "one, torch float64 on the CPU under `torch.no_grad()`, eager (no TorchScript)",
        ),
    )
}
