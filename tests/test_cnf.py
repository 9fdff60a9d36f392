"""CNF / FFJORD: exact log-density of a linear flow, Hutchinson unbiasedness, shapes, grads."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from odejax.nn import CNF

TIGHT = dict(rtol=1e-11, atol=1e-11)
A = np.array([[-0.3, 1.2, 0.1], [-0.8, 0.2, 0.4], [0.3, -0.5, 0.6]])
X = jnp.array([[0.3, -1.0, 0.7], [1.5, 0.2, -0.4], [-2.0, 0.9, 0.1]])


class Linear(eqx.Module):
    """``f(z, t) = A z``: ``z(t1) = expm(A (t1 - t0)) z(t0)`` and ``tr ∂f/∂z = tr A``."""

    A: jax.Array

    def __call__(self, z, t, args):
        return self.A @ z


class TanhField(eqx.Module):
    """A small time-dependent MLP field ``f(z, t) = MLP([z, t])``."""

    mlp: eqx.nn.MLP

    def __init__(self, d, key, dtype=None):
        self.mlp = eqx.nn.MLP(d + 1, d, 16, 2, activation=jnp.tanh, dtype=dtype, key=key)

    def __call__(self, z, t, args):
        return self.mlp(jnp.concatenate([z, jnp.broadcast_to(t, (1,)).astype(z.dtype)]))


def std_normal_logpdf(z):
    return -0.5 * np.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)


def test_linear_flow_exact_log_density():
    t0, t1 = 0.5, 2.0  # not the default [0, 1], so that the interval enters the formula
    cnf = CNF(Linear(jnp.asarray(A)), 3, t0=t0, t1=t1, **TIGHT)
    got = jax.vmap(cnf.log_prob)(X)
    # log p1(x) = log p0(z0) - tr(A) (t1 - t0), z0 = expm(-A (t1 - t0)) x.
    z0 = np.asarray(X) @ scipy.linalg.expm(-A * (t1 - t0)).T
    want = std_normal_logpdf(z0) - np.trace(A) * (t1 - t0)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # The flow itself: transform and inverse are expm(±A).
    np.testing.assert_allclose(jax.vmap(cnf.inverse)(X), z0, atol=1e-8)
    np.testing.assert_allclose(
        cnf.transform(z0[0]), scipy.linalg.expm(A * (t1 - t0)) @ z0[0], atol=1e-8
    )


def test_sample_and_log_prob_round_trip():
    cnf = CNF(TanhField(2, jax.random.key(0)), 2, rtol=1e-9, atol=1e-9)
    xs, lps = cnf.sample_and_log_prob(jax.random.key(1), 5)
    assert xs.shape == (5, 2) and lps.shape == (5,)
    np.testing.assert_allclose(lps, jax.vmap(cnf.log_prob)(xs), atol=1e-6)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    field = TanhField(3, jax.random.key(3))
    x = X[0]
    exact = CNF(field, 3, rtol=1e-8, atol=1e-8).log_prob(x)
    hutch = CNF(field, 3, trace="hutchinson", noise=noise, rtol=1e-8, atol=1e-8)
    n = 200
    est = jax.jit(jax.vmap(lambda k: hutch.log_prob(x, key=k)))(
        jax.random.split(jax.random.key(4), n)
    )
    se = np.std(est, ddof=1) / np.sqrt(n)
    assert se > 0  # it is an estimate, not the exact trace
    assert abs(np.mean(est) - exact) < 4 * se, (np.mean(est), exact, se)


def test_shapes_stats_jit_and_float32():
    field = TanhField(2, jax.random.key(0), dtype=jnp.float32)
    cnf = CNF(field, 2, trace="hutchinson")
    xs = jax.random.normal(jax.random.key(1), (6, 2), dtype=jnp.float32)
    keys = jax.random.split(jax.random.key(2), 6)
    lp = eqx.filter_jit(jax.vmap(lambda x, k: cnf.log_prob(x, key=k)))(xs, keys)
    assert lp.shape == (6,) and lp.dtype == jnp.float32 and np.all(np.isfinite(lp))
    lp1, stats = cnf.log_prob_with_stats(xs[0], key=keys[0])
    assert lp1.shape == () and int(stats["nfe"]) > 0
    s = cnf.sample(jax.random.key(3), 7)
    assert s.shape == (7, 2) and s.dtype == jnp.float32 and np.all(np.isfinite(s))


def test_gradients_finite():
    # FFJORD's training path: Hutchinson trace, backsolve adjoint (the exact trace's gradient
    # is checked against a closed form below).
    cnf = CNF(TanhField(2, jax.random.key(0)), 2, trace="hutchinson")
    xs = X[:, :2]
    keys = jax.random.split(jax.random.key(1), xs.shape[0])

    def nll(model):
        return -jnp.mean(jax.vmap(lambda x, k: model.log_prob(x, key=k))(xs, keys))

    grads = eqx.filter_jit(eqx.filter_grad(nll))(cnf)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)


def test_linear_flow_gradient_matches_analytic():
    """d log p(x) / dA through the backsolve adjoint against the closed form's gradient."""

    def analytic(a, x):
        z0 = jax.scipy.linalg.expm(-a) @ x
        return -0.5 * jnp.sum(z0**2) - 1.5 * jnp.log(2 * jnp.pi) - jnp.trace(a)

    def model(a, x):
        return CNF(Linear(a), 3, rtol=1e-10, atol=1e-10).log_prob(x)

    a = jnp.asarray(A)
    np.testing.assert_allclose(jax.grad(model)(a, X[1]), jax.grad(analytic)(a, X[1]), atol=1e-6)


