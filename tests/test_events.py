"""Events: terminal stops, resets, direction filtering, several conditions, save times and dense
output around events, differentiable event times, bad input, vmap.

Closed forms: a ball dropped from height ``h`` under gravity ``g`` lands at ``T = sqrt(2h/g)``
with velocity ``v = -sqrt(2gh)``; with restitution ``e`` the ``k``-th bounce (``k ≥ 1``) lands
``2 e^k sqrt(2gh)/g`` after the previous one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import odejax
from odejax import Status

H, G, E = 2.0, 9.81, 0.8


def falling(z, t, args):
    """Height and velocity of a ball, ``args = (h, g)``."""
    return jnp.stack([z[1], -args[1] + 0.0 * z[0]])


def height(z, t, args):
    return z[0]


def drop(h, g, *, adjoint="backsolve", solver="tsit5", **kw):
    z0 = jnp.stack([h, 0.0 * h])
    kw = dict(rtol=1e-10, atol=1e-12) | kw
    return odejax.solve(
        falling,
        z0,
        0.0,
        10.0,
        args=(h, g),
        solver=solver,
        adjoint=adjoint,
        event=odejax.Event(height),
        **kw,
    )


def bounce_times(h, g, e, n):
    """Landing times of the first ``n`` impacts."""
    v = np.sqrt(2 * g * h)
    times = [np.sqrt(2 * h / g)]
    for k in range(1, n):
        times.append(times[-1] + 2 * e**k * v / g)
    return np.array(times)


# --------------------------------------------------------------------------------------------
# Terminal events
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["tsit5", "rodas5", "kvaerno5"])
def test_dropped_ball_hits_at_closed_form_time(solver):
    sol = drop(jnp.asarray(H), jnp.asarray(G), solver=solver)
    t_hit = np.sqrt(2 * H / G)
    assert sol.result == Status.EVENT
    assert abs(float(sol.event_time) - t_hit) < 1e-10
    assert float(sol.t_final) == float(sol.event_time)
    assert int(sol.event_index) == 0 and int(sol.num_events) == 1
    assert abs(float(sol.event_state[0])) < 1e-10
    assert abs(float(sol.event_state[1]) + np.sqrt(2 * G * H)) < 1e-9
    # Without save times the solution is the state at the event.
    np.testing.assert_allclose(np.asarray(sol.zs[-1]), np.asarray(sol.event_state))


def test_event_on_a_stiff_problem():
    """Robertson: y1 falls to 1/2 at t = 268.324726015461 (SciPy Radau, rtol=1e-13,
    atol=1e-22, exact Jacobian, events=y1 - 1/2), located on kvaerno5's cubic Hermite
    interpolant."""

    def robertson(z, t, args):
        y1, y2, y3 = z[0], z[1], z[2]
        return jnp.stack(
            [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]
        )

    sol = odejax.solve(
        robertson,
        jnp.array([1.0, 0.0, 0.0]),
        0.0,
        1e5,
        solver="kvaerno5",
        rtol=1e-10,
        atol=1e-16,
        event=odejax.Event(lambda z, t, a: z[0] - 0.5),
    )
    assert sol.result == Status.EVENT
    assert abs(float(sol.event_time) / 268.324726015461 - 1) < 1e-7
    assert abs(float(sol.event_state[0]) - 0.5) < 1e-9
    assert int(sol.stats["num_steps"]) < 1000


def test_no_event_in_interval():
    sol = odejax.solve(
        falling,
        jnp.array([H, 0.0]),
        0.0,
        0.1,
        args=(H, G),
        event=odejax.Event(height),
    )
    assert sol.result == Status.SUCCESS
    assert np.isnan(float(sol.event_time)) and int(sol.event_index) == -1
    assert int(sol.num_events) == 0
    np.testing.assert_allclose(float(sol.zs[-1, 0]), H - G * 0.1**2 / 2, rtol=1e-10)


def oscillator(z, t, args):
    """x = cos t, v = -sin t."""
    return jnp.stack([z[1], -z[0]])


Z_OSC = jnp.array([1.0, 0.0])


@pytest.mark.parametrize(
    "direction, expected", [(None, 0.5), (-1, 0.5), (1, 1.5)], ids=["any", "down", "up"]
)
def test_direction_filtering(direction, expected):
    """x = cos t falls through zero at π/2 and rises through it at 3π/2."""
    sol = odejax.solve(
        oscillator,
        Z_OSC,
        0.0,
        10.0,
        event=odejax.Event(lambda z, t, a: z[0], direction=direction),
        rtol=1e-10,
        atol=1e-12,
    )
    assert sol.result == Status.EVENT
    assert abs(float(sol.event_time) - expected * np.pi) < 1e-9


def test_several_conditions_report_the_first():
    """A dict of conditions: leaves in key order ("late", "v", "x"); the earliest wins."""

    def conditions(z, t, a):
        return {"x": z[0] - 0.5, "late": t - 1.2, "v": z[1] + 2.0}

    sol = odejax.solve(
        oscillator, Z_OSC, 0.0, 10.0, event=odejax.Event(conditions), rtol=1e-10, atol=1e-12
    )
    assert int(sol.event_index) == 2  # "x": cos t = 0.5 at π/3 < 1.2
    assert abs(float(sol.event_time) - np.pi / 3) < 1e-9

    def conditions2(z, t, a):
        return (t - 0.7, z[0] - 0.5)

    sol = odejax.solve(
        oscillator,
        Z_OSC,
        0.0,
        10.0,
        event=odejax.Event(conditions2, direction=(1, -1)),
        rtol=1e-10,
        atol=1e-12,
    )
    assert int(sol.event_index) == 0
    assert abs(float(sol.event_time) - 0.7) < 1e-12


def test_terminal_event_with_save_times():
    ts = jnp.linspace(0.0, 3.0, 7)
    sol = odejax.solve(
        oscillator,
        Z_OSC,
        0.0,
        3.0,
        ts=ts,
        event=odejax.Event(lambda z, t, a: z[0]),
        rtol=1e-10,
        atol=1e-12,
    )
    before = np.asarray(ts) < np.pi / 2
    zs = np.asarray(sol.zs)
    np.testing.assert_allclose(zs[before, 0], np.cos(np.asarray(ts)[before]), atol=1e-9)
    assert np.all(np.isnan(zs[~before]))
    assert abs(float(sol.event_time) - np.pi / 2) < 1e-9


def test_dense_output_with_terminal_event():
    sol = odejax.solve(
        oscillator,
        Z_OSC,
        0.0,
        3.0,
        dense=True,
        event=odejax.Event(lambda z, t, a: z[0]),
        rtol=1e-10,
        atol=1e-12,
    )
    tt = jnp.linspace(0.0, float(sol.event_time), 17)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(sol.evaluate)(tt)[:, 0]), np.cos(np.asarray(tt)), atol=1e-9
    )
    np.testing.assert_allclose(np.asarray(sol.evaluate(sol.event_time)), [0.0, -1.0], atol=1e-9)


# --------------------------------------------------------------------------------------------
# Resets
# --------------------------------------------------------------------------------------------


def bounce_event(e=E, max_events=100):
    return odejax.Event(
        height,
        direction=-1,
        reset=lambda z, t, a: jnp.stack([0.0 * z[0], -e * z[1]]),
        max_events=max_events,
    )


def test_bouncing_ball_event_times():
    """Between impacts k and k+1 the last event is impact k, at its closed-form time."""
    times = bounce_times(H, G, E, 6)
    solve = jax.jit(
        lambda t1: odejax.solve(
            falling,
            jnp.array([H, 0.0]),
            0.0,
            t1,
            args=(H, G),
            event=bounce_event(),
            rtol=1e-10,
            atol=1e-12,
        )
    )
    for k in range(5):
        sol = solve((times[k] + times[k + 1]) / 2)
        assert sol.result == Status.SUCCESS
        assert int(sol.num_events) == k + 1
        assert abs(float(sol.event_time) - times[k]) < 1e-9
        # After impact k the ball rises with speed e^(k+1) sqrt(2gh)... here at mid-flight.
        v_up = E ** (k + 1) * np.sqrt(2 * G * H)
        assert abs(float(sol.event_state[1]) + E**k * np.sqrt(2 * G * H)) < 1e-8
        mid = (times[k + 1] - times[k]) / 2
        np.testing.assert_allclose(float(sol.zs[-1, 1]), v_up - G * mid, atol=1e-8)


@pytest.mark.parametrize("adjoint", ["backsolve", "checkpoint"])
@pytest.mark.parametrize("solver, dt0", [("tsit5", None), ("rk4", 0.01)])
@pytest.mark.parametrize("kind", ["terminal", "reset"])
def test_nfe_counts_every_evaluation_with_events(kind, solver, dt0, adjoint):
    """nfe equals the evaluations of f that run (a host callback counts them): the second run
    that a terminal event makes under backsolve, and f and Hairer's probe after each reset."""
    calls = []

    def counted(z, t, args):
        jax.debug.callback(lambda: calls.append(1))
        return falling(z, t, args)

    event = odejax.Event(height) if kind == "terminal" else bounce_event()
    sol = odejax.solve(
        counted,
        jnp.array([H, 0.0]),
        0.0,
        2.0,
        args=(H, G),
        solver=solver,
        dt0=dt0,
        adjoint=adjoint,
        event=event,
    )
    jax.block_until_ready(sol.zs)
    jax.effects_barrier()
    assert int(sol.num_events) == (1 if kind == "terminal" else 2)
    assert int(sol.stats["nfe"]) == len(calls)


