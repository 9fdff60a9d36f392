"""odejax: solve and differentiate ordinary differential equations in JAX."""

from ._adjoint import BacksolveAdjoint, CheckpointAdjoint, ForwardMode, backward_stats
from ._checks import OdeSolveError
from ._controller import PIController
from ._solution import DenseInterpolation, Solution, Status
from ._solve import odeint, solve
from ._solvers import RK4, SOLVERS, Bosh3, Dopri5, Dopri8, Euler, Heun, Midpoint, Tsit5, get_solver
from ._tableau import ButcherTableau, Solver

__version__ = "0.1.0"

__all__ = [
    "RK4",
    "SOLVERS",
    "BacksolveAdjoint",
    "Bosh3",
    "ButcherTableau",
    "CheckpointAdjoint",
    "DenseInterpolation",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ForwardMode",
    "Heun",
    "Midpoint",
    "OdeSolveError",
    "PIController",
    "Solution",
    "Solver",
    "Status",
    "Tsit5",
    "backward_stats",
    "get_solver",
    "odeint",
    "solve",
]
