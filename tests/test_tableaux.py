"""The built-in Runge–Kutta methods as data, and their measured orders of convergence.

Three layers:

* construction checks of :class:`odejax.ButcherTableau` / :class:`odejax.Solver` (built-in
  tableaux pass, broken ones raise ``ValueError``);
* the algebraic order conditions (Butcher's rooted trees) of every tableau, its embedded
  estimate and its dense-output interpolant, evaluated in numpy;
* the empirical order: the log–log slope of the global error against the (fixed) step size on a
  linear system ``z' = A z`` whose exact solution is ``expm(A t) z0``, at step ends (the method's
  order) and at off-step save times (the dense output's order).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import odejax
from odejax import ButcherTableau, Solver

ALL = ["euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5", "dopri8"]
ORDER = {
    "euler": 1,
    "midpoint": 2,
    "heun": 2,
    "rk4": 4,
    "bosh3": 3,
    "dopri5": 5,
    "tsit5": 5,
    "dopri8": 8,
}
ERROR_ORDER = {"bosh3": 2, "dopri5": 4, "tsit5": 4, "dopri8": 7}
# Order q of the dense output (interpolation error O(dt^(q+1)) in one step): cubic Hermite is
# third order but no better than the step itself; dopri5/tsit5 ship fourth-order interpolants
# and dopri8 a fifth-order one.
DENSE_ORDER = {
    "euler": 1,
    "midpoint": 2,
    "heun": 2,
    "rk4": 3,
    "bosh3": 3,
    "dopri5": 4,
    "tsit5": 4,
    "dopri8": 5,
}
FIXED = {"euler", "midpoint", "heun", "rk4"}


# --------------------------------------------------------------------------------------------
# Construction checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_builtin_tableau_passes_checks(name):
    solver = odejax.get_solver(name)
    assert solver is odejax.get_solver(name.upper())  # names are case-insensitive, one instance
    assert solver.name == name
    assert solver.order == ORDER[name]
    assert solver.adaptive == (name not in FIXED)
    assert solver.error_order == ERROR_ORDER.get(name)
    tab = solver.tableau
    s = tab.num_stages
    a, b, c = tab.a, tab.b, tab.c
    assert a.shape == (s, s) and b.shape == (s,) and c.shape == (s,)
    assert np.all(np.triu(a) == 0)
    assert c[0] == 0
    np.testing.assert_allclose(a.sum(axis=1), c, atol=1e-12)
    assert b.sum() == pytest.approx(1.0, abs=1e-12)
    if solver.adaptive:
        assert tab.e.shape == (s,)
        assert tab.e.sum() == pytest.approx(0.0, abs=1e-12)
    else:
        assert tab.e is None
    # Rebuilding from the public coefficients passes the same checks.
    again = Solver(
        name + "_copy",
        ButcherTableau(a=a, b=b, c=c, e=tab.e),
        solver.order,
        error_order=solver.error_order,
        interpolant=solver.interpolant,
    )
    assert again.adaptive == solver.adaptive
    assert again.tableau.fsal == tab.fsal
    # The interpolant reproduces the step at θ = 1 (the end-point row folds onto the last stage
    # for FSAL methods, and is zero otherwise).
    w1 = solver.interpolant.sum(axis=1)
    w = w1[:s].copy()
    if tab.fsal:
        w[-1] += w1[s]
    else:
        assert abs(w1[s]) < 1e-12
    np.testing.assert_allclose(w, b, atol=1e-12)


def test_builtin_fsal_flags():
    fsal = {name for name in ALL if odejax.get_solver(name).tableau.fsal}
    assert fsal == {"bosh3", "dopri5", "tsit5"}


def test_solvers_registry():
    assert sorted(odejax.SOLVERS) == sorted(ALL)
    assert odejax.get_solver("tsit5") is odejax.Tsit5()
    assert odejax.get_solver(odejax.Dopri8()) is odejax.Dopri8()


_GOOD_A = [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # rows of `a` not summing to `c`
        (dict(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 0.9]), "rows .*do not sum to `c`"),
        # weights not summing to 1
        (dict(a=_GOOD_A, b=[0.5, 0.6], c=[0.0, 1.0]), "`b` sum to .*not 1"),
        # error weights not summing to 0
        (dict(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 1.0], e=[0.1, 0.0]), "error weights sum to .*not 0"),
        # not strictly lower triangular (implicit)
        (dict(a=[[0.0, 0.5], [0.5, 0.0]], b=[0.5, 0.5], c=[0.5, 0.5]), "strictly lower triangular"),
        (dict(a=[[0.5, 0.0], [0.5, 0.0]], b=[0.5, 0.5], c=[0.5, 0.5]), "strictly lower triangular"),
        # c[0] != 0 (with a lower-triangular a)
        (dict(a=[[0.0, 0.0], [1.0, 0.0]], b=[0.5, 0.5], c=[0.1, 1.0]), r"c\[0\] == 0"),
        # shapes that disagree
        (dict(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 1.0, 1.0]), "shapes disagree"),
        (dict(a=[[0.0]], b=[0.5, 0.5], c=[0.0, 1.0]), "shapes disagree"),
        (
            dict(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 1.0], e=[0.1, -0.05, -0.05]),
            "error weights have shape",
        ),
    ],
)
def test_broken_tableau_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**kwargs)


def test_broken_solver_raises():
    heun = ButcherTableau(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 1.0])
    heun_e = ButcherTableau(a=_GOOD_A, b=[0.5, 0.5], c=[0.0, 1.0], e=[0.5, -0.5])
    with pytest.raises(ValueError, match="error_order"):
        Solver("x", heun, 2, error_order=1)  # error order without an estimate
    with pytest.raises(ValueError, match="error_order"):
        Solver("x", heun_e, 2)  # estimate without an error order
    with pytest.raises(ValueError, match="interpolant must have shape"):
        Solver("x", heun, 2, interpolant=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="θ=1"):
        Solver("x", heun, 2, interpolant=np.ones((3, 2)))
    # A valid pair builds.
    assert Solver("x", heun_e, 2, error_order=1).adaptive


# --------------------------------------------------------------------------------------------
# Algebraic order conditions (rooted trees)
# --------------------------------------------------------------------------------------------


@functools.cache
def _trees(n: int) -> tuple:
    """All rooted trees with ``n`` nodes, each a non-increasing tuple of child-tree indices."""
    if n == 1:
        return ((),)
    out = []
    catalogue = [(m, i) for m in range(1, n) for i in range(len(_trees(m)))]

    def extend(prefix, remaining, start):
        if remaining == 0:
            out.append(tuple(prefix))
            return
        for k in range(start, len(catalogue)):
            m, _ = catalogue[k]
            if m <= remaining:
                extend([*prefix, catalogue[k]], remaining - m, k)

    extend([], n - 1, 0)
    return tuple(out)


def _tree_data(a: np.ndarray, n: int):
    """``[(g, gamma)]`` per tree of ``n`` nodes: stage vector of elementary weights, density."""
    s = a.shape[0]

    @functools.cache
    def g_gamma(m, i):
        children = _trees(m)[i]
        g = np.ones(s)
        gamma = m
        for mc, ic in children:
            gc, gammac = g_gamma(mc, ic)
            g = g * (a @ gc)
            gamma *= gammac
        return g, gamma

    return [g_gamma(n, i) for i in range(len(_trees(n)))]


def test_tree_counts():
    assert [len(_trees(n)) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]


def _max_residual(weights, a, n):
    return max(abs(weights @ g - 1.0 / gamma) for g, gamma in _tree_data(a, n))


@pytest.mark.parametrize("name", ALL)
def test_order_conditions(name):
    solver = odejax.get_solver(name)
    tab = solver.tableau
    p = solver.order
    # Coefficients are published rationals or 16+ digit decimals: conditions hold to ~1e-12.
    for n in range(1, p + 1):
        assert _max_residual(tab.b, tab.a, n) < 1e-10, f"order condition of order {n} fails"
    assert _max_residual(tab.b, tab.a, p + 1) > 1e-6, "method is of higher order than claimed"
    if solver.adaptive:
        b_hat = tab.b - tab.e
        q = solver.error_order
        for n in range(1, q + 1):
            assert _max_residual(b_hat, tab.a, n) < 1e-10, f"embedded order condition {n} fails"
        assert _max_residual(b_hat, tab.a, q + 1) > 1e-6


@pytest.mark.parametrize("name", ALL)
def test_dense_output_order_conditions(name):
    """``Σ_i w_i(θ) Φ_i(τ) = θ^|τ| / γ(τ)`` for every tree ``τ`` up to the dense order, all θ.

    The interpolant weights the stages and ``f(t + dt, z1)``: an extra stage with row ``b``.
    """
    solver = odejax.get_solver(name)
    tab = solver.tableau
    s = tab.num_stages
    a_ext = np.zeros((s + 1, s + 1))
    a_ext[:s, :s] = tab.a
    a_ext[s, :s] = tab.b
    interp = solver.interpolant
    q = DENSE_ORDER[name]
    thetas = np.array([0.1, 0.3, 0.5, 0.77, 1.0])

    def residual(n):
        worst = 0.0
        for theta in thetas:
            w = interp @ theta ** np.arange(1, interp.shape[1] + 1)
            for g, gamma in _tree_data(a_ext, n):
                worst = max(worst, abs(w @ g - theta**n / gamma))
        return worst

    for n in range(1, q + 1):
        assert residual(n) < 1e-9, f"dense output condition of order {n} fails"
    assert residual(q + 1) > 1e-6, "dense output is of higher order than claimed"


# --------------------------------------------------------------------------------------------
# Empirical convergence on z' = A z
# --------------------------------------------------------------------------------------------

# Lightly damped rotation plus a decaying mode: eigenvalues ≈ -0.10 ± 1.04i and -0.19, so the
# error accumulates over T = 10 (about 1.7 periods) instead of decaying away.
A = np.array([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.2]])
Z0 = np.array([1.0, 0.5, -0.3])
T = 10.0
_K = 5  # coarse grid: every N below is a multiple of 5, so t = 2, 4, ..., 10 are step ends
_H = T / _K
GRID = np.arange(1, _K + 1) * _H
# Off-step times at a third and two thirds of each coarse interval: for N = 5·2^j steps they sit
# at θ ∈ {1/3, 2/3} of a step for every j, so the error constant does not jump between runs.
OFF = np.concatenate([np.arange(_K) * _H + _H / 3, np.arange(_K) * _H + 2 * _H / 3])
TS = np.sort(np.concatenate([GRID, OFF]))
IS_GRID = np.isin(TS, GRID)
EXACT = np.stack([scipy.linalg.expm(A * t) @ Z0 for t in TS])

# Step counts per method: in the asymptotic regime, errors above ~1e-12.
STEPS = {
    "euler": [160, 320, 640, 1280],
    "midpoint": [40, 80, 160, 320],
    "heun": [40, 80, 160, 320],
    "rk4": [20, 40, 80, 160],
    "bosh3": [20, 40, 80, 160],
    "dopri5": [20, 40, 80, 160],
    "tsit5": [80, 160, 320],
    "dopri8": [5, 10, 20],
}
DENSE_STEPS = {**STEPS, "dopri8": [10, 20, 40, 80]}


def linear(z, t, a):
    return a @ z


def fixed_step_copy(name: str) -> Solver:
    """The method's tableau without its error weights: a fixed-step solver, same interpolant."""
    s = odejax.get_solver(name)
    tab = s.tableau
    return Solver(
        name + "_fixed", ButcherTableau(tab.a, tab.b, tab.c), s.order, interpolant=s.interpolant
    )


