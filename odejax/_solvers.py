"""The built-in Runge–Kutta methods, by object and by name.

Coefficients are published facts: Dormand & Prince (1980) for ``dopri5`` with Hairer's dense
output (``contd5``), Tsitouras (2011) for ``tsit5``, Bogacki & Shampine (1989) for ``bosh3`` and
Prince & Dormand (1981) for ``dopri8``. The stiff solvers (``kvaerno5``, ``rodas5``) live in
:mod:`odejax._implicit` and :mod:`odejax._rosenbrock` and are resolved by name here too.
"""

from __future__ import annotations

import functools

import numpy as np

from ._tableau import ButcherTableau, Solver

__all__ = [
    "RK4",
    "SOLVERS",
    "STIFF_SOLVERS",
    "Bosh3",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Heun",
    "Midpoint",
    "Tsit5",
    "get_solver",
]


def _lower(rows: list[list[float]]) -> np.ndarray:
    """Strictly lower-triangular ``(s, s)`` matrix from its rows 2..s."""
    s = len(rows) + 1
    a = np.zeros((s, s))
    for i, row in enumerate(rows, start=1):
        a[i, : len(row)] = row
    return a


# Each factory returns one shared instance, so `solver=odejax.Tsit5()` twice hits the jit cache.
@functools.cache
def Euler() -> Solver:  # noqa: N802
    """Forward Euler: order 1, fixed step, cubic Hermite dense output."""
    return Solver("euler", ButcherTableau(a=np.zeros((1, 1)), b=[1.0], c=[0.0]), order=1)


@functools.cache
def Midpoint() -> Solver:  # noqa: N802
    """Explicit midpoint rule: order 2, fixed step."""
    tab = ButcherTableau(a=_lower([[0.5]]), b=[0.0, 1.0], c=[0.0, 0.5])
    return Solver("midpoint", tab, order=2)


@functools.cache
def Heun() -> Solver:  # noqa: N802
    """Heun's method (explicit trapezoidal rule): order 2, fixed step."""
    tab = ButcherTableau(a=_lower([[1.0]]), b=[0.5, 0.5], c=[0.0, 1.0])
    return Solver("heun", tab, order=2)


@functools.cache
def RK4() -> Solver:  # noqa: N802
    """The classical fourth-order Runge–Kutta method: fixed step."""
    tab = ButcherTableau(
        a=_lower([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]),
        b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
        c=[0.0, 0.5, 0.5, 1.0],
    )
    return Solver("rk4", tab, order=4)


@functools.cache
def Bosh3() -> Solver:  # noqa: N802
    """Bogacki–Shampine 3(2): 4 stages, FSAL, cubic Hermite dense output."""
    b = [2 / 9, 1 / 3, 4 / 9, 0.0]
    b_hat = [7 / 24, 1 / 4, 1 / 3, 1 / 8]
    tab = ButcherTableau(
        a=_lower([[1 / 2], [0.0, 3 / 4], b[:3]]),
        b=b,
        c=[0.0, 1 / 2, 3 / 4, 1.0],
        e=np.subtract(b, b_hat),
    )
    return Solver("bosh3", tab, order=3, error_order=2)


