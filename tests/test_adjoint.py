"""Gradients: the three adjoints against finite differences and against each other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import odejax

ADJOINTS = ["backsolve", "checkpoint"]
TOL = dict(rtol=1e-10, atol=1e-10)


def vdp(z, t, mu):
    x, y = z
    return jnp.stack([y, mu * (1 - x**2) * y - x])


def forced(z, t, args):
    """A non-autonomous field, so time gradients exercise ∂f/∂t."""
    k, w = args
    return -k * z + jnp.sin(w * t)


Z0 = jnp.array([2.0, 0.0])
TS = jnp.linspace(0.0, 3.0, 7)


def vdp_loss(z0, mu, ts, adjoint):
    zs = odejax.odeint(vdp, z0, ts, mu, adjoint=adjoint, **TOL)
    return jnp.sum(zs**2)


def central_fd(fn, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        out[i] = (fn(jnp.asarray(x + e)) - fn(jnp.asarray(x - e))) / (2 * eps)
    return out


@pytest.fixture(scope="module")
def fd_grads():
    fwd = "forward"
    return (
        central_fd(lambda z: vdp_loss(z, 1.5, TS, fwd), Z0),
        central_fd(lambda m: vdp_loss(Z0, m, TS, fwd), np.float64(1.5)),
        central_fd(lambda t: vdp_loss(Z0, 1.5, t, fwd), TS),
    )


@pytest.mark.parametrize("adjoint", ADJOINTS)
def test_gradients_match_finite_differences(adjoint, fd_grads):
    grad = jax.jit(jax.grad(vdp_loss, argnums=(0, 1, 2)), static_argnums=3)
    g_z0, g_mu, g_ts = grad(Z0, 1.5, TS, adjoint)
    fd_z0, fd_mu, fd_ts = fd_grads
    np.testing.assert_allclose(g_z0, fd_z0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_mu, fd_mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_ts, fd_ts, rtol=1e-6, atol=1e-6)


def test_checkpoint_is_exact_gradient_of_the_discretisation():
    """Reverse mode through the steps equals forward mode through the same steps, to rounding."""
    rev = jax.grad(vdp_loss, argnums=1)(Z0, 1.5, TS, "checkpoint")
    fwd = jax.jvp(lambda m: vdp_loss(Z0, m, TS, "forward"), (1.5,), (1.0,))[1]
    np.testing.assert_allclose(rev, fwd, rtol=1e-12)


def test_time_gradients_of_solve_t0_t1():
    def loss(t0, t1, k, adjoint):
        sol = odejax.solve(forced, jnp.ones(2), t0, t1, args=(k, 2.0), adjoint=adjoint, **TOL)
        return jnp.sum(sol.zs**2)

    fd = [
        central_fd(lambda t0: loss(t0, 2.0, 0.5, "forward"), np.float64(0.3)),
        central_fd(lambda t1: loss(0.3, t1, 0.5, "forward"), np.float64(2.0)),
        central_fd(lambda k: loss(0.3, 2.0, k, "forward"), np.float64(0.5)),
    ]
    for adjoint in ADJOINTS:
        g = jax.grad(loss, argnums=(0, 1, 2))(0.3, 2.0, 0.5, adjoint)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_backwards_in_time_and_pytree_state():
    def loss(k, adjoint):
        z0 = {"a": jnp.array(1.0), "b": (jnp.array([0.5, -0.5]),)}
        ts = jnp.array([2.0, 1.0, 0.0])  # backwards

        def f(z, t, k):
            return {"a": -k * z["a"] * z["b"][0][0], "b": (k * jnp.cos(t) * z["b"][0],)}

        zs = odejax.odeint(f, z0, ts, k, adjoint=adjoint, **TOL)
        return jnp.sum(zs["a"] ** 2) + jnp.sum(zs["b"][0] ** 3)

    fd = central_fd(lambda k: loss(k, "forward"), np.float64(0.7))
    for adjoint in ADJOINTS:
        np.testing.assert_allclose(jax.grad(loss)(0.7, adjoint), fd, rtol=1e-6)


class Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, z, t, args):
        return self.mlp(jnp.concatenate([z, t[None]]))


def test_equinox_mlp_parameters_all_adjoints_agree():
    field = Field(eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0)))
    z0 = jnp.array([0.5, -0.3])
    ts = jnp.linspace(0.0, 1.0, 4)

    def loss(field, adjoint):
        return jnp.sum(odejax.odeint(field, z0, ts, adjoint=adjoint, **TOL) ** 2)

    grads = {a: eqx.filter_grad(loss)(field, a) for a in ADJOINTS}
    leaves = [jax.tree.leaves(grads[a]) for a in ADJOINTS]
    for x, y in zip(*leaves):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
    # ... and against a finite difference along one direction of the parameters.
    params, static = eqx.partition(field, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size).reshape(p.shape) + 1.0), params)
    along = sum(jnp.vdot(g, d) for g, d in zip(leaves[0], jax.tree.leaves(direction)))

    def shifted(eps):
        p = jax.tree.map(lambda p, d: p + eps * d, params, direction)
        return loss(eqx.combine(p, static), "forward")

    fd = (shifted(1e-6) - shifted(-1e-6)) / 2e-6
    np.testing.assert_allclose(along, fd, rtol=1e-6)


def test_closure_over_traced_values_gets_its_gradient():
    def loss(theta, adjoint):
        zs = odejax.odeint(lambda z, t, a: -theta * z, jnp.ones(2), TS, adjoint=adjoint, **TOL)
        return jnp.sum(zs)

    exact = jax.grad(lambda th: jnp.sum(2 * jnp.exp(-th * TS)))(0.7)
    for adjoint in ADJOINTS:
        np.testing.assert_allclose(jax.grad(loss)(0.7, adjoint), exact, rtol=1e-8)


def test_closure_over_traced_integer_under_jit_and_vmap():
    """An integer (or bool) tracer closed over by f is not differentiable but must not leak
    into the backsolve rule's static field (it did: a lowering error under jit and vmap)."""

    def loss(z0, n, adjoint="backsolve"):
        return jnp.sum(odejax.solve(lambda z, t, a: -n * z, z0, 0.0, 1.0, adjoint=adjoint).zs)

    z0 = jnp.array([1.0, 0.5])
    want = jax.grad(loss)(z0, 2, "checkpoint")
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(z0, 2), want, rtol=1e-6)
    got = jax.vmap(jax.grad(loss), (None, 0))(z0, jnp.array([1, 2]))
    np.testing.assert_allclose(got[1], want, rtol=1e-6)


