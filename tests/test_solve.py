"""Behaviour of the public API: ``odejax.solve`` / ``odejax.odeint``.

Shapes, pytrees, direction of time, dtypes, dense output, statistics, failure statuses, JAX
transformations (jit, vmap, jvp) and the compilation cache. Problems are small; the vector
fields are module-level functions so that solves with the same static configuration share one
compilation.
"""

from __future__ import annotations

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import odejax
from odejax import Status

A = np.array([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.5], [0.1, -0.4, -0.8]])
Z0 = np.array([1.0, 0.5, -0.3])
TS = np.linspace(0.0, 2.0, 11)


def linear(z, t, a):
    return a @ z


def exact(t, z0=Z0):
    return scipy.linalg.expm(A * t) @ z0


def van_der_pol(z, t, mu):
    x, y = z[0], z[1]
    return jnp.stack([y, mu * (1 - x**2) * y - x])


def forced(z, t, a):
    """Time-dependent: z' = A z + [sin 3t, 0, cos t]."""
    return a @ z + jnp.stack([jnp.sin(3 * t), 0.0 * t, jnp.cos(t)])


# Forward-mode differentiation through the stepping loop. Should `solve` grow an `adjoint=`
# option (a reverse-mode rule by default), ask for the forward-mode one explicitly.
FORWARD = {"adjoint": "forward"} if "adjoint" in inspect.signature(odejax.solve).parameters else {}


@eqx.filter_jit
def _evaluate(sol, t):
    return sol.evaluate(t)


def _solve_linear(t0=0.0, t1=2.0, z0=Z0, ts=TS, **kw):
    kw = {"rtol": 1e-9, "atol": 1e-12, **kw}
    return odejax.solve(
        linear,
        jnp.asarray(z0),
        t0,
        t1,
        args=jnp.asarray(A),
        ts=None if ts is None else jnp.asarray(ts),
        **kw,
    )


# --------------------------------------------------------------------------------------------
# Shapes and values
# --------------------------------------------------------------------------------------------


def test_odeint_shape_and_exact_initial_value():
    z0 = jnp.asarray(Z0) + 1e-3  # not exactly representable on any grid
    zs = odejax.odeint(linear, z0, jnp.asarray(TS), jnp.asarray(A), rtol=1e-9, atol=1e-12)
    assert zs.shape == (len(TS), 3)
    assert zs.dtype == jnp.float64
    assert np.array_equal(np.asarray(zs[0]), np.asarray(z0))  # bitwise
    ref = np.stack([exact(t, np.asarray(z0)) for t in TS])
    np.testing.assert_allclose(np.asarray(zs), ref, rtol=0, atol=1e-7)


def test_odeint_pytree_state():
    z0 = {"x": jnp.array([1.0, 0.5]), "y": jnp.array(-0.3)}

    def f(z, t, a):
        return {"x": jnp.stack([z["x"][1], -z["x"][0]]), "y": -a * z["y"]}

    ts = jnp.linspace(0.0, 1.0, 6)
    zs = odejax.odeint(f, z0, ts, 2.0, rtol=1e-10, atol=1e-12)
    assert zs["x"].shape == (6, 2) and zs["y"].shape == (6,)
    assert np.array_equal(np.asarray(zs["x"][0]), np.asarray(z0["x"]))
    assert np.array_equal(np.asarray(zs["y"][0]), np.asarray(z0["y"]))
    t = np.asarray(ts)
    np.testing.assert_allclose(np.asarray(zs["y"]), -0.3 * np.exp(-2 * t), atol=1e-9)
    rot = np.stack([np.cos(t) + 0.5 * np.sin(t), 0.5 * np.cos(t) - np.sin(t)], axis=1)
    np.testing.assert_allclose(np.asarray(zs["x"]), rot, atol=1e-9)


def test_odeint_under_jit_readme_example():
    jitted = jax.jit(odejax.odeint, static_argnums=0)
    ts = jnp.linspace(0.0, 2.0, 5)
    zs = jitted(van_der_pol, jnp.array([2.0, 0.0]), ts, 5.0)
    assert zs.shape == (5, 2)
    zs_eager = odejax.odeint(van_der_pol, jnp.array([2.0, 0.0]), ts, jnp.asarray(5.0))
    np.testing.assert_allclose(np.asarray(zs), np.asarray(zs_eager), rtol=1e-12, atol=1e-12)


def test_solve_matches_exact_and_returns_solution_fields():
    sol = _solve_linear()
    assert isinstance(sol, odejax.Solution)
    assert sol.result == Status.SUCCESS
    assert bool(sol.succeeded)
    assert sol.status.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(sol.ts), TS)
    assert float(sol.t_final) == 2.0
    assert sol.interpolation is None
    ref = np.stack([exact(t) for t in TS])
    np.testing.assert_allclose(np.asarray(sol.zs), ref, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="dense=True"):
        sol.evaluate(0.5)


def test_ts_none_saves_only_t1():
    sol = _solve_linear(ts=None)
    assert sol.zs.shape == (1, 3)
    np.testing.assert_array_equal(np.asarray(sol.ts), [2.0])
    np.testing.assert_allclose(np.asarray(sol.zs[0]), exact(2.0), rtol=0, atol=1e-8)