def test_fixed_step_grid_after_an_event_in_float32():
    """After an event stops a fixed step between grid points, the next step goes to the next
    grid point: in float32 the rounding of t / dt (tens of steps) once stalled it there."""
    sol = odejax.solve(
        falling,
        jnp.array([10.0, 0.0], jnp.float32),
        0.0,
        5.0,
        args=(10.0, G),
        solver="rk4",
        dt0=0.01,
        event=bounce_event(),
    )
    assert sol.result == Status.SUCCESS and int(sol.num_events) >= 1
    np.testing.assert_allclose(float(sol.event_time), bounce_times(10.0, G, E, 2)[1], rtol=1e-4)


def test_bouncing_ball_dense_output():
    times = bounce_times(H, G, E, 3)
    sol = odejax.solve(
        falling,
        jnp.array([H, 0.0]),
        0.0,
        float(times[2]) - 0.01,
        args=(H, G),
        event=bounce_event(),
        dense=True,
        rtol=1e-10,
        atol=1e-12,
    )
    v1 = np.sqrt(2 * G * H)
    tt = np.linspace(times[0], times[1], 9)[1:-1]
    exact = E * v1 * (tt - times[0]) - G * (tt - times[0]) ** 2 / 2
    got = np.asarray(jax.vmap(sol.evaluate)(jnp.asarray(tt))[:, 0])
    np.testing.assert_allclose(got, exact, atol=1e-8)
    assert np.all(np.asarray(jax.vmap(sol.evaluate)(jnp.linspace(0.0, 1.7, 40))[:, 0]) > -1e-8)


