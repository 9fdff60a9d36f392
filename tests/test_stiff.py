"""Stiff solvers (``rodas5``, ``kvaerno5``): accuracy on stiff test problems, order, linear
solvers, gradients, transformations, float32 and bad input.

Reference values:

* HIRES at ``t = 321.8122`` and OREGO at ``t = 360``: the published reference solutions of the
  Bari test set for IVP solvers (F. Mazzia and C. Magherini, "Test Set for Initial Value Problem
  Solvers", release 2.4, 2008, https://archimede.uniba.it/~testset/, problems ``hires`` and
  ``orego``), as also tabulated in the R package deTestSet
  (``inst/doc/examples/hires.R``, ``orego.R``).
* Robertson at ``t = 1e11``: the same test set's ``rober`` reference solution.
* Robertson at ``t = 1e5`` and Van der Pol (``mu = 1000``) at ``t = 3000``: SciPy's ``Radau``
  with the exact Jacobian, produced by::

      solve_ivp(rober, (0, 1e5), [1, 0, 0], method="Radau", rtol=1e-13, atol=1e-22, jac=...)
      solve_ivp(vdp, (0, 3000), [2, 0], method="Radau", rtol=1e-13, atol=1e-13, jac=...)

  (the VdP value agrees with ``rtol = atol = 1e-12`` to 1e-11).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odejax
from odejax import Status

STIFF = ["rodas5", "kvaerno5"]


def robertson(z, t, k):
    y1, y2, y3 = z[0], z[1], z[2]
    return jnp.stack(
        [
            -k[0] * y1 + k[2] * y2 * y3,
            k[0] * y1 - k[2] * y2 * y3 - k[1] * y2**2,
            k[1] * y2**2,
        ]
    )


ROBER_K = jnp.array([0.04, 3e7, 1e4])
ROBER_Z0 = jnp.array([1.0, 0.0, 0.0])
ROBER_1E5 = np.array([0.017865921142100154, 7.274751468436565e-08, 0.9821340061103905])
ROBER_1E11 = np.array([0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050])


def van_der_pol(z, t, mu):
    return jnp.stack([z[1], mu * (1 - z[0] ** 2) * z[1] - z[0]])


VDP_3000 = np.array([-1.5106069367458292, 0.001178380000727482])


def hires(y, t, args):
    return jnp.stack(
        [
            -1.71 * y[0] + 0.43 * y[1] + 8.32 * y[2] + 0.0007,
            1.71 * y[0] - 8.75 * y[1],
            -10.03 * y[2] + 0.43 * y[3] + 0.035 * y[4],
            8.32 * y[1] + 1.71 * y[2] - 1.12 * y[3],
            -1.745 * y[4] + 0.43 * y[5] + 0.43 * y[6],
            -280.0 * y[5] * y[7] + 0.69 * y[3] + 1.71 * y[4] - 0.43 * y[5] + 0.69 * y[6],
            280.0 * y[5] * y[7] - 1.81 * y[6],
            -280.0 * y[5] * y[7] + 1.81 * y[6],
        ]
    )


HIRES_Z0 = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057])
HIRES_T1 = 321.8122
HIRES_REF = np.array(
    [
        0.7371312573325668e-3,
        0.1442485726316185e-3,
        0.5888729740967575e-4,
        0.1175651343283149e-2,
        0.2386356198831331e-2,
        0.6238968252742796e-2,
        0.2849998395185769e-2,
        0.2850001604814231e-2,
    ]
)


def orego(y, t, args):
    return jnp.stack(
        [
            77.27 * (y[1] + y[0] * (1 - 8.375e-6 * y[0] - y[1])),
            (y[2] - (1 + y[0]) * y[1]) / 77.27,
            0.161 * (y[0] - y[2]),
        ]
    )


OREGO_REF = np.array([0.1000814870318523e1, 0.1228178521549917e4, 0.1320554942846706e3])


def rel_err(x, ref) -> float:
    return float(np.max(np.abs(np.asarray(x) - ref) / np.abs(ref)))


# --------------------------------------------------------------------------------------------
# Accuracy on the stiff test problems
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", STIFF)
def test_robertson_to_1e5_and_1e11(solver):
    sol = odejax.solve(
        robertson,
        ROBER_Z0,
        0.0,
        1e11,
        args=ROBER_K,
        ts=jnp.array([1e5, 1e11]),
        solver=solver,
        rtol=1e-8,
        atol=1e-14,
        max_steps=2000,
    )
    assert sol.result == Status.SUCCESS
    assert rel_err(sol.zs[0], ROBER_1E5) < 1e-6
    # y2 at 1e11 is ~1e-13; atol=1e-14 limits its relative accuracy.
    assert rel_err(sol.zs[1], ROBER_1E11) < 1e-3
    np.testing.assert_allclose(np.asarray(sol.zs[1, [0, 2]]), ROBER_1E11[[0, 2]], rtol=1e-4)
    # Mass is conserved by every linear combination of stages.
    np.testing.assert_allclose(np.asarray(jnp.sum(sol.zs, axis=1)), 1.0, atol=1e-12)
    assert int(sol.stats["num_steps"]) < 1000  # tsit5 would need ~10^8 (dt ~ 1/|λ| ~ 1e-3)
    assert int(sol.stats["num_jacobians"]) == int(sol.stats["num_steps"])
    assert int(sol.stats["num_linear_solves"]) > 0


def test_explicit_solver_stops_clearly_on_robertson():
    """tsit5 crawls on a stiff problem: it must stop with MAX_STEPS_REACHED, never hang."""
    sol = odejax.solve(
        robertson, ROBER_Z0, 0.0, 1e5, args=ROBER_K, solver="tsit5", max_steps=2000, throw=False
    )
    assert sol.result == Status.MAX_STEPS_REACHED
    assert float(sol.t_final) < 100.0  # stalled at the start of a 1e5 interval
    assert np.all(np.isnan(np.asarray(sol.zs)))
    with pytest.raises(Exception, match="MAX_STEPS_REACHED") as info:
        jax.block_until_ready(
            odejax.solve(
                robertson, ROBER_Z0, 0.0, 1e5, args=ROBER_K, solver="tsit5", max_steps=2000
            ).zs
        )
    assert "stiff solver" in str(info.value)


@pytest.mark.parametrize("solver", STIFF)
def test_van_der_pol_mu_1000(solver):
    sol = odejax.solve(
        van_der_pol,
        jnp.array([2.0, 0.0]),
        0.0,
        3000.0,
        args=jnp.asarray(1000.0),
        solver=solver,
        rtol=1e-8,
        atol=1e-8,
        max_steps=5000,
    )
    assert sol.result == Status.SUCCESS
    np.testing.assert_allclose(np.asarray(sol.zs[-1]), VDP_3000, rtol=1e-5)
    assert int(sol.stats["num_steps"]) < 3000


@pytest.mark.parametrize("solver", STIFF)
def test_hires(solver):
    sol = odejax.solve(
        hires, HIRES_Z0, 0.0, HIRES_T1, solver=solver, rtol=1e-8, atol=1e-10, max_steps=2000
    )
    assert sol.result == Status.SUCCESS
    assert rel_err(sol.zs[-1], HIRES_REF) < 1e-5
    assert int(sol.stats["num_steps"]) < 600


@pytest.mark.parametrize("solver", STIFF)
def test_orego(solver):
    sol = odejax.solve(
        orego,
        jnp.array([1.0, 2.0, 3.0]),
        0.0,
        360.0,
        solver=solver,
        rtol=1e-8,
        atol=1e-8,
        max_steps=8000,
    )
    assert sol.result == Status.SUCCESS
    assert rel_err(sol.zs[-1], OREGO_REF) < 1e-5
    assert int(sol.stats["num_steps"]) < 5000


# --------------------------------------------------------------------------------------------
# Order of convergence
# --------------------------------------------------------------------------------------------


def forced_decay(z, t, args):
    """z' = -z + sin t, z(0) = 1: z = (sin t - cos t)/2 + 1.5 e^{-t} (tests ∂f/∂t terms too)."""
    return -z + jnp.sin(t)


