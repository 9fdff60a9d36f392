"""odejax.ensemble: batches of solves sharded over devices, one adaptive loop per device.

The multi-device checks run in child processes with 4 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``); this process has already started JAX
with one device. A note on "bitwise": a member's arithmetic under ``ensemble`` is that of a
``jax.vmap`` over the member's own device slice (or chunk). XLA's CPU code for a batch of 1 or 2
differs from that for 3 or more in the last bits (about 1e-14 here), so results are asserted
identical to one ``vmap`` over the whole batch where every slice has at least 3 members, and to
a ``vmap`` over the same slices (bitwise) plus ``allclose(atol=1e-12)`` to the whole-batch
``vmap`` where slices have 2. Gradients of shared arguments sum the members' contributions per
device and then over devices (a different order of additions than one ``vmap``), so gradients
are compared with ``allclose``.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import odejax
from odejax._ensemble import ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vdp(z, t, mu):
    x, y = z
    return jnp.stack([y, mu * (1 - x**2) * y - x])


def vmapped(f, z0s, ts, args, in_axes=0, **opts):
    return jax.vmap(lambda z, a: odejax.odeint(f, z, ts, a, **opts), in_axes=(0, in_axes))(
        z0s, args
    )


def batch(n, mu_max=5.0):
    mus = jnp.linspace(0.5, mu_max, n)
    z0s = jnp.stack([jnp.linspace(1.0, 2.0, n), jnp.linspace(-0.5, 0.5, n)], axis=1)
    return z0s, mus


TS = jnp.linspace(0.0, 4.0, 5)


# --- one device, in this process ----------------------------------------------------------------


def test_matches_vmap_bitwise_with_pytrees():
    """A dict state and (batched, shared) args, as with vmap's in_axes."""

    def field(z, t, args):
        mu, scale = args
        return {"x": z["y"], "y": scale * (mu * (1 - z["x"] ** 2) * z["y"] - z["x"])}

    z0s, mus = batch(7)
    z0s = {"x": z0s[:, 0], "y": z0s[:, 1]}
    args = (mus, jnp.asarray(0.9))
    out = ensemble(field, z0s, TS, args, args_axes=(0, None))
    ref = vmapped(field, z0s, TS, args, in_axes=(0, None))
    assert out["x"].shape == (7, 5)
    for k in ("x", "y"):
        np.testing.assert_array_equal(out[k], ref[k])


def test_return_solution_keeps_per_member_stats():
    z0s, mus = batch(6)
    sol = ensemble(vdp, z0s, TS, mus, return_solution=True, rtol=1e-8, atol=1e-8)
    ref = jax.vmap(
        lambda z, a: odejax.solve(vdp, z, TS[0], TS[-1], args=a, ts=TS, rtol=1e-8, atol=1e-8)
    )(z0s, mus)
    assert sol.ts.shape == (6, 5) and sol.status.shape == (6,)
    np.testing.assert_array_equal(sol.zs, ref.zs)
    for k in ("num_steps", "num_accepted", "num_rejected", "nfe"):
        np.testing.assert_array_equal(sol.stats[k], ref.stats[k])
    assert len(set(np.asarray(sol.stats["num_steps"]).tolist())) > 1  # members differ
    assert np.all(np.asarray(sol.status) == 0)


def test_chunks_pad_and_drop():
    z0s, mus = batch(7)
    ref = vmapped(vdp, z0s, TS, mus)
    # 7 members in chunks of 3: the last chunk is padded with copies of member 6, then dropped.
    np.testing.assert_array_equal(ensemble(vdp, z0s, TS, mus, chunk_size=3), ref)


def test_shared_args_and_jit():
    z0s, _ = batch(5)
    run = jax.jit(lambda z, mu: ensemble(vdp, z, TS, mu, args_axes=None))
    np.testing.assert_array_equal(run(z0s, 2.0), vmapped(vdp, z0s, TS, 2.0, in_axes=None))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(z0s={"a": jnp.ones((4, 2)), "b": jnp.ones((3,))}), ValueError, "z0s"),
        (dict(z0s=jnp.ones(())), ValueError, "z0s"),
        (dict(z0s=jnp.ones((0, 2))), ValueError, "z0s"),
        (dict(args=jnp.ones(5)), ValueError, "args leaf 0 has batch size 5"),
        (dict(args=(jnp.ones(4), jnp.ones(3)), args_axes=(0, 0)), ValueError, "args leaf 1"),
        (dict(args=2.0), ValueError, "args_axes=None"),
        (dict(args=(jnp.ones(4), 1.0), args_axes=(0,)), ValueError, "args_axes"),
        (dict(args_axes="x"), ValueError, "args_axes"),
        (dict(mesh=Mesh(np.asarray(jax.devices()), ("x",)), axis_name="y"), ValueError, "axis"),
        (dict(mesh=object()), TypeError, "mesh"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=1.5), TypeError, "chunk_size"),
        (dict(ts=jnp.ones(1)), ValueError, "ts"),
        (dict(dense=True), TypeError, "dense"),
        (dict(t0=0.0), TypeError, "t0"),
        (
            dict(event=odejax.Event(lambda z, t, a: z[0]), adjoint="checkpoint"),
            NotImplementedError,
            "higher_order=True",
        ),
    ],
)
def test_bad_input(kwargs, exc, match):
    call = dict(f=vdp, z0s=jnp.ones((4, 2)), ts=TS, args=jnp.ones(4))
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        ensemble(**call)