@functools.cache
def Dopri5() -> Solver:  # noqa: N802
    """Dormand–Prince 5(4): 7 stages, FSAL, Hairer's fourth-order dense output."""
    b = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
    # The embedded fourth-order weights of the Diffrax / jax.experimental.ode / torchdiffeq
    # implementations (rather than Hairer's 5179/57600, ... pair), so step counts compare.
    b_hat = np.array(
        [1951 / 21600, 0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
    )
    tab = ButcherTableau(
        a=_lower(
            [
                [1 / 5],
                [3 / 40, 9 / 40],
                [44 / 45, -56 / 15, 32 / 9],
                [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
                [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
                list(b[:6]),
            ]
        ),
        b=b,
        c=[0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
        e=b - b_hat,
    )
    # Hairer's contd5: z(θ) = z0 + dt[θ r2 + θ(1-θ) r3 + θ²(1-θ) r4 + θ²(1-θ)² r5] with
    # r2 = b, r3 = e1 - b, r4 = 2b - e1 - e7, r5 = d (stage weights; e_i is the unit vector).
    d = np.array(
        [
            -12715105075 / 11282082432,
            0,
            87487479700 / 32700410799,
            -10690763975 / 1880347072,
            701980252875 / 199316789632,
            -1453857185 / 822651844,
            69997945 / 29380423,
        ]
    )
    e1, e7 = np.eye(7)[0], np.eye(7)[6]
    r2, r3, r4, r5 = b, e1 - b, 2 * b - e1 - e7, d
    p = np.stack([r2 + r3, -r3 + r4 + r5, -r4 - 2 * r5, r5], axis=1)
    p = np.vstack([p, np.zeros((1, 4))])  # the end-point derivative is stage 7 (FSAL)
    return Solver("dopri5", tab, order=5, error_order=4, interpolant=p)


def _tsit5_interpolant() -> np.ndarray:
    """Tsitouras' dense output, ``b_i(θ)`` given as scaled products of factors in θ."""
    poly = np.polynomial.polynomial
    t = [0.0, 1.0]  # the polynomial θ
    t2 = poly.polypow(t, 2)
    factors = [
        (-1.0530884977290216, [t, [-1.3299890189751412, 1], [0.7139816917074209, -1.4364028541716351, 1]]),
        (0.1017, [t2, [1.2949852507374631, -2.1966568338249754, 1]]),
        (2.490627285651252793, [t2, [1.57803468208092486, -2.38535645472061657, 1]]),
        (-16.54810288924490272, [t2, [-1.21712927295533244, 1], [-0.61620406037800089, 1]]),
        (47.37952196281928122, [t2, [-1.203071208372362603, 1], [-0.658047292653547382, 1]]),
        (-34.87065786149660974, [t2, [-1.2, 1], [-2 / 3, 1]]),
        (2.5, [t2, [-1.0, 1], [-0.6, 1]]),
    ]  # fmt: skip
    p = np.zeros((8, 4))
    for i, (scale, fs) in enumerate(factors):
        coeffs = functools.reduce(poly.polymul, fs) * scale  # ascending powers, θ^0..θ^4
        p[i, : len(coeffs) - 1] = coeffs[1:]
    return p


@functools.cache
def Tsit5() -> Solver:  # noqa: N802
    """Tsitouras 5(4): 7 stages, FSAL, fourth-order dense output. The default solver."""
    b = np.array(
        [
            0.09646076681806522951816731316512876333711995238157997181903319145764851595,
            0.01,
            0.4798896504144995747752495322905965199130404621990332488332634944254542060,
            1.379008574103741893192274821856872770756462643091360525934940067397245698,
            -3.290069515436080679901047585711363850115683290894936158531296799594813811,
            2.324710524099773982415355918398765796109060233222962411944060046314465391,
            0.0,
        ]
    )
    b_hat = np.array(
        [
            0.09468075576583945807478876255758922856117527357724631226139574065785592789,
            0.009183565540343253096776363936645313759813746240984095238905939532922955247,
            0.4877705284247615707855642599631228241516691959761363774365216240304071651,
            1.234297566930478985655109673884237654035539930748192848315425833500484878,
            -2.707712349983525454881109975059321670689605166938197378763992255714444407,
            1.866628418170587035753719399566211498666255505244122593996591602841258328,
            1 / 66,
        ]
    )
    tab = ButcherTableau(
        a=_lower(
            [
                [0.161],
                [
                    -0.008480655492356988544426874250230774675121177393430391537369234245294192976,
                    0.3354806554923569885444268742502307746751211773934303915373692342452941929,
                ],
                [
                    2.897153057105493432130432594192938764924887287701866490314866693455023795,
                    -6.359448489975074843148159912383825625952700647415626703305928850207288721,
                    4.362295432869581411017727318190886861027813359713760212991062156752264926,
                ],
                [
                    5.325864828439256604428877920840511317836476253097040101202360397727981648,
                    -11.74888356406282787774717033978577296188744178259862899288666928009020615,
                    7.495539342889836208304604784564358155658679161518186721010132816213648793,
                    -0.09249506636175524925650207933207191611349983406029535244034750452930469056,
                ],
                [
                    5.861455442946420028659251486982647890394337666164814434818157239052507339,
                    -12.92096931784710929170611868178335939541780751955743459166312250439928519,
                    8.159367898576158643180400794539253485181918321135053305748355423955009222,
                    -0.07158497328140099722453054252582973869127213147363544882721139659546372402,
                    -0.02826905039406838290900305721271224146717633626879770007617876201276764571,
                ],
                list(b[:6]),
            ]
        ),
        b=b,
        c=[0, 0.161, 0.327, 0.9, 0.9800255409045096857298102862870245954942137979563024768, 1, 1],
        e=b - b_hat,
    )
    return Solver("tsit5", tab, order=5, error_order=4, interpolant=_tsit5_interpolant())


@functools.cache
def Dopri8() -> Solver:  # noqa: N802
    """Prince–Dormand 8(7): 13 stages, fifth-order dense output (no extra stages)."""
    from ._dopri8 import dopri8_solver

    return dopri8_solver()


SOLVERS = {
    "euler": Euler,
    "midpoint": Midpoint,
    "heun": Heun,
    "rk4": RK4,
    "bosh3": Bosh3,
    "dopri5": Dopri5,
    "tsit5": Tsit5,
    "dopri8": Dopri8,
}


def _stiff_solvers() -> dict:
    from ._implicit import Kvaerno5
    from ._rosenbrock import Rodas5

    return {"kvaerno5": Kvaerno5, "rodas5": Rodas5}


# The stiff solvers, by name (kept apart from SOLVERS, the explicit Runge–Kutta tableaux).
STIFF_SOLVERS = _stiff_solvers()


def get_solver(solver):
    """Resolve ``solver=`` (a name, a :class:`Solver` or a stiff solver object) to a solver."""
    from ._implicit import ImplicitSolver
    from ._rosenbrock import RosenbrockSolver

    if isinstance(solver, Solver | ImplicitSolver | RosenbrockSolver):
        return solver
    names = sorted(SOLVERS) + sorted(STIFF_SOLVERS)
    if isinstance(solver, str):
        key = solver.lower()
        if key in SOLVERS:
            return SOLVERS[key]()
        if key in STIFF_SOLVERS:
            return STIFF_SOLVERS[key]()
        raise ValueError(f"Unknown solver={solver!r}; valid names are {names}.")
    raise TypeError(
        f"solver= must be a name ({names}) or an odejax solver object, got {type(solver)}."
    )