@functools.cache
def _fixed_solver(name):
    return fixed_step_copy(name)


@functools.cache
def _errors(name: str, n: int):
    """Max error over the step-end and off-step save times, for ``n`` fixed steps."""
    sol = odejax.solve(
        linear,
        jnp.asarray(Z0),
        0.0,
        T,
        args=jnp.asarray(A),
        ts=jnp.asarray(TS),
        solver=_fixed_solver(name),
        dt0=T / n,
        max_steps=2000,
    )
    assert int(sol.stats["num_steps"]) == n
    assert int(sol.stats["num_rejected"]) == 0
    err = np.abs(np.asarray(sol.zs) - EXACT).max(axis=1)
    return err[IS_GRID].max(), err[~IS_GRID].max()


def _slope(ns, errs):
    h = T / np.asarray(ns, dtype=float)
    return np.polyfit(np.log(h), np.log(np.asarray(errs)), 1)[0]


@pytest.mark.parametrize("name", ALL)
def test_convergence_order(name):
    ns = STEPS[name]
    errs = [_errors(name, n)[0] for n in ns]
    assert min(errs) > 1e-12, errs  # still above round-off
    slope = _slope(ns, errs)
    p = ORDER[name]
    if name == "dopri8":
        # On a linear problem the leading error term of dopri8 (nearly) vanishes: ~9 observed.
        assert 7.7 <= slope <= 9.6, (slope, errs)
    else:
        assert abs(slope - p) <= 0.3, (slope, errs)


