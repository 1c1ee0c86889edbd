"""sapis.models: the equivariant transformer potential, ensemble training, ASE calculator, MACE reference.

Attributes are imported lazily, so ``import sapis.models`` neither imports torch nor changes any global state.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ModelConfig": "sapis.models.config",
    "TrainConfig": "sapis.models.config",
    "train_ensemble": "sapis.models.ensemble",
    "EnsembleResult": "sapis.models.ensemble",
    "MemberResult": "sapis.models.ensemble",
    "load_ensemble": "sapis.models.inference",
    "Ensemble": "sapis.models.inference",
    "SapisCalculator": "sapis.models.calculator",
    "evaluate": "sapis.models.metrics",
    "SapisTransformer": "sapis.models.transformer",
    "MaceConfig": "sapis.models.config",
    "AnyModelConfig": "sapis.models.config",
    "model_config_for": "sapis.models.config",
    "import_mace": "sapis.models.mace_ref",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sapis.models' has no attribute {name!r}")