@pytest.mark.parametrize("adjoint", [*ADJOINTS, "forward"])
def test_save_time_on_t1_has_the_interpolants_derivative(adjoint):
    """A save time equal to t1 (t1 held fixed) reads the state's exact value, and its
    derivative is the interpolant's, as at any save time inside the step (it was zero)."""

    def last(s):
        ts = jnp.stack([1.5, s])
        return odejax.solve(forced, Z0, 0.0, 3.0, args=(0.7, 2.0), ts=ts, adjoint=adjoint, **TOL)

    d = jax.jacfwd if adjoint == "forward" else jax.jacrev
    on_t1 = d(lambda s: last(s).zs[-1])(3.0)
    inside = d(lambda s: last(s).zs[-1])(3.0 - 1e-9)
    np.testing.assert_allclose(on_t1, inside, rtol=1e-6)
    np.testing.assert_allclose(on_t1, forced(last(3.0).zs[-1], 3.0, (0.7, 2.0)), rtol=1e-6)


def test_dt_next_is_not_differentiated():
    def dt_next(mu, adjoint):
        return odejax.solve(vdp, Z0, 0.0, 1.0, args=mu, adjoint=adjoint).dt_next

    for adjoint in ADJOINTS:
        assert float(jax.grad(dt_next)(2.0, adjoint)) == 0.0


