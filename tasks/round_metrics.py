"""What a round measured: one typed record that the steps fill in, the store keeps as JSON, and the controller,
the CLI and the artifacts read.

Each step returns a :class:`RoundMetrics` holding only its own fields; the round flow merges them in order
(:meth:`RoundMetrics.merged`) and stores :meth:`RoundMetrics.to_row`. Units: errors in meV/Å (forces) and meV
(energies), deviations in eV/Å, times in seconds.

>>> a = RoundMetrics(n_candidates=40)
>>> b = a.merged(RoundMetrics(n_selected=8, steps={"select": True}))
>>> b.to_row()
{'steps': {'select': True}, 'n_candidates': 40, 'n_selected': 8}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sapis.models.config import AnyModelConfig


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelStats(_Record):
    """How a round's DFT labels went."""

    counts: dict[str, int] = Field(default_factory=dict, description="labels by state (done, failed, ...)")
    seconds: float = Field(0.0, description="wall seconds waiting for the labels")
    workers: int | None = Field(None, description="workers started")


class QueueRerank(_Record):
    """Re-ranking of the campaign's pending labels with the ensemble a round trained."""

    pending: int = Field(0, description="labels of the campaign still waiting for a worker")
    cancelled: int = Field(0, description="of those, cancelled as already confident")
    threshold_eV_A: float = Field(0.0, description="calibrated deviation below which a pending label is dropped")
    cancelled_label_ids: list[int] = Field(default_factory=list)


class TrainingCurve(_Record):
    """One member's learning curve (per epoch)."""

    flops: list[float | None] = Field(default_factory=list, description="cumulative training FLOPs")
    valid_f_mae: list[float | None] = Field(default_factory=list, description="meV/Å")
    train_f_mae: list[float | None] = Field(default_factory=list, description="meV/Å")


class NveGate(_Record):
    """The NVE gate of a round's ensemble (sapis.tasks.nve.NVEResult.summary() plus the joined reason)."""

    passed: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    reason: str = ""
    drift_meV_atom_ps: float | None = None
    fluctuation_ratio: float | None = None
    max_dev_meV_atom: float | None = None
    steps_run: int | None = None
    simulated_ps: float | None = None
    broken_bonds: int | None = None
    min_distance: float | None = Field(None, description="Å")
    n_atoms: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class RoundMetrics(_Record):
    """Everything a round reports (SPEC 'Round metrics'); every field is optional until its step has run."""

    steps: dict[str, bool] = Field(default_factory=dict, description="steps finished (a resumed round skips them)")
    resumed: bool = Field(False, exclude=True, description="the step found its work done (not stored)")
    # explore
    n_candidates: int | None = Field(None, description="candidates stored this round")
    filtered: dict[str, int] | None = Field(None, description="frames dropped by the physical filter, by reason")
    explorers: list[str] | None = None
    # select
    strategy: str | None = None
    n_selected: int | None = Field(None, description="labels chosen for training this round")
    window_eV_A: list[float] | None = Field(None, description="trust window of the calibrated deviation")
    calibrated: bool | None = None
    deviation_eV_A: dict[str, float] | None = Field(None, description="min / median / max candidate deviation")
    ranking: dict[str, float | int | bool | None] | None = Field(None, description="what the ranking saw")
    n_outside_window: int | None = None
    n_excluded_by_source: int | None = Field(None, description="candidates left out by select.sources")
    n_by_source: dict[str, int] | None = Field(None, description="picks per explorer's share (select.source_shares)")
    # label
    label: LabelStats | None = None
    # train
    n_train: int | None = None
    n_valid: int | None = None
    n_params: int | None = Field(None, description="parameters per member")
    capacity: AnyModelConfig | None = Field(None, description="the model config trained this round")
    k: int | None = Field(None, description="labels planned for this round")
    train_factor: float | None = None
    train_flops: float | None = None
    train_flops_cum: float | None = None
    train_wall_s: float | None = None
    train_f_mae: float | None = None
    valid_f_mae: float | None = None
    curves: list[TrainingCurve] | None = None
    probes: dict[str, Any] | None = Field(
        default=None,
        description="in-round learning-curve probes: points (N, P, error), train_s, flops (tasks/scaling_probe); "
        "skipped: why none were trained (tasks/scaling.skip_probes)",
    )
    # re-rank the pending queue
    queue: QueueRerank | None = None
    # evaluate
    test_f_mae: float | None = Field(None, description="meV/Å")
    test_f_rmse: float | None = Field(None, description="meV/Å")
    test_e_mae: float | None = Field(None, description="meV")
    test_e_mae_per_atom: float | None = Field(None, description="meV/atom")
    n_test: int | None = None
    test_members: list[dict[str, Any]] | None = None
    n_labels_added: int | None = None
    n_labels_failed: int | None = None
    dft_cpu_s: float | None = None
    dft_cpu_s_cum: float | None = None
    n_labels_total: int | None = None
    calibration: dict[str, Any] | None = Field(None, description="sapis.tasks.calibration.Calibration.to_dict()")
    nve: NveGate | None = None
    parity_png: str | None = None
    energy_parity_png: str | None = None
    uncertainty_png: str | None = None
    calibration_png: str | None = None
    learning_curve_png: str | None = None

    @field_validator("capacity", mode="before")
    @classmethod
    def _old_capacity(cls, v: Any) -> Any:
        if isinstance(v, Mapping) and "architecture" not in v:  # rows written before the architecture tag
            return {"architecture": "sapis", **v}
        return v

    @classmethod
    def from_row(cls, data: Mapping[str, Any] | None) -> RoundMetrics:
        """Read a stored round's metrics (keys no longer reported are ignored)."""
        return cls.model_validate({k: v for k, v in (data or {}).items() if k in cls.model_fields})

    def merged(self, other: RoundMetrics) -> RoundMetrics:
        """These metrics updated with the fields ``other`` set (a later step's results)."""
        steps = {**self.steps, **other.steps}
        data = {**self.model_dump(exclude_unset=True), **other.model_dump(exclude_unset=True), "steps": steps}
        return RoundMetrics.model_validate(data)

    def to_row(self) -> dict[str, Any]:
        """JSON-able dict for the store (fields never set are left out)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def summary(self, index: int, decision: str | None) -> dict[str, Any]:
        """One row of a campaign's history (CLI status, the flow's learning-curve table): counts, errors, cost."""
        return {
            "round": index,
            "labels": self.n_labels_total,
            "added": self.n_labels_added,
            "failed": self.n_labels_failed,
            "test_f_mae_meV_A": self.test_f_mae,
            "test_e_mae_meV": self.test_e_mae,
            "n_params": self.n_params,
            "train_flops": self.train_flops,
            "dft_cpu_s": self.dft_cpu_s,
            "decision": decision,
        }

    @property
    def plots(self) -> dict[str, str]:
        """The round's figures by name (``parity_png`` ...)."""
        return {k: v for k, v in self.model_dump().items() if k.endswith("_png") and isinstance(v, str)}
