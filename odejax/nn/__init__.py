"""``odejax.nn``: neural ODE models as Equinox modules (jit-, vmap- and grad-compatible).

Every model takes **one** input; batch with ``jax.vmap(model)(xs)``. Solver settings are static
fields, so ``eqx.filter(model, eqx.is_inexact_array)`` is exactly the trainable parameters.

* Vector fields: :class:`MLPField`, :class:`ConcatSquashLinear`.
* Models: :class:`NeuralODE`, :class:`ODEBlock`, :class:`AugmentedNeuralODE`,
  :class:`RegularisedNeuralODE`, :class:`LatentODE` (with an :class:`RNNBaseline`), :class:`CNF`.
* Classifiers: :class:`ODENetClassifier`, :class:`ResNet`, :func:`count_params`.
"""

from ._classifier import ODENetClassifier, ResNet, count_params
from ._cnf import CNF
from ._fields import ConcatSquashLinear, MLPField
from ._latent import LatentODE, RNNBaseline
from ._node import AugmentedNeuralODE, NeuralODE, ODEBlock
from ._regularised import RegularisedNeuralODE

__all__ = [
    "CNF",
    "AugmentedNeuralODE",
    "ConcatSquashLinear",
    "LatentODE",
    "MLPField",
    "NeuralODE",
    "ODEBlock",
    "ODENetClassifier",
    "RNNBaseline",
    "RegularisedNeuralODE",
    "ResNet",
    "count_params",
]