def test_second_derivatives():
    def loss(theta, adjoint):
        zs = odejax.odeint(
            lambda z, t, a: -a * z**2, jnp.ones(2), TS, theta, adjoint=adjoint, **TOL
        )
        return jnp.sum(zs**2)

    check_grads(lambda th: loss(th, "backsolve"), (0.7,), order=2, modes=["rev"], atol=1e-5)
    rr = jax.jacrev(jax.grad(lambda th: loss(th, "backsolve")))(0.7)
    ff = jax.jacfwd(jax.jacfwd(lambda th: loss(th, "forward")))(0.7)
    np.testing.assert_allclose(rr, ff, rtol=1e-6)


def test_gradients_under_vmap_and_jit():
    def loss(mu):
        return vdp_loss(Z0, mu, TS, "backsolve")

    mus = jnp.array([0.5, 1.5, 3.0])
    batched = jax.jit(jax.vmap(jax.grad(loss)))(mus)
    single = jnp.stack([jax.grad(loss)(m) for m in mus])
    np.testing.assert_allclose(batched, single, rtol=1e-8)


def test_float32_gradients():
    def loss(k, adjoint):
        zs = odejax.odeint(forced, jnp.ones(2, jnp.float32), TS.astype(jnp.float32), (k, 2.0),
                           adjoint=adjoint, rtol=1e-5, atol=1e-6)  # fmt: skip
        return jnp.sum(zs**2)

    k = jnp.float32(0.5)
    gb = jax.grad(loss)(k, "backsolve")
    gc = jax.grad(loss)(k, "checkpoint")
    assert gb.dtype == gc.dtype == jnp.float32
    np.testing.assert_allclose(gb, gc, rtol=1e-3)


def test_seminorm_and_backward_stats():
    field = Field(eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jax.random.PRNGKey(1)))
    z0 = jnp.array([0.5, -0.3])

    def loss(field, adjoint):
        zs = odejax.odeint(field, z0, jnp.array([0.0, 1.0]), adjoint=adjoint, rtol=1e-7, atol=1e-7)
        return jnp.sum(zs**2)

    full = eqx.filter_grad(loss)(field, odejax.BacksolveAdjoint(record_stats=True))
    stats_full = odejax.backward_stats()
    semi = eqx.filter_grad(loss)(field, odejax.BacksolveAdjoint(seminorm=True, record_stats=True))
    stats_semi = odejax.backward_stats()
    assert stats_full["nfe"] > 0 and stats_semi["nfe"] <= stats_full["nfe"]
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(semi)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)


def test_backward_stats_per_member_under_vmap():
    adj = odejax.BacksolveAdjoint(record_stats=True)
    ts = jnp.linspace(0.0, 3.0, 4)

    def loss(k):
        field = lambda z, t, k: -k * z + 0.1 * z**2 * jnp.sin(t)  # noqa: E731
        return jnp.sum(odejax.odeint(field, Z0, ts, k, adjoint=adj))

    ks = jnp.array([0.5, 2.0, 5.0])
    single = []
    for k in ks:
        jax.grad(loss)(k)
        single.append(int(odejax.backward_stats()["nfe"]))
    jax.jit(jax.vmap(jax.grad(loss)))(ks)
    batched = odejax.backward_stats()
    assert batched["nfe"].shape == (3,)
    np.testing.assert_array_equal(batched["nfe"], single)


def test_wrong_mode_errors_name_the_adjoint_to_use():
    with pytest.raises(TypeError, match="backsolve"):
        jax.grad(vdp_loss, argnums=1)(Z0, 1.5, TS, "forward")
    with pytest.raises(TypeError, match="adjoint='forward'"):
        jax.jvp(lambda m: vdp_loss(Z0, m, TS, "backsolve"), (1.5,), (1.0,))