@pytest.mark.parametrize("adjoint", ["backsolve", "checkpoint"])
def test_jvp_names_the_adjoint_to_use(adjoint):
    """As for solve: jax.jvp of a custom reverse-mode rule gets odejax's message."""
    mus = jnp.ones(4)
    with pytest.raises(TypeError, match="adjoint='forward'"):
        jax.jvp(lambda m: ensemble(vdp, jnp.ones((4, 2)), TS, m, adjoint=adjoint), (mus,), (mus,))


# --- four devices, in a child process -----------------------------------------------------------

PRELUDE = """
import json, os
import jax, jax.numpy as jnp, numpy as np
import equinox as eqx
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import odejax
from odejax._ensemble import ensemble
assert len(jax.devices()) == 4, jax.devices()

def vdp(z, t, mu):
    x, y = z
    return jnp.stack([y, mu * (1 - x**2) * y - x])

def vmapped(f, z0s, ts, args, in_axes=0, **opts):
    return jax.vmap(lambda z, a: odejax.odeint(f, z, ts, a, **opts), in_axes=(0, in_axes))(
        z0s, args)

def batch(n, mu_max=5.0):
    mus = jnp.linspace(0.5, mu_max, n)
    z0s = jnp.stack([jnp.linspace(1.0, 2.0, n), jnp.linspace(-0.5, 0.5, n)], axis=1)
    return z0s, mus

def maxdiff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)

def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

TS = jnp.linspace(0.0, 4.0, 5)
r = {}
"""

FORWARD = """
z0s, mus = batch(16)
ref = vmapped(vdp, z0s, TS, mus)
out = ensemble(vdp, z0s, TS, mus)
r["shape"] = list(out.shape)
r["exact"] = same(out, ref)  # 4 members per device

sol = ensemble(vdp, z0s, TS, mus, return_solution=True)
sref = jax.vmap(lambda z, a: odejax.solve(vdp, z, 0.0, 4.0, args=a, ts=TS))(z0s, mus)
r["sol_exact"] = same(sol.zs, ref)
r["stats_equal"] = all(np.array_equal(sol.stats[k], sref.stats[k]) for k in sol.stats)
r["steps"] = np.asarray(sol.stats["num_steps"]).tolist()

# 6 members on 4 devices: padded to 8 (2 per device, the last device gets 2 copies of member 5)
out6 = ensemble(vdp, z0s[:6], TS, mus[:6])
r["pad_shape"] = list(out6.shape)
slices = jnp.concatenate([vmapped(vdp, z0s[i:i + 2], TS, mus[i:i + 2]) for i in (0, 2, 4)])
r["pad_exact_slices"] = same(out6, slices)
r["pad_diff_full"] = maxdiff(out6, ref[:6])

# chunks: 4 per device in chunks of 3 (padded to 6 per device); chunks of 2
r["chunk3_exact"] = same(ensemble(vdp, z0s, TS, mus, chunk_size=3), out)
r["chunk2_diff"] = maxdiff(ensemble(vdp, z0s, TS, mus, chunk_size=2), out)

# pytree args, one shared; inputs already sharded over the batch; output sharded likewise
mesh = Mesh(np.asarray(jax.devices()), ("b",))
sh = NamedSharding(mesh, P("b"))
f2 = lambda z, t, a: vdp(z, t, a[0]) * a[1]
args = (jax.device_put(mus, sh), jnp.asarray(0.8))
out2 = ensemble(f2, jax.device_put(z0s, sh), TS, args, args_axes=(0, None), mesh=mesh)
r["pytree_args_exact"] = same(out2, vmapped(f2, z0s, TS, (mus, 0.8), in_axes=(0, None)))
r["out_sharded"] = out2.sharding.is_equivalent_to(sh, out2.ndim)

# a 2 x 2 mesh: batch over its axis "y" (8 per device), replicated over "x"
mesh2 = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("x", "y"))
r["mesh2_exact"] = same(ensemble(vdp, z0s, TS, mus, mesh=mesh2, axis_name="y"), ref)
try:
    ensemble(vdp, z0s, TS, mus, mesh=mesh2, axis_name="batch")
    r["bad_axis"] = "no error"
except ValueError as e:
    r["bad_axis"] = str(e)

# failures stay per member (throw=False)
zf, mf = batch(8, mu_max=40.0)
solf = ensemble(vdp, zf, TS, mf, return_solution=True, max_steps=60, throw=False)
reff = jax.vmap(lambda z, a: odejax.solve(vdp, z, 0.0, 4.0, args=a, ts=TS, max_steps=60,
                                          throw=False))(zf, mf)
r["status"] = np.asarray(solf.status).tolist()
r["status_equal"] = bool(np.array_equal(solf.status, reff.status))

# throw=True with one member failing on one device, the batch padded (5 on 4 devices): every
# device raises the same error (none is left waiting at a collective)
kf = jnp.ones(5).at[2].set(1e9)
try:
    ensemble(lambda z, t, a: -a * z, jnp.ones((5, 2)), TS, kf, max_steps=20).block_until_ready()
    r["raised"] = "no error"
except Exception as e:
    r["raised"] = str(e)
print(json.dumps(r))
"""

