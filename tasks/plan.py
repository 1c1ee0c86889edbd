"""What a round works with: its level of theory, capacity, labels per round and data splits.

Derived from the campaign config and the decisions stored on earlier rounds, so a resumed round plans exactly
what the interrupted one planned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ase import Atoms

from sapis.models.config import MaceConfig, ModelConfig, TrainConfig
from sapis.storage import Store
from sapis.storage.checkpoints import materialise_ensemble
from sapis.tasks.calibration import Calibration
from sapis.tasks.dft import LevelOfTheory
from sapis.tasks.round_metrics import RoundMetrics
from sapis.tasks.scaling_fit import dft_s_per_label, next_train_factor

if TYPE_CHECKING:
    from sapis.flows.config import CampaignConfig

GROW_DATA = ("grow_data", "both")
GROW_CAPACITY = ("grow_capacity", "both")


@dataclass
class RoundPlan:
    """Everything a round needs to know before it starts."""

    campaign_id: int
    index: int
    round_id: int
    level: LevelOfTheory  # every label of the round is computed at this level
    model: ModelConfig | MaceConfig  # this round's capacity, after replaying the controller's growth decisions
    train: TrainConfig  # this round's training (budget x train_factor, seed, warm start)
    members: int  # ensemble members
    capacity_changed: bool  # True: no warm start across a capacity change
    k: int  # labels to add this round
    previous_model: Path | None  # ensemble trained in the previous round (ranks this round's candidates)
    promoted: bool  # the previous ensemble passed its NVE gate, so it may drive committee MD
    out_dir: Path  # this round's artifacts
    calibration: Calibration | None = None  # fitted on the previous round's labels
    train_factor: float = 1.0  # training budget multiplier: multiplied by each 'undertrained' verdict's k_T (max 8)
    earlier: list[RoundMetrics] = field(default_factory=list)  # metrics of the rounds before this one
    k_capped_by: str | None = None  # the budget that made k smaller than the decisions asked for, in words

    @property
    def fingerprint(self) -> str:
        return self.level.fingerprint

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "ensemble"


def campaign_dir(store: Store, campaign_id: int) -> Path:
    """This machine's directory for a campaign's artifacts (keyed by the store's uuid)."""
    from sapis.storage.checkpoints import campaign_dir as _campaign_dir

    return _campaign_dir(store, campaign_id)


def round_dir(store: Store, campaign_id: int, index: int) -> Path:
    """Where round ``index`` of a campaign keeps its artifacts (its ensemble in ``ensemble/``)."""
    return campaign_dir(store, campaign_id) / f"round-{index:03d}"


def plan_round(store: Store, campaign_id: int, index: int, cfg: CampaignConfig) -> RoundPlan:
    """Plan round ``index`` of a campaign from its config and earlier decisions."""
    round_id = store.start_round(campaign_id, index)
    earlier = [r for r in store.rounds(campaign_id) if r.index < index]
    earlier_metrics = [RoundMetrics.from_row(r.metrics) for r in earlier]

    capacity: ModelConfig | MaceConfig = cfg.model
    k = cfg.select.k
    changed = False
    calibration: Calibration | None = None
    train_factor = 1.0
    for r in earlier:  # replay decisions in order
        factors = (r.evidence or {}).get("factors", {})
        if r.decision in GROW_DATA:
            k = max(k + 1, math.ceil(k * float(factors.get("k_N", 2.0))))
        if r.decision in GROW_CAPACITY:
            capacity = capacity.scaled(
                width=float(factors.get("k_W", 1.0)),
                depth=int(factors.get("k_D", 0)),
                lmax=factors.get("lmax"),
            )
        train_factor = next_train_factor(train_factor, r.evidence)
        changed = r.decision in GROW_CAPACITY and r is earlier[-1]
    for m in earlier_metrics:
        if m.calibration:
            calibration = Calibration.from_dict(m.calibration)

    chosen = campaign_label_ids(store, campaign_id)
    already = len(chosen["train"]) + len(chosen["test"])
    capped: str | None = None
    if k > cfg.targets.max_labels - already:  # never plan past the DFT label budget
        k, capped = max(0, cfg.targets.max_labels - already), f"the label budget ({cfg.targets.max_labels})"
    if k > (fit := labels_within_dft_budget(earlier_metrics, cfg.targets.max_cpu_hours)):  # nor its CPU hours
        k, capped = fit, f"the DFT budget ({cfg.targets.max_cpu_hours:g} CPU h)"

    # the previous round's ensemble, rebuilt from the store when this machine has no (or a different) copy
    previous = (
        materialise_ensemble(store, campaign_id, index - 1, round_dir(store, campaign_id, index - 1) / "ensemble")
        if index > 0
        else None
    )
    nve = earlier_metrics[-1].nve if earlier_metrics else None
    promoted = previous is not None and (nve is None or nve.passed is not False)
    warm = previous if (cfg.ensemble.warm_start and not changed) else None
    pretrained = cfg.ensemble.pretrained if index == 0 else None  # round 0: a pre-trained trunk, a fresh head
    train = cfg.train.for_round(
        seed=cfg.seed + 1000 * index,
        factor=train_factor,
        warm_start=warm or pretrained,
        warm_start_readout=pretrained is None,
        members=cfg.ensemble.members,
    )
    return RoundPlan(
        campaign_id=campaign_id,
        index=index,
        round_id=round_id,
        level=cfg.level,
        model=capacity,
        train=train,
        members=cfg.ensemble.members,
        capacity_changed=changed,
        k=k,
        previous_model=previous,
        promoted=promoted,
        out_dir=round_dir(store, campaign_id, index),
        calibration=calibration,
        train_factor=train_factor,
        earlier=earlier_metrics,
        k_capped_by=capped,
    )


def labels_within_dft_budget(earlier: list[RoundMetrics], max_cpu_hours: float) -> int:
    """How many more labels the DFT CPU budget pays for at the seconds per label measured so far.

    The round that reaches the budget is planned to end on it (growth decisions would otherwise overshoot it
    by a whole round's labels): at least one label while any budget is left, so that round trips the
    controller's ``budget_spent`` rule; none once it is spent; no limit before any label has been timed.

    >>> m = RoundMetrics(n_labels_added=10, dft_cpu_s=3600.0)
    >>> labels_within_dft_budget([m], max_cpu_hours=2.0), labels_within_dft_budget([m], max_cpu_hours=1.0)
    (10, 0)
    """
    s_label = dft_s_per_label([(m.dft_cpu_s, m.n_labels_added) for m in earlier])  # as the controller measures it
    if s_label is None:
        return 2**31 - 1
    left = 3600.0 * max_cpu_hours - sum(m.dft_cpu_s or 0.0 for m in earlier)
    return 0 if left <= 0 else max(1, math.floor(left / s_label))


def campaign_label_ids(store: Store, campaign_id: int) -> dict[str, list[int]]:
    """Config ids chosen for labelling in a campaign, by role: 'test' is held out, the rest train."""
    out: dict[str, list[int]] = {"train": [], "test": []}
    for row in store.selections(campaign_id):
        role = row["role"]
        if role == "test":
            out["test"].append(row["config_id"])
        elif role in ("seed", "selected"):
            out["train"].append(row["config_id"])
    out["train"] = sorted(set(out["train"]) - set(out["test"]))
    out["test"] = sorted(set(out["test"]))
    return out


def split_train_valid(atoms: list[Atoms], fraction: float) -> tuple[list[Atoms], list[Atoms]]:
    """Deterministic split by config id (stable as data grows: a config never changes side)."""
    if fraction <= 0 or len(atoms) < 5:
        return atoms, []
    threshold = int(fraction * 1000)
    valid = [a for a in atoms if (int(a.info["config_id"]) * 2654435761) % 1000 < threshold]
    if not valid:
        valid = atoms[-1:]
    ids = {int(a.info["config_id"]) for a in valid}
    return [a for a in atoms if int(a.info["config_id"]) not in ids], valid
