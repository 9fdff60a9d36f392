"""The checkpoint adjoint's own reverse-mode rule (``odejax._checkpoint``).

Its gradients are checked against JAX's autodiff through the same steps
(``CheckpointAdjoint(higher_order=True)``), which is the same discretisation, so they agree to
rounding; and against finite differences. Then: every ``checkpoints`` setting, pytrees,
backwards time, dense output, vmap, float32, second derivatives and the errors.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from test_adjoint import forced, vdp  # the same fields as the other adjoint tests

import odejax
from odejax._checkpoint import READ_CHUNK, WIDTH, spans

AD = odejax.CheckpointAdjoint(higher_order=True)
TS = jnp.linspace(0.0, 3.0, 7)
Z0 = jnp.array([2.0, 0.0])


def test_spans():
    assert spans(1) == (1,)
    assert spans(WIDTH) == (1,)  # one level: every carry stored, nothing recomputed
    assert spans(WIDTH + 1) == (5, 1)
    assert spans(4096) == (256, 16, 1)
    assert spans(1000, checkpoints=10) == (100, 10, 1)
    assert spans(1000, checkpoints=5000) == (1,)
    for n in (2, 33, 1000, 4199, 100_101):
        plan = spans(n)
        assert plan[-1] == 1
        widths = [-(-a // b) for a, b in zip((n, *plan), plan)]
        assert max(widths) <= WIDTH and np.prod(widths) >= n


def _loss(z0, mu, ts, adjoint, **kw):
    zs = odejax.odeint(vdp, z0, ts, mu, adjoint=adjoint, rtol=1e-8, atol=1e-8, **kw)
    return jnp.sum(zs**2)


@pytest.mark.parametrize(
    "kw",
    [{}, {"checkpoints": 1}, {"checkpoints": 3}, {"checkpoints": 10**6}],
    ids=["default", "k=1", "k=3", "every-step"],
)
def test_same_gradient_as_autodiff_through_the_steps(kw):
    grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)), static_argnums=3)
    ref = grad(Z0, 1.5, TS, AD)
    got = grad(Z0, 1.5, TS, odejax.CheckpointAdjoint(**kw))
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_one_level_when_max_steps_is_small():
    """``max_steps`` under ``WIDTH``: every carry stored by the forward pass."""

    def loss(mu, adjoint):
        zs = odejax.odeint(vdp, Z0, TS, mu, adjoint=adjoint, rtol=1e-4, atol=1e-4, max_steps=WIDTH)
        return jnp.sum(zs**2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(grad(1.5, "checkpoint"), grad(1.5, AD), rtol=1e-9)


@pytest.mark.parametrize("tol", [1e-3, 1e-5], ids=["11-steps", "21-steps"])
def test_short_solves_reversed_from_the_ring(tol):
    """A solve of at most 16 steps (the ring's length with the default ``max_steps``) is
    reversed from the carries the forward pass kept; 21 steps need a recomputation."""

    def loss(mu, adjoint):
        zs = odejax.odeint(vdp, Z0, TS, mu, adjoint=adjoint, rtol=tol, atol=tol)
        return jnp.sum(zs**2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(grad(1.5, "checkpoint"), grad(1.5, AD), rtol=1e-9)


def test_many_saves_per_step():
    """Two hundred save times over a few steps: each step's saves are reversed in chunks of
    ``READ_CHUNK``, several per step, the last one partial; the gradients, ``ts``'s included,
    are those of autodiff through the steps. Backwards in time too."""

    def loss(z0, mu, times, adjoint):
        zs = odejax.odeint(vdp, z0, times, mu, adjoint=adjoint, rtol=1e-3, atol=1e-3)
        return jnp.sum(zs**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)  # one compilation each
    ts = jnp.linspace(0.0, 2.0, 200)
    for times in (ts, ts[::-1]):
        ref = grad(Z0, 1.5, times, AD)
        for a, b in zip(grad(Z0, 1.5, times, "checkpoint"), ref):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    steps = odejax.solve(vdp, Z0, 0.0, 2.0, args=1.5, rtol=1e-3, atol=1e-3).stats["num_steps"]
    assert 200 / int(steps) > 2 * READ_CHUNK  # several chunks per step


def test_matches_finite_differences():
    def loss(z0, mu):
        return _loss(z0, mu, TS, "checkpoint")

    check_grads(loss, (Z0, 1.5), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_final_state_only_times_and_backwards():
    """No save times (the solve's end only), gradients for t0 and t1, integrating backwards."""

    def loss(z0, args, t0, t1, adjoint):
        sol = odejax.solve(forced, z0, t0, t1, args=args, adjoint=adjoint, rtol=1e-9, atol=1e-9)
        return jnp.sum(sol.zs[-1] ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
    args = (jnp.array(0.7), jnp.array(2.0))
    for t0, t1 in [(0.0, 2.0), (2.0, -1.0)]:
        got = grad(jnp.ones(3), args, t0, t1, "checkpoint")
        ref = grad(jnp.ones(3), args, t0, t1, AD)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("length", [0.0, 1.0], ids=["t1=t0", "t1>t0"])
@pytest.mark.parametrize("adjoint", ["checkpoint", AD, "forward"], ids=["rule", "ad", "fwd"])
def test_time_derivatives_at_the_start(adjoint, length):
    """Outputs read off before any step (the end state when t1 == t0, a save time at t0 that is
    an input of its own): the derivative with respect to that time is f there, as the backsolve
    adjoint gives it, where a loop of no steps alone would give zero."""
    args = (jnp.array(0.7), jnp.array(2.0))
    z0, t0 = jnp.array([1.0, -2.0, 0.5]), 0.3
    t1 = t0 + length
    ts = jnp.array([t0, t1]) if length else jnp.array([t0])
    f0 = forced(z0, t0, args)
    w = jnp.arange(1.0, 4.0)

    def end(t0, t1, adjoint=adjoint):  # the end state only
        sol = odejax.solve(forced, z0, t0, t1, args=args, adjoint=adjoint)
        return jnp.sum(sol.zs[-1] * w)

    def saved(ts0):  # ts[0] == t0 in value, but an input of its own
        sol = odejax.solve(forced, z0, t0, t1, ts=ts.at[0].set(ts0), args=args, adjoint=adjoint)
        return jnp.sum(sol.zs**2)

    if adjoint == "forward":
        got_end = [jax.jvp(lambda s: end(s, t1), (t0,), (1.0,))[1]]
        got_end.append(jax.jvp(lambda s: end(t0, s), (t1,), (1.0,))[1])
        got_ts0 = jax.jvp(saved, (t0,), (1.0,))[1]
    else:
        got_end = jax.grad(end, argnums=(0, 1))(t0, t1)
        got_ts0 = jax.grad(saved)(t0)
    if not length:
        np.testing.assert_allclose(got_end, [-(w @ f0), w @ f0], rtol=1e-12)
    want = jax.grad(end, argnums=(0, 1))(t0, t1, "backsolve")
    np.testing.assert_allclose(got_end, want, rtol=1e-5)
    # d zs[0] / d ts[0] = f0, whatever t1: the loss's derivative is 2 z0 . f0
    np.testing.assert_allclose(got_ts0, 2 * z0 @ f0, rtol=1e-12)
    # The values read off at the start are the initial state itself.
    sol = odejax.solve(forced, z0, t0, t1, ts=ts, args=args, adjoint=adjoint)
    np.testing.assert_array_equal(sol.zs[0], z0)
    if not length:
        np.testing.assert_array_equal(odejax.solve(forced, z0, t0, t1, args=args).zs[-1], z0)


def test_pytree_state_module_field_and_integer_leaves():
    class Field(eqx.Module):
        w: jax.Array
        n: jax.Array  # an integer leaf: no gradient, no error

        def __call__(self, z, t, args):
            return {"a": -self.w * z["b"] * self.n, "b": z["a"] * args}

    def loss(field, scale, adjoint):
        z0 = {"a": jnp.ones(2), "b": jnp.array([0.5, -0.5])}
        zs = odejax.odeint(field, z0, TS, scale, adjoint=adjoint, rtol=1e-9, atol=1e-9)
        return jnp.sum(zs["a"] ** 2) + jnp.sum(jnp.sin(zs["b"]))

    field = Field(jnp.array([0.8, 1.2]), jnp.array(2))
    grad = eqx.filter_jit(eqx.filter_grad(lambda fs, adj: loss(fs[0], fs[1], adj)))
    got = grad((field, jnp.array(1.3)), "checkpoint")
    ref = grad((field, jnp.array(1.3)), AD)
    np.testing.assert_allclose(got[0].w, ref[0].w, rtol=1e-9)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-9)


def test_dense_output_gradients():
    """Dense nodes are write-once buffers outside the stored carries."""

    def loss(mu, adjoint):
        sol = odejax.solve(vdp, Z0, 0.0, 3.0, args=mu, dense=True, adjoint=adjoint, max_steps=300)
        return jnp.sum(sol.evaluate(jnp.array([0.3, 1.7, 2.9])) ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(grad(1.5, "checkpoint"), grad(1.5, AD), rtol=1e-9)


def test_vmap_members_with_different_step_counts():
    def loss(mu, adjoint):
        return _loss(Z0, mu, TS, adjoint)

    mus = jnp.array([0.2, 4.0, 9.0])
    got = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)), static_argnums=1)(mus, "checkpoint")
    ref = jnp.stack([jax.jit(jax.grad(loss), static_argnums=1)(m, AD) for m in mus])
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_float32():
    def loss(mu, adjoint):
        z0 = Z0.astype(jnp.float32)
        ts = TS.astype(jnp.float32)
        zs = odejax.odeint(vdp, z0, ts, mu, adjoint=adjoint, rtol=1e-5, atol=1e-5)
        return jnp.sum(zs**2)

    mu = jnp.float32(1.5)
    got = jax.grad(loss)(mu, "checkpoint")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, jax.grad(loss)(mu, AD), rtol=1e-4)


