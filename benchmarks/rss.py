"""Peak resident memory (RSS) of a fresh subprocess computing one ``grad_vdp`` gradient.

The parent runs ``python -m benchmarks.rss LABEL [MAX_STEPS]`` once per gradient method and
``max_steps``; the child imports the libraries, starts JAX (x64), makes the inputs and records
its peak RSS (``VmHWM``, see :func:`_peak_kib`) as the baseline, then traces and compiles the
gradient (``jax.jit(jax.grad(loss)).lower(...).compile()``, peak RSS again) and runs it once (peak
RSS a third time), and prints the three figures as JSON. Compilation itself usually sets the
peak of a JAX process, so both are reported. torch (``torchdiffeq``) has nothing to compile: its
child runs the eager gradient once. Two children run at a time (they are not timed).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .records import RssResult
from .variants import METHODS, available

__all__ = ["RSS_LABELS", "measure_rss"]

RSS_LABELS = (
    "odejax/backsolve",
    "odejax/checkpoint",
    "diffrax/backsolve",
    "diffrax/checkpoint",
    "jax_ode/adjoint",
    "torchdiffeq/adjoint",
    "torchdiffeq/direct",
)
_WITH_MAX_STEPS = ("odejax", "diffrax")


def _peak_kib() -> int:
    """Peak RSS of this process so far, KiB: ``VmHWM`` from ``/proc/self/status`` where there
    is one (``ru_maxrss`` survives ``exec`` on Linux, so a child started from a big parent
    would report the parent's peak), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _child(label: str, max_steps: int | None) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import gradients

    impl = METHODS[label][0]
    if impl == "torchdiffeq":
        call = gradients.GRAD_VDP_BUILDERS[label]()
        base = _peak_kib()
        call()
        return {"base_kib": base, "compiled_kib": None, "peak_kib": _peak_kib()}
    import importlib

    importlib.import_module({"jax_ode": "jax.experimental.ode"}.get(impl, impl))
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))
    z0, p, ts = gradients.vdp_inputs()
    grad = jax.grad(gradients.vdp_loss(label, max_steps), argnums=(0, 1), has_aux=True)
    base = _peak_kib()
    compiled = jax.jit(grad).lower(z0, p, ts).compile()
    after_compile = _peak_kib()
    jax.block_until_ready(compiled(z0, p, ts))
    return {"base_kib": base, "compiled_kib": after_compile, "peak_kib": _peak_kib()}


def _run_child(label: str, max_steps: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rss", label]
    if max_steps is not None:
        cmd.append(str(max_steps))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])


QUICK_LABELS = ("odejax/backsolve", "odejax/checkpoint", "diffrax/checkpoint")


def measure_rss(
    impls: Sequence[str], max_steps: Sequence[int], log, quick: bool = False, workers: int = 2
) -> list[RssResult]:
    """Peak RSS of each gradient method (and each ``max_steps`` where the library takes one);
    ``quick``: :data:`QUICK_LABELS` only."""
    jobs = []
    missing = set()
    for label in QUICK_LABELS if quick else RSS_LABELS:
        impl = METHODS[label][0]
        if impl not in impls:
            continue
        if not available(impl):
            missing.add(impl)
            continue
        sizes = max_steps if impl in _WITH_MAX_STEPS else (None,)
        jobs += [(label, n) for n in sizes]
    for impl in sorted(missing):
        log(f"rss: {impl} skipped (not installed)", keep=True)
    rows = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {job: pool.submit(_run_child, *job) for job in jobs}
        for (label, n), future in futures.items():
            try:
                out = future.result()
            except Exception as e:  # a broken implementation must not end the run
                log(f"rss: {label} max_steps={n} failed: {e!r:.300}", keep=True)
                continue
            rows.append(
                RssResult(
                    label=label,
                    impl=METHODS[label][0],
                    method=METHODS[label][2],
                    max_steps=n,
                    **out,
                )
            )
    return rows


if __name__ == "__main__":
    _label = sys.argv[1]
    _steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(_child(_label, _steps)))