@pytest.mark.parametrize("name", ALL)
def test_dense_output_convergence_order(name):
    """Off-step saves: error O(dt^min(p, q+1)) with p the method's order, q the dense order."""
    ns = DENSE_STEPS[name]
    errs = [_errors(name, n)[1] for n in ns]
    assert min(errs) > 1e-12, errs
    slope = _slope(ns, errs)
    expected = min(ORDER[name], DENSE_ORDER[name] + 1)
    assert abs(slope - expected) <= 0.3, (slope, expected, errs)


def test_adaptive_with_huge_tolerance_takes_fixed_steps():
    """dt0 = dtmax = h with rtol = atol = 1e10: every step is accepted, so tsit5 runs fixed
    steps and agrees with its fixed-step copy."""
    n = 160
    h = T / n
    sol = odejax.solve(
        linear,
        jnp.asarray(Z0),
        0.0,
        T,
        args=jnp.asarray(A),
        ts=jnp.asarray(TS),
        solver="tsit5",
        rtol=1e10,
        atol=1e10,
        dt0=h,
        dtmax=h,
        max_steps=2000,
    )
    assert int(sol.stats["num_rejected"]) == 0
    assert int(sol.stats["num_steps"]) == n
    err = np.abs(np.asarray(sol.zs) - EXACT).max(axis=1)
    fixed_grid, fixed_off = _errors("tsit5", n)
    assert err[IS_GRID].max() == pytest.approx(fixed_grid, rel=1e-3)
    assert err[~IS_GRID].max() == pytest.approx(fixed_off, rel=1e-3)