def forced_decay_exact(t):
    return (np.sin(t) - np.cos(t)) / 2 + 1.5 * np.exp(-t)


@pytest.mark.parametrize("solver", STIFF)
def test_order_of_convergence(solver):
    """Fixed steps (dt0 = dtmax = h with a tolerance that accepts every step; the problem is
    linear, so Newton converges in one iteration): the log-log slope is the order, 5."""
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    errs = []
    for h in hs:
        sol = odejax.solve(
            forced_decay,
            jnp.array([1.0]),
            0.0,
            2.0,
            solver=solver,
            dt0=h,
            dtmax=h,
            rtol=1e3,
            atol=1e3,
        )
        assert int(sol.stats["num_steps"]) == round(2.0 / h)
        errs.append(abs(float(sol.zs[-1, 0]) - forced_decay_exact(2.0)))
    slopes = np.diff(np.log(errs)) / np.diff(np.log(hs))
    assert np.all(slopes > 4.7) and np.all(slopes < 5.5), slopes


# --------------------------------------------------------------------------------------------
# Linear solvers, dense output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", [odejax.Rodas5, odejax.Kvaerno5], ids=STIFF)
def test_matrix_free_agrees_with_dense(solver_cls):
    kw = dict(rtol=1e-8, atol=1e-10, max_steps=2000)
    # solver_cls() is the object solver="rodas5" resolves to: test_hires compiled this solve.
    dense = odejax.solve(hires, HIRES_Z0, 0.0, HIRES_T1, solver=solver_cls(), **kw)
    free = odejax.solve(hires, HIRES_Z0, 0.0, HIRES_T1, solver=solver_cls("matrix_free"), **kw)
    assert free.result == Status.SUCCESS
    np.testing.assert_allclose(np.asarray(free.zs), np.asarray(dense.zs), rtol=1e-6)
    assert rel_err(free.zs[-1], HIRES_REF) < 1e-5
    assert abs(int(free.stats["num_steps"]) - int(dense.stats["num_steps"])) <= 5


