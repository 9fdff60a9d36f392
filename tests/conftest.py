import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled programs after each test module.

    XLA:CPU maps every compiled kernel into memory of its own; a single process compiling the
    whole suite would pass the kernel's limit on memory mappings (``vm.max_map_count``, 65530
    by default) and crash inside a later compilation.
    """
    yield
    jax.clear_caches()