def test_ts_not_starting_at_t0():
    ts = np.array([0.3, 1.1, 2.0])
    sol = _solve_linear(ts=ts)
    np.testing.assert_allclose(np.asarray(sol.zs), np.stack([exact(t) for t in ts]), atol=1e-8)


def test_t0_equal_t1_returns_z0_with_zero_steps():
    z0 = jnp.asarray(Z0)
    for ts in (None, jnp.array([1.5])):
        sol = odejax.solve(linear, z0, 1.5, 1.5, args=jnp.asarray(A), ts=ts)
        assert sol.result == Status.SUCCESS
        assert sol.zs.shape == (1, 3)
        assert np.array_equal(np.asarray(sol.zs[0]), Z0)
        assert float(sol.t_final) == 1.5
        for key in ("num_steps", "num_accepted", "num_rejected", "nfe"):
            assert int(sol.stats[key]) == 0, key


# --------------------------------------------------------------------------------------------
# Pytrees
# --------------------------------------------------------------------------------------------

# A 6-dimensional linear system, as a flat vector and as two pytrees of mixed shapes.
_rng = np.random.default_rng(0)
B = -0.5 * np.eye(6) + 0.4 * _rng.standard_normal((6, 6))
W0 = _rng.standard_normal(6)


def _to_dict(w):
    return {"v": w[:2], "m": w[2:6].reshape(2, 2)}


def _from_dict(d):
    return jnp.concatenate([d["v"], d["m"].reshape(-1)])


def _to_tuple(w):
    return (w[0], (w[1:4], w[4:6].reshape(1, 2)))


def _from_tuple(tp):
    s, (u, m) = tp
    return jnp.concatenate([s[None], u, m.reshape(-1)])


def flat_field(w, t, b):
    return b @ w


def dict_field(d, t, b):
    return _to_dict(b @ _from_dict(d))


def tuple_field(tp, t, b):
    return _to_tuple(b @ _from_tuple(tp))


@pytest.mark.parametrize(
    "field, to_tree, from_tree",
    [(dict_field, _to_dict, _from_dict), (tuple_field, _to_tuple, _from_tuple)],
    ids=["dict", "tuple"],
)
def test_pytree_state_agrees_with_flat(field, to_tree, from_tree):
    ts = jnp.linspace(0.0, 3.0, 7)
    b = jnp.asarray(B)
    w0 = jnp.asarray(W0)
    flat = odejax.solve(flat_field, w0, 0.0, 3.0, args=b, ts=ts, rtol=1e-8, atol=1e-10)
    tree = odejax.solve(field, to_tree(w0), 0.0, 3.0, args=b, ts=ts, rtol=1e-8, atol=1e-10)
    # The leaves keep their shapes, with a leading save axis.
    for leaf, leaf0 in zip(jax.tree.leaves(tree.zs), jax.tree.leaves(to_tree(w0))):
        assert leaf.shape == (7, *leaf0.shape)
    got = jax.vmap(from_tree)(tree.zs)
    # The same steps are taken (the error norm is permutation invariant).
    assert int(tree.stats["num_steps"]) == int(flat.stats["num_steps"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(flat.zs), rtol=1e-10, atol=1e-12)
    ref = np.stack([scipy.linalg.expm(B * t) @ W0 for t in np.asarray(ts)])
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)


def test_pytree_tolerances_agree_with_flat():
    """Per-component atol given as a pytree like z0 equals the flat per-component atol."""
    b = jnp.asarray(B)
    atol_flat = jnp.asarray([1e-6, 1e-6, 1e-9, 1e-9, 1e-9, 1e-9])
    flat = odejax.solve(flat_field, jnp.asarray(W0), 0.0, 3.0, args=b, rtol=1e-5, atol=atol_flat)
    atol_tree = {"v": 1e-6, "m": jnp.full((2, 2), 1e-9)}
    tree = odejax.solve(
        dict_field, _to_dict(jnp.asarray(W0)), 0.0, 3.0, args=b, rtol=1e-5, atol=atol_tree
    )
    assert int(tree.stats["num_steps"]) == int(flat.stats["num_steps"])
    np.testing.assert_allclose(
        np.asarray(_from_dict(jax.tree.map(lambda x: x[0], tree.zs))),
        np.asarray(flat.zs[0]),
        rtol=1e-10,
    )


