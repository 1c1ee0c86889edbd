"""Training of one ensemble member: weighted energy+force loss, AdamW, warm-up then decay-on-plateau, EMA of
weights, early stopping on validation, gradient clipping, per-epoch metrics and cumulative training FLOPs."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sapis.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from sapis.models.config import TrainConfig
from sapis.models.flops import measure_flops
from sapis.models.graph import GraphData, collate
from sapis.models.transformer import count_parameters, energy_and_forces

EpochCallback = Callable[[dict[str, Any]], None]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_NOT_WARM = ("z_index", "e0", "scale", "shift", "scalar_cols")  # data-dependent buffers: keep the new ones


def _batches(graphs: Sequence[GraphData], size: int, rng: np.random.Generator | None) -> list[list[GraphData]]:
    order = rng.permutation(len(graphs)) if rng is not None else np.arange(len(graphs))
    return [[graphs[k] for k in order[i : i + size]] for i in range(0, len(graphs), size)]


def _errors(
    model: torch.nn.Module, batch: Any, training: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-atom energy error (B,), force error (N,3), energy error (B,), predicted energies)."""
    energy, forces, _ = energy_and_forces(model, batch, training=training)
    de = energy - batch.energy
    return de / batch.n_atoms.to(de.dtype), forces - batch.forces, de, energy


def evaluate_graphs(
    model: torch.nn.Module, graphs: Sequence[GraphData], dtype: torch.dtype, device: str, batch_size: int = 16
) -> dict[str, float]:
    """Energy MAE (meV), per-atom energy MSE (eV²), force MAE (meV/Å) and MSE (eV²/Å²) of ``model``."""
    e_abs, e_pa2, f_abs, f_sq, n_f = 0.0, 0.0, 0.0, 0.0, 0
    for chunk in _batches(graphs, batch_size, None):
        b = collate(chunk, dtype, device)
        de_pa, df, de, _ = _errors(model, b, training=False)
        e_abs += float(de.detach().abs().sum())
        e_pa2 += float(de_pa.detach().pow(2).sum())
        f_abs += float(df.detach().abs().sum())
        f_sq += float(df.detach().pow(2).sum())
        n_f += df.numel()
    n = max(len(graphs), 1)
    return {
        "e_mae": 1000 * e_abs / n,
        "e_mse_pa": e_pa2 / n,
        "f_mae": 1000 * f_abs / max(n_f, 1),
        "f_mse": f_sq / max(n_f, 1),
    }


def _warm_start(model: torch.nn.Module, path: Path, readout: bool = True) -> int:
    """Load every tensor of a previous checkpoint whose name and shape match; return how many were loaded.

    ``readout=False`` leaves the model's energy readouts (its ``readout_prefixes``) as initialised: the trunk of a
    model pre-trained on another level of theory, with a fresh head for the new one."""
    ckpt = load_checkpoint(path)
    old = ckpt.get("ema_state_dict") or ckpt["state_dict"]
    own = model.state_dict()
    fresh = () if readout else tuple(getattr(model, "readout_prefixes", ()))
    keep = {
        k: v
        for k, v in old.items()
        if k in own and own[k].shape == v.shape and k.split(".")[-1] not in _NOT_WARM and not k.startswith(fresh)
    }
    model.load_state_dict(keep, strict=False)
    return len(keep)


