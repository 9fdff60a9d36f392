"""LatentODE (ODE-RNN encoder) and RNNBaseline: shapes, ELBO, gradients, bad input, training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odejax.datasets import spirals
from odejax.nn import LatentODE, RNNBaseline

D, L, H, T = 2, 3, 8, 12
# Tiny irregularly-sampled spirals: 4 series on a shared grid of 12 times (span ≈ 2.1), each
# observed at 8 random times (the mask), as in Chen et al. 2018 §5.1.
DATA = spirals(jax.random.key(10), 4, n_total=100, n_sample=T, n_obs=8)
TS, YS, MASK = DATA.ts, DATA.ys, DATA.mask


def small_model(key=0, **kw):
    kw = dict(field_width=16, encoder_width=16, decoder_width=16, **kw)
    return LatentODE(D, L, H, key=jax.random.key(key), **kw)


def test_forward_shapes():
    model = small_model()
    mean, log_std = model.encode(TS, YS[0], MASK[0])
    assert mean.shape == (L,) and log_std.shape == (L,)
    ts_out = jnp.linspace(0.0, 4.0, 7)
    pred = model.predict(TS, YS[0], MASK[0], ts_out)
    assert pred.shape == (7, D)
    # predict = encode, then decode from the posterior mean at ts[0].
    np.testing.assert_allclose(model.decode(mean, TS[0], ts_out), pred, rtol=1e-10)
    # A batch with one time grid per series (N, T): vmapped inside the loss.
    per_row = jnp.stack([TS, 1.5 * TS, TS, 0.5 * TS])
    assert model.loss(per_row, YS, MASK, jax.random.key(2)).shape == ()
    rnn = RNNBaseline(D, H, decoder_width=16, key=jax.random.key(0))
    assert rnn.one_step(TS, YS[0], MASK[0]).shape == (T - 1, D)
    assert rnn.predict(TS, YS[0], MASK[0], ts_out[1:] + 2.0).shape == (6, D)
    assert rnn.loss(TS, YS, MASK).shape == ()


def test_elbo_terms():
    model = small_model()
    key = jax.random.key(3)
    elbo, info = model.elbo_with_stats(TS, YS[0], MASK[0], key)
    assert np.isfinite(elbo) and float(info["kl"]) >= 0
    np.testing.assert_allclose(elbo, info["log_lik"] - info["kl"], rtol=1e-12)
    assert int(info["nfe"]) > 0 and int(info["encoder_nfe"]) > 0
    # Nothing observed: no likelihood term. Per-entry masks and nan in unobserved entries work.
    _, info0 = model.elbo_with_stats(TS, YS[0], jnp.zeros(T), key)
    assert float(info0["log_lik"]) == 0.0
    entry_mask = jnp.stack([MASK[0], jnp.ones(T, bool)], axis=-1)
    ys_nan = jnp.where(entry_mask, YS[0], jnp.nan)
    assert np.isfinite(model.elbo(TS, ys_nan, entry_mask, key))
    # The mask selects the terms: changing an unobserved value changes nothing.
    i = int(np.flatnonzero(~np.asarray(MASK[0]))[0])
    ys2 = YS[0].at[i].set(100.0)
    np.testing.assert_allclose(
        model.elbo(TS, ys2, MASK[0], key), model.elbo(TS, YS[0], MASK[0], key)
    )


def test_unsorted_times_raise():
    model = small_model()
    bad = TS.at[3].set(TS[5])
    with pytest.raises(ValueError, match=r"ts must be strictly increasing.*ts\[4\]"):
        model.elbo(bad, YS[0], MASK[0], jax.random.key(0))
    with pytest.raises(Exception, match="ts must be strictly increasing"):
        eqx.filter_jit(model.elbo)(bad, YS[0], MASK[0], jax.random.key(0))
    with pytest.raises(ValueError, match="ts_out must be strictly increasing"):
        model.predict(TS, YS[0], MASK[0], jnp.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="ts_out must start"):
        model.predict(TS + 1.0, YS[0], MASK[0], jnp.array([0.5, 2.0]))
    with pytest.raises(ValueError, match="ts_obs must be strictly increasing"):
        RNNBaseline(D, H, key=jax.random.key(0)).predict(bad, YS[0], None, TS + 3.0)
    with pytest.raises(ValueError, match=r"ys must be ONE series.*jax\.vmap"):
        model.elbo(TS, YS, MASK[0], jax.random.key(0))
    with pytest.raises(ValueError, match="mask must have shape"):
        model.elbo(TS, YS[0], jnp.ones(T + 1), jax.random.key(0))


PARTS = ("encoder_cell", "encoder_field", "to_posterior", "latent_field", "decoder")


def train(model, steps, lr, key):
    """A few Adam steps on the batch (YS, MASK); returns the model, the losses, the first grads."""
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state, key):
        loss, g = eqx.filter_value_and_grad(lambda m: m.loss(TS, YS, MASK, key))(model)
        updates, state = opt.update(g, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss, g

    losses, first = [], None
    for k in jax.random.split(key, steps):
        model, state, loss, g = step(model, state, k)
        first = g if first is None else first
        losses.append(float(loss))
    return model, losses, first


def check_grads(grads, parts):
    for part in parts:
        leaves = jax.tree.leaves(eqx.filter(getattr(grads, part), eqx.is_inexact_array))
        assert leaves and all(np.all(np.isfinite(g)) for g in leaves), part
        assert any(np.any(g != 0) for g in leaves), part


def test_gradients_finite_and_training_reduces_loss():
    # The default settings (adaptive encoder solves, backsolve adjoint): every part gets a
    # finite, non-zero gradient through the ELBO, and Adam lowers the loss.
    _, losses, grads = train(small_model(obs_std=0.3), 30, 2e-2, jax.random.key(5))
    check_grads(grads, PARTS)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def test_rnn_baseline_trains():
    rnn = RNNBaseline(D, H, decoder_width=16, key=jax.random.key(6))
    _, losses, grads = train(rnn, 30, 2e-2, jax.random.key(7))
    check_grads(grads, ("cell", "decoder"))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def test_batched_loss_matches_per_series_and_rnn_encoder():
    # A batch on a shared grid is solved as one ODE: the same loss as the per-series ELBOs (the
    # encoder is independent of the batched solve; the GRU one compiles fastest).
    key = jax.random.key(8)
    keys = jax.random.split(key, YS.shape[0])
    model = small_model(encoder="rnn", rtol=1e-9, atol=1e-9)
    per_series = [model.elbo(TS, YS[i], MASK[i], keys[i]) for i in range(YS.shape[0])]
    np.testing.assert_allclose(model.loss(TS, YS, MASK, key), -np.mean(per_series), rtol=1e-6)
    # The GRU encoder (time gaps as input, no solves) trains and reports no encoder NFE.
    model = small_model(encoder="rnn", obs_std=0.3)
    assert model.encoder_field is None
    _, info = model.elbo_with_stats(TS, YS[0], MASK[0], key)
    assert int(info["encoder_nfe"]) == 0 and int(info["nfe"]) > 0
    _, losses, grads = train(model, 30, 2e-2, jax.random.key(9))
    check_grads(grads, ("encoder_cell", "to_posterior", "latent_field", "decoder"))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    with pytest.raises(ValueError, match="encoder must be"):
        small_model(encoder="lstm")


def test_padding_to_a_union_of_times_leaves_the_encodings_unchanged():
    """Unobserved grid points (mask 0), inside or after the observations, change neither
    encoder's posterior: the ODE-RNN's hidden state starts at the last observation."""
    ts, ys = TS[:6], YS[0, :6]
    t_pad = jnp.concatenate([ts[:3], (ts[2:3] + ts[3:4]) / 2, ts[3:], ts[-1:] + 0.3])
    y_pad = jnp.concatenate([ys[:3], jnp.full((1, D), jnp.nan), ys[3:], jnp.zeros((1, D))])
    m_pad = jnp.concatenate([jnp.ones(3), jnp.zeros(1), jnp.ones(3), jnp.zeros(1)])
    for encoder in ("odernn", "rnn"):
        model = small_model(encoder=encoder, encoder_rtol=1e-10, encoder_atol=1e-10)
        mean, log_std = model.encode(ts, ys)
        mean_pad, log_std_pad = model.encode(t_pad, y_pad, m_pad)
        np.testing.assert_allclose(mean_pad, mean, atol=1e-8, err_msg=encoder)
        np.testing.assert_allclose(log_std_pad, log_std, atol=1e-8, err_msg=encoder)