def test_bad_linear_solver_name():
    with pytest.raises(ValueError, match="linear_solver"):
        odejax.Rodas5(linear_solver="sparse")
    with pytest.raises(ValueError, match="linear_solver"):
        odejax.Kvaerno5(linear_solver="lu")


def test_dense_output_and_save_times():
    """rodas5's own order-4 interpolant (kvaerno5's cubic Hermite one: see test_events)."""
    solver = "rodas5"
    ts = jnp.linspace(0.0, 2.0, 9)
    sol = odejax.solve(
        forced_decay, jnp.array([1.0]), 0.0, 2.0, ts=ts, solver=solver, rtol=1e-9, atol=1e-9,
        dense=True,
    )  # fmt: skip
    exact = forced_decay_exact(np.asarray(ts))
    np.testing.assert_allclose(np.asarray(sol.zs[:, 0]), exact, atol=1e-7)
    tt = jnp.linspace(0.0, 2.0, 33)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(sol.evaluate)(tt)[:, 0]), forced_decay_exact(np.asarray(tt)), atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _central_fd(fun, x, rel=1e-5):
    """Central differences of a scalar function; ``fun`` calls ``odejax.solve`` un-jitted, so its
    compiled solve is cached and shared (the primal of every adjoint is the same solve)."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(x.size):
        e = rel * max(abs(x[i]), 1e-3)
        xp, xm = x.copy(), x.copy()
        xp[i] += e
        xm[i] -= e
        out.append((float(fun(jnp.asarray(xp))) - float(fun(jnp.asarray(xm)))) / (2 * e))
    return np.array(out)


@pytest.mark.parametrize("solver", STIFF)
def test_gradients_through_robertson(solver):
    """Both adjoints through a genuinely stiff problem, w.r.t. the rate constants, against each
    other and central differences. Backsolve defaults to ``state="interpolate"`` with a stiff
    solver: its backward pass integrates only ``[a, θ̄]``, reading ``z`` off the forward
    interpolant, where re-integrating ``z`` backwards blows up (see the failure test below).

    kvaerno5 rejects steps whose Newton iteration diverged here; their (zero) cotangents must
    not turn into nan in the checkpoint adjoint (they did when the diverged iterate was returned).
    """

    def loss(log_k, adjoint="checkpoint"):
        sol = odejax.solve(
            robertson,
            ROBER_Z0,
            0.0,
            10.0,
            args=jnp.exp(log_k),
            ts=jnp.array([0.1, 1.0, 10.0]),
            solver=solver,
            rtol=1e-10,
            atol=1e-12,
            adjoint=adjoint,
        )
        return jnp.sum(sol.zs[:, 0]) + 1e4 * jnp.sum(sol.zs[:, 1])

    log_k = jnp.log(ROBER_K)
    adj = odejax.BacksolveAdjoint(record_stats=True)
    back = jax.grad(loss)(log_k, adj)
    assert odejax.backward_stats()["num_steps"] > 0
    fd = _central_fd(lambda x: loss(x, "backsolve"), log_k, rel=1e-6)
    np.testing.assert_allclose(np.asarray(back), fd, rtol=1e-4, atol=1e-6)
    if solver == "kvaerno5":  # one checkpointed stiff gradient is enough for the time budget
        grad = jax.grad(loss)(log_k)
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(back), np.asarray(grad), rtol=1e-4, atol=1e-6)


def hires_rates(y, t, k):
    """HIRES with its two fast rate constants as parameters (280 and 1.71)."""
    return (
        hires(y, t, None)
        + (k[0] - 280.0) * jnp.array([0, 0, 0, 0, 0, -1, 1, -1.0]) * y[5] * y[7]
        + (k[1] - 1.71) * jnp.array([-y[0], y[0], y[2], y[2], y[4], y[4], 0, 0])
    )


def test_backsolve_gradient_through_hires():
    """HIRES over its whole reference interval, by backsolve (interpolated state, rodas5 both
    ways) against central differences and the checkpoint adjoint's value."""

    def loss(k, adjoint="backsolve"):
        sol = odejax.solve(
            hires_rates, HIRES_Z0, 0.0, HIRES_T1, args=k, ts=jnp.array([5.0, HIRES_T1]),
            solver="rodas5", rtol=1e-9, atol=1e-12, max_steps=2000, adjoint=adjoint,
        )  # fmt: skip
        return jnp.sum(sol.zs[0] * jnp.arange(1.0, 9.0)) + 1e3 * jnp.sum(sol.zs[1, 5:])

    k = jnp.array([280.0, 1.71])
    back = jax.grad(loss)(k)
    fd = _central_fd(loss, k, rel=1e-6)
    np.testing.assert_allclose(np.asarray(back), fd, rtol=1e-5)
    # The checkpoint adjoint (compiled separately, so not repeated here for time) gives
    # [-0.05198111, 15423.1149].
    np.testing.assert_allclose(np.asarray(back), [-0.05198111, 15423.1149], rtol=1e-6)