def test_max_events_exceeded():
    """The ball comes to rest after finitely many (infinitely fast) bounces."""
    kw = dict(args=(H, G), event=bounce_event(max_events=5), rtol=1e-10, atol=1e-12)
    sol = odejax.solve(falling, jnp.array([H, 0.0]), 0.0, 10.0, throw=False, **kw)
    assert sol.result == Status.MAX_EVENTS_REACHED
    times = bounce_times(H, G, E, 6)
    assert abs(float(sol.t_final) - times[5]) < 1e-8  # stopped at the sixth impact
    assert np.all(np.isnan(np.asarray(sol.zs)))
    with pytest.raises(Exception, match="MAX_EVENTS_REACHED") as info:
        jax.block_until_ready(odejax.solve(falling, jnp.array([H, 0.0]), 0.0, 10.0, **kw).zs)
    assert "max_events" in str(info.value)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _fd(fun, x, eps=1e-6):
    """Central differences of a vector function: ``(outputs, inputs)``. ``fun`` calls
    ``odejax.solve`` un-jitted, so the compiled solve is cached (and shared between tests)."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        cols.append(
            (np.asarray(fun(jnp.asarray(xp))) - np.asarray(fun(jnp.asarray(xm)))) / (2 * eps)
        )
    return np.stack(cols, axis=-1)


def _drop_outputs(adjoint, solver="tsit5"):
    def outputs(hg):
        sol = drop(hg[0], hg[1], adjoint=adjoint, solver=solver)
        # The event time, the velocity at the event and a smooth function of both.
        return jnp.stack([sol.event_time, sol.event_state[1], sol.zs[-1, 1] * sol.event_time])

    return outputs


def _analytic(h, g):
    t = np.sqrt(2 * h / g)
    v = -np.sqrt(2 * g * h)
    dt = np.array([1 / np.sqrt(2 * h * g), -np.sqrt(2 * h) / (2 * g**1.5)])
    dv = np.array([-np.sqrt(g / (2 * h)), -np.sqrt(h / (2 * g))])
    return np.stack([dt, dv, dv * t + v * dt])


@pytest.mark.parametrize(
    "adjoint, solver",
    [
        ("backsolve", "tsit5"),
        ("checkpoint", "tsit5"),
        ("forward", "tsit5"),
    ],
)
def test_event_gradients_match_finite_differences(adjoint, solver):
    """dt*/dθ = -(∂g/∂θ)/(dg/dt) (implicit function theorem) w.r.t. h (initial state and args)
    and g (args), against central differences and the closed form."""
    outputs = _drop_outputs(adjoint, solver)
    hg = jnp.array([H, G])
    jac = jax.jacfwd(outputs)(hg) if adjoint == "forward" else jax.jacrev(outputs)(hg)
    fd = _fd(_drop_outputs("backsolve", solver), hg)  # the primal solve is the same
    np.testing.assert_allclose(np.asarray(jac), fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jac), _analytic(H, G), rtol=1e-8, atol=1e-12)


def restitution(z, t, args):
    """The bounce: ``args = (h, g, e)``."""
    return jnp.stack([0.0 * z[0], -args[2] * z[1]])


def test_reset_gradients_with_checkpoint():
    """Through a bounce: the height at t1 and the last impact time w.r.t. h and e."""

    def outputs(he, adjoint="checkpoint"):
        h, e = he[0], he[1]
        sol = odejax.solve(
            falling,
            jnp.stack([h, 0.0 * h]),
            0.0,
            1.5,
            args=(h, G, e),
            event=odejax.Event(height, direction=-1, reset=restitution),
            adjoint=adjoint,
            rtol=1e-10,
            atol=1e-12,
        )
        return jnp.stack([sol.zs[-1, 0], sol.event_time])

    he = jnp.array([1.0, E])
    jac = jax.jacrev(outputs)(he)
    fd = _fd(lambda x: outputs(x, "backsolve"), he)
    np.testing.assert_allclose(np.asarray(jac), fd, rtol=1e-6, atol=1e-7)
    # Closed form of the second impact time t0 + 2 e v / g: ∂/∂e = 2 v / g.
    assert abs(float(jac[1, 1]) - 2 * np.sqrt(2 * G * 1.0) / G) < 1e-7
    # backsolve supports terminal events only: a documented, clear error.
    # (Raised while tracing the backward pass: eval_shape sees it without compiling.)
    with pytest.raises(TypeError, match="adjoint='checkpoint'"):
        jax.eval_shape(jax.grad(lambda x: outputs(x, "backsolve")[0]), he)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _solve_with(event):
    return odejax.solve(falling, jnp.array([H, 0.0]), 0.0, 1.0, args=(H, G), event=event)


def test_event_fn_returning_non_scalar():
    with pytest.raises(ValueError, match="real scalar") as info:
        _solve_with(odejax.Event(lambda z, t, a: z))
    assert "float64[2]" in str(info.value)


def test_reset_returning_another_structure():
    with pytest.raises(ValueError, match="structure, shapes") as info:
        _solve_with(odejax.Event(height, reset=lambda z, t, a: (z, z)))
    assert "reset returned" in str(info.value)
    with pytest.raises(ValueError, match="structure, shapes"):
        _solve_with(odejax.Event(height, reset=lambda z, t, a: z[:1]))
    with pytest.raises(ValueError, match="structure, shapes"):
        _solve_with(odejax.Event(height, reset=lambda z, t, a: z.astype(jnp.float32)))


def test_bad_event_arguments():
    with pytest.raises(ValueError, match="direction"):
        odejax.Event(height, direction=2)
    with pytest.raises(ValueError, match="max_events"):
        odejax.Event(height, max_events=0)
    with pytest.raises(TypeError, match="callable"):
        odejax.Event("height")
    with pytest.raises(TypeError, match=r"odejax\.Event"):
        odejax.solve(falling, jnp.array([H, 0.0]), 0.0, 1.0, args=(H, G), event=height)
    with pytest.raises(ValueError, match="direction has 1 entries"):
        _solve_with(odejax.Event(lambda z, t, a: (z[0], z[1]), direction=(1,)))


# --------------------------------------------------------------------------------------------
# vmap
# --------------------------------------------------------------------------------------------


def test_events_under_vmap():
    """Each batch member stops at its own event; one that never hits runs to t1."""

    def one(h, g):
        sol = odejax.solve(
            falling,
            jnp.stack([h, 0.0]),
            0.0,
            1.0,
            args=(h, g),
            event=odejax.Event(height),
            rtol=1e-10,
            atol=1e-12,
        )
        return sol.status, sol.event_time, sol.zs[-1]

    hs = jnp.array([1.0, 2.0, 0.5, 100.0])
    gs = jnp.array([9.81, 9.81, 1.62, 9.81])
    status, t_ev, z_end = jax.vmap(one)(hs, gs)
    hit = np.asarray(hs) < 40
    assert [Status(int(s)) for s in status] == [Status.EVENT] * 3 + [Status.SUCCESS]
    np.testing.assert_allclose(
        np.asarray(t_ev)[hit], np.sqrt(2 * np.asarray(hs / gs)[hit]), atol=1e-10
    )
    assert np.isnan(float(t_ev[3]))
    np.testing.assert_allclose(float(z_end[3, 0]), 100.0 - 9.81 / 2, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(z_end[:3, 0]), 0.0, atol=1e-10)
