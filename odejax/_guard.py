"""An identity that lets tangents through and refuses to be transposed, with a message.

It marks values whose reverse-mode derivative odejax does not provide: the outputs of an
``adjoint='forward'`` solve, and the gradients computed by a first-order reverse-mode rule
(so that differentiating them again in reverse mode fails with a message that says what to use,
while forward over reverse, e.g. ``jax.hessian``, still works).
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["forward_only"]

_forward_only_p = Primitive("odejax_forward_only")
_forward_only_p.def_impl(lambda x, *, message: x)
_forward_only_p.def_abstract_eval(lambda x, *, message: x)
mlir.register_lowering(_forward_only_p, lambda ctx, x, *, message: [x])
batching.primitive_batchers[_forward_only_p] = lambda args, dims, *, message: (
    _forward_only_p.bind(args[0], message=message),
    dims[0],
)


def _jvp(primals, tangents, *, message):
    (x,), (t,) = primals, tangents
    t = t if type(t) is ad.Zero else _forward_only_p.bind(t, message=message)
    return _forward_only_p.bind(x, message=message), t


def _transpose(ct, x, *, message):
    raise TypeError(message)


ad.primitive_jvps[_forward_only_p] = _jvp
ad.primitive_transposes[_forward_only_p] = _transpose


def forward_only(x, message: str):
    """``x``, differentiable in forward mode; reverse mode raises ``TypeError(message)``."""
    return _forward_only_p.bind(x, message=message)