def test_mixed_dtype_pytree_keeps_leaf_dtypes():
    z0 = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones((2, 2), jnp.float64)}
    sol = odejax.solve(lambda z, t, a: jax.tree.map(jnp.negative, z), z0, 0.0, 1.0)
    assert sol.zs["a"].dtype == jnp.float32 and sol.zs["a"].shape == (1, 2)
    assert sol.zs["b"].dtype == jnp.float64 and sol.zs["b"].shape == (1, 2, 2)
    np.testing.assert_allclose(np.asarray(sol.zs["b"]), np.exp(-1.0), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Backwards in time
# --------------------------------------------------------------------------------------------


def test_backward_solve_matches_exact():
    ts = TS[::-1]  # 2.0 ... 0.0
    z_end = exact(2.0)
    sol = _solve_linear(t0=2.0, t1=0.0, z0=z_end, ts=ts)
    assert sol.result == Status.SUCCESS
    assert float(sol.t_final) == 0.0
    assert np.array_equal(np.asarray(sol.zs[0]), z_end)
    np.testing.assert_allclose(
        np.asarray(sol.zs), np.stack([exact(t) for t in ts]), rtol=0, atol=1e-8
    )
    # The same through odeint with decreasing ts.
    zs = odejax.odeint(
        linear, jnp.asarray(z_end), jnp.asarray(ts), jnp.asarray(A), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(zs), np.asarray(sol.zs), rtol=0, atol=1e-14)


def test_backward_solve_equals_forward_solve_of_reversed_problem():
    """z' = f(z, t) from t=3 down to -1 is w' = -f(w, -s) from s=-3 up to 1 (w(s) = z(-s))."""
    a = jnp.asarray(A)
    z3 = jnp.array([0.2, -1.0, 0.7])
    ts = jnp.linspace(3.0, -1.0, 9)

    def reversed_field(w, s, a):
        return -forced(w, -s, a)

    back = odejax.solve(forced, z3, 3.0, -1.0, args=a, ts=ts, rtol=1e-8, atol=1e-10, dense=True)
    fwd = odejax.solve(reversed_field, z3, -3.0, 1.0, args=a, ts=-ts, rtol=1e-8, atol=1e-10)
    assert back.result == Status.SUCCESS and fwd.result == Status.SUCCESS
    assert int(back.stats["num_steps"]) == int(fwd.stats["num_steps"])
    np.testing.assert_allclose(np.asarray(back.zs), np.asarray(fwd.zs), rtol=1e-10, atol=1e-12)
    # Against SciPy, and the dense output of the backward solve between the save times.
    import scipy.integrate

    ref = scipy.integrate.solve_ivp(
        lambda t, z: A @ z + np.array([np.sin(3 * t), 0.0, np.cos(t)]),
        (3.0, -1.0),
        np.asarray(z3),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
        dense_output=True,
    )
    np.testing.assert_allclose(np.asarray(back.zs), ref.sol(np.asarray(ts)).T, atol=1e-6)
    t_q = np.array([2.9, 1.234, 0.5, -0.77])
    np.testing.assert_allclose(
        np.asarray(_evaluate(back, jnp.asarray(t_q))), ref.sol(t_q).T, atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------


def test_float32_in_float32_out():
    z0 = jnp.asarray(Z0, jnp.float32)
    sol = odejax.solve(
        linear,
        z0,
        0.0,
        2.0,
        args=jnp.asarray(A, jnp.float32),
        ts=jnp.asarray(TS),
        rtol=1e-5,
        atol=1e-7,
    )
    assert jax.config.jax_enable_x64
    assert sol.zs.dtype == jnp.float32
    assert sol.ts.dtype == jnp.float32
    assert sol.t_final.dtype == jnp.float32
    assert np.array_equal(np.asarray(sol.zs[0]), np.asarray(z0))
    np.testing.assert_allclose(np.asarray(sol.zs), np.stack([exact(t) for t in TS]), atol=1e-4)
    zs = odejax.odeint(linear, z0, jnp.asarray(TS, jnp.float32), jnp.asarray(A, jnp.float32))
    assert zs.dtype == jnp.float32


def test_float64_stays_float64():
    sol = _solve_linear(
        ts=jnp.asarray(TS, jnp.float32)
    )  # float32 times are promoted to the state's
    assert sol.zs.dtype == jnp.float64
    assert sol.ts.dtype == jnp.float64
    assert sol.t_final.dtype == jnp.float64


# --------------------------------------------------------------------------------------------
# Dense output
# --------------------------------------------------------------------------------------------


def test_dense_evaluate_matches_exact():
    sol = _solve_linear(ts=None, rtol=1e-8, atol=1e-10, dense=True)
    assert isinstance(sol.interpolation, odejax.DenseInterpolation)
    # Eager evaluate at a scalar ...
    z = sol.evaluate(0.7)
    assert z.shape == (3,)
    np.testing.assert_allclose(np.asarray(z), exact(0.7), atol=1e-7)
    # ... at a vector and a matrix of times (jitted helper to keep the suite fast).
    t_vec = np.linspace(0.0, 2.0, 37)
    zv = _evaluate(sol, jnp.asarray(t_vec))
    assert zv.shape == (37, 3)
    np.testing.assert_allclose(np.asarray(zv), np.stack([exact(t) for t in t_vec]), atol=1e-7)
    t_mat = t_vec[1:].reshape(4, 9)
    zm = _evaluate(sol, jnp.asarray(t_mat))
    assert zm.shape == (4, 9, 3)
    np.testing.assert_allclose(
        np.asarray(zm).reshape(36, 3), np.asarray(zv)[1:], rtol=1e-14, atol=1e-15
    )
    np.testing.assert_array_equal(np.asarray(_evaluate(sol, 0.0)), Z0)
    np.testing.assert_allclose(np.asarray(_evaluate(sol, 2.0)), np.asarray(sol.zs[0]), rtol=1e-14)


def test_dense_evaluate_pytree():
    ts = jnp.linspace(0.0, 3.0, 4)
    sol = odejax.solve(
        dict_field, _to_dict(jnp.asarray(W0)), 0.0, 3.0, args=jnp.asarray(B), ts=ts, dense=True
    )
    out = _evaluate(sol, ts)
    assert out["v"].shape == (4, 2) and out["m"].shape == (4, 2, 2)
    np.testing.assert_allclose(
        np.asarray(out["m"]), np.asarray(sol.zs["m"]), rtol=1e-12, atol=1e-14
    )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver, evals_per_step", [("tsit5", 6), ("dopri8", 13), ("bosh3", 3)])
def test_stats_keys_and_consistency(solver, evals_per_step):
    """nfe counts the evaluations of f that actually run (counted by a host callback)."""
    calls = []

    def counted(z, t, mu):
        jax.debug.callback(lambda: calls.append(1))
        return van_der_pol(z, t, mu)

    sol = odejax.solve(
        counted,
        jnp.array([2.0, 0.0]),
        0.0,
        6.0,
        args=jnp.asarray(3.0),
        solver=solver,
        rtol=1e-5,
        atol=1e-7,
    )
    jax.effects_barrier()
    stats = sol.stats
    assert set(stats) == {"num_steps", "num_accepted", "num_rejected", "nfe"}
    for v in stats.values():
        assert v.dtype == jnp.int32 and v.shape == ()
    n, acc, rej, nfe = (int(stats[k]) for k in ("num_steps", "num_accepted", "num_rejected", "nfe"))
    assert n == acc + rej
    assert acc > 0 and rej > 0  # Van der Pol at mu=3 makes the controller reject a few steps
    assert nfe == 2 + evals_per_step * n  # f(t0, z0), the initial-step probe, then the steps
    assert len(calls) == nfe


def test_stats_fixed_step():
    sol = _solve_linear(solver="rk4", dt0=0.1, ts=None)
    stats = {k: int(v) for k, v in sol.stats.items()}
    assert stats == {"num_steps": 20, "num_accepted": 20, "num_rejected": 0, "nfe": 1 + 4 * 20}
    np.testing.assert_allclose(np.asarray(sol.zs[0]), exact(2.0), atol=1e-5)


def test_dtmax_bounds_the_step():
    sol = _solve_linear(ts=None, rtol=1e-3, atol=1e-6, dtmax=0.05)
    assert int(sol.stats["num_accepted"]) >= 40
    free = _solve_linear(ts=None, rtol=1e-3, atol=1e-6)
    assert int(free.stats["num_accepted"]) < 40


# --------------------------------------------------------------------------------------------
# Failures: statuses and errors
# --------------------------------------------------------------------------------------------


def test_max_steps_throw_false_returns_partial_solution():
    ts = np.linspace(0.0, 20.0, 21)
    sol = odejax.solve(
        van_der_pol,
        jnp.array([2.0, 0.0]),
        0.0,
        20.0,
        args=jnp.asarray(5.0),
        ts=jnp.asarray(ts),
        max_steps=40,
        throw=False,
    )
    assert sol.result == Status.MAX_STEPS_REACHED
    assert not bool(sol.succeeded)
    assert int(sol.stats["num_steps"]) == 40
    t_final = float(sol.t_final)
    assert 0.0 < t_final < 20.0
    zs = np.asarray(sol.zs)
    reached = ts <= t_final
    assert reached.sum() >= 2 and (~reached).sum() >= 1
    assert np.all(np.isfinite(zs[reached]))
    assert np.all(np.isnan(zs[~reached]))
    np.testing.assert_array_equal(zs[0], [2.0, 0.0])


def test_max_steps_throw_false_ts_none_is_nan():
    sol = _solve_linear(ts=None, max_steps=2, throw=False)
    assert sol.result == Status.MAX_STEPS_REACHED
    assert sol.zs.shape == (1, 3)
    assert np.all(np.isnan(np.asarray(sol.zs)))


def test_max_steps_throw_true_raises():
    with pytest.raises(Exception, match="max_steps") as info:
        sol = _solve_linear(max_steps=2)
        jax.block_until_ready(sol.zs)
    assert isinstance(info.value, (odejax.OdeSolveError, jax.errors.JaxRuntimeError))
    msg = str(info.value)
    assert "OdeSolveError" in msg or isinstance(info.value, odejax.OdeSolveError)
    assert "MAX_STEPS_REACHED" in msg
    assert "throw=False" in msg


def nan_after_half(z, t, a):
    return jnp.where(t > 0.5, jnp.nan, -a * z)


def test_nonfinite_vector_field_midway():
    ts = jnp.linspace(0.0, 1.0, 11)
    sol = odejax.solve(
        nan_after_half, jnp.ones(2), 0.0, 1.0, args=jnp.asarray(1.0), ts=ts, throw=False
    )
    assert sol.result == Status.NONFINITE
    t_final = float(sol.t_final)
    assert 0.45 < t_final <= 0.5
    zs = np.asarray(sol.zs)
    np.testing.assert_allclose(zs[:5], np.exp(-np.asarray(ts[:5]))[:, None] * np.ones(2), atol=1e-6)
    assert np.all(np.isnan(zs[6:]))
    with pytest.raises(Exception, match="NONFINITE"):
        jax.block_until_ready(
            odejax.solve(nan_after_half, jnp.ones(2), 0.0, 1.0, args=jnp.asarray(1.0), ts=ts).zs
        )


@pytest.mark.parametrize("dt0", [None, 0.1], ids=["default_dt0", "dt0"])
def test_nonfinite_vector_field_from_the_start(dt0):
    """f is NaN everywhere (NaN in args): the solve must stop with NONFINITE, quickly, whether or
    not dt0 is given (not run out of max_steps)."""
    sol = odejax.solve(
        linear,
        jnp.asarray(Z0),
        0.0,
        1.0,
        args=jnp.full((3, 3), jnp.nan),
        dt0=dt0,
        max_steps=1000,
        throw=False,
    )
    assert sol.result == Status.NONFINITE, sol.result
    assert int(sol.stats["num_accepted"]) == 0
    assert int(sol.stats["num_steps"]) < 1000
    assert float(sol.t_final) == 0.0
    assert np.all(np.isnan(np.asarray(sol.zs)))


def blow_up(z, t, a):
    return z**2  # z(t) = 1 / (1 - t) from z(0) = 1: singular at t = 1


def test_dtmin_reached_gives_dt_underflow():
    sol = odejax.solve(blow_up, jnp.ones(1), 0.0, 2.0, dtmin=1e-4, throw=False)
    assert sol.result == Status.DT_UNDERFLOW
    assert 0.9 < float(sol.t_final) < 1.0
    assert np.all(np.isnan(np.asarray(sol.zs)))
    with pytest.raises(Exception, match="dtmin") as info:
        jax.block_until_ready(odejax.solve(blow_up, jnp.ones(1), 0.0, 2.0, dtmin=1e-4).zs)
    assert "DT_UNDERFLOW" in str(info.value)


@pytest.mark.parametrize("t1", [1.0, -1.0])
def test_steps_stay_within_dtmin_and_dtmax(t1):
    """The controller's steps, the initial one included, stay within [dtmin, dtmax] (only the
    last may be shorter, landing on t1), forwards and backwards in time."""
    field = lambda z, t, a: jnp.stack([z[1], -z[0]])  # noqa: E731
    z0 = jnp.array([1.0, 0.0])
    for rtol, dtmin, dtmax in [(1e-10, 0.05, 0.2), (1e-2, 0.01, 0.02)]:
        sol = odejax.solve(
            field, z0, 0.0, t1, rtol=rtol, atol=rtol, dtmin=dtmin, dtmax=dtmax, dense=True
        )
        n = int(sol.stats["num_accepted"])
        h = np.abs(np.diff(np.asarray(sol.interpolation.t_nodes[: n + 1])))
        assert np.all(h[:-1] >= dtmin * (1 - 1e-12)) and np.all(h <= dtmax * (1 + 1e-12)), h
    # A step of dtmin that fails the error test cannot shrink: DT_UNDERFLOW at once.
    sol = odejax.solve(field, z0, 0.0, t1, rtol=1e-10, atol=1e-10, dtmin=0.5, throw=False)
    assert sol.result == Status.DT_UNDERFLOW
    assert float(sol.t_final) == 0.0 and int(sol.stats["num_rejected"]) == 1


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_error_norm_does_not_overflow(dtype):
    """The scaled error is measured in float32: in float16 its squares overflow above 256, and
    a 1e-6 tolerance underflows, which once ended a sound solve as NONFINITE at t0."""
    decay = lambda z, t, a: -z  # noqa: E731
    sol = odejax.solve(decay, jnp.ones(2, dtype), 0.0, 1.0, rtol=1e-3, atol=1e-6)
    assert sol.zs.dtype == dtype
    np.testing.assert_allclose(np.asarray(sol.zs[-1], np.float32), np.exp(-1.0), rtol=2e-2)
    # A tolerance below the dtype's resolution cannot be met: the step-size message, not nan.
    sol = odejax.solve(decay, jnp.ones(2, dtype), 0.0, 1.0, rtol=1e-6, atol=1e-9, throw=False)
    assert sol.result == Status.DT_UNDERFLOW


@pytest.mark.parametrize("t1", [1e2, 1e4])
def test_a_non_finite_trial_step_shrinks_near_t0_of_a_long_interval(t1):
    """A first step that overflows is shrunk until it works: the floor for shrinking follows
    the resolution of t (and eps² t1), not that of t1. It once ended this float32 solve at
    t = 0 as NONFINITE whenever t1 >= 1e3."""
    field = lambda z, t, a: -(z**3)  # noqa: E731  z(t) = 1 / sqrt(2t + 1e-4)
    sol = odejax.solve(field, jnp.array([100.0], jnp.float32), 0.0, t1, dt0=0.01)
    np.testing.assert_allclose(float(sol.zs[-1, 0]), 1 / np.sqrt(2 * t1 + 1e-4), rtol=1e-4)


def test_dtmin_above_dtmax():
    with pytest.raises(ValueError, match="dtmin must not exceed dtmax"):
        odejax.solve(blow_up, jnp.ones(1), 0.0, 0.5, dtmin=0.5, dtmax=0.1)
    solve = jax.jit(lambda a, b: odejax.solve(blow_up, jnp.ones(1), 0.0, 0.5, dtmin=a, dtmax=b).zs)
    with pytest.raises(Exception, match="dtmin must not exceed dtmax"):
        jax.block_until_ready(solve(0.5, 0.1))


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------


class LinearField(eqx.Module):
    matrix: jax.Array
    bias: jax.Array

    def __call__(self, z, t, args):
        return self.matrix @ z + self.bias


def test_equinox_module_field_under_jit():
    model = LinearField(jnp.asarray(A), jnp.zeros(3))

    @jax.jit
    def run(model, z0, t1):
        return odejax.solve(model, z0, 0.0, t1, rtol=1e-9, atol=1e-12).zs[0]

    np.testing.assert_allclose(np.asarray(run(model, jnp.asarray(Z0), 2.0)), exact(2.0), atol=1e-8)
    # New parameter values, same shapes: same compiled function, new answer.
    model2 = LinearField(jnp.asarray(2 * A), jnp.zeros(3))
    want = scipy.linalg.expm(2 * A * 1.0) @ Z0
    np.testing.assert_allclose(np.asarray(run(model2, jnp.asarray(Z0), 1.0)), want, atol=1e-8)
    assert run._cache_size() == 1
    # Also un-jitted, with the module as f directly, and a forward-mode derivative in a
    # parameter: d z(1) / d bias = A^{-1} (e^{A} - I).
    _, tangent = jax.jvp(
        lambda b: odejax.solve(
            LinearField(jnp.asarray(A), b),
            jnp.asarray(Z0),
            0.0,
            1.0,
            rtol=1e-10,
            atol=1e-12,
            **FORWARD,
        ).zs[0],
        (jnp.zeros(3),),
        (jnp.array([1.0, 0.0, 0.0]),),
    )
    want = np.linalg.solve(A, scipy.linalg.expm(A) - np.eye(3))[:, 0]
    np.testing.assert_allclose(np.asarray(tangent), want, atol=1e-7)


_VDP_TS = jnp.linspace(0.0, 10.0, 21)


def _vdp_solve(z0, mu, max_steps=4096, throw=True):
    sol = odejax.solve(
        van_der_pol,
        z0,
        0.0,
        10.0,
        args=mu,
        ts=_VDP_TS,
        rtol=1e-7,
        atol=1e-9,
        max_steps=max_steps,
        throw=throw,
    )
    return sol.zs, sol.stats["num_steps"], sol.status


def test_vmap_over_args_each_member_its_own_steps():
    z0 = jnp.array([2.0, 0.0])
    mus = jnp.array([0.5, 2.0, 5.0, 10.0])
    zs, steps, status = jax.vmap(_vdp_solve, in_axes=(None, 0))(z0, mus)
    assert zs.shape == (4, 21, 2)
    assert np.all(np.asarray(status) == Status.SUCCESS)
    steps = np.asarray(steps)
    assert len(set(steps.tolist())) == 4, steps  # all different
    assert steps.max() > 1.5 * steps.min()
    for i, mu in enumerate(mus):
        zi, ni, _ = _vdp_solve(z0, mu)
        assert int(ni) == steps[i]
        np.testing.assert_allclose(np.asarray(zs[i]), np.asarray(zi), rtol=1e-9, atol=1e-9)


def test_vmap_over_z0():
    z0s = jnp.array([[2.0, 0.0], [0.1, 0.0], [-3.0, 1.0]])
    mu = jnp.asarray(5.0)
    zs, steps, _ = jax.vmap(_vdp_solve, in_axes=(0, None))(z0s, mu)
    steps = np.asarray(steps)
    assert len(set(steps.tolist())) > 1, steps
    for i in range(3):
        zi, ni, _ = _vdp_solve(z0s[i], mu)
        assert int(ni) == steps[i]
        np.testing.assert_allclose(np.asarray(zs[i]), np.asarray(zi), rtol=1e-9, atol=1e-9)


def test_vmap_with_one_failing_member():
    mus = jnp.array([0.5, 10.0])
    steps_easy = int(_vdp_solve(jnp.array([2.0, 0.0]), jnp.asarray(0.5))[1])
    max_steps = steps_easy + 20  # enough for mu = 0.5, not for mu = 10
    zs, steps, status = jax.vmap(
        lambda mu: _vdp_solve(jnp.array([2.0, 0.0]), mu, max_steps, throw=False)
    )(mus)
    assert [Status(int(s)) for s in status] == [Status.SUCCESS, Status.MAX_STEPS_REACHED]
    assert int(steps[0]) == steps_easy and int(steps[1]) == max_steps
    assert np.all(np.isfinite(np.asarray(zs[0])))
    assert np.isnan(np.asarray(zs[1, -1])).all()
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(
            jax.vmap(lambda mu: _vdp_solve(jnp.array([2.0, 0.0]), mu, max_steps)[0])(mus)
        )


def _vdp_end(z0, mu):
    return odejax.solve(van_der_pol, z0, 0.0, 3.0, args=mu, rtol=1e-10, atol=1e-12, **FORWARD).zs[0]


def test_jvp_matches_finite_differences():
    z0 = jnp.array([2.0, 0.0])
    mu = jnp.asarray(2.0)
    dz, dmu = jnp.array([1.0, 0.5]), jnp.asarray(0.3)
    primal, tangent = jax.jvp(_vdp_end, (z0, mu), (dz, dmu))
    np.testing.assert_allclose(np.asarray(primal), np.asarray(_vdp_end(z0, mu)), rtol=1e-12)
    h = 1e-5
    fd = (_vdp_end(z0 + h * dz, mu + h * dmu) - _vdp_end(z0 - h * dz, mu - h * dmu)) / (2 * h)
    assert np.abs(np.asarray(tangent)).max() > 1.0  # a non-trivial sensitivity
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(fd), rtol=1e-5, atol=1e-6)


def test_jvp_linear_matches_matrix_exponential():
    v = jnp.array([0.3, -1.0, 2.0])
    _, tangent = jax.jvp(
        lambda z0: _solve_linear(z0=z0, ts=None, **FORWARD).zs[0], (jnp.asarray(Z0),), (v,)
    )
    np.testing.assert_allclose(
        np.asarray(tangent), scipy.linalg.expm(2 * A) @ np.asarray(v), atol=1e-8
    )


# --------------------------------------------------------------------------------------------
# Compilation cache
# --------------------------------------------------------------------------------------------


def _count_traces(call_values, field_factory):
    """Trace-count deltas of successive solves: the first compiles; later ones trace ``f`` only
    for the up-front shape check (same small number every time) when nothing recompiles."""
    count = [0]

    def field(z, t, mu):
        count[0] += 1
        return field_factory(z, t, mu)

    deltas = []
    for kwargs in call_values:
        before = count[0]
        sol = odejax.solve(field, **kwargs)
        jax.block_until_ready(sol.zs)
        deltas.append(count[0] - before)
    return deltas


def test_no_recompilation_for_new_values_of_the_same_shapes():
    calls = [
        dict(
            z0=jnp.array([2.0, 0.0]),
            t0=0.0,
            t1=5.0,
            ts=jnp.linspace(0.0, 5.0, 11),
            args=jnp.asarray(1.0),
            rtol=1e-6,
        ),
        dict(
            z0=jnp.array([2.5, 0.1]),
            t0=0.0,
            t1=6.0,
            ts=jnp.linspace(0.0, 6.0, 11),
            args=jnp.asarray(1.5),
            rtol=1e-7,
        ),
        dict(
            z0=jnp.array([1.0, -1.0]),
            t0=0.5,
            t1=7.0,
            ts=jnp.linspace(0.5, 7.0, 11),
            args=jnp.asarray(3.0),
            rtol=1e-5,
        ),
        # Python floats and numpy arrays for times and tolerances are the same to the cache.
        dict(
            z0=np.array([1.0, 1.0]),
            t0=0,
            t1=4.0,
            ts=np.linspace(0.0, 4.0, 11),
            args=jnp.asarray(2.0),
            rtol=jnp.asarray(1e-6),
        ),
    ]
    deltas = _count_traces(calls, van_der_pol)
    first, rest = deltas[0], deltas[1:]
    assert len(set(rest)) == 1, deltas
    assert rest[0] < first and rest[0] <= 2, deltas


def test_no_recompilation_for_new_python_scalar_args():
    """The README passes ``args=5.0``: a new value of a Python-float parameter must not
    recompile the solve (t0, t1, rtol, atol and dt0 given as Python floats do not)."""
    calls = [
        dict(z0=jnp.array([2.0, 0.0]), t0=0.0, t1=3.0, args=1.0),
        dict(z0=jnp.array([2.0, 0.0]), t0=0.0, t1=3.0, args=1.5),
        dict(z0=jnp.array([2.0, 0.0]), t0=0.0, t1=3.0, args=2.5),
    ]
    deltas = _count_traces(calls, van_der_pol)
    assert deltas[1] == deltas[2] and deltas[1] < deltas[0], deltas


def test_jitted_solve_compiles_once():
    traces = [0]

    @jax.jit
    def run(z0, t1, mu):
        traces[0] += 1
        return odejax.solve(van_der_pol, z0, 0.0, t1, args=mu, ts=jnp.linspace(0.0, 1.0, 5) * t1).zs

    for z0, t1, mu in [([2.0, 0.0], 3.0, 1.0), ([1.0, 0.5], 4.0, 2.0), ([0.0, 1.0], 2.5, 0.5)]:
        run(jnp.asarray(z0), t1, mu)
    assert traces[0] == 1
    assert run._cache_size() == 1


# --------------------------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------------------------


def test_progress_bar_runs(capsys):
    sol = _solve_linear(ts=None, progress=True)
    jax.effects_barrier()
    assert sol.result == Status.SUCCESS
    np.testing.assert_allclose(np.asarray(sol.zs[0]), exact(2.0), atol=1e-8)
    err = capsys.readouterr().err
    assert "odejax solve" in err


def test_dt_next_continues_a_solve():
    """``dt_next`` is the step size before the last step was shortened to land on ``t1``:
    continuing from it takes no more steps than a fresh start, to the same accuracy. The
    backsolve adjoint carries it across save intervals the same way."""
    kw = dict(args=5.0, solver="dopri5", rtol=1e-8, atol=1e-10)
    z0 = jnp.array([2.0, 0.0])
    first = odejax.solve(van_der_pol, z0, 0.0, 1.0, **kw)
    assert first.dt_next > 0
    cont = odejax.solve(van_der_pol, first.zs[-1], 1.0, 2.0, dt0=first.dt_next, **kw)
    fresh = odejax.solve(van_der_pol, first.zs[-1], 1.0, 2.0, **kw)
    whole = odejax.solve(van_der_pol, z0, 0.0, 2.0, **kw)
    assert cont.stats["nfe"] <= fresh.stats["nfe"]
    np.testing.assert_allclose(cont.zs[-1], whole.zs[-1], rtol=1e-6)
    back = odejax.solve(van_der_pol, z0, 0.0, -1.0, **kw)
    assert back.dt_next < 0


# --- edge cases found by review (each once wrong) -----------------------------------------------


@pytest.mark.parametrize("output", ["t_final", "stats", "evaluate"])
def test_throw_raises_whichever_output_is_used(output):
    """The failure check is tied to every output, not only ``zs``: under jit, a caller who
    reads only ``t_final``, ``stats`` or the dense output still gets the error."""

    def use(z0):
        sol = odejax.solve(linear, z0, 0.0, 50.0, args=100 * A, max_steps=5, dense=True)
        return {"t_final": sol.t_final, "stats": sol.stats["nfe"], "evaluate": sol.evaluate(1.0)}[
            output
        ]

    with pytest.raises(Exception, match="MAX_STEPS_REACHED"):
        jax.block_until_ready(jax.jit(use)(jnp.asarray(Z0)))


def test_dense_evaluate_without_a_step_is_the_initial_state():
    sol = odejax.solve(linear, Z0, 1.0, 1.0, args=A, dense=True)
    np.testing.assert_array_equal(sol.evaluate(1.0), Z0)
    bad = odejax.solve(linear, Z0, 0.0, 1.0, args=A, dense=True, max_steps=1, dt0=50.0, throw=False)
    assert int(bad.stats["num_accepted"]) == 0
    np.testing.assert_array_equal(bad.evaluate(0.0), Z0)


def test_step_below_the_resolution_of_t_is_dt_underflow():
    """Far from the origin, t's spacing (0.125 at 1e15) is coarser than any step the error asks
    for: the solve must stop with DT_UNDERFLOW at once, not retry one rounded step until
    ``max_steps`` runs out."""
    sol = odejax.solve(van_der_pol, jnp.array([2.0, 0.0]), 1e15, 1e15 + 20, args=50.0, throw=False)
    assert Status(int(sol.status)) == Status.DT_UNDERFLOW
    assert int(sol.stats["num_steps"]) < 100


@pytest.mark.parametrize("solver", ["tsit5", "dopri8", "kvaerno5", "rodas5"])
def test_atol_zero_with_a_zero_component(solver):
    """``atol=0`` is valid (only both tolerances zero is not); a component that starts at 0
    has no relative size yet, and must not make the initial step or the error nan."""
    sol = odejax.solve(
        lambda z, t, a: 1.0 - z, jnp.array([0.0, 1.0]), 0.0, 1.0, rtol=1e-6, atol=0.0, solver=solver
    )
    np.testing.assert_allclose(sol.zs[-1], [1 - np.exp(-1.0), 1.0], rtol=1e-4)


def test_empty_state_succeeds():
    sol = odejax.solve(lambda z, t, a: -z, jnp.zeros(0), 0.0, 1.0)
    assert Status(int(sol.status)) == Status.SUCCESS
    assert int(sol.stats["num_steps"]) < 20 and float(sol.t_final) == 1.0


@pytest.mark.parametrize("t0, t1, dt0", [(0.9, 0.0, 0.3), (0.3, 0.0, 0.1), (-0.9, 0.0, 0.3)])
def test_fixed_step_lands_on_t1_near_zero_without_a_sliver_step(t0, t1, dt0):
    sol = odejax.solve(linear, Z0, t0, t1, args=A, solver="rk4", dt0=dt0)
    assert int(sol.stats["num_steps"]) == round(abs(t1 - t0) / dt0)


def test_progress_under_vmap_is_one_bar_updated_every_few_hundred_steps(monkeypatch):
    """A vmapped solve shares one bar, fed by one host call per update (not per member)."""
    import odejax._progress as progress

    calls = {"open": 0, "update": 0}
    real_open, real_update = progress._open, progress._update

    def count(name, real):
        def wrapped(*args):
            calls[name] += 1
            return real(*args)

        return wrapped

    monkeypatch.setattr(progress, "_open", count("open", real_open))
    monkeypatch.setattr(progress, "_update", count("update", real_update))

    def solve(a, t1):
        sol = odejax.solve(
            linear_decay, jnp.ones(2), 0.0, t1, args=a, progress=True, rtol=1e-12, atol=1e-12
        )
        return sol.zs[-1], sol.stats["num_steps"]

    zs, steps = jax.vmap(solve)(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 2.0, 5.0]))
    jax.effects_barrier()
    assert calls["open"] == 1
    assert 1 <= calls["update"] <= int(steps.max()) // progress.PROGRESS_EVERY + 3
    np.testing.assert_allclose(zs[:, 0], np.exp(-np.array([1.0, 4.0, 15.0])), rtol=1e-8, atol=1e-11)
    assert not progress._BARS  # closed


def linear_decay(z, t, a):
    return -a * z


def test_far_from_time_zero_steps_are_not_merged_into_the_end():
    """Steps of a solve far from t = 0 (a Unix time, say) are only a few ulps of t long: the
    last one still lands on t1 without swallowing the steps before it."""
    f = lambda z, t, k: -k * (z - jnp.cos(t))  # noqa: E731
    t0 = 1.7e9
    sol = odejax.solve(
        f,
        jnp.cos(jnp.asarray(t0)),
        t0,
        t0 + 1.0,
        args=2e5,
        rtol=1e-3,
        atol=1e-6,
        max_steps=100_000,
        throw=False,
    )
    assert sol.result == Status.SUCCESS


@pytest.mark.parametrize("t0", [0.0, 1.0])
def test_nan_initial_state_fails_fast(t0):
    sol = odejax.solve(linear_decay, jnp.array([1.0, jnp.nan]), t0, t0 + 1.0, args=1.0, throw=False)
    assert sol.result == Status.NONFINITE
    assert int(sol.stats["num_steps"]) < 60
