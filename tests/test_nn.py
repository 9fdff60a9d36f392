"""odejax.nn: fields, NeuralODE/ODEBlock/AugmentedNeuralODE, regularisers, classifiers."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import odejax
from odejax import datasets
from odejax.nn import (
    CNF,
    AugmentedNeuralODE,
    ConcatSquashLinear,
    MLPField,
    NeuralODE,
    ODEBlock,
    ODENetClassifier,
    RegularisedNeuralODE,
    ResNet,
    count_params,
)
from odejax.train import fit

KEY = jax.random.key(0)


def finite_grads(grads) -> bool:
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    return bool(leaves) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


class Decay(eqx.Module):
    """``f(z, t) = -k z``: ``z(t) = exp(-k t) z0``."""

    k: jax.Array

    def __call__(self, z, t, args):
        return -self.k * z


# --- fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize("time", [None, "concat", "concatsquash"])
@pytest.mark.parametrize("depth", [0, 2])
def test_mlp_field_shapes_and_time(time, depth):
    f = MLPField(3, 8, depth, time=time, key=KEY)
    z = jnp.arange(3.0)
    out = f(z, 0.5, None)
    assert out.shape == (3,) and out.dtype == z.dtype
    depends_on_t = not jnp.allclose(f(z, 0.0, None), f(z, 1.0, None))
    assert depends_on_t == (time is not None)
    assert len(f.layers) == depth + 1


def test_concat_squash_formula():
    layer = ConcatSquashLinear(3, 4, key=KEY)
    x, t = jnp.array([0.1, -0.2, 0.3]), jnp.asarray(0.7)
    tt = jnp.reshape(t, (1,))
    want = layer.linear(x) * jax.nn.sigmoid(layer.hyper_gate(tt)) + layer.hyper_bias(tt)
    np.testing.assert_allclose(layer(x, t), want)
    assert layer.hyper_bias.bias is None


def test_mlp_field_bad_arguments():
    with pytest.raises(ValueError, match="time must be one of"):
        MLPField(2, 4, 1, time="film", key=KEY)
    with pytest.raises(ValueError, match="width must be an int"):
        MLPField(2, 0, 1, key=KEY)
    with pytest.raises(ValueError, match=r"z must have shape \(2,\).*got shape \(3,\)"):
        MLPField(2, 4, 1, key=KEY)(jnp.ones(3), 0.0, None)


# --- NeuralODE -----------------------------------------------------------------------------------


def test_neural_ode_matches_closed_form_and_reports_stats():
    node = NeuralODE(Decay(jnp.asarray(2.0)), t1=0.5, rtol=1e-8, atol=1e-10)
    z0 = jnp.array([1.0, -3.0])
    np.testing.assert_allclose(node(z0), z0 * math.exp(-1.0), rtol=1e-6)
    _, stats = node.with_stats(z0)
    assert set(stats) == {"num_steps", "num_accepted", "num_rejected", "nfe"}
    assert int(stats["nfe"]) > 0
    sol = node.solve(z0)
    assert isinstance(sol, odejax.Solution) and sol.zs.shape == (1, 2)


def test_neural_ode_save_times_stored_and_at_call():
    ts = jnp.linspace(0.0, 2.0, 5)
    node = NeuralODE(Decay(jnp.asarray(1.0)), ts=ts, rtol=1e-8, atol=1e-10)
    assert node.t1 == 2.0
    z0 = jnp.ones(2)
    zs = node(z0)
    assert zs.shape == (5, 2)
    np.testing.assert_allclose(zs[:, 0], jnp.exp(-ts), rtol=1e-6)
    # a call-time grid (here traced under vmap) replaces ts and ends the solve at its last time
    plain = NeuralODE(Decay(jnp.asarray(1.0)), rtol=1e-8, atol=1e-10)
    grids = jnp.stack([jnp.linspace(0.0, 1.0, 4), jnp.linspace(0.0, 3.0, 4)])
    out = jax.vmap(lambda g: plain(z0, ts=g))(grids)
    assert out.shape == (2, 4, 2)
    np.testing.assert_allclose(out[:, :, 0], jnp.exp(-grids), rtol=1e-6)
    with pytest.raises(ValueError, match="t1 must equal ts"):
        NeuralODE(Decay(jnp.asarray(1.0)), t1=1.0, ts=ts)


def test_neural_ode_jit_vmap_grad():
    node = NeuralODE(MLPField(2, 16, 1, key=KEY))
    z0s = jax.random.normal(jax.random.key(1), (4, 2))
    out = eqx.filter_jit(lambda m, z: jax.vmap(m)(z))(node, z0s)
    assert out.shape == (4, 2)
    np.testing.assert_allclose(out[1], node(z0s[1]), rtol=1e-5, atol=1e-8)
    _, stats = jax.vmap(node.with_stats)(z0s)
    assert stats["nfe"].shape == (4,)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(m):
        return jnp.sum(jax.vmap(m)(z0s) ** 2)

    g = grad(node)
    assert finite_grads(g)
    assert float(jnp.abs(g.field.layers[0].weight).sum()) > 0
    # the solver settings are static: nothing but the field's arrays is trainable
    assert count_params(node) == count_params(node.field)


@pytest.mark.parametrize("adjoint", ["checkpoint", "backsolve"])
def test_neural_ode_adjoints_agree(adjoint):
    field = MLPField(2, 8, 1, key=KEY)
    z0 = jnp.array([0.3, -0.4])

    def loss(m):
        return jnp.sum(m(z0) ** 2)

    tight = dict(rtol=1e-9, atol=1e-9)
    ref = eqx.filter_grad(loss)(NeuralODE(field, adjoint="checkpoint", **tight))
    got = eqx.filter_grad(loss)(NeuralODE(field, adjoint=adjoint, **tight))
    np.testing.assert_allclose(
        got.field.layers[0].weight, ref.field.layers[0].weight, rtol=1e-5, atol=1e-9
    )


def test_ode_block_is_unit_interval():
    field = Decay(jnp.asarray(1.0))
    block = ODEBlock(field, rtol=1e-8, atol=1e-10)
    assert (block.t0, block.t1, block.ts) == (0.0, 1.0, None)
    np.testing.assert_allclose(block(jnp.ones(3)), jnp.full(3, math.exp(-1.0)), rtol=1e-6)
    with pytest.raises(TypeError, match="does not take"):
        ODEBlock(field, t1=2.0)


def test_augmented_neural_ode_pads_and_returns_full_state():
    field = MLPField(3, 8, 1, key=KEY)
    anode = AugmentedNeuralODE(field, 1)
    x = jnp.array([0.5, -0.5])
    np.testing.assert_array_equal(anode.pad(x), jnp.array([0.5, -0.5, 0.0]))
    out = anode(x)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, NeuralODE(field)(anode.pad(x)), rtol=1e-6)
    assert jax.vmap(anode)(jnp.ones((5, 2))).shape == (5, 3)
    assert anode.with_stats(x)[1]["nfe"] > 0
    g = eqx.filter_grad(lambda m: jnp.sum(m(x)))(anode)
    assert finite_grads(g)


# --- bad input -----------------------------------------------------------------------------------


def test_shape_mismatch_names_argument_and_shapes():
    node = NeuralODE(MLPField(2, 8, 1, key=KEY))
    with pytest.raises(ValueError, match=r"NeuralODE.*z0 of shape .*\[3\].*\(2,\)"):
        node(jnp.ones(3))
    with pytest.raises(ValueError, match=r"batch of 5 states.*vmap"):
        node(jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"AugmentedNeuralODE.*z0 of shape .*\[3\]"):
        AugmentedNeuralODE(MLPField(2, 8, 1, key=KEY), 1)(jnp.ones(2))
    with pytest.raises(ValueError, match=r"x must have shape \(D,\)"):
        AugmentedNeuralODE(MLPField(3, 8, 1, key=KEY), 1)(jnp.ones((4, 2)))


def test_field_returning_wrong_shape_is_reported():
    class Wrong(eqx.Module):
        def __call__(self, z, t, args):
            return jnp.concatenate([z, z])

    with pytest.raises(
        ValueError, match=r"maps the state z0 of shape .*\[2\] to an output .*\[4\]"
    ):
        NeuralODE(Wrong())(jnp.ones(2))


def test_state_of_another_dtype_than_the_parameters_is_reported():
    """A float64 field given a float32 state (x64 on): the model and the dtype are named."""
    field = MLPField(2, 8, 1, key=KEY, dtype=jnp.float64)
    z32 = jnp.ones(2, jnp.float32)
    with pytest.raises(ValueError, match=r"NeuralODE.*float32\[2\].*float64\[2\].*astype"):
        NeuralODE(field)(z32)
    with pytest.raises(ValueError, match=r"CNF.log_prob: x has dtype float32.*float64"):
        CNF(field).log_prob(z32)
    with pytest.raises(ValueError, match=r"CNF.batch_log_prob: xs has dtype float32"):
        CNF(field).batch_log_prob(jnp.ones((3, 2), jnp.float32))
    # The other way round promotes, as JAX does: a float32 field on a float64 state.
    out = NeuralODE(MLPField(2, 8, 1, key=KEY, dtype=jnp.float32))(jnp.ones(2))
    assert out.dtype == jnp.float64


# --- regularisers (Finlay et al. 2020) -----------------------------------------------------------


def test_regularisers_match_closed_form():
    # f = -z from z0 = 1: ∫‖f‖² = D (1 - e^{-2}) / 2, ‖∂f/∂z‖_F² = D.
    m = RegularisedNeuralODE(
        Decay(jnp.asarray(1.0)), kinetic=1.0, jacobian=0.0, rtol=1e-9, atol=1e-10
    )
    z1, reg = m(jnp.ones(2))
    np.testing.assert_allclose(z1, jnp.full(2, math.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(reg, 1 - math.exp(-2.0), rtol=1e-6)
    exact = RegularisedNeuralODE(
        Decay(jnp.asarray(1.0)), kinetic=0.0, jacobian=0.5, estimate="exact", rtol=1e-9
    )
    np.testing.assert_allclose(exact(jnp.ones(2))[1], 0.5 * 2.0, rtol=1e-6)
    energies = exact.solve(jnp.ones(2)).zs[1]
    assert energies.shape == (1, 2)


def test_regularisers_are_positive_backwards_in_time():
    """The energies integrate over |dt|: a solve from t0 = 1 back to t1 = 0 penalises as much
    as the forward one of the reversed field, never a negative amount."""
    kw = dict(kinetic=1.0, jacobian=1.0, estimate="exact", rtol=1e-9, atol=1e-10)
    back = RegularisedNeuralODE(Decay(jnp.asarray(1.0)), t0=1.0, t1=0.0, **kw)
    fwd = RegularisedNeuralODE(Decay(jnp.asarray(-1.0)), t0=0.0, t1=1.0, **kw)
    reg_back, reg_fwd = back(jnp.ones(2))[1], fwd(jnp.ones(2))[1]
    assert float(reg_back) > 0
    np.testing.assert_allclose(reg_back, reg_fwd, rtol=1e-6)
    # The same backward solve asked for through save times overriding t1 (0 -> -1).
    model = RegularisedNeuralODE(Decay(jnp.asarray(1.0)), t0=0.0, t1=1.0, **kw)
    via_ts = model(jnp.ones(2), ts=jnp.array([-0.5, -1.0]))[1]
    static = RegularisedNeuralODE(Decay(jnp.asarray(1.0)), t0=0.0, t1=-1.0, **kw)(jnp.ones(2))[1]
    assert float(via_ts) > 0
    np.testing.assert_allclose(via_ts, static, rtol=1e-6)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_jacobian_is_unbiased(noise):
    field = MLPField(3, 8, 1, key=KEY)
    x = jnp.array([0.2, -0.1, 0.4])
    kw = dict(kinetic=0.0, jacobian=1.0, rtol=1e-6, atol=1e-8)
    exact = RegularisedNeuralODE(field, estimate="exact", **kw)(x)[1]
    hutch = RegularisedNeuralODE(field, noise=noise, **kw)
    regs = jax.vmap(lambda k: hutch(x, key=k)[1])(jax.random.split(jax.random.key(3), 400))
    se = float(regs.std()) / math.sqrt(regs.size)
    assert abs(float(regs.mean()) - float(exact)) < 4 * se + 1e-8


def test_regularised_grad_and_missing_key():
    m = RegularisedNeuralODE(MLPField(2, 8, 1, key=KEY), kinetic=0.1, jacobian=0.1)
    with pytest.raises(ValueError, match="needs key="):
        m(jnp.ones(2))

    def loss(model, key):
        z1, reg = model(jnp.ones(2), key=key)
        return jnp.sum(z1**2) + reg

    assert finite_grads(eqx.filter_grad(loss)(m, jax.random.key(1)))
    out, reg, stats = m.with_stats(jnp.ones(2), key=jax.random.key(1))
    assert out.shape == (2,) and reg.shape == () and stats["nfe"] > 0


# --- classifiers ---------------------------------------------------------------------------------


def _parts(width=8, hidden=16):
    k1, k2, k3 = jax.random.split(KEY, 3)
    encoder = eqx.nn.Linear(64, width, key=k1)
    decoder = eqx.nn.Linear(width, 10, key=k3)
    return encoder, MLPField(width, hidden, 1, key=k2), decoder


def test_odenet_classifier_shapes_grads_and_params():
    encoder, field, decoder = _parts()
    net = ODENetClassifier(encoder, ODEBlock(field), decoder)
    xs = jax.random.uniform(jax.random.key(1), (3, 64))
    logits = jax.vmap(net)(xs)
    assert logits.shape == (3, 10)
    logits2, stats = jax.vmap(net.with_stats)(xs)
    np.testing.assert_allclose(logits, logits2)
    assert stats["nfe"].shape == (3,)
    assert net.num_params == count_params(encoder) + count_params(field) + count_params(decoder)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(
            jax.vmap(m)(xs), jnp.array([1, 2, 3])
        ).mean()

    assert finite_grads(eqx.filter_jit(eqx.filter_grad(loss))(net))


def test_resnet_shared_is_euler_discretisation_of_ode_block():
    encoder, field, decoder = _parts()
    n = 5
    resnet = ResNet(encoder, decoder, field, n)
    euler = ODENetClassifier(encoder, ODEBlock(field, solver="euler", dt0=1.0 / n), decoder)
    x = jax.random.uniform(jax.random.key(2), (64,))
    np.testing.assert_allclose(resnet(x), euler(x), rtol=1e-10, atol=1e-12)
    assert resnet.num_params == euler.num_params
    unshared = ResNet(encoder, decoder, field, n, shared=False)
    assert unshared.num_params == resnet.num_params + (n - 1) * count_params(field)
    assert jax.vmap(unshared)(jnp.ones((2, 64))).shape == (2, 10)
    assert finite_grads(eqx.filter_grad(lambda m: jnp.sum(m(x)))(unshared))
    with pytest.raises(ValueError, match="2 fields for num_blocks=5"):
        ResNet(encoder, decoder, [field, field], n, shared=False)


# --- ANODE vs NODE on concentric circles (Dupont et al. 2019) ------------------------------------


class Classifier(eqx.Module):
    flow: eqx.Module
    readout: eqx.nn.Linear

    def __call__(self, x):
        return self.readout(self.flow(x))[0]


def _train_classifier(flow, dim, x, y, steps, lr):
    model = Classifier(flow, eqx.nn.Linear(dim, 1, key=jax.random.key(7)))

    def loss(m, batch):
        xb, yb = batch
        logits = jax.vmap(m)(xb)
        return jnp.mean(jax.nn.softplus(-yb * logits)), {"acc": jnp.mean(jnp.sign(logits) == yb)}

    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1))
    model, hist = fit(model, loss, [(x, y)] * steps, optimizer=opt, progress=False)
    acc = float(jnp.mean(jnp.sign(jax.vmap(model)(x)) == y))
    return model, acc, hist


def test_anode_separates_1d_shells_where_node_provably_cannot():
    # In 1-D a flow preserves order, so after any NODE + linear readout the prediction is a
    # threshold in x: it misclassifies at least one of the two outer shells entirely.
    x, y = datasets.concentric_circles(jax.random.key(0), 256, dim=1)
    outer_left = int(jnp.sum((y > 0) & (x[:, 0] < 0)))
    outer_right = int(jnp.sum((y > 0) & (x[:, 0] > 0)))
    bound = 1 - min(outer_left, outer_right) / x.shape[0]
    tol = dict(rtol=1e-4, atol=1e-7)
    k = jax.random.key(1)
    anode = AugmentedNeuralODE(MLPField(2, 16, 1, time=None, key=k), 1, **tol)
    node = NeuralODE(MLPField(1, 27, 1, time=None, key=k), **tol)
    assert abs(count_params(anode) + 3 - (count_params(node) + 2)) <= 2  # same budget
    _, acc_anode, _ = _train_classifier(anode, 2, x, y, steps=120, lr=3e-2)
    _, acc_node, _ = _train_classifier(node, 1, x, y, steps=120, lr=3e-2)
    assert acc_anode >= 0.98
    assert acc_node <= bound + 1e-9
    assert acc_node <= 0.9


def test_anode_fits_concentric_circles():
    x, y = datasets.concentric_circles(jax.random.key(0), 256)
    anode = AugmentedNeuralODE(MLPField(3, 16, 1, time=None, key=jax.random.key(1)), 1)
    _, acc, hist = _train_classifier(anode, 3, x, y, steps=100, lr=3e-2)
    assert acc >= 0.98
    assert np.isfinite(hist["loss"]).all()