def stiff_linear(z, t, p):
    """A stiff (eigenvalues -p[0] and -1) non-autonomous linear system."""
    return jnp.stack([-p[0] * z[0] + p[1] * z[1], -z[1] + jnp.sin(t)])


@pytest.mark.parametrize(
    "solver, adjoint",
    [("rodas5", "backsolve"), ("kvaerno5", "backsolve"), ("rodas5", "checkpoint")],
)
def test_gradients_match_finite_differences(solver, adjoint):
    """Both adjoints through the stiff solvers (backsolve's backward solve uses the same stiff
    solver, and the forward interpolant for the state), w.r.t. parameters and the initial
    state; kvaerno5 with the checkpoint adjoint is tested on Robertson above."""

    def loss(p, z0, adjoint=adjoint):
        sol = odejax.solve(
            stiff_linear,
            z0,
            0.0,
            2.0,
            args=p,
            ts=jnp.array([0.5, 1.0, 2.0]),
            solver=solver,
            rtol=1e-10,
            atol=1e-10,
            adjoint=adjoint,
        )
        return jnp.sum(sol.zs[:, 0]) + jnp.sum(sol.zs[:, 1] ** 2)

    p = jnp.array([100.0, 2.0])
    z0 = jnp.array([1.0, 1.0])
    gp, gz = jax.grad(loss, argnums=(0, 1))(p, z0)
    fd_p = _central_fd(lambda q: loss(q, z0, "backsolve"), p)
    fd_z = _central_fd(lambda y: loss(p, y, "backsolve"), z0)
    # The initial value of the stiff component is forgotten (e^{-200}): its gradient is ~0.
    np.testing.assert_allclose(np.asarray(gp), fd_p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gz), fd_z, rtol=1e-4, atol=1e-5)


def test_backsolve_failure_on_strongly_stiff_problem_is_clear():
    """``state="reintegrate"`` re-integrates the state backwards in time (the paper's Algorithm
    1), which is unstable for strongly stiff nonlinear problems (Robertson): the backward solve
    must stop with a clear error naming the backward pass, never return garbage. The default
    with a stiff solver, ``state="interpolate"``, is the remedy (tested above).
    """
    adjoint = odejax.BacksolveAdjoint(state="reintegrate")

    def loss(k):
        sol = odejax.solve(
            robertson, ROBER_Z0, 0.0, 10.0, args=k, solver="rodas5", rtol=1e-6, atol=1e-10,
            max_steps=2000, adjoint=adjoint,
        )  # fmt: skip
        return sol.zs[-1, 0]

    with pytest.raises(Exception, match="backward") as info:
        jax.block_until_ready(jax.grad(loss)(ROBER_K))
    assert "throw=False" in str(info.value)
    assert "adjoint='checkpoint'" in str(info.value)