@pytest.mark.parametrize("name", ["bosh3", "dopri5", "tsit5", "dopri8"])
def test_dense_interpolant_adaptive(name):
    """Adaptive solve with dense=True: off-step values are accurate, the interpolant of each step
    ends where the next starts, and evaluate(ts) equals the saved zs."""
    rtol = 1e-6 if name == "bosh3" else 1e-8
    sol = odejax.solve(
        linear,
        jnp.asarray(Z0),
        0.0,
        T,
        args=jnp.asarray(A),
        ts=jnp.asarray(TS),
        solver=name,
        rtol=rtol,
        atol=rtol * 1e-2,
        dense=True,
        max_steps=2000,
    )
    assert sol.result == odejax.Status.SUCCESS
    zs = np.asarray(sol.zs)
    err = np.abs(zs - EXACT).max(axis=1)
    # Global error at saves (step ends or not) within a modest multiple of the tolerance.
    assert err.max() < 100 * rtol, err
    interp = sol.interpolation
    n = int(interp.num_steps)
    assert n == int(sol.stats["num_accepted"])
    t_nodes = np.asarray(interp.t_nodes)[: n + 1]
    assert t_nodes[0] == 0.0 and t_nodes[-1] == T
    assert np.all(np.diff(t_nodes) > 0)
    z_nodes = np.asarray(interp.z_nodes)[:n]
    eps = 1e-9 * np.diff(t_nodes)[1:n]
    t_mid = (0.5 * (t_nodes[:-1] + t_nodes[1:]))[:: max(1, n // 40)]
    # One evaluate call (jitted: eager evaluate re-traces on every call) for all query times.
    parts = [TS, [0.0], t_nodes[1:n], t_nodes[1:n] + eps, [T], t_mid]
    out = np.asarray(_evaluate(sol, jnp.asarray(np.concatenate(parts))))
    got = dict(
        zip(
            ["ts", "t0", "ends", "right", "t1", "mid"],
            np.split(out, np.cumsum([len(p) for p in parts])[:-1]),
        )
    )
    # The dense interpolant reads the same polynomials as the saves.
    np.testing.assert_allclose(got["ts"], zs, rtol=1e-12, atol=1e-13)
    # Start of the first step is z0.
    np.testing.assert_allclose(got["t0"][0], Z0, rtol=0, atol=1e-15)
    # evaluate(t_nodes[i]) uses step i-1 at θ = 1; it must equal the start of step i.
    np.testing.assert_allclose(got["ends"], z_nodes[1:n], rtol=1e-12, atol=1e-13)
    # Continuity from the right: just past a node, step i at θ ≈ 0 gives nearly z_nodes[i].
    np.testing.assert_allclose(got["right"], z_nodes[1:n], rtol=0, atol=1e-8)
    # The last step ends at the saved value at t1.
    np.testing.assert_allclose(got["t1"][0], zs[-1], rtol=1e-13, atol=1e-14)
    # Accuracy of the dense output between save times too.
    exact_mid = np.stack([scipy.linalg.expm(A * t) @ Z0 for t in t_mid])
    assert np.abs(got["mid"] - exact_mid).max() < 100 * rtol


@eqx.filter_jit
def _evaluate(sol, t):
    return sol.evaluate(t)


def test_order_conditions_catch_a_typo():
    """Sanity check of the tree machinery: perturbing one rk4 weight breaks order 2."""
    rk4 = odejax.get_solver("rk4").tableau
    b = rk4.b.copy()
    b[0] += 1e-3
    b[3] -= 1e-3  # still sums to 1
    assert _max_residual(b, rk4.a, 1) < 1e-14
    assert _max_residual(b, rk4.a, 2) > 1e-4
    assert math.isclose(_max_residual(rk4.b, rk4.a, 4), 0.0, abs_tol=1e-14)