def train_member(
    spec: dict[str, Any],
    train: Sequence[GraphData],
    valid: Sequence[GraphData],
    cfg: TrainConfig,
    seed: int,
    out_path: Path,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train one model described by ``spec`` (see :func:`build_model`) and write its checkpoint.

    Returns a dict: path, n_params, train_flops, wall_s, history (per epoch), best (validation metrics of the
    saved EMA weights), warm_loaded (tensors taken from ``cfg.warm_start``).
    """
    from sapis.runtime import resolve_device

    t0, c0 = time.perf_counter(), time.process_time()
    device = resolve_device(cfg.device)
    dtype = _DTYPES[cfg.dtype]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(spec).to(device=device, dtype=dtype)
    ema = copy.deepcopy(model)  # its weights are the model's below; a deep copy skips e3nn's code generation
    warm_loaded = _warm_start(model, Path(cfg.warm_start), cfg.warm_start_readout) if cfg.warm_start else 0
    ema.load_state_dict(model.state_dict())
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    warm_steps = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    base_lr, step, flops_cum, flops_per_unit = cfg.lr, 0, 0.0, None
    best_loss, best_state, best, since_best, since_plateau, plateau_best = math.inf, None, {}, 0, 0, math.inf
    history: list[dict[str, Any]] = []
    deadline = t0 + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
    cpu_deadline = c0 + 60 * cfg.max_cpu_minutes if cfg.max_cpu_minutes else math.inf

    def out_of_budget() -> bool:
        return time.perf_counter() > deadline or time.process_time() > cpu_deadline

    def loss_of(b: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        de_pa, df, de, _ = _errors(model, b, training=True)
        loss = cfg.energy_weight * de_pa.pow(2).mean() + cfg.forces_weight * df.pow(2).mean()
        return loss, de, df

    def step_fn(b: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        loss, de, df = loss_of(b)
        loss.backward()
        return loss, de, df

    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        e_abs, f_abs, n_f = 0.0, 0.0, 0
        for chunk in _batches(train, cfg.batch_size, rng):
            b = collate(chunk, dtype, device)
            size = b.edge_index.shape[1] + len(b.numbers)
            if flops_per_unit is None:  # measure one real step; later steps scale with edges + nodes
                box: list[Any] = []

                def first_step(b: Any = b, box: list[Any] = box) -> None:
                    box.append(step_fn(b))

                flops_per_unit = measure_flops(first_step) / size
                _, de, df = box[0]
            else:
                _, de, df = step_fn(b)
            flops_cum += flops_per_unit * size
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            step += 1
            for g in opt.param_groups:
                g["lr"] = base_lr * min(1.0, step / warm_steps)
            opt.step()
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
            e_abs += float(de.detach().abs().sum())
            f_abs += float(df.detach().abs().sum())
            n_f += df.numel()
            if out_of_budget():
                break
        rec: dict[str, Any] = {
            "epoch": epoch,
            "train_e_mae": 1000 * e_abs / len(train),
            "train_f_mae": 1000 * f_abs / max(n_f, 1),
            "lr": opt.param_groups[0]["lr"],
            "flops": flops_cum,
        }
        out_of_time = out_of_budget()
        if epoch % cfg.eval_every == 0 or out_of_time or epoch == cfg.max_epochs:
            m = evaluate_graphs(ema, valid, dtype, device)
            rec.update(valid_e_mae=m["e_mae"], valid_f_mae=m["f_mae"])
            vloss = cfg.energy_weight * m["e_mse_pa"] + cfg.forces_weight * m["f_mse"]
            if vloss < best_loss:
                best_loss, since_best = vloss, 0
                best = {"epoch": epoch, "valid_e_mae": m["e_mae"], "valid_f_mae": m["f_mae"], "valid_loss": vloss}
                best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
            else:
                since_best += cfg.eval_every
            if vloss < plateau_best * (1 - 1e-4):
                plateau_best, since_plateau = vloss, 0
            else:
                since_plateau += cfg.eval_every
                if since_plateau >= cfg.plateau_patience:
                    base_lr, since_plateau = max(cfg.min_lr, base_lr * cfg.plateau_factor), 0
        rec["wall_s"] = time.perf_counter() - t0
        rec["cpu_s"] = time.process_time() - c0
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if out_of_time or since_best >= cfg.patience:
            break

    wall = time.perf_counter() - t0
    n_params = count_parameters(model)
    meta = {
        "n_params": n_params,
        "train_flops": flops_cum,
        "wall_s": wall,
        "cpu_s": time.process_time() - c0,
        "history": history,
        "best": best,
        "seed": seed,
        "n_train": len(train),
        "n_valid": len(valid),
        "train_config": cfg.model_dump(mode="json"),
        "warm_loaded": warm_loaded,
    }
    save_checkpoint(out_path, spec, model.state_dict(), best_state or ema.state_dict(), meta)
    return {"path": str(out_path), **meta}
