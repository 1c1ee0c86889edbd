"""Explore and select: propose candidates with coarse MD, then choose which ones to label.

Both steps are resumable: candidates and selections of a round are rows in the store, and a step that finds
its rows does not run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from sapis.storage import Store
from sapis.storage.campaigns import LABELLED_ROLES
from sapis.tasks.plan import RoundPlan, campaign_label_ids
from sapis.tasks.round_metrics import RoundMetrics

if TYPE_CHECKING:
    from sapis.flows.config import CampaignConfig
    from sapis.tasks.calibration import Calibration
    from sapis.tasks.rank import Selection, Window


def explore_round(store: Store, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    """Run the configured explorers from the campaign's pool structures; store the candidates."""
    from sapis.tasks.explore import explore

    done = store.selections(plan.campaign_id, role="candidate", round_index=plan.index)
    if done:
        return RoundMetrics(n_candidates=len(done), resumed=True)

    seeds: list[Atoms] = []
    for pool in store.campaign_pools(plan.campaign_id):
        seeds.extend(store.pool_atoms(pool.id))
    if not seeds:
        raise RuntimeError(f"campaign {plan.campaign_id} has no pool structures to explore from")

    explorers = [e for e in cfg.explore.explorers if e != "committee" or plan.promoted]
    if not explorers:  # committee only, and no promoted model yet: xtb covers the cold start
        explorers = ["xtb"]
    candidates: list[Atoms] = []
    filtered: dict[str, int] = {}
    for i, name in enumerate(explorers):
        ecfg = cfg.explore.for_explorer(
            name,
            seed=cfg.seed + 7919 * plan.index + i,
            round_index=plan.index,
            trust_hi=cfg.select.window_hi if name == "committee" and not cfg.select.window_quantile else None,
        )
        res = explore(seeds, ecfg, model_dir=plan.previous_model if name == "committee" else None)
        candidates.extend(res.candidates)
        for reason, n in res.filtered.items():
            filtered[reason] = filtered.get(reason, 0) + n

    rng = np.random.default_rng(cfg.seed + plan.index)
    if len(candidates) > cfg.explore.max_candidates:
        keep = rng.choice(len(candidates), cfg.explore.max_candidates, replace=False)
        candidates = [candidates[j] for j in sorted(keep)]
    provenance = []
    for a in candidates:
        p = dict(a.info.get("provenance", {}))
        p.update(campaign_id=plan.campaign_id, round_index=plan.index)
        p.setdefault("source", "perturb" if p.get("explorer") == "perturb" else "md")
        provenance.append(p)
    ids = store.add_configurations(candidates, provenance)
    unique = list(dict.fromkeys(ids))
    store.add_selections(plan.round_id, [{"config_id": c, "role": "candidate"} for c in unique])
    return RoundMetrics(n_candidates=len(unique), filtered=filtered, explorers=list(explorers))


