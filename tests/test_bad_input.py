"""Bad input: each raises the documented exception, with a message naming the argument.

Shape/type problems raise Python exceptions before anything is compiled. Problems with values
(inside ``jit``) are checked with ``equinox.error_if`` and raise when the solve runs; those are
matched on their message text.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odejax


def decay(z, t, args):
    return -z


Z0 = jnp.array([1.0, 2.0])


def run(*args, **kwargs):
    """Solve and wait for the result, so run-time errors surface inside the ``raises`` block."""
    sol = odejax.solve(*args, **kwargs)
    jax.block_until_ready(sol.zs)
    return sol


# --------------------------------------------------------------------------------------------
# Save times
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        jnp.array(1.0),  # 0-D
        jnp.zeros((2, 3)),  # 2-D
        jnp.array([0.0]),  # a single time: no interval
        jnp.zeros((0,)),  # empty
    ],
    ids=["0d", "2d", "one_point", "empty"],
)
def test_odeint_ts_shape(ts):
    with pytest.raises(ValueError, match="ts"):
        odejax.odeint(decay, Z0, ts)


def test_odeint_ts_not_an_array():
    with pytest.raises(TypeError, match="ts"):
        odejax.odeint(decay, Z0, object())


@pytest.mark.parametrize("ts", [jnp.zeros((2, 2)), jnp.zeros((0,))], ids=["2d", "empty"])
def test_solve_ts_shape(ts):
    with pytest.raises(ValueError, match="ts"):
        odejax.solve(decay, Z0, 0.0, 1.0, ts=ts)


@pytest.mark.parametrize(
    "ts, t0, t1",
    [
        ([0.0, 0.5, 0.4, 1.0], 0.0, 1.0),  # not increasing
        ([0.0, 0.5, 0.5, 1.0], 0.0, 1.0),  # repeated time
        ([1.0, 0.5, 0.6, 0.0], 1.0, 0.0),  # backward solve, not decreasing
        ([0.0, 0.5, 0.7, 1.0][::-1], 0.0, 1.0),  # decreasing ts for a forward solve
        ([0.0, np.nan, 0.7, 1.0], 0.0, 1.0),  # nan
    ],
    ids=["unsorted", "repeated", "backward_unsorted", "wrong_direction", "nan"],
)
def test_ts_not_strictly_monotone(ts, t0, t1):
    with pytest.raises(Exception, match="strictly monotone"):
        run(decay, Z0, t0, t1, ts=jnp.asarray(ts))


@pytest.mark.parametrize("throw", [True, False])
@pytest.mark.parametrize("adjoint", ["backsolve", "checkpoint", "forward"])
def test_bad_ts_with_each_adjoint(adjoint, throw):
    """With ``throw=True`` the save times are checked in the solve's failure check, with
    ``throw=False`` on their own: both raise, whatever the adjoint, also under ``jit``."""
    solve = jax.jit(
        lambda ts: odejax.solve(decay, Z0, 0.0, 1.0, ts=ts, adjoint=adjoint, throw=throw).zs
    )
    with pytest.raises(Exception, match="strictly monotone"):
        jax.block_until_ready(solve(jnp.array([0.0, 0.5, 0.4, 1.0])))
    with pytest.raises(Exception, match=r"ts must lie within \[t0, t1\]"):
        jax.block_until_ready(solve(jnp.array([0.0, 0.5, 0.6, 1.5])))
    assert np.all(np.isfinite(solve(jnp.array([0.0, 0.5, 0.6, 1.0]))))


def test_odeint_ts_not_strictly_monotone():
    with pytest.raises(Exception, match="strictly monotone"):
        jax.block_until_ready(odejax.odeint(decay, Z0, jnp.array([0.0, 0.5, 0.4, 1.0])))


@pytest.mark.parametrize("ts", [[0.0, 0.5, 1.5], [-0.5, 0.5, 1.0]], ids=["after_t1", "before_t0"])
def test_ts_outside_interval(ts):
    with pytest.raises(Exception, match=r"ts must lie within \[t0, t1\]"):
        run(decay, Z0, 0.0, 1.0, ts=jnp.asarray(ts))


def test_odeint_rejects_solve_only_keywords():
    with pytest.raises(TypeError, match="dense"):
        odejax.odeint(decay, Z0, jnp.linspace(0.0, 1.0, 3), dense=True)


# --------------------------------------------------------------------------------------------
# The vector field
# --------------------------------------------------------------------------------------------


def test_f_returns_other_structure():
    z0 = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="structure") as info:
        odejax.solve(lambda z, t, a: (z["a"], z["b"]), z0, 0.0, 1.0)
    msg = str(info.value)
    assert "f returned" in msg and "z0 is" in msg
    assert "(*, *)" in msg and "{'a': *, 'b': *}" in msg  # both structures are shown


def test_f_returns_other_shape():
    with pytest.raises(ValueError, match="shapes") as info:
        odejax.solve(lambda z, t, a: jnp.concatenate([z, z]), Z0, 0.0, 1.0)
    msg = str(info.value)
    assert "f returned" in msg and "z0 is" in msg
    assert "[4]" in msg and "[2]" in msg  # both shapes


def test_f_returns_other_dtype():
    z0 = jnp.ones(2, jnp.float32)
    with pytest.raises(ValueError, match="dtypes") as info:
        odejax.solve(lambda z, t, a: z.astype(jnp.float64), z0, 0.0, 1.0)
    msg = str(info.value)
    assert "float64" in msg and "float32" in msg  # both dtypes


def test_f_returns_scalar_for_vector_state():
    with pytest.raises(ValueError, match="f returned"):
        odejax.solve(lambda z, t, a: jnp.sum(z), Z0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Solver and step options
# --------------------------------------------------------------------------------------------


def test_unknown_solver_name():
    with pytest.raises(ValueError, match="solver") as info:
        odejax.solve(decay, Z0, 0.0, 1.0, solver="rk45")
    msg = str(info.value)
    assert "rk45" in msg
    for name in ("tsit5", "dopri5", "dopri8", "bosh3", "euler", "midpoint", "heun", "rk4"):
        assert name in msg, name
    with pytest.raises(ValueError, match="valid names"):
        odejax.get_solver("nope")


def test_solver_of_wrong_type():
    with pytest.raises(TypeError, match="solver"):
        odejax.solve(decay, Z0, 0.0, 1.0, solver=5)


@pytest.mark.parametrize("name", ["euler", "midpoint", "heun", "rk4"])
def test_fixed_step_solver_needs_dt0(name):
    with pytest.raises(ValueError, match="dt0") as info:
        odejax.solve(decay, Z0, 0.0, 1.0, solver=name)
    assert name in str(info.value)


def test_dt0_zero():
    with pytest.raises(ValueError, match="dt0"):
        odejax.solve(decay, Z0, 0.0, 1.0, solver="rk4", dt0=0.0)


@pytest.mark.parametrize("max_steps", [0, -5])
def test_max_steps_below_one(max_steps):
    with pytest.raises(ValueError, match="max_steps"):
        odejax.solve(decay, Z0, 0.0, 1.0, max_steps=max_steps)


@pytest.mark.parametrize("max_steps", [10.0, True, "100"])
def test_max_steps_not_an_int(max_steps):
    with pytest.raises(TypeError, match="max_steps"):
        odejax.solve(decay, Z0, 0.0, 1.0, max_steps=max_steps)


def test_controller_of_wrong_type():
    with pytest.raises(TypeError, match="controller"):
        odejax.solve(decay, Z0, 0.0, 1.0, controller={"pcoeff": 0.1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(icoeff=0.0), "icoeff"),
        (dict(pcoeff=-0.1), "pcoeff"),
        (dict(safety=1.5), "safety"),
        (dict(factormin=0.0), "factormin"),
        (dict(factormax=0.9), "factormax"),
    ],
)
def test_bad_controller_coefficients(kwargs, match):
    with pytest.raises(ValueError, match=match):
        odejax.PIController(**kwargs)


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_tolerance(name):
    with pytest.raises(ValueError, match=name) as info:
        odejax.solve(decay, Z0, 0.0, 1.0, **{name: -1e-6})
    assert "negative" in str(info.value)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_tolerance_in_a_pytree(name):
    with pytest.raises(ValueError, match=name):
        odejax.solve(decay, {"x": Z0}, 0.0, 1.0, **{name: {"x": -1e-6}})


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_array_tolerance_at_run_time(name):
    with pytest.raises(Exception, match=f"{name} must be non-negative"):
        run(decay, Z0, 0.0, 1.0, **{name: jnp.asarray(-1e-6)})


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_traced_tolerance(name):
    """Tolerances known only at run time (traced under ``jit``) are checked at run time."""
    solve = jax.jit(lambda tol: odejax.solve(decay, Z0, 0.0, 1.0, **{name: tol}).zs)
    with pytest.raises(Exception, match=f"{name} must be non-negative"):
        jax.block_until_ready(solve(jnp.asarray(-1e-6)))
    assert np.all(np.isfinite(solve(jnp.asarray(1e-6))))


def test_negative_backward_tolerance():
    with pytest.raises(ValueError, match=r"BacksolveAdjoint\(rtol=...\)=-1e-06 is negative"):
        odejax.BacksolveAdjoint(rtol=-1e-6)
    with pytest.raises(ValueError, match=r"BacksolveAdjoint\(atol=...\)=-1 is negative"):
        odejax.BacksolveAdjoint(atol=-1)


def test_both_tolerances_zero():
    with pytest.raises(Exception, match="both zero"):
        run(decay, Z0, 0.0, 1.0, rtol=0.0, atol=0.0)


def test_both_tolerances_zero_for_one_component():
    with pytest.raises(Exception, match="both zero"):
        run(decay, Z0, 0.0, 1.0, rtol=jnp.array([1e-6, 0.0]), atol=0.0)


def test_tolerance_pytree_not_matching_z0():
    with pytest.raises(ValueError, match="tolerance"):
        odejax.solve(decay, Z0, 0.0, 1.0, atol=jnp.ones(3))


def test_empty_tolerance():
    with pytest.raises(ValueError, match="Tolerances"):
        odejax.solve(decay, Z0, 0.0, 1.0, rtol=())


# --------------------------------------------------------------------------------------------
# The state and times
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "z0",
    [
        jnp.array([1, 2]),
        np.array([1, 2]),
        1,
        {"a": jnp.ones(2), "b": jnp.array(3)},
        jnp.array([True, False]),
    ],
    ids=["jax_int", "numpy_int", "python_int", "pytree_with_int_leaf", "bool"],
)
def test_integer_state(z0):
    with pytest.raises(TypeError, match="z0") as info:
        odejax.solve(lambda z, t, a: z, z0, 0.0, 1.0)
    assert "float" in str(info.value)


def test_empty_state():
    with pytest.raises(ValueError, match="z0"):
        odejax.solve(lambda z, t, a: z, {}, 0.0, 1.0)


def test_odeint_integer_state():
    with pytest.raises(TypeError, match="float"):
        odejax.odeint(decay, jnp.array([1, 2]), jnp.linspace(0.0, 1.0, 3))


@pytest.mark.parametrize("which", ["t0", "t1"])
def test_non_scalar_time(which):
    times = {"t0": 0.0, "t1": 1.0, which: jnp.array([0.0, 1.0])}
    with pytest.raises(ValueError, match="t0 and t1 must be scalars"):
        odejax.solve(decay, Z0, times["t0"], times["t1"])


@pytest.mark.parametrize("which", ["t0", "t1"])
def test_non_numeric_time(which):
    times = {"t0": 0.0, "t1": 1.0, which: "zero"}
    with pytest.raises(TypeError, match=which):
        odejax.solve(decay, Z0, times["t0"], times["t1"])


def test_array_dt0_zero_raises_at_run_time():
    with pytest.raises(Exception, match="dt0 must be non-zero"):
        run(decay, Z0, 0.0, 1.0, dt0=jnp.array(0.0))


def test_tolerance_pytree_of_another_structure_raises():
    z0 = {"x": jnp.ones(2), "y": jnp.ones(3)}
    field = lambda z, t, a: jax.tree.map(lambda v: -v, z)  # noqa: E731
    with pytest.raises(ValueError, match="per-component tolerance must be a pytree matching z0"):
        run(field, z0, 0.0, 1.0, rtol={"x": 1e-3})
    run(field, z0, 0.0, 1.0, rtol={"x": 1e-3, "y": 1e-4})  # a matching one is fine


def test_complex_state_raises_type_error():
    with pytest.raises(TypeError, match="complex"):
        run(decay, jnp.array([1.0 + 1.0j]), 0.0, 1.0)


def test_non_monotone_ts_message_under_vmap():
    """Under vmap the batch's error message is the largest index over its members: a member
    with an unordered ``ts`` must not be reported as 'outside [t0, t1]'."""
    tss = jnp.array([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    with pytest.raises(Exception, match="ts must be strictly monotone"):
        jax.block_until_ready(jax.vmap(lambda ts: run(decay, Z0, 0.0, 3.0, ts=ts).zs)(tss))
    tss = jnp.array([[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]])
    with pytest.raises(Exception, match=r"ts must lie within \[t0, t1\]"):
        jax.block_until_ready(jax.vmap(lambda ts: run(decay, Z0, 0.0, 3.0, ts=ts).zs)(tss))


# --------------------------------------------------------------------------------------------
# Step-size options, max_steps and times that are not finite
# --------------------------------------------------------------------------------------------


def test_max_steps_beyond_the_int32_counter():
    with pytest.raises(ValueError, match="max_steps must be at most 2\\*\\*31 - 1"):
        odejax.solve(decay, Z0, 0.0, 1.0, max_steps=2**31)


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("dtmax", -0.1, "dtmax must be positive"),
        ("dtmax", 0.0, "dtmax must be positive"),
        ("dtmax", float("nan"), "dtmax must be positive"),
        ("dtmin", -1e-3, "dtmin must be non-negative and finite"),
        ("dtmin", float("inf"), "dtmin must be non-negative and finite"),
        ("dt0", float("inf"), "dt0 must be non-zero and finite"),
        ("dt0", 0.0, "dt0 must be non-zero and finite"),
    ],
)
def test_bad_step_size_option(name, value, rule):
    """Known at trace time: a ValueError at once. Traced: an error when the solve runs."""
    with pytest.raises(ValueError, match=rule):
        odejax.solve(decay, Z0, 0.0, 1.0, **{name: value})
    solve = jax.jit(lambda x: odejax.solve(decay, Z0, 0.0, 1.0, **{name: x}).zs)
    with pytest.raises(Exception, match=rule):
        jax.block_until_ready(solve(jnp.asarray(value)))


@pytest.mark.parametrize("name", ["dt0", "dtmin", "dtmax"])
def test_step_size_option_must_be_a_scalar(name):
    with pytest.raises(ValueError, match=f"{name} must be a scalar"):
        odejax.solve(decay, Z0, 0.0, 1.0, **{name: jnp.array([0.1, 0.2])})


def test_dtmax_infinite_is_no_bound():
    sol = run(decay, Z0, 0.0, 1.0, dtmax=float("inf"))
    np.testing.assert_allclose(sol.zs[-1], Z0 * np.exp(-1.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_nan_or_text_tolerance(name):
    with pytest.raises(ValueError, match=f"{name}=nan is negative or nan"):
        odejax.solve(decay, Z0, 0.0, 1.0, **{name: float("nan")})
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        odejax.solve(decay, Z0, 0.0, 1.0, **{name: "1e-3"})
    solve = jax.jit(lambda tol: odejax.solve(decay, Z0, 0.0, 1.0, **{name: tol}).zs)
    with pytest.raises(Exception, match=f"{name} must be non-negative \\(and not nan\\)"):
        jax.block_until_ready(solve(jnp.asarray(np.nan)))


@pytest.mark.parametrize("t0, t1", [(np.nan, 1.0), (0.0, np.nan), (0.0, np.inf)])
def test_times_not_finite(t0, t1):
    """A number: a ValueError naming it. Traced: status NONFINITE with no step taken (the
    solve's failure check raises with ``throw=True``)."""
    name = "t0" if not np.isfinite(t0) else "t1"
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        odejax.solve(decay, Z0, t0, t1)
    for kw in ({}, {"adjoint": "checkpoint"}):
        solve = jax.jit(lambda a, b, kw=kw: odejax.solve(decay, Z0, a, b, throw=False, **kw))
        sol = solve(t0, t1)
        assert sol.result == odejax.Status.NONFINITE
        assert int(sol.stats["num_steps"]) == 0
    with pytest.raises(Exception, match="t0`/`t1` is not finite"):
        jax.block_until_ready(jax.jit(lambda a, b: odejax.solve(decay, Z0, a, b).zs)(t0, t1))
