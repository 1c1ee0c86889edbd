"""Checkpoints: model spec (architecture + config + data-derived constants) + state_dict + EMA + metadata.

Saved with ``torch.save`` of plain containers and tensors, loaded with ``weights_only=True``; no module is ever
pickled, so a checkpoint survives refactors of the model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from sapis.files import file_sha256

FORMAT = 1


def normalise_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of a model spec (integer element keys become ints again after JSON)."""
    out = dict(spec)
    out["elements"] = [int(z) for z in spec["elements"]]
    out["e0s"] = {int(z): float(e) for z, e in (spec.get("e0s") or {}).items()}
    out["config"] = dict(spec["config"])
    out["baseline"] = str(spec.get("baseline", out["config"].get("baseline", "none")))
    return out


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the architecture named in ``spec`` (float32, CPU; move it with ``.to``)."""
    spec = normalise_spec(spec)
    arch = spec.get("architecture", "sapis")
    common = {
        "elements": spec["elements"],
        "e0s": spec["e0s"],
        "scale": float(spec.get("scale", 1.0)),
        "shift": float(spec.get("shift", 0.0)),
    }
    if arch == "sapis":
        from sapis.models.config import ARCHITECTURE_BEFORE_FIELD, ModelConfig
        from sapis.models.transformer import SapisTransformer

        return SapisTransformer(ModelConfig(**{**ARCHITECTURE_BEFORE_FIELD, **spec["config"]}), **common)
    if arch == "mace":
        from sapis.models.mace_ref import MaceConfig, MaceModel

        return MaceModel(
            MaceConfig(**spec["config"]), avg_num_neighbors=float(spec.get("avg_num_neighbors", 8.0)), **common
        )
    from sapis.errors import ConfigError

    raise ConfigError(f"unknown architecture {arch!r} (choose 'sapis' or 'mace')")


def save_checkpoint(
    path: Path, spec: dict[str, Any], state: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], meta: dict
) -> str:
    """Write a checkpoint atomically; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    payload = {
        "format": FORMAT,
        "spec": normalise_spec(spec),
        "state_dict": cpu(state),
        "ema_state_dict": cpu(ema),
        "metadata": meta,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return sha256(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file (or the first member of an ensemble directory) with ``weights_only=True``."""
    from sapis.errors import NotFoundError

    path = Path(path)
    if path.is_dir():
        members = sorted(path.glob("member_*.pt"))
        if not members:
            raise NotFoundError(f"{path}: no member_*.pt checkpoint in this directory")
        path = members[0]
    if not path.exists():
        raise NotFoundError(f"{path}: checkpoint not found")
    from sapis.errors import InputError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's message may advise weights_only=False: never pass that on
        raise InputError(str(path), f"corrupt or not a sapis model checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(str(path), "not a sapis model checkpoint")
    return ckpt


def model_from_checkpoint(
    path: Path, device: str = "cpu", dtype: torch.dtype | None = None, ema: bool = True
) -> torch.nn.Module:
    """Rebuild a model from a checkpoint file with its EMA (default) or raw weights, in eval mode."""
    from sapis.errors import InputError, SapisError

    ckpt = load_checkpoint(path)
    try:
        model = build_model(ckpt["spec"])
    except SapisError:
        raise
    except Exception as exc:  # unknown or invalid config keys (a newer or edited checkpoint)
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(str(path), f"model config not understood: {detail}") from None
    try:
        model.load_state_dict(ckpt["ema_state_dict"] if ema else ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln or "key(s)" in ln]
        detail = lines[0] if lines else type(exc).__name__
        raise InputError(str(path), f"weights do not fit the checkpoint's model config: {detail}") from None
    cast(Any, model).baseline = str(ckpt["spec"].get("baseline", "none"))  # added back by Ensemble.predict
    # {formula: [charge, multiplicity]} of the training data (absent before it was recorded): see charge_state_warning
    cast(Any, model).charge_states = dict(ckpt["spec"].get("charge_states") or {})
    if dtype is None:
        dtype = {"float64": torch.float64}.get(ckpt["metadata"].get("train_config", {}).get("dtype"), torch.float32)
    return model.to(device=device, dtype=dtype).eval()


def sha256(path: Path) -> str:
    """Hex sha256 of a checkpoint file."""
    return file_sha256(path)


def verify_sha256(path: Path, expected: str, source: str = "ensemble.json") -> None:
    """InputError (one line) when the file's sha256 differs from the one recorded in ``source``."""
    from sapis.errors import InputError

    actual = sha256(path)
    if actual != expected:
        raise InputError(
            str(path),
            f"sha256 {actual[:12]}… does not match {expected[:12]}… recorded in {source}: the checkpoint was "
            "changed or replaced (export the model again from its store)",
        )