def test_bad_input():
    cnf = CNF(Linear(jnp.asarray(A)), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\).*\(3, 3\).*jax\.vmap"):
        cnf.log_prob(X)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\)"):
        cnf.log_prob(jnp.ones(2))
    with pytest.raises(
        ValueError, match=r"CNF.transform takes ONE sample: z0 .*vmap\(cnf.transform"
    ):
        cnf.transform(X)
    with pytest.raises(ValueError, match=r"CNF.inverse takes ONE sample: x .*vmap\(cnf.inverse"):
        cnf.inverse(X)
    with pytest.raises(ValueError, match="key="):
        CNF(Linear(jnp.asarray(A)), 3, trace="hutchinson").log_prob(X[0])
    with pytest.raises(ValueError, match="trace"):
        CNF(Linear(jnp.asarray(A)), 3, trace="approx")
    with pytest.raises(ValueError, match="noise"):
        CNF(Linear(jnp.asarray(A)), 3, noise="uniform")
    with pytest.raises(ValueError, match="data_size"):
        CNF(Linear(jnp.asarray(A)))


def test_batch_log_prob_matches_per_sample():
    # One solve for the whole batch agrees with the per-sample solves to the tolerance.
    cnf = CNF(TanhField(3, jax.random.key(2)), 3, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(cnf.batch_log_prob(X), jax.vmap(cnf.log_prob)(X), atol=1e-6)
    # Hutchinson rows are unbiased estimates of the same values: the mean over many copies.
    hutch = CNF(cnf.field, 3, trace="hutchinson", rtol=1e-8, atol=1e-8)
    n = 1000
    lp, stats = hutch.batch_log_prob_with_stats(jnp.repeat(X[:1], n, axis=0), key=jax.random.key(3))
    assert lp.shape == (n,) and int(stats["nfe"]) > 0
    assert abs(float(lp.mean() - cnf.log_prob(X[0]))) < 4 * float(lp.std()) / np.sqrt(n)
    grads = eqx.filter_grad(lambda m: -jnp.mean(m.batch_log_prob(X, key=jax.random.key(4))))(hutch)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    with pytest.raises(ValueError, match=r"xs must have shape \(N, 3\)"):
        cnf.batch_log_prob(X[0])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        hutch.batch_log_prob(X)
