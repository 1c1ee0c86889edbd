"""In-round learning curves: one small member per (data fraction, width factor), trained on nested subsets of
the round's training labels with the product's own trainer (``sapis.models.train_ensemble``), scored on the
round's validation labels. Their (N, P, force MAE) points feed the joint fit E(N, P) = E_inf + A N^-alpha +
B P^-beta (``sapis.tasks.scaling_fit.fit_joint_law``), so the controller measures how error falls with data and
with capacity inside one round instead of waiting for a dozen rounds. Their training seconds and FLOPs are
recorded and counted as training cost.

Probes train from scratch (no warm start, no bootstrap) with the round's training settings, so the fraction-1,
width-1 probe is what a fresh member of the round's model reaches; a caller that already has such a member can
pass it as ``reuse`` instead of training it twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from sapis.tasks.scaling import ControllerConfig


def probe_grid(capacity: Mapping[str, Any], cfg: ControllerConfig) -> list[tuple[float, float, dict[str, Any]]]:
    """(fraction, width factor, capacity) for every probe, smallest first; widths round to a multiple of the
    attention heads and collapse when two factors give the same channel count."""
    heads = int(capacity.get("heads") or 1)
    channels = int(capacity.get("channels") or 1)
    seen: dict[int, float] = {}
    for w in sorted(set(cfg.probe_widths)):
        c = max(heads, heads * round(channels * w / heads))
        seen.setdefault(c, w)
    out = []
    for c, w in sorted(seen.items()):
        for f in sorted(set(cfg.probe_fractions)):
            out.append((f, w if c != channels else 1.0, {**capacity, "channels": c}))
    return out


def nested_subset(atoms: Sequence[Atoms], fraction: float, seed: int = 0) -> list[Atoms]:
    """The first ceil(fraction × n) frames (at least 2) of a fixed permutation: a smaller fraction is always a
    subset of a larger one."""
    order = np.random.default_rng(seed).permutation(len(atoms))
    k = min(len(atoms), max(2, math.ceil(fraction * len(atoms))))
    return [atoms[int(i)] for i in order[:k]]


def run_probes(
    train: Sequence[Atoms],
    valid: Sequence[Atoms],
    capacity: Mapping[str, Any],
    cfg: ControllerConfig,
    train_config: Any,
    out_dir: Path,
    *,
    architecture: str | None = None,
    e0s: Mapping[int, float] | None = None,
    reuse: Mapping[str, Any] | None = None,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Train the probes of :func:`probe_grid` and return ``{"points", "train_s", "flops", "n_valid", "wall_s"}``
    (``train_s``: the probes' own seconds, summed; ``wall_s``: how long they took, side by side).

    Each point: fraction, width, n_train, n_params, channels, error (best validation force MAE, meV/Å),
    train_s, flops. ``reuse`` (n_params, error, train_s, flops of a fresh member trained on all of ``train`` at
    ``capacity`` with the same settings) replaces the fraction-1, width-1 probe and costs nothing here.
    ``train_config`` is a ``sapis.models.TrainConfig``; its ``max_minutes`` is scaled down with each probe's
    share of the data and width². ``workers`` > 1 trains that many probes at once, in separate processes.
    """
    if len(train) < 2 or not valid:
        raise ValueError(f"probes need at least 2 training and 1 validation frame (got {len(train)}, {len(valid)})")
    channels = int(capacity.get("channels") or 1)
    entries: list[dict[str, Any] | tuple[Any, ...]] = []  # a reused point, or the arguments of _probe_job
    for i, (frac, width, cap) in enumerate(probe_grid(capacity, cfg)):
        subset = nested_subset(train, frac, seed)
        if reuse is not None and width == 1.0 and len(subset) == len(train):
            entries.append(
                {
                    "fraction": 1.0,
                    "width": 1.0,
                    "n_train": len(train),
                    "channels": channels,
                    **{k: reuse[k] for k in ("n_params", "error")},
                    "train_s": 0.0,
                    "flops": 0.0,
                    "reused": True,
                }
            )
            continue
        share = frac * (cap["channels"] / channels) ** 2
        minutes = train_config.max_minutes
        tc = train_config.model_copy(
            update={
                "max_minutes": None if minutes is None else max(0.05, float(minutes) * share),
                "warm_start": None,
                "workers": 1,
                "seed": seed,
            }
        )
        entries.append((frac, width, cap, subset, valid, tc, Path(out_dir) / f"probe-{i:02d}", architecture, e0s))
    t0 = time.perf_counter()
    trained = iter(_run_jobs([e for e in entries if isinstance(e, tuple)], workers))
    points = [e if isinstance(e, dict) else next(trained) for e in entries]
    wall = time.perf_counter() - t0
    total_s = sum(float(p["train_s"]) for p in points)
    total_flops = sum(float(p["flops"]) for p in points)
    return {"points": points, "train_s": total_s, "flops": total_flops, "n_valid": len(valid), "wall_s": wall}