def test_integer_leaves_are_left_alone():
    def loss(k, adjoint):
        def f(z, t, args):
            scale, n = args
            return -scale * z * n

        zs = odejax.odeint(f, jnp.ones(2), TS, (k, jnp.array(2)), adjoint=adjoint, **TOL)
        return jnp.sum(zs)

    exact = jax.grad(lambda k: jnp.sum(2 * jnp.exp(-2 * k * TS)))(0.3)
    for adjoint in ADJOINTS:
        np.testing.assert_allclose(jax.grad(loss)(0.3, adjoint), exact, rtol=1e-8)


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_backsolve_constant_checkpoint_sublinear():
    def grad_fn(adjoint, max_steps):
        def loss(mu):
            zs = odejax.odeint(vdp, Z0, TS, mu, adjoint=adjoint, max_steps=max_steps)
            return jnp.sum(zs**2)

        return jax.grad(loss)

    small, large = 1_000, 100_000
    bs_small = _temp_bytes(grad_fn("backsolve", small), 1.5)
    bs_large = _temp_bytes(grad_fn("backsolve", large), 1.5)
    assert bs_large <= 1.05 * bs_small + 1024
    ck_small = _temp_bytes(grad_fn("checkpoint", small), 1.5)
    ck_large = _temp_bytes(grad_fn("checkpoint", large), 1.5)
    # 100x the steps: linear growth would be 100x; sqrt growth is 10x.
    assert ck_large < 20 * ck_small


def test_backward_failure_says_it_was_the_backward_pass():
    adjoint = odejax.BacksolveAdjoint(rtol=1e-13, atol=1e-13)

    def loss(mu):
        zs = odejax.odeint(vdp, Z0, TS, mu, rtol=1e-3, atol=1e-3, max_steps=40, adjoint=adjoint)
        return jnp.sum(zs**2)

    loss(1.5)  # the forward solve fits in max_steps
    with pytest.raises(Exception, match="backward"):
        jax.block_until_ready(jax.grad(loss)(1.5))


def test_interpolated_state_with_an_explicit_solver(fd_grads):
    """``state="interpolate"`` (the default only with stiff solvers) reads z off the forward
    dense output: the same gradients, times included."""
    adjoint = odejax.BacksolveAdjoint(state="interpolate")
    g_z0, g_mu, g_ts = jax.grad(vdp_loss, argnums=(0, 1, 2))(Z0, 1.5, TS, adjoint)
    for g, fd in zip((g_z0, g_mu, g_ts), fd_grads):
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_interpolated_state_pytree_vmap_seminorm_stats():
    adjoint = odejax.BacksolveAdjoint(state="interpolate", seminorm=True, record_stats=True)

    def f(z, t, k):  # one function object, so the finite differences share a compilation
        return {"a": -k * z["a"] * z["b"][0][0], "b": (k * jnp.cos(t) * z["b"][0],)}

    def loss(k, adjoint):
        z0 = {"a": jnp.array(1.0), "b": (jnp.array([0.5, -0.5]),)}
        zs = odejax.odeint(f, z0, jnp.array([2.0, 1.0, 0.0]), k, adjoint=adjoint, **TOL)
        return jnp.sum(zs["a"] ** 2) + jnp.sum(zs["b"][0] ** 3)

    ks = jnp.array([0.7, 1.2])
    batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)), static_argnums=1)(ks, adjoint)
    assert odejax.backward_stats()["nfe"].shape == (2,)
    for k, g in zip(ks, batched):
        fd = central_fd(lambda k: loss(k, "forward"), np.float64(k))
        np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_bad_state_is_a_clear_error():
    with pytest.raises(ValueError, match="state"):
        odejax.BacksolveAdjoint(state="dense")
    assert odejax.BacksolveAdjoint().resolve_state(odejax.Rodas5()) == "interpolate"
    assert odejax.BacksolveAdjoint(solver="kvaerno5").state is None
    assert odejax.BacksolveAdjoint(state="reintegrate").resolve_state(odejax.Rodas5()) == (
        "reintegrate"
    )


@pytest.mark.parametrize("num_channels", [3, 12])
def test_mixed_norm_is_the_largest_channel_rms(num_channels):
    """The backward error norm: the largest RMS over z, a and each parameter leaf (the many-leaf
    case takes a segmented reduction), entries after the last channel left out (seminorm)."""
    from odejax._integrate import channel_norm

    x = jnp.asarray(np.random.default_rng(0).normal(size=130))
    ends = tuple(int(e) for e in np.linspace(10, 120, num_channels))
    starts = (0, *ends[:-1])
    expected = max(np.sqrt(np.mean(np.asarray(x[a:b]) ** 2)) for a, b in zip(starts, ends))
    np.testing.assert_allclose(channel_norm(x, ends), expected, rtol=1e-12)