def test_interpolated_backsolve_second_derivative_is_a_clear_error():
    def loss(p):
        zs = odejax.odeint(stiff_linear, jnp.ones(2), jnp.array([0.0, 1.0]), p, solver="rodas5")
        return jnp.sum(zs**2)

    with pytest.raises(NotImplementedError, match="state='reintegrate'"):
        jax.jacrev(jax.grad(loss))(jnp.array([100.0, 2.0]))


# --------------------------------------------------------------------------------------------
# Transformations and dtypes
# --------------------------------------------------------------------------------------------


def test_vmap_and_jit():
    solver = "rodas5"

    @jax.jit
    def final(k1):
        k = ROBER_K.at[0].set(k1)
        sol = odejax.solve(
            robertson, ROBER_Z0, 0.0, 1e5, args=k, solver=solver, rtol=1e-8, atol=1e-14
        )
        return sol.zs[-1], sol.stats["num_steps"]

    k1s = jnp.array([0.04, 0.02, 0.08])
    zs, steps = jax.vmap(final)(k1s)
    for i, k1 in enumerate(k1s):
        z_one, _ = final(k1)
        np.testing.assert_allclose(np.asarray(zs[i]), np.asarray(z_one), rtol=1e-10)
    assert rel_err(zs[0], ROBER_1E5) < 1e-6
    assert len(set(np.asarray(steps).tolist())) > 1  # each problem took its own steps


@pytest.mark.parametrize("solver", STIFF)
def test_float32(solver):
    sol = odejax.solve(
        robertson,
        ROBER_Z0.astype(jnp.float32),
        0.0,
        1e5,
        args=ROBER_K.astype(jnp.float32),
        solver=solver,
        rtol=1e-4,
        atol=1e-8,
    )
    assert sol.zs.dtype == jnp.float32
    assert sol.result == Status.SUCCESS
    np.testing.assert_allclose(np.asarray(sol.zs[-1, [0, 2]]), ROBER_1E5[[0, 2]], rtol=1e-3)
    assert int(sol.stats["num_steps"]) < 300


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _host_decay(z):
    return -np.asarray(z)


def callback_field(z, t, args):
    """A vector field evaluated on the host: no derivative rule at all."""
    return jax.pure_callback(_host_decay, jax.ShapeDtypeStruct(z.shape, z.dtype), z)


@jax.custom_vjp
def reverse_only(z):
    return -z


reverse_only.defvjp(lambda z: (-z, None), lambda _, g: (-g,))


def custom_vjp_field(z, t, args):
    return reverse_only(z)


@pytest.mark.parametrize("solver", STIFF)
@pytest.mark.parametrize("field", [callback_field, custom_vjp_field], ids=["callback", "vjp"])
def test_non_differentiable_field_is_a_clear_error(solver, field):
    with pytest.raises(ValueError, match="Jacobian of f") as info:
        odejax.solve(field, jnp.ones(2), 0.0, 1.0, solver=solver)
    msg = str(info.value)
    assert solver in msg and "tsit5" in msg and "\\n" not in msg
    # The explicit solvers need no derivative of f.
    sol = odejax.solve(field, jnp.ones(2), 0.0, 1.0, solver="tsit5")
    np.testing.assert_allclose(np.asarray(sol.zs[-1]), np.exp(-1.0), rtol=1e-5)


def test_stiff_solver_with_pytree_state():
    """A pytree state goes through the stiff step (raveled to one vector)."""

    def hires_split(z, t, args):
        flat = hires(jnp.concatenate([z["a"], z["b"]]), t, args)
        return {"a": flat[:3], "b": flat[3:]}

    z0 = {"a": HIRES_Z0[:3], "b": HIRES_Z0[3:]}
    sol = odejax.solve(
        hires_split, z0, 0.0, HIRES_T1, solver="rodas5", rtol=1e-8, atol=1e-10, max_steps=2000
    )
    final = np.concatenate([np.asarray(sol.zs["a"][-1]), np.asarray(sol.zs["b"][-1])])
    assert rel_err(final, HIRES_REF) < 1e-5
