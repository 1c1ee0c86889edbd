"""Safe import of e3nn 0.4.4 under recent torch.

e3nn 0.4.4 calls ``torch.load`` on its own constants file at import time; torch >= 2.6 defaults to
``weights_only=True`` and refuses the ``slice`` objects in it. Allow-listing ``slice`` (a harmless builtin) is the
only change made for that; it is idempotent. Import ``o3`` and ``nn`` from here, never from e3nn directly.

Building a model spends most of its seconds generating e3nn's code (the same code for every model of the same
irreps): the three code generators are wrapped to run once per distinct argument set in the process.
"""

from __future__ import annotations

import torch

torch.serialization.add_safe_globals([slice])

import copy  # noqa: E402
import functools  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import e3nn.o3._linear as _linear  # noqa: E402
import e3nn.o3._tensor_product._tensor_product as _tensor_product  # noqa: E402
from e3nn import nn, o3  # noqa: E402

__all__ = ["nn", "o3"]

_LOCK = threading.Lock()


def _once_per_process(codegen: Callable[..., Any]) -> Callable[..., Any]:
    """``codegen`` (one of e3nn's code generators) run once per distinct set of arguments in this process, and
    deep-copied after: the generated code depends on the irreps, instructions and flags alone (e3nn traces it with
    zero example inputs, so no random numbers are drawn), and generating it (fx tracing, einsum optimisation)
    is most of the seconds it takes to build a model. The copy keeps a caller's in-place rewrite
    (``sapis.models._fx_split``) out of the cache."""
    cache: dict[str, Any] = {}

    @functools.wraps(codegen)
    def cached(*args: Any, **kwargs: Any) -> Any:
        key = repr((args, sorted(kwargs.items())))  # Irreps, Instruction tuples, floats (repr round-trips), bools
        with _LOCK:
            if key not in cache:
                cache[key] = codegen(*args, **kwargs)
            return copy.deepcopy(cache[key])

    cached.__wrapped_by_sapis__ = True  # type: ignore[attr-defined]
    return cached


for _module, _name in (
    (_linear, "_codegen_linear"),
    (_tensor_product, "codegen_tensor_product_left_right"),
    (_tensor_product, "codegen_tensor_product_right"),
):
    if not getattr(getattr(_module, _name), "__wrapped_by_sapis__", False):  # idempotent, as the allow-list
        setattr(_module, _name, _once_per_process(getattr(_module, _name)))