def select_round(store: Store, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    """Choose this round's labels: a diverse seed and a random test set in round 0, then by uncertainty."""
    chosen = [r for r in store.selections(plan.campaign_id, round_index=plan.index) if r["role"] in LABELLED_ROLES]
    if chosen:
        return RoundMetrics(n_selected=sum(r["role"] != "test" for r in chosen), resumed=True)

    cand_rows = store.selections(plan.campaign_id, role="candidate", round_index=plan.index)
    labelled = campaign_label_ids(store, plan.campaign_id)
    taken = set(labelled["train"]) | set(labelled["test"])
    cand_ids = [r["config_id"] for r in cand_rows if r["config_id"] not in taken]
    atoms = store.get_atoms(cand_ids)
    rng = np.random.default_rng(cfg.seed + 104729 * (plan.index + 1))
    allowed = _allowed_sources(atoms, cfg.select.sources)
    n_excluded = None if cfg.select.sources is None or not allowed.any() else int(len(atoms) - allowed.sum())

    if plan.previous_model is None:
        rows = _cold_start(cand_ids, atoms, cfg, rng, allowed)
        summary = RoundMetrics(strategy="cold-start: random test set, farthest-point seed")
    else:
        # none from select.sources this round (a committee explorer waits for a promoted model): use them all
        keep = np.flatnonzero(allowed) if allowed.any() else np.arange(len(cand_ids))
        ids, pool = [cand_ids[i] for i in keep], [atoms[i] for i in keep]
        if cfg.select.strategy == "random":
            pick = rng.permutation(len(ids))[: plan.k]
            rows = [{"config_id": ids[int(i)], "role": "selected", "rank": r} for r, i in enumerate(pick)]
            summary = RoundMetrics(strategy="random")
        elif cfg.select.strategy == "kcenter":
            rows, summary = _by_kcenter(store, plan, cfg, ids, pool, taken)
        elif cfg.select.strategy == "cluster":
            rows, summary = _by_cluster(store, plan, cfg, ids, pool, taken)
        else:
            rows, summary = _by_uncertainty(store, plan, cfg, ids, pool, taken)
    store.add_selections(plan.round_id, rows)
    counts = RoundMetrics(
        n_selected=sum(r["role"] != "test" for r in rows),
        n_test=sum(r["role"] == "test" for r in rows),
        n_excluded_by_source=n_excluded,
    )
    return summary.merged(counts)


def _explorer(a: Atoms) -> str:
    """The explorer that proposed a candidate (older rows carry only ``source``: md meant xtb)."""
    prov = a.info.get("provenance") or {}
    return str(prov.get("explorer") or ("perturb" if prov.get("source") == "perturb" else "xtb"))


def _allowed_sources(atoms: list[Atoms], sources: Sequence[str] | None) -> np.ndarray:
    """Mask of candidates whose explorer is in ``select.sources`` (all of them when it is None)."""
    if sources is None:
        return np.ones(len(atoms), dtype=bool)
    return np.array([_explorer(a) in sources for a in atoms], dtype=bool)


def _cold_start(
    ids: list[int], atoms: list[Atoms], cfg: CampaignConfig, rng: np.random.Generator, allowed: np.ndarray
) -> list[dict]:
    """Round 0: a random held-out test set (from every explorer's candidates, so it does not depend on
    ``select.sources``), then a farthest-point seed set in a cheap invariant space among the allowed ones (all
    of them if none is allowed: a committee explorer has not run before the first model)."""
    order = rng.permutation(len(ids))
    n_test = min(cfg.select.test_size, max(1, len(ids) // 4))
    test = [int(i) for i in order[:n_test]]
    rest = [int(i) for i in order[n_test:] if allowed[i]] or [int(i) for i in order[n_test:]]
    seed = _farthest_point_by_molecule([atoms[i] for i in rest], cfg.select.seed_size, rng)
    rows = [{"config_id": ids[i], "role": "test", "rank": r} for r, i in enumerate(test)]
    rows += [{"config_id": ids[rest[j]], "role": "seed", "rank": r} for r, j in enumerate(seed)]
    return rows


def _cheap_descriptor(a: Atoms) -> np.ndarray:
    """Sorted inverse interatomic distances: invariant, comparable within one molecule."""
    d = a.get_all_distances()
    iu = np.triu_indices(len(a), 1)
    return np.sort(1.0 / np.maximum(d[iu], 1e-3))


def _farthest_point_by_molecule(atoms: list[Atoms], k: int, rng: np.random.Generator) -> list[int]:
    """Farthest-point sampling within each molecule, taking molecules in turn."""
    groups: dict[Any, list[int]] = {}
    for i, a in enumerate(atoms):
        groups.setdefault(a.info.get("molecule_id"), []).append(i)
    picks: dict[Any, list[int]] = {}
    for key, idx in groups.items():
        x = np.stack([_cheap_descriptor(atoms[i]) for i in idx])
        first = int(rng.integers(len(idx)))
        chosen, dist = [first], np.linalg.norm(x - x[first], axis=1)
        while len(chosen) < min(k, len(idx)):
            nxt = int(np.argmax(dist))
            chosen.append(nxt)
            dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        picks[key] = [idx[c] for c in chosen]
    out: list[int] = []
    while len(out) < min(k, len(atoms)):  # round-robin over molecules
        for key in list(picks):
            if picks[key] and len(out) < k:
                out.append(picks[key].pop(0))
    return out


def _by_uncertainty(
    store: Store, plan: RoundPlan, cfg: CampaignConfig, ids: list[int], atoms: list[Atoms], taken: set[int]
) -> tuple[list[dict], RoundMetrics]:
    """Rank candidates by the previous ensemble's disagreement; select K inside the window, diversely."""
    from sapis.models import load_ensemble
    from sapis.tasks.rank import Window, rank_candidates, score_candidates

    ens = load_ensemble(plan.previous_model)
    scores = score_candidates(ens, atoms)
    known = store.get_atoms(sorted(taken))
    exclude = ens.descriptors(known) if known else None
    calibration = plan.calibration
    lo, hi = cfg.select.window_lo, cfg.select.window_hi
    sel = rank_candidates(  # with source_shares only its window and scores are used: each share picks its own
        scores,
        k=0 if cfg.select.source_shares else plan.k,
        window=Window.quantiles(lo, hi) if cfg.select.window_quantile else Window(lo, hi),
        calibration=calibration,
        exclude_descriptors=exclude,
        diversity=cfg.select.diversity,
        seed=cfg.seed + plan.index,
    )
    picked = list(sel.indices)
    by_source = None
    if cfg.select.source_shares:
        picked, by_source = _by_source_shares(scores, atoms, sel, exclude, calibration, cfg, plan)
    fallback = 0
    if len(picked) < plan.k:
        # The window holds too few: early, poorly trained models put every candidate above the ceiling. A round
        # that labels nothing learns nothing, so fill up by uncertainty x diversity outside the window.
        extra = _rank_more(scores, sel, picked, exclude, plan.k - len(picked), calibration, cfg, plan)
        fallback = len(extra)
        picked += extra
    rows = [
        {
            "config_id": ids[i],
            "role": "selected",
            "rank": r,
            "score": float(sel.score[i]),
            "calibrated_score": float(sel.calibrated[i]),
        }
        for r, i in enumerate(picked)
    ]
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        plan.out_dir / "candidate_scores.npz",
        config_id=np.asarray(ids),
        deviation=sel.score,
        calibrated=sel.calibrated,
        selected=np.isin(np.arange(len(ids)), picked),
        bounds=np.asarray(sel.bounds, dtype=float),
    )
    summary = RoundMetrics(
        strategy=("uncertainty x diversity inside the trust window" if cfg.select.diversity else "top-k")
        + (f" (quantiles {lo:g}-{hi:g})" if cfg.select.window_quantile else ""),
        window_eV_A=[float(b) for b in sel.bounds],
        calibrated=calibration is not None,
        deviation_eV_A={
            "min": float(np.min(sel.score)),
            "median": float(np.median(sel.score)),
            "max": float(np.max(sel.score)),
        },
        ranking={k: v for k, v in sel.info.items() if k.startswith("n_")},
        n_outside_window=fallback,
        n_by_source=by_source,
    )
    return rows, summary


def _by_source_shares(
    scores: dict[str, Any],
    atoms: list[Atoms],
    sel: Selection,
    exclude: np.ndarray | None,
    calibration: Calibration | None,
    cfg: CampaignConfig,
    plan: RoundPlan,
) -> tuple[list[int], dict[str, int]]:
    """``select.source_shares``: each explorer's share of k ranked among its own candidates (the round's
    window, uncertainty x diversity against the labels and the picks so far; uniformly at random for the explorers
    in ``select.random_within``), then what is left of k ranked over all the rest. Returns the picks and how many
    each share took."""
    from sapis.tasks.rank import Window

    shares = cfg.select.source_shares or {}
    names = [_explorer(a) for a in atoms]
    picked: list[int] = []
    counts: dict[str, int] = {}
    quotas: list[tuple[str | None, int]] = [(n, int(np.floor(s * plan.k + 0.5))) for n, s in shares.items()]
    window = Window(*sel.bounds)  # the round's window, the same for every share
    for name, quota in [*quotas, (None, plan.k)]:
        need = min(quota, plan.k - len(picked))
        if need <= 0:
            continue
        among = [i for i in range(len(atoms)) if name is None or names[i] == name]
        if name in cfg.select.random_within:  # typical frames of this explorer, not its most uncertain
            taken = set(picked)  # NaN: its Δ baseline failed, nothing to train on
            ok = [i for i in among if i not in taken and np.isfinite(sel.score[i])]
            rng = np.random.default_rng(cfg.seed + 104729 * (plan.index + 1))
            got = [ok[int(j)] for j in rng.permutation(len(ok))[:need]]
        else:
            got = _rank_more(scores, sel, picked, exclude, need, calibration, cfg, plan, window=window, among=among)
        picked += got
        counts[name or "rest"] = counts.get(name or "rest", 0) + len(got)
    return picked, counts


def _by_kcenter(
    store: Store, plan: RoundPlan, cfg: CampaignConfig, ids: list[int], atoms: list[Atoms], taken: set[int]
) -> tuple[list[dict], RoundMetrics]:
    """K candidates by k-center greedy in the previous ensemble's feature space (labelled ones are centres)."""
    from sapis.models import load_ensemble
    from sapis.tasks.rank import kcenter

    ens = load_ensemble(plan.previous_model)
    known = store.get_atoms(sorted(taken))
    picked, dist = kcenter(
        ens.descriptors(atoms) if atoms else np.zeros((0, 1)),
        plan.k,
        exclude_descriptors=ens.descriptors(known) if known else None,
        seed=cfg.seed + plan.index,
    )
    rows = [
        {"config_id": ids[i], "role": "selected", "rank": r, "score": float(d) if np.isfinite(d) else None}
        for r, (i, d) in enumerate(zip(picked, dist, strict=True))
    ]
    summary = RoundMetrics(
        strategy="k-center greedy in the ensemble's feature space",
        ranking={"n_candidates": len(ids), "n_centres_labelled": len(known)},
    )
    return rows, summary


def _by_cluster(
    store: Store, plan: RoundPlan, cfg: CampaignConfig, ids: list[int], atoms: list[Atoms], taken: set[int]
) -> tuple[list[dict], RoundMetrics]:
    """K candidates, one per cluster of a k-means in feature space weighted by calibrated deviation."""
    from sapis.models import load_ensemble
    from sapis.tasks.rank import score_candidates, weighted_kmeans

    ens = load_ensemble(plan.previous_model)
    scores = score_candidates(ens, atoms)
    raw = np.asarray(scores["forces_std_max"], dtype=float)
    cal = plan.calibration(raw) if plan.calibration is not None else raw
    known = store.get_atoms(sorted(taken))
    picked = weighted_kmeans(
        scores["descriptors"],
        cal,
        plan.k,
        exclude_descriptors=ens.descriptors(known) if known else None,
        seed=cfg.seed + plan.index,
    )
    rows = [
        {
            "config_id": ids[i],
            "role": "selected",
            "rank": r,
            "score": float(raw[i]),
            "calibrated_score": float(cal[i]),
        }
        for r, i in enumerate(picked)
    ]
    summary = RoundMetrics(
        strategy="uncertainty-weighted k-means in the ensemble's feature space",
        calibrated=plan.calibration is not None,
        ranking={"n_candidates": len(ids)},
    )
    return rows, summary


def _rank_more(
    scores: dict[str, Any],
    sel: Selection,
    picked: list[int],
    exclude: np.ndarray | None,
    n: int,
    calibration: Calibration | None,
    cfg: CampaignConfig,
    plan: RoundPlan,
    window: Window | None = None,
    among: Sequence[int] | None = None,
) -> list[int]:
    """Up to ``n`` more picks by uncertainty x diversity among the candidates ``among`` (default: all) not yet
    picked, inside ``window`` (None: none), never near-duplicates of labels or picks."""
    from sapis.tasks.rank import rank_candidates

    taken = set(picked)
    rest = [i for i in (range(len(sel.score)) if among is None else among) if i not in taken]
    if not rest or n <= 0:
        return []
    desc = scores.get("descriptors")
    sub = {
        "forces_std_max": np.asarray(sel.score)[rest],
        "descriptors": None if desc is None else np.asarray(desc)[rest],
    }
    known = exclude
    if desc is not None and picked:
        chosen = np.asarray(desc)[picked]
        known = chosen if known is None else np.concatenate([known, chosen])
    more = rank_candidates(
        sub,
        k=n,
        window=window,
        calibration=calibration,
        exclude_descriptors=known,
        diversity=cfg.select.diversity,
        seed=cfg.seed + plan.index,
    )
    return [rest[i] for i in more.indices]


def rerank_queue(store: Store, plan: RoundPlan, cfg: CampaignConfig) -> RoundMetrics:
    """Re-rank the campaign's pending labels with the ensemble this round trained; cancel the confident ones.

    A pending label (never a running, done or failed one) whose calibrated max-atom force deviation under the
    new ensemble is below ``select.drop_below`` (default ``select.window_lo``) is cancelled with its reason in
    the store: the model already knows that region, and the DFT would buy nothing. Held-out test labels are
    never dropped.
    """
    from sapis.models import load_ensemble
    from sapis.tasks.rank import score_candidates
    from sapis.tasks.round_metrics import QueueRerank

    threshold = cfg.select.drop_below if cfg.select.drop_below is not None else cfg.select.window_lo
    train_ids = campaign_label_ids(store, plan.campaign_id)["train"]
    pending = store.pending_labels(plan.fingerprint, config_ids=train_ids) if train_ids else []
    if not pending or threshold <= 0 or not (plan.model_dir / "ensemble.json").exists():
        return RoundMetrics(queue=QueueRerank(pending=len(pending), threshold_eV_A=threshold))
    atoms = store.get_atoms([cid for _, cid in pending])
    raw = np.asarray(score_candidates(load_ensemble(plan.model_dir), atoms)["forces_std_max"], dtype=float)
    dev = plan.calibration(raw) if plan.calibration is not None else raw
    drop = [lid for (lid, _), d in zip(pending, dev, strict=True) if np.isfinite(d) and d < threshold]
    reason = (
        f"queue re-ranked after round {plan.index}: the new ensemble's calibrated force deviation is below "
        f"{threshold:g} eV/Å"
    )
    cancelled = store.cancel_pending(drop, reason) if drop else []
    return RoundMetrics(
        queue=QueueRerank(
            pending=len(pending), cancelled=len(cancelled), threshold_eV_A=threshold, cancelled_label_ids=cancelled
        )
    )