GRADIENTS = """
class Field(eqx.Module):
    w: jax.Array
    def __call__(self, z, t, args):
        mu, k = args
        return k * vdp(z, t, mu) + self.w * jnp.sin(t)

z0s, mus = batch(12, mu_max=2.0)
ts = jnp.linspace(0.0, 2.0, 3)
field, k = Field(jnp.array([0.3, -0.2])), jnp.asarray(0.9)
OPTS = {
    "backsolve": dict(rtol=1e-8, atol=1e-8),
    "checkpoint": dict(solver="rk4", dt0=0.05, max_steps=64),  # fixed steps: compiles faster
    "forward": dict(rtol=1e-8, atol=1e-8),
}

def loss_ens(field, z0s, mus, k, adjoint):
    zs = ensemble(field, z0s, ts, (mus, k), args_axes=(0, None), adjoint=adjoint, **OPTS[adjoint])
    return jnp.sum(zs ** 2)

def loss_vmap(field, z0s, mus, k, adjoint):
    zs = vmapped(field, z0s, ts, (mus, k), in_axes=(0, None), adjoint=adjoint, **OPTS[adjoint])
    return jnp.sum(zs ** 2)

def rel(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-300))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

for adjoint in ("backsolve", "checkpoint"):
    g = eqx.filter_grad(lambda p: loss_ens(*p, adjoint))((field, z0s, mus, k))
    gref = eqx.filter_grad(lambda p: loss_vmap(*p, adjoint))((field, z0s, mus, k))
    r[adjoint] = rel(g, gref)
    r[adjoint + "_nonzero"] = all(bool(jnp.any(x != 0)) for x in jax.tree.leaves(g))

tangents = (jnp.ones_like(z0s), jnp.linspace(-1.0, 1.0, 12), jnp.asarray(0.5))
fwd = lambda fn: jax.jvp(lambda z, m, kk: fn(field, z, m, kk, "forward"), (z0s, mus, k), tangents)
(v, t), (vref, tref) = fwd(loss_ens), fwd(loss_vmap)
r["forward"] = rel((v, t), (vref, tref))
print(json.dumps(r))
"""


def run_child(code: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_match_vmap():
    r = run_child(FORWARD)
    assert r["shape"] == [16, 5, 2], r
    assert r["exact"], "4 devices x 4 members differ from one vmap over the 16"
    assert r["sol_exact"] and r["stats_equal"]
    assert len(set(r["steps"])) > 4, r["steps"]  # each member kept its own step count
    assert r["pad_shape"] == [6, 5, 2]
    assert r["pad_exact_slices"]
    assert r["pad_diff_full"] <= 1e-12
    assert r["chunk3_exact"]
    assert r["chunk2_diff"] <= 1e-12
    assert r["pytree_args_exact"]
    assert r["out_sharded"]
    assert r["mesh2_exact"]
    assert "'batch'" in r["bad_axis"] and "axis_name" in r["bad_axis"]
    assert r["status_equal"] and 0 < sum(s != 0 for s in r["status"]) < 8
    assert "MAX_STEPS_REACHED" in r["raised"] and "1 of 5 batch members" in r["raised"], r


def test_four_devices_gradients_match_vmap():
    r = run_child(GRADIENTS)
    assert r["backsolve"] <= 1e-12, r
    assert r["checkpoint"] <= 1e-12, r
    assert r["forward"] <= 1e-12, r
    assert r["backsolve_nonzero"] and r["checkpoint_nonzero"]
