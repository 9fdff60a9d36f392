"""How a solve is differentiated: ``adjoint=`` on :func:`odejax.solve` and :func:`odejax.odeint`.

* :class:`BacksolveAdjoint` (``"backsolve"``, the default): the continuous adjoint of Chen et al.
  (2018, Algorithm 1) as a ``jax.custom_vjp``. The forward pass keeps only the states at the save
  times; the backward pass integrates ``[z, a, θ̄]`` from the last save time to the first with

  .. math::

      \\dot z = f(z, t, θ), \\qquad \\dot a = -a^\\top \\frac{\\partial f}{\\partial z}, \\qquad
      \\dot{\\bar θ} = -a^\\top \\frac{\\partial f}{\\partial θ},

  one interval at a time, restarting ``z`` from the stored forward value and adding each save
  time's incoming cotangent to ``a``. Memory does not grow with the number of steps. Gradients
  with respect to the times use the closed form of Appendix C's time channel: since
  ``d(a·f)/dt = a·∂f/∂t`` along the adjoint, ``∂L/∂t_i = g_i · f(z_i, t_i)`` for a save time with
  incoming cotangent ``g_i`` and ``∂L/∂t_0 = -a(t_0) · f(z_0, t_0)``, with no extra channel to
  integrate. The backward pass is built from the same custom rule, so it is differentiable again
  (reverse over reverse). This is ``state="reintegrate"``, the default with an explicit solver.

  Re-integrating ``z`` backwards is unstable where the forward dynamics contract strongly (stiff
  problems: the backward solve then blows up or runs out of steps), although the adjoint equation
  itself is stable there. ``BacksolveAdjoint(state="interpolate")`` (the default with a stiff
  solver) therefore keeps the forward solve's dense output and integrates only ``[a, θ̄]``
  backwards, reading ``z(t)`` off the forward interpolant inside the augmented vector field. This
  gives up the ``O(1)`` memory: the dense output is a buffer of ``max_steps`` steps (each step's
  start state and interpolation stages), and it supports first derivatives only.
* :class:`CheckpointAdjoint` (``"checkpoint"``): discretise-then-optimise. Reverse mode through
  the stepping loop itself, run as a bounded loop with checkpointing (:mod:`odejax._loop`): the
  exact gradient of the computed solution with ``O(sqrt(max_steps))`` memory.
* :class:`ForwardMode` (``"forward"``): no custom rule; ``jax.jvp``/``jax.jacfwd`` differentiate
  the loop directly. Reverse mode raises a clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.flatten_util import ravel_pytree

from . import _checks, _guard
from ._controller import initial_step
from ._integrate import Options, Static, integrate
from ._solution import Solution
from ._solvers import get_solver
from ._tableau import Solver

__all__ = [
    "ADJOINTS",
    "BacksolveAdjoint",
    "CheckpointAdjoint",
    "ForwardMode",
    "backward_stats",
    "get_adjoint",
    "run_adjoint",
]


BACKSOLVE_STATES = ("reintegrate", "interpolate")


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint:
    """The continuous adjoint method (the default).

    With ``state="reintegrate"`` (the paper's Algorithm 1) the backward pass solves
    ``[z, a, θ̄]`` backwards, re-integrating the state: memory does not grow with the number of
    steps. With ``state="interpolate"`` the forward pass also keeps its dense output and the
    backward pass solves only ``[a, θ̄]``, reading ``z(t)`` off the forward interpolant: stable
    where the forward dynamics contract strongly (stiff problems, where re-integrating ``z``
    backwards blows up), at the price of the ``O(1)`` memory (the dense output holds each of up
    to ``max_steps`` steps' start state and interpolation stages) and of second derivatives
    (reverse over reverse raises; use ``state="reintegrate"`` or
    ``CheckpointAdjoint(higher_order=True)``).

    The backward pass starts with the step size that the forward solve proposed next at its
    end (Hairer's initial-step rule only when there is none), and each interval between save
    times continues from the step size the previous one ended with.

    Attributes:
        rtol, atol: tolerances of the backward solve (default: the forward ones; a per-component
            forward tolerance contributes its smallest value).
        solver: solver of the backward solve (default: the forward one, so a stiff forward
            solver makes a stiff backward solve).
        seminorm: leave the parameter channel out of the backward error norm (Kidger, Chen &
            Lyons 2021): fewer backward steps, same accuracy of ``a``.
        record_stats: record the backward solves' step counts and ``nfe`` on every backward
            pass (one host callback per pass); read them with :func:`odejax.backward_stats`.
        state: how the backward pass gets the forward state ``z(t)``: ``"reintegrate"``,
            ``"interpolate"``, or ``None`` (default): ``"interpolate"`` when the forward or the
            backward solver is stiff (``rodas5``, ``kvaerno5``), else ``"reintegrate"``.

    Raises:
        ValueError: ``state`` is not one of ``"reintegrate"``, ``"interpolate"`` or ``None``.
    """

    rtol: float | None = None
    atol: float | None = None
    solver: str | Solver | None = None
    seminorm: bool = False
    record_stats: bool = False
    state: str | None = None

    def __post_init__(self):
        _checks.check_nonnegative("BacksolveAdjoint(rtol=...)", self.rtol)
        _checks.check_nonnegative("BacksolveAdjoint(atol=...)", self.atol)
        if self.state is not None and self.state not in BACKSOLVE_STATES:
            raise ValueError(
                f"BacksolveAdjoint(state={self.state!r}) is not valid: state must be"
                " 'reintegrate' (re-integrate z backwards, O(1) memory), 'interpolate' (read z"
                " off the forward dense output; for stiff problems) or None (pick by solver)."
            )

    def resolve_state(self, forward_solver) -> str:
        """The ``state`` used with ``forward_solver``: the given one, or picked by stiffness."""
        if self.state is not None:
            return self.state
        solvers = [forward_solver]
        if self.solver is not None:
            solvers.append(get_solver(self.solver))
        stiff = any(getattr(s, "kind", "explicit") != "explicit" for s in solvers)
        return "interpolate" if stiff else "reintegrate"


@dataclasses.dataclass(frozen=True)
class CheckpointAdjoint:
    """Discretise-then-optimise: reverse mode through the solver's own steps.

    By default the solve has a reverse-mode rule of its own (:mod:`odejax._checkpoint`). The
    forward pass is the ordinary solve loop, which also stores its carry every ``spans[0]``
    steps and keeps the carries of its last steps in a ring. The backward pass re-runs one
    stored stretch at a time, storing at most ``w`` carries of it, and so on down to single
    steps, each differentiated on its own with ``jax.vjp``. With ``L`` levels of ``w`` stored
    carries (``w ** L >= max_steps``, ``w <= 24``), memory is about ``L * w`` carries plus one
    step's intermediates, and the backward pass costs, per step taken, at most ``L - 1``
    recomputations plus one vector-Jacobian product; a solve of at most ``w`` steps is reversed
    from the ring with no recomputation. The saved states and the dense output never enter a
    stored carry.

    Attributes:
        checkpoints: the number of carries the forward pass stores (the top level); the levels
            below are chosen as above. ``None`` (default): chosen from ``max_steps`` as above.
            ``checkpoints >= max_steps`` stores every step's carry and recomputes nothing.
        higher_order: ``False`` (default): first derivatives by the rule above (``jax.grad``,
            ``jax.vjp``, ``jax.jacrev``), and second derivatives forward over reverse
            (``jax.hessian``, ``jax.jacfwd(jax.grad(...))``). ``True``: JAX's own reverse mode
            through a bounded loop in nested ``jax.checkpoint``-ed scans
            (:func:`odejax._loop.checkpointed_while`), which also supports reverse over reverse
            and ``jax.jvp`` through the solve, at several times the run and compile time;
            ``checkpoints=k`` then makes ``k`` checkpointed chunks whose steps' intermediates
            are all stored.
    """

    checkpoints: int | None = None
    higher_order: bool = False

    def __post_init__(self):
        if self.checkpoints is not None and self.checkpoints < 1:
            raise ValueError(f"checkpoints must be at least 1, got {self.checkpoints}.")
        if not isinstance(self.higher_order, bool):
            raise TypeError(f"higher_order must be a bool, got {self.higher_order!r}.")

    @property
    def loop(self) -> str:
        """The integration loop's driver (:class:`odejax._integrate.Static`'s ``loop``)."""
        return "checkpoint-ad" if self.higher_order else "checkpoint"


@dataclasses.dataclass(frozen=True)
class ForwardMode:
    """Forward-mode differentiation only (``jax.jvp``, ``jax.jacfwd``): best for few inputs."""


ADJOINTS = {"backsolve": BacksolveAdjoint, "checkpoint": CheckpointAdjoint, "forward": ForwardMode}
Adjoint = BacksolveAdjoint | CheckpointAdjoint | ForwardMode


def get_adjoint(adjoint) -> Adjoint:
    """Resolve ``adjoint=`` (a name, an adjoint object or ``None`` for the default)."""
    if adjoint is None:
        return BacksolveAdjoint()
    if isinstance(adjoint, (BacksolveAdjoint, CheckpointAdjoint, ForwardMode)):
        return adjoint
    if isinstance(adjoint, str) and adjoint in ADJOINTS:
        return ADJOINTS[adjoint]()
    raise ValueError(
        f"Unknown adjoint={adjoint!r}; use one of {sorted(ADJOINTS)} or an odejax adjoint object."
    )


JVP_OF_CHECKPOINT = (
    "CheckpointAdjoint() (adjoint='checkpoint') is a custom reverse-mode rule: jax.jvp and"
    " jax.jacfwd of the solve itself are not supported (forward over reverse is, e.g."
    " jax.hessian or jax.jacfwd(jax.grad(loss))). Use adjoint='forward' for jvp/jacfwd, or"
    " adjoint=odejax.CheckpointAdjoint(higher_order=True), which differentiates the solver's"
    " loop with JAX's own autodiff in both modes."
)

JVP_OF_BACKSOLVE = (
    "adjoint='backsolve' (the default) is a custom reverse-mode rule and cannot be used with"
    " forward-mode differentiation (jax.jvp, jax.jacfwd, and jax.hessian, which is jacfwd over"
    " jacrev). Use adjoint='forward' for jvp/jacfwd, or take second derivatives by reverse over"
    " reverse: jax.jacrev(jax.grad(loss))."
)


def run_adjoint(adjoint: Adjoint, f, z0, t0, t1, ts, args, opts: Options, static: Static):
    """Solve with the differentiation rule of ``adjoint`` (called inside ``jit``)."""
    if isinstance(adjoint, CheckpointAdjoint):
        static = static._replace(loop=adjoint.loop, checkpoints=adjoint.checkpoints)
        return integrate(f, z0, t0, t1, ts, args, opts, static)
    if isinstance(adjoint, ForwardMode):
        sol = integrate(f, z0, t0, t1, ts, args, opts, static)
        return jax.tree.map(lambda x: forward_only(x) if eqx.is_inexact_array(x) else x, sol)
    return _backsolve_solve(adjoint, f, z0, t0, t1, ts, args, opts, static)


FORWARD_ONLY = (
    "This solve used adjoint='forward' (odejax.ForwardMode), which supports forward-mode"
    " differentiation only (jax.jvp, jax.jacfwd). For reverse mode (jax.grad, jax.vjp,"
    " jax.jacrev) use adjoint='backsolve' (O(1) memory) or adjoint='checkpoint' (the exact"
    " gradient of the discretisation)."
)


def forward_only(x):
    """Identity that supports ``jvp`` but raises a clear error under reverse mode."""
    return _guard.forward_only(x, FORWARD_ONLY)


# --- backsolve ----------------------------------------------------------------------------------

_BACKWARD_STATS: dict[str, Any] = {}


def backward_stats() -> dict[str, Any]:
    """Step counts and ``nfe`` of the latest backward pass of a
    ``BacksolveAdjoint(record_stats=True)`` solve, summed over its intervals.

    Under ``jax.vmap`` every member has its own backward solve: the values are then arrays with
    the batch shape, one count per member (``np.sum`` gives the pass's total).
    """
    return dict(_BACKWARD_STATS)


def _record(stats):
    """Host side of the recording callback: called once per backward pass, batched under vmap."""
    _BACKWARD_STATS.clear()
    _BACKWARD_STATS.update({k: np.asarray(v) for k, v in stats.items()})
    return np.zeros(np.shape(stats["nfe"]), np.int32)


def _record_stats(stats, outputs):
    """Record ``stats`` on the host (one callback per pass, with the batch under vmap).

    A ``pure_callback`` with ``vmap_method="expand_dims"`` sees a whole vmapped batch at once;
    its (zero) result is tied to every array of ``outputs`` (the backward pass's results), so
    the callback is dead code only when no gradient is used. Its inputs carry no tangents, so
    the backward pass stays differentiable (reverse-over-reverse).
    """
    stats = lax.stop_gradient(stats)
    token = jax.pure_callback(
        _record, jax.ShapeDtypeStruct((), jnp.int32), stats, vmap_method="expand_dims"
    )
    return jax.tree.map(lambda x: jnp.where(token == 0, x, jnp.nan), outputs)


def _backsolve_solve(adjoint, f, z0, t0, t1, ts, args, opts, static):
    # Every array in f and args is an input of the custom rule; closed-over tracers are hoisted
    # out by closure conversion, so they get gradients too (never a silent zero).
    f_dyn, f_static = eqx.partition(f, eqx.is_array)
    a_dyn, a_static = eqx.partition(args, eqx.is_array)

    def field(z, t, p):
        return eqx.combine(p[0], f_static)(z, t, eqx.combine(p[1], a_static))

    # Closed-over tracers (of any dtype: an integer one must not stay baked into the rule's
    # static field either) become inputs; concrete constants stay in the field.
    conv = eqx.filter_closure_convert(field, z0, t0, (f_dyn, a_dyn))
    traced, concrete = eqx.partition(conv, lambda x: isinstance(x, jax.core.Tracer))
    tdtype = t0.dtype

    if jax.tree.leaves(traced):

        def vector_field(z, t, params):
            p, traced = params
            return eqx.combine(traced, concrete)(z, t.astype(tdtype), p)  # t's dtype as traced
    else:  # nothing traced is closed over: call the field itself (cheaper to trace)

        def vector_field(z, t, params):
            return field(z, t.astype(tdtype), params[0])

    params = ((f_dyn, a_dyn), traced)
    inner = ts if ts is not None else jnp.zeros((0,), t0.dtype)
    grid = jnp.concatenate([t0[None], inner, t1[None]])
    adjoint = dataclasses.replace(adjoint, state=adjoint.resolve_state(static.solver))
    if static.check_ts:  # the save times are the grid's inner points
        static = static._replace(check_ts=2)
    sol = _backsolve(vector_field, adjoint, static, opts, z0, grid, params)
    rows = slice(1, -1) if ts is not None else slice(-1, None)
    return Solution(
        ts=ts if ts is not None else t1[None],
        zs=jax.tree.map(lambda x: x[rows], sol.zs),
        stats=sol.stats,
        status=sol.status,
        t_final=sol.t_final,
        interpolation=sol.interpolation,
        dt_next=sol.dt_next,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _backsolve(vector_field, adjoint, static, opts, z0, grid, params):
    """States at every ``grid`` time (``grid[0]`` is the initial time) as a :class:`Solution`."""
    return integrate(vector_field, z0, grid[0], grid[-1], grid, params, opts, static)


def _backsolve_fwd(vector_field, adjoint, static, opts, z0, grid, params):
    opts, z0, grid, params = jax.tree.map(
        lambda x: x.value,
        (opts, z0, grid, params),
        is_leaf=lambda x: isinstance(x, CustomVJPPrimal),
    )
    if adjoint.state == "interpolate":
        # One forward solve that also keeps its dense output for the backward pass.
        dense = _first_order_only(
            lambda *x: integrate(vector_field, *x, static._replace(dense=True)),
            z0,
            grid[0],
            grid[-1],
            grid,
            params,
            opts,
        )
        sol = dense if static.dense else dataclasses.replace(dense, interpolation=None)
        return sol, (opts, grid, params, sol.zs, dense.interpolation, sol.dt_next)
    # Through the rule itself, so that differentiating the gradient again (reverse over
    # reverse) differentiates this forward solve by backsolve too.
    sol = _backsolve(vector_field, adjoint, static, opts, z0, grid, params)
    return sol, (opts, grid, params, sol.zs, None, sol.dt_next)


SECOND_ORDER_INTERPOLATE = (
    "Reverse-over-reverse (second) derivatives through BacksolveAdjoint(state='interpolate') are"
    " not supported: its backward pass reads the state off the forward dense output, which"
    " backsolve does not differentiate. state='interpolate' is the default with a stiff solver;"
    " for second derivatives pass adjoint=odejax.BacksolveAdjoint(state='reintegrate') (non-stiff"
    " problems) or adjoint=odejax.CheckpointAdjoint(higher_order=True)."
)


def _first_order_only(fn, *inputs):
    """``fn(*inputs)`` whose own derivative (needed only by a second derivative) is a clear error.

    Also keeps reverse mode out of the ``while`` loops inside ``fn``, which it cannot transpose.
    """

    @jax.custom_vjp
    def call(*inputs):
        return fn(*inputs)

    def bwd(_, ct):
        raise NotImplementedError(SECOND_ORDER_INTERPOLATE)

    call.defvjp(lambda *x: (fn(*x), None), bwd)
    return call(*inputs)


def _is_zero(ct) -> bool:
    return all(isinstance(x, SymbolicZero) for x in jax.tree.leaves(ct))


def _backsolve_bwd(vector_field, adjoint, static, residuals, ct):
    opts, grid, params, zs, interp, dt_forward = residuals
    if ct.interpolation is not None and not _is_zero(ct.interpolation):
        raise NotImplementedError(
            "Differentiating Solution.evaluate (dense output) needs adjoint='checkpoint' or"
            " adjoint='forward'; adjoint='backsolve' differentiates the states at `ts`."
        )
    dtype = jax.tree.leaves(zs)[0].dtype
    zs_flat = jax.vmap(lambda z: ravel_pytree(z)[0])(zs)  # (N + 1, n)
    n = zs_flat.shape[1]
    unravel = ravel_pytree(jax.tree.map(lambda x: x[0], zs))[1]
    g = _instantiate(ct.zs, zs)
    g_flat = jax.vmap(lambda z: ravel_pytree(z)[0])(g).astype(zs_flat.dtype)

    p_diff, p_rest = eqx.partition(params, eqx.is_inexact_array)

    def field_flat(z_flat, t):
        return ravel_pytree(vector_field(unravel(z_flat), t, params))[0]

    def adjoint_rhs(z, a, t, p_diff):
        """``(f, -aᵀ∂f/∂z, -aᵀ∂f/∂θ)`` from one ``jax.vjp`` of ``f``."""

        def f_zp(z, p_diff):
            return vector_field(z, t, eqx.combine(p_diff, p_rest))

        fz, vjp = jax.vjp(f_zp, z, p_diff)
        a_z, a_p = vjp(a)
        return fz, jax.tree.map(jnp.negative, a_z), jax.tree.map(jnp.negative, a_p)

    param_sizes = tuple(x.size for x in jax.tree.leaves(p_diff))
    interpolated = adjoint.state == "interpolate"
    back_static, back_opts = _backward_setup(
        adjoint, static, opts, n, param_sizes, dtype, interpolated
    )

    if interpolated:
        # [a, θ̄] only: z(t) comes from the forward interpolant, never re-integrated.
        def adjoint_only(y, t, q):
            a, _ = y
            p_diff, interp = q
            _, a_z, a_p = adjoint_rhs(interp.evaluate(t), a, t, p_diff)
            return a_z, a_p

        def solve_adjoint(y0, t_hi, t_lo, q, back_opts):
            return integrate(adjoint_only, y0, t_hi, t_lo, None, q, back_opts, back_static)

        def interval_start(a, p_bar, z_hi):
            del z_hi
            return (unravel(a), p_bar)

        def interval_rhs(y, t):
            return adjoint_only(y, t, (p_diff, interp))

        def solve_interval(a, p_bar, t_hi, t_lo, z_hi, opts_i):
            y0 = interval_start(a, p_bar, z_hi)
            sol = _first_order_only(solve_adjoint, y0, t_hi, t_lo, (p_diff, interp), opts_i)
            a_lo, p_bar = jax.tree.map(lambda v: v[-1], sol.zs)
            return a_lo, p_bar, sol.stats, sol.dt_next
    else:

        def augmented(y, t, p_diff):
            z, a, _ = y
            return adjoint_rhs(z, a, t, p_diff)

        def interval_start(a, p_bar, z_hi):
            return (unravel(z_hi), unravel(a), p_bar)

        def interval_rhs(y, t):
            return augmented(y, t, p_diff)

        def solve_interval(a, p_bar, t_hi, t_lo, z_hi, opts_i):
            y0 = interval_start(a, p_bar, z_hi)
            grid = jnp.stack([t_hi, t_lo])
            sol = _backsolve(augmented, adjoint, back_static, opts_i, y0, grid, p_diff)
            _, a_lo, p_bar = jax.tree.map(lambda v: v[-1], sol.zs)
            return a_lo, p_bar, sol.stats, sol.dt_next

    def interval(carry, i):
        # Each interval continues from the step size the previous one ended with (the first
        # from the forward solve's, below): the adjoint is continuous across save times.
        # Interval i is [grid[i], grid[i + 1]], read by index: slices of the whole arrays
        # would be copies, one kernel each.
        a, p_bar, dt = carry
        t_hi, t_lo, z_hi, g_lo = grid[i + 1], grid[i], zs_flat[i + 1], g_flat[i]
        opts_i = back_opts._replace(dt0=lax.stop_gradient(dt))
        a_lo, p_bar, stats, dt = solve_interval(a, p_bar, t_hi, t_lo, z_hi, opts_i)
        a_lo = ravel_pytree(a_lo)[0]
        return (a_lo + g_lo, p_bar, dt), (a_lo, stats)

    p_bar0 = jax.tree.map(jnp.zeros_like, p_diff)
    y_last = interval_start(g_flat[-1], p_bar0, zs_flat[-1])
    # The backward pass starts with the step size the forward solve would have taken next (the
    # adjoint runs along the same trajectory, back from its end); Hairer's rule only without one.
    dt_back = -lax.stop_gradient(dt_forward).astype(grid.dtype)
    usable = jnp.isfinite(dt_back) & (dt_back != 0)
    dt_first = lax.cond(
        usable,
        lambda: dt_back,
        lambda: _start_step(interval_rhs, y_last, grid[-1], grid[-2], back_static, back_opts),
    )
    start_nfe = jnp.where(usable, 0, 2)  # Hairer's rule evaluates the field twice
    (a0, p_bar, _), (a_lo, stats) = lax.scan(  # the last interval first
        interval, (g_flat[-1], p_bar0, dt_first), jnp.arange(grid.shape[0] - 1), reverse=True
    )
    if adjoint.record_stats:
        totals = jax.tree.map(lambda s: jnp.sum(s, axis=0), stats)
        totals["nfe"] = totals["nfe"] + start_nfe
        a0, p_bar, a_lo = _record_stats(totals, (a0, p_bar, a_lo))

    # Time gradients (closed form of the paper's Appendix C, see the module docstring).
    f_grid = jax.vmap(field_flat)(zs_flat, grid)
    grid_bar = jnp.sum(g_flat * f_grid, axis=1)
    grid_bar = grid_bar.at[0].set(-jnp.dot(a_lo[0], f_grid[0]))
    grid_bar = grid_bar.astype(grid.dtype)
    if not isinstance(ct.ts, SymbolicZero):
        grid_bar = grid_bar + ct.ts
    if not isinstance(ct.t_final, SymbolicZero):
        grid_bar = grid_bar.at[-1].add(ct.t_final)

    params_bar = eqx.combine(p_bar, jax.tree.map(lambda _: None, p_rest))
    z_first = jax.tree.map(lambda x: x[0], zs)
    z0_bar = jax.tree.map(lambda c, z: c.astype(z.dtype), unravel(a0), z_first)
    opts_bar = jax.tree.map(lambda _: None, opts)
    return opts_bar, z0_bar, grid_bar, params_bar


def _start_step(rhs, y0, t_hi, t_lo, static: Static, opts: Options):
    """Hairer's initial step for the first backward interval ``[t_hi, t_lo]`` (no gradient)."""
    y_flat, unravel = ravel_pytree(y0)

    def fn(t, y):
        return ravel_pytree(rhs(unravel(y), t))[0].astype(y_flat.dtype)

    direction = jnp.where(t_lo >= t_hi, 1, -1).astype(t_hi.dtype)
    f0 = fn(t_hi, y_flat)
    dt = initial_step(fn, t_hi, y_flat, f0, opts.atol, opts.rtol, static.solver.order, direction)
    return lax.stop_gradient(dt.astype(t_hi.dtype))


def _instantiate(ct, like):
    return jax.tree.map(
        lambda c, x: jnp.zeros(x.shape, x.dtype) if isinstance(c, SymbolicZero) else c,
        ct,
        like,
        is_leaf=lambda c: isinstance(c, SymbolicZero),
    )


def _backward_setup(
    adjoint,
    static: Static,
    opts: Options,
    n: int,
    param_sizes: tuple[int, ...],
    dtype,
    interpolated: bool = False,
):
    """Static settings and tolerances of the backward solves.

    The augmented state is ``[z (n), a (n), θ̄]``, or ``[a (n), θ̄]`` when ``z`` is
    interpolated, with ``θ̄`` one block per parameter leaf (sizes ``param_sizes``). Its error norm
    is the largest RMS over the channels ``z``, ``a`` and each parameter leaf (torchdiffeq's
    mixed norm), so a channel with small errors does not dilute the others; the seminorm takes
    the largest over ``z`` and ``a`` only, and so never exceeds the full norm: it can only save
    steps.
    """

    def tol(given, forward):
        if given is not None:
            with jax.ensure_compile_time_eval():  # a number stays a concrete array
                return jnp.asarray(given, forward.dtype)
        return jnp.min(forward) if forward.ndim else forward

    state = (n,) if interpolated else (n, 2 * n)
    ends = tuple(state[-1] + e for e in itertools.accumulate(param_sizes))
    channels = state if adjoint.seminorm else state + ends
    back_static = static._replace(
        solver=static.solver if adjoint.solver is None else get_solver(adjoint.solver),
        dense=False,
        progress=False,
        has_dt0=True,  # Hairer's rule once for the first interval, then carried over
        loop="while",
        norm_channels=channels,
        backward=True,
        check_ts=0,
    )
    back_opts = Options(
        rtol=tol(adjoint.rtol, opts.rtol),
        atol=tol(adjoint.atol, opts.atol),
        dt0=None,
        dtmin=opts.dtmin,
        dtmax=opts.dtmax,
    )
    if adjoint.rtol is not None or adjoint.atol is not None:
        given = _checks.tolerances_checked(back_opts.rtol, back_opts.atol)
        back_static = back_static._replace(check_tols=not given)
    return back_static, back_opts


_backsolve.defvjp(_backsolve_fwd, _backsolve_bwd, symbolic_zeros=True)
