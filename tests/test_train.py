"""odejax.train (fit, save, load), odejax.datasets and the demo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odejax import datasets, demo
from odejax.nn import MLPField, NeuralODE
from odejax.train import fit, load, save

KEY = jax.random.key(0)


# --- fit -----------------------------------------------------------------------------------------


def quadratic(w, b):
    return jnp.sum((w - b) ** 2)


def test_fit_plain_loss_history_and_early_stop():
    w, hist = fit(
        jnp.zeros(3), quadratic, [jnp.ones(3)] * 30, optimizer=optax.sgd(0.2), progress=False
    )
    assert set(hist) == {"step", "loss", "nfe", "time"}
    assert hist["step"] == list(range(30))  # the iterable ran out: 30 steps
    assert all(len(v) == 30 for v in hist.values())
    assert np.isnan(hist["nfe"]).all()
    assert hist["loss"][-1] < 1e-4 * hist["loss"][0]
    np.testing.assert_allclose(w, jnp.ones(3), atol=1e-3)
    _, hist = fit(jnp.zeros(3), quadratic, [jnp.ones(3)] * 30, steps=5, progress=False)
    assert len(hist["loss"]) == 5


def test_fit_aux_key_and_callable_batches():
    seen = []

    def loss(w, b, key):
        seen.append(key)
        return quadratic(w, b), {"nfe": jnp.array([3, 5]), "extra": jnp.asarray(2.0)}

    def sample(key):
        return jax.random.normal(key, (2,)) * 0.01 + 1.0

    w, hist = fit(
        jnp.zeros(2),
        loss,
        sample,
        steps=40,
        key=KEY,
        optimizer=optax.sgd(0.2),
        progress=True,
        log_every=10,
    )
    assert hist["nfe"] == [4.0] * 40 and hist["extra"] == [2.0] * 40
    assert seen and seen[0] is not None  # the loss was traced with a key
    np.testing.assert_allclose(w, jnp.ones(2), atol=0.1)
    with pytest.raises(ValueError, match="needs key="):
        fit(jnp.zeros(2), quadratic, sample, steps=3, progress=False)
    with pytest.raises(TypeError, match="iterable of batches or a callable"):
        fit(jnp.zeros(2), quadratic, 3, steps=3, progress=False)


def test_fit_reuses_the_compiled_step():
    traces = []

    def loss(w, b):
        traces.append(1)  # runs when traced, not when a compiled step runs
        return jnp.sum((w - b) ** 2)

    opt = optax.sgd(0.1)
    fit(jnp.zeros(2), loss, [jnp.ones(2)] * 3, optimizer=opt, progress=False)
    first = len(traces)
    w, _ = fit(jnp.zeros(2), loss, [jnp.ones(2)] * 3, optimizer=opt, progress=False)
    assert len(traces) - first < first  # only the shape probe traces again, not the step
    np.testing.assert_allclose(w, 1 - 0.8**3, rtol=1e-6)


def test_fit_sees_the_current_value_of_arrays_the_loss_reads():
    """A loss that reads a global array is not served a step compiled with its old value."""
    opt = optax.sgd(0.5)
    target = {"value": jnp.array([1.0, 1.0])}

    def loss(w, b):
        return jnp.sum((w - target["value"]) ** 2)

    w1, _ = fit(jnp.zeros(2), loss, [None] * 30, optimizer=opt, progress=False)
    target["value"] = jnp.array([5.0, -5.0])
    w2, hist = fit(jnp.zeros(2), loss, [None] * 30, optimizer=opt, progress=False)
    np.testing.assert_allclose(w1, [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(w2, [5.0, -5.0], atol=1e-4)
    assert hist["loss"][0] == pytest.approx(50.0)


@pytest.mark.parametrize("make", [float, np.float32, np.asarray], ids=["float", "f32", "0-d"])
def test_fit_sees_the_current_value_of_numbers_the_loss_reads(make):
    """A number read from outside the loss (a sweep's setting) becomes a literal of the traced
    program; a cached step compiled with another value must not be reused."""
    opt = optax.sgd(0.0)
    setting = {}

    def loss(w, b):
        return jnp.sum((w - b) ** 2) + setting["lam"] * jnp.sum(w**2 + 1.0)

    for lam in (0.0, 0.5, 1.0):
        setting["lam"] = make(lam)
        _, hist = fit(jnp.zeros(2), loss, [jnp.ones(2)], optimizer=opt, progress=False)
        assert hist["loss"] == [pytest.approx(2.0 + 2.0 * lam)]


def test_fit_keeps_aux_entries_named_like_its_columns():
    def loss(w, b):
        data = jnp.sum((w - b) ** 2)
        return data + 0.1 * jnp.sum(w**2), {"loss": data, "time": jnp.asarray(7.0)}

    _, hist = fit(jnp.zeros(2), loss, [jnp.ones(2)] * 3, optimizer=optax.sgd(0.1), progress=False)
    assert set(hist) == {"step", "loss", "nfe", "time", "aux_loss", "aux_time"}
    assert all(len(v) == 3 for v in hist.values())
    assert hist["loss"][0] == pytest.approx(2.0) and hist["aux_loss"][0] == pytest.approx(2.0)
    assert hist["aux_time"] == [7.0] * 3
    assert hist["loss"][1] > hist["aux_loss"][1]  # the total, with its penalty


def test_fit_argument_checks():
    def keyed(w, b, key):
        return quadratic(w, b)

    with pytest.raises(ValueError, match="key="):
        fit(jnp.zeros(2), keyed, [jnp.ones(2)], progress=False)
    _, hist = fit(jnp.zeros(2), quadratic, [jnp.ones(2)] * 5, steps=np.int64(2), progress=False)
    assert hist["step"] == [0, 1]
    with pytest.raises(ValueError, match="steps"):
        fit(jnp.zeros(2), quadratic, [jnp.ones(2)], steps=True, progress=False)


def test_fit_draws_no_batch_past_steps():
    it = iter([jnp.full(2, float(i)) for i in range(5)])
    fit(jnp.zeros(2), quadratic, it, optimizer=optax.sgd(0.1), steps=2, progress=False)
    assert [float(b[0]) for b in it] == [2.0, 3.0, 4.0]


def test_fit_cubic_spiral_loss_falls_tenfold():
    ts = jnp.linspace(0.0, 25.0, 1000)
    true_zs = datasets.cubic_spiral(ts)
    model = demo.make_model(KEY)  # f(z) = MLP(z**3), 2 -> 50 -> 2, as in torchdiffeq's ode_demo
    batches = functools.partial(datasets.cubic_spiral_batches, true_zs=true_zs, ts=ts)
    held_out = datasets.cubic_spiral_batches(jax.random.key(123), true_zs, ts, batch_size=200)
    before = float(demo.window_loss(model, held_out)[0])
    steps = 400
    opt = optax.adam(optax.cosine_decay_schedule(2e-2, steps, alpha=0.05))
    model, hist = fit(
        model,
        demo.window_loss,
        lambda k: batches(k),
        optimizer=opt,
        steps=steps,
        key=jax.random.key(1),
        progress=False,
    )
    after = float(demo.window_loss(model, held_out)[0])
    assert before / after >= 10, (before, after)
    assert np.all(np.asarray(hist["nfe"]) > 0)


# --- save / load ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = NeuralODE(MLPField(2, 8, 1, key=KEY), rtol=1e-5)
    path = tmp_path / "model.eqx"
    save(path, model)
    like = NeuralODE(MLPField(2, 8, 1, key=jax.random.key(9)), rtol=1e-5)
    loaded = load(path, like)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    z0 = jnp.array([0.1, 0.2])
    np.testing.assert_array_equal(model(z0), loaded(z0))
    with pytest.raises(Exception, match="shape"):  # equinox's message names the leaf
        load(path, NeuralODE(MLPField(2, 9, 1, key=KEY)))
    # another structure: more or fewer leaves than the file holds
    fields = [jnp.full(3, float(i)) for i in range(4)]
    save(tmp_path / "three.eqx", fields[:3])
    with pytest.raises(ValueError, match="more leaves"):
        load(tmp_path / "three.eqx", fields[:2])
    with pytest.raises(ValueError, match="fewer leaves"):
        load(tmp_path / "three.eqx", fields)


# --- datasets ------------------------------------------------------------------------------------


def test_cubic_spiral_and_batches():
    ts = jnp.linspace(0.0, 25.0, 200)
    zs = datasets.cubic_spiral(ts)
    assert zs.shape == (200, 2)
    np.testing.assert_allclose(zs[0], [2.0, 0.0])
    # the field is (z**3) @ A
    np.testing.assert_allclose(
        datasets.cubic_spiral_field(jnp.array([1.0, 2.0]), 0.0), jnp.array([-16.1, 1.2])
    )
    z0s, bts, windows = datasets.cubic_spiral_batches(KEY, zs, ts, batch_size=20, batch_time=10)
    assert z0s.shape == (20, 2) and bts.shape == (10,) and windows.shape == (20, 10, 2)
    np.testing.assert_array_equal(windows[:, 0], z0s)
    np.testing.assert_array_equal(bts, ts[:10])


def test_spirals_irregular_sampling():
    data = datasets.spirals(KEY, 6, n_sample=50, n_total=200, n_obs=20, extrapolate=10)
    assert data.ts.shape == (50,) and data.true.shape == (6, 50, 2) and data.ys.shape == (6, 50, 2)
    assert data.mask.shape == (6, 50) and data.mask.sum(1).tolist() == [20] * 6
    assert data.obs_ts.shape == (6, 20) and data.obs.shape == (6, 20, 2)
    assert bool(jnp.all(jnp.diff(data.obs_ts, axis=1) > 0))
    for i in range(6):
        np.testing.assert_array_equal(data.obs_ts[i], data.ts[data.mask[i]])
        np.testing.assert_array_equal(data.obs[i], data.ys[i][data.mask[i]])
    assert data.ts_extrap.shape == (10,) and data.true_extrap.shape == (6, 10, 2)
    assert float(data.ts_extrap[0]) > float(data.ts[-1])
    assert data.clockwise.dtype == bool
    # counter-clockwise spirals live right of the origin, clockwise ones left
    centre_x = data.true[..., 0].mean(1)
    assert bool(jnp.all((centre_x < 0) == data.clockwise))
    with pytest.raises(ValueError, match="n_obs"):
        datasets.spirals(KEY, 2, n_sample=50, n_total=200, n_obs=60)


def test_spirals_extrapolation_stays_on_the_spiral():
    # Windows start late enough here that a start range ignoring the extrapolated points would
    # run off the spiral's end (the continuation frozen at its last point).
    data = datasets.spirals(KEY, 400, n_sample=50, n_total=160, extrapolate=50)
    path = jnp.concatenate([data.true, data.true_extrap], axis=1)
    gaps = jnp.linalg.norm(jnp.diff(path, axis=1), axis=-1)
    assert float(gaps.min()) > 1e-3
    with pytest.raises(ValueError, match="extrapolate < n_total"):
        datasets.spirals(KEY, 2, n_sample=50, n_total=150, extrapolate=50)


def test_concentric_circles_and_densities():
    x, y = datasets.concentric_circles(KEY, 101, r1=0.5, r2=1.0, r3=1.5)
    r = jnp.linalg.norm(x, axis=1)
    assert x.shape == (101, 2) and set(np.unique(y).tolist()) == {-1.0, 1.0}
    assert bool(jnp.all(jnp.where(y < 0, r <= 0.5, (r >= 1.0) & (r <= 1.5))))
    with pytest.raises(ValueError, match="r1 < r2 < r3"):
        datasets.concentric_circles(KEY, 10, r1=1.0, r2=0.5)
    for sampler in (datasets.rings, datasets.two_moons, datasets.eight_gaussians):
        s = sampler(KEY, 500)
        assert s.shape == (500, 2) and bool(jnp.all(jnp.isfinite(s)))
    r = jnp.linalg.norm(datasets.rings(KEY, 2000, noise_std=0.0), axis=1)
    np.testing.assert_allclose(np.unique(np.round(np.asarray(r), 6)), [0.75, 1.5, 2.25, 3.0])


def test_digits_or_clear_import_error():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"odejax\[examples\]"):
            datasets.digits()
        return
    x, y = datasets.digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y).tolist()) == set(range(10))


# --- demo ----------------------------------------------------------------------------------------


def test_demo_runs_and_writes_png(tmp_path, capsys):
    out = tmp_path / "spiral.png"
    res = demo.main(["--steps", "5", "--log-every", "2", "--no-progress", "--plot", str(out)])
    assert out.exists() and out.stat().st_size > 0
    assert len(res["history"]["loss"]) == 5
    text = capsys.readouterr().out
    assert "ratio" in text and "ms" in text
