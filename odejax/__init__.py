"""odejax: solve and differentiate ordinary differential equations in JAX."""

from . import datasets, nn, train
from ._adjoint import BacksolveAdjoint, CheckpointAdjoint, ForwardMode, backward_stats
from ._checks import OdeSolveError
from ._controller import PIController
from ._ensemble import ensemble
from ._events import Event
from ._implicit import ImplicitSolver, Kvaerno5
from ._rosenbrock import Rodas5, RosenbrockSolver
from ._solution import DenseInterpolation, Solution, Status
from ._solve import odeint, solve
from ._solvers import (
    RK4,
    SOLVERS,
    STIFF_SOLVERS,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Heun,
    Midpoint,
    Tsit5,
    get_solver,
)
from ._tableau import ButcherTableau, Solver

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "SOLVERS",
    "STIFF_SOLVERS",
    "BacksolveAdjoint",
    "Bosh3",
    "ButcherTableau",
    "CheckpointAdjoint",
    "DenseInterpolation",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Event",
    "ForwardMode",
    "Heun",
    "ImplicitSolver",
    "Kvaerno5",
    "Midpoint",
    "OdeSolveError",
    "PIController",
    "Rodas5",
    "RosenbrockSolver",
    "Solution",
    "Solver",
    "Status",
    "Tsit5",
    "backward_stats",
    "datasets",
    "ensemble",
    "get_solver",
    "nn",
    "odeint",
    "solve",
    "train",
]
