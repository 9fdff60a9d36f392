"""The checkpointed while loop behind ``adjoint="checkpoint"``: values, gradients, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odejax._loop import checkpointed_while


def cond(c):
    return c[0] < c[2]


def body(c):
    i, x, n = c
    return i + 1, jnp.sin(x) * 1.1 + 0.01 * x**2, n


def loop(x, n, max_iters, checkpoints):
    _, x, _ = checkpointed_while(cond, body, (0, x, n), max_iters, checkpoints)
    return jnp.sum(x**2)


def reference(x, n):
    for _ in range(n):
        x = jnp.sin(x) * 1.1 + 0.01 * x**2
    return jnp.sum(x**2)


@pytest.mark.parametrize("max_iters", [1, 5, 8, 9, 70, 300])
@pytest.mark.parametrize("checkpoints", [None, 1, 3])
def test_value_and_gradient_match_the_unrolled_loop(max_iters, checkpoints):
    x = jnp.array([0.3, -1.2, 2.0])
    for n in sorted({0, 1, max_iters // 2, max_iters - 1, max_iters}):
        val, grad = jax.value_and_grad(loop)(x, n, max_iters, checkpoints)
        ref_val, ref_grad = jax.value_and_grad(reference)(x, n)
        np.testing.assert_allclose(val, ref_val, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12)


def test_iterations_beyond_max_iters_do_not_run():
    x = jnp.array([0.3])
    np.testing.assert_allclose(loop(x, 50, 20, None), reference(x, 20), rtol=1e-12)


def _temp_bytes(max_iters, checkpoints):
    x = jnp.ones(256)
    grad = jax.jit(jax.grad(loop), static_argnums=(2, 3))
    compiled = grad.lower(x, 3, max_iters, checkpoints).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_nested_is_sublinear_and_one_checkpoint_is_linear():
    nested = [_temp_bytes(n, None) for n in (100, 10_000)]
    plain = [_temp_bytes(n, 1) for n in (100, 10_000)]
    assert nested[1] < 10 * nested[0]  # 100x the iterations: at most sqrt(100)x the memory
    assert plain[1] > 50 * plain[0]  # every iteration's residuals stored