def test_second_derivatives_forward_over_reverse_and_clear_errors():
    def loss(theta, adjoint):
        zs = odejax.odeint(lambda z, t, a: -a * z**2, jnp.ones(2), TS, theta, adjoint=adjoint)
        return jnp.sum(zs**2)

    ref = jax.jacrev(jax.grad(lambda th: loss(th, AD)))(0.7)
    np.testing.assert_allclose(jax.hessian(lambda th: loss(th, "checkpoint"))(0.7), ref, rtol=1e-7)
    with pytest.raises(TypeError, match="higher_order=True"):
        jax.jacrev(jax.grad(lambda th: loss(th, "checkpoint")))(0.7)
    with pytest.raises(TypeError, match="adjoint='forward'"):
        jax.jvp(lambda th: loss(th, "checkpoint"), (0.7,), (1.0,))
    # higher_order=True: JAX's own autodiff, in both modes.
    tangent = jax.jvp(lambda th: loss(th, AD), (0.7,), (1.0,))[1]
    np.testing.assert_allclose(tangent, jax.grad(lambda th: loss(th, AD))(0.7), rtol=1e-9)


def test_reverse_over_reverse_hessian_is_symmetric_and_matches_forward_over_reverse():
    """A pendulum's Hessian in (z0, parameter) by jax.jacrev(jax.grad) through the nested
    checkpointed loop equals jax.hessian (forward over reverse) through the custom rule. The
    loop stores each step's scaled error: recomputed inside the second-order program, it came
    out rounded differently and moved the step sizes (off-diagonal entries 1e-4 off)."""

    def loss(x, adjoint):
        field = lambda z, t, a: jnp.stack([z[1], -a * jnp.sin(z[0])])  # noqa: E731
        sol = odejax.solve(field, x[:2], 0.0, 2.0, args=x[2], adjoint=adjoint, rtol=1e-10)
        return jnp.sum(sol.zs**2)

    x = jnp.array([1.0, 0.0, 1.5])
    rev = np.asarray(jax.jacrev(jax.grad(loss))(x, AD))
    fwd = np.asarray(jax.hessian(loss)(x, "checkpoint"))
    np.testing.assert_allclose(rev, rev.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(rev, fwd, rtol=1e-6, atol=1e-9)


def test_bad_higher_order():
    with pytest.raises(TypeError, match="higher_order"):
        odejax.CheckpointAdjoint(higher_order="yes")


def test_memory_grows_slowly_with_max_steps():
    def temp(max_steps):
        fn = jax.grad(lambda mu: _loss(Z0, mu, TS, "checkpoint", max_steps=max_steps))
        return jax.jit(fn).lower(1.5).compile().memory_analysis().temp_size_in_bytes

    # 100x the steps: three levels of 47 carries against two of 32 (a cube root's growth).
    assert temp(100_000) < 3 * temp(1_000)


def test_leaves_the_step_overwrites_are_not_stored():
    from odejax._checkpoint import solve_loop

    def run(a, keep):
        def step(c):
            x, n, _record = c  # the record is written, never read
            new = x + 0.1 * jnp.sin(a * x)
            return (new, n + 1, jnp.stack([x, new, a * x, a])), ()

        init = (jnp.array(1.0), jnp.zeros((), jnp.int32), jnp.zeros(4))
        c, _, _ = solve_loop(
            step, lambda c: c[1] < 50, None, None, init, (), None, jnp.array(0.0), 64, None, keep
        )
        return c[0] + jnp.sum(c[2] ** 2)

    grads, temps = {}, {}
    for keep in (None, (True, True, False)):
        fn = jax.jit(jax.grad(run), static_argnums=1)
        grads[keep] = fn(1.3, keep)
        temps[keep] = fn.lower(1.3, keep).compile().memory_analysis().temp_size_in_bytes
    np.testing.assert_allclose(grads[None], grads[True, True, False], rtol=1e-12)
    assert temps[True, True, False] < temps[None]
    with pytest.raises(ValueError, match="keep"):
        run(1.3, (False, False, False))


@pytest.mark.parametrize("t_eval", [0.31, 1.9])
def test_dense_output_time_derivative_in_the_first_step(t_eval):
    """``sol.evaluate(t)`` for ``t`` in the first step depends on ``t0`` through that step's
    start node: the checkpoint gradient matches forward mode there too."""

    def g(t0, adjoint):
        sol = odejax.solve(
            lambda z, t, a: -z + t,
            jnp.array([1.0]),
            t0,
            2.0,
            adjoint=adjoint,
            dense=True,
            rtol=1e-3,
            atol=1e-6,
            max_steps=16,
        )
        return sol.evaluate(t_eval)[0]

    forward = jax.jvp(lambda t: g(t, "forward"), (0.3,), (1.0,))[1]
    for adjoint in ("checkpoint", AD):
        np.testing.assert_allclose(jax.grad(g)(0.3, adjoint), forward, rtol=1e-10)


def test_t_final_derivatives_when_no_step_is_taken():
    """With t1 == t0, ``t_final`` is t1: d/dt1 = 1, d/dt0 = 0, as for every other t1."""

    def t_final(t0, t1, adjoint):
        return odejax.solve(
            forced, jnp.array([1.0, -0.5]), t0, t1, args=(0.7, 2.0), adjoint=adjoint
        ).t_final

    for adjoint in ("backsolve", "checkpoint", AD):
        grads = jax.grad(t_final, argnums=(0, 1))(0.3, 0.3, adjoint)
        np.testing.assert_allclose(grads, (0.0, 1.0), err_msg=str(adjoint))