def _run_jobs(jobs: list[tuple[Any, ...]], workers: int) -> list[dict[str, Any]]:
    """:func:`_probe_job` of every job, in order: ``workers`` at a time in separate processes (each with one
    thread), or here one after another."""
    if workers <= 1 or len(jobs) <= 1:
        return [_probe_job(job) for job in jobs]
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from sapis.models.ensemble import _member_process, _stop_members

    with ProcessPoolExecutor(
        min(workers, len(jobs)),
        mp_context=mp.get_context("spawn"),
        initializer=_member_process,
        initargs=(os.getpid(),),
    ) as pool:
        try:
            return list(pool.map(_probe_in_child, jobs))
        except BaseException:  # Ctrl-C, SIGTERM, a failed probe: stop the others now
            _stop_members(pool)
            raise


def _probe_in_child(job: tuple[Any, ...]) -> dict[str, Any]:
    """Entry point of a probe process (spawn): the probe's torch threads, then :func:`_probe_job`."""
    from sapis.runtime import set_threads

    set_threads(job[5].threads)
    return _probe_job(job)


def _probe_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """Train one probe (a one-member ensemble from scratch) and return its point; ``train_s`` is its own wall
    time, so a probe's seconds mean the same run alone or beside others."""
    from sapis.models import train_ensemble

    frac, width, cap, subset, valid, tc, out, architecture, e0s = job
    t0 = time.perf_counter()
    res = train_ensemble(
        subset, valid, out, members=1, model=cap, train=tc, architecture=architecture, e0s=e0s, progress=False
    )
    m = res.members[0]
    return {
        "fraction": frac,
        "width": width,
        "n_train": len(subset),
        "channels": int(cap["channels"]),
        "n_params": int(m.n_params),
        "error": m.best.get("valid_f_mae"),
        "train_s": time.perf_counter() - t0,
        "flops": float(m.train_flops),
    }


def probe_round(store: Any, campaign_id: int, index: int, cfg: Any) -> dict[str, Any] | None:
    """Measure a finished round's in-round learning curves and merge them into its metrics as ``probes``.

    ``cfg`` is the campaign's ``CampaignConfig``. Already measured (resume): the stored result. None (and
    nothing written) when probes are off or the round has no validation labels to score them on. When they
    would buy nothing (``sapis.tasks.scaling.skip_probes``: the round meets the target, spends the budget, or is
    still under-trained) nothing is trained and ``{"skipped": why, "points": [], "train_s": 0, ...}`` is stored.
    """
    from sapis.tasks.plan import campaign_label_ids, round_dir, split_train_valid
    from sapis.tasks.scaling import skip_probes
    from sapis.tasks.scaling_step import controller_config, history_from_store

    ctl: ControllerConfig = cfg.controller
    if not ctl.probes:
        return None
    row = next((r for r in store.rounds(campaign_id) if r.index == index), None)
    if row is None:
        return None
    metrics = dict(row.metrics or {})
    if isinstance(metrics.get("probes"), dict):
        return dict(metrics["probes"])
    capacity = metrics.get("capacity")
    if not isinstance(capacity, dict):
        return None
    why = skip_probes(
        history_from_store(store, campaign_id, upto=index), controller_config(store.campaign(campaign_id).config)
    )
    if why is not None:
        skipped: dict[str, Any] = {"skipped": why, "points": [], "train_s": 0.0, "flops": 0.0, "wall_s": 0.0}
        store.update_round(row.id, metrics={"probes": skipped})
        return skipped
    ids = campaign_label_ids(store, campaign_id)
    labelled = store.labelled(cfg.level.fingerprint, config_ids=ids["train"])
    train, valid = split_train_valid(labelled, cfg.train.valid_fraction)
    if len(train) < 2 or not valid:
        return None
    factor = float(metrics.get("train_factor") or 1.0)
    tc = cfg.train.for_round(seed=cfg.seed + 1000 * index + 500, factor=factor, warm_start=None, members=1)
    out = run_probes(
        train,
        valid,
        capacity,
        ctl,
        tc,
        round_dir(store, campaign_id, index) / "probes",
        seed=cfg.seed + index,
        workers=cfg.train.workers,
    )
    store.update_round(row.id, metrics={"probes": out})
    return out
