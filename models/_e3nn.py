"""Safe import of e3nn 0.4.4 under recent torch.

e3nn 0.4.4 calls ``torch.load`` on its own constants file at import time; torch >= 2.6 defaults to
``weights_only=True`` and refuses the ``slice`` objects in it. Allow-listing ``slice`` (a harmless builtin) is the
only change made; it is idempotent. Import ``o3`` and ``nn`` from here, never from e3nn directly.
"""

from __future__ import annotations

import torch

torch.serialization.add_safe_globals([slice])

from e3nn import nn, o3  # noqa: E402

__all__ = ["nn", "o3"]
