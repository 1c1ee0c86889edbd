"""Campaign configuration: a validated TOML file whose defaults are defined here, once.

>>> cfg = CampaignConfig(name="water", pools=["water"])
>>> cfg.select.k, cfg.targets.max_rounds
(12, 3)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sapis.errors import ConfigError, SapisError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExploreSection(_Section):
    """Coarse MD that proposes candidates each round."""

    explorers: list[Literal["xtb", "committee", "perturb"]] = Field(
        default=["xtb", "perturb"],
        description="Explorers used; 'committee' runs from the first trained model on.",
    )
    temperatures: list[float] = Field(default=[300.0, 600.0, 1000.0], description="Langevin ladder, K.")
    steps: int = Field(default=200, ge=1, description="MD steps per trajectory.")
    timestep_fs: float = Field(default=0.5, gt=0)
    interval: int = Field(default=10, ge=1, description="Keep one frame every `interval` steps.")
    perturbations: int = Field(default=8, ge=0, description="Perturbed copies per pool structure.")
    max_candidates: int = Field(default=2000, ge=1, description="Cap on candidates stored per round.")


class ModelSection(_Section):
    """The ensemble: architecture, initial capacity and training budget."""

    architecture: Literal["sapis", "mace"] = "sapis"
    size: Literal["S", "M", "L"] = Field(default="S", description="Initial capacity preset.")
    knobs: dict[str, Any] = Field(default_factory=dict, description="Explicit capacity knobs over the preset.")
    members: int = Field(default=3, ge=2, description="Ensemble members (>= 2 for a disagreement).")
    max_epochs: int = Field(default=150, ge=1)
    max_minutes: float = Field(default=2.0, gt=0, description="Wall-clock budget per member per round.")
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=5e-3, gt=0)
    forces_weight: float = Field(default=100.0, ge=0)
    energy_weight: float = Field(default=1.0, ge=0)
    valid_fraction: float = Field(default=0.15, ge=0, lt=0.5)
    warm_start: bool = Field(default=True, description="Fine-tune from last round unless capacity changed.")
    workers: int = Field(
        default=1, ge=1, description="Members trained at once in separate processes (one per GPU when present)."
    )
    nve_steps: int = Field(
        default=400, ge=0, description="NVE gate length (0: off); a model that fails it does not drive MD."
    )


class SelectSection(_Section):
    """How labels are chosen."""

    seed_size: int = Field(default=12, ge=2, description="Labels in round 0, chosen for diversity.")
    test_size: int = Field(default=8, ge=1, description="Held-out test labels drawn in round 0.")
    k: int = Field(default=12, ge=1, description="Labels added per round (the controller may grow it).")
    window_lo: float = Field(default=0.0, ge=0, description="Calibrated force deviation floor, eV/Å.")
    window_hi: float = Field(default=2.0, gt=0, description="Calibrated force deviation ceiling, eV/Å.")
    diversity: bool = True


class LabelSection(_Section):
    """Where DFT runs."""

    mode: Literal["local", "work-pool"] = Field(
        default="local", description="local: worker processes on this machine; work-pool: Prefect workers."
    )
    workers: int = Field(default=2, ge=1, description="Local worker processes (mode=local) or runs queued.")
    threads: int = Field(default=1, ge=1, description="OpenMP threads per worker.")
    max_memory_mb: int = Field(default=2000, ge=100)
    work_pool: str = Field(default="sapis-dft", description="DFT work pool (`sapis deploy --dft-pool`).")
    timeout_minutes: float = Field(default=120.0, gt=0, description="Give up waiting for a round's labels.")


class TargetsSection(_Section):
    """When the campaign stops."""

    force_mae: float = Field(default=30.0, gt=0, description="Target test force MAE, meV/Å.")
    max_labels: int = Field(default=500, ge=1, description="DFT budget in labels.")
    max_cpu_hours: float = Field(default=24.0, gt=0, description="DFT budget in CPU hours.")
    max_rounds: int = Field(default=3, ge=1)


class CampaignConfig(_Section):
    """A whole campaign. Every field has a default except the name and pools."""

    name: str = Field(min_length=1)
    pools: list[str] = Field(min_length=1, description="Names of submitted pools to learn.")
    seed: int = 0
    level: dict[str, Any] = Field(
        default_factory=lambda: {"method": "PBE", "basis": "def2-svp"},
        description="Level of theory (sapis.tasks.dft.LevelOfTheory fields).",
        validate_default=True,
    )
    explore: ExploreSection = Field(default_factory=ExploreSection)
    model: ModelSection = Field(default_factory=ModelSection)
    select: SelectSection = Field(default_factory=SelectSection)
    label: LabelSection = Field(default_factory=LabelSection)
    targets: TargetsSection = Field(default_factory=TargetsSection)
    controller: dict[str, Any] = Field(
        default_factory=dict, description="sapis.tasks.scaling.ControllerConfig fields.", validate_default=True
    )
    work_pools: dict[str, str] = Field(default_factory=lambda: {"dft": "sapis-dft", "train": "sapis-gpu"})

    @field_validator("level")
    @classmethod
    def _level_is_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        from sapis.tasks.dft import LevelOfTheory

        try:
            return LevelOfTheory.from_spec(v).spec
        except SapisError as exc:  # reported by pydantic with the field's location
            raise ValueError(str(exc)) from None

    @field_validator("controller")
    @classmethod
    def _controller_is_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        from sapis.tasks.scaling import ControllerConfig

        return ControllerConfig(**v).model_dump(mode="json")

    @model_validator(mode="after")
    def _window(self) -> CampaignConfig:
        if self.select.window_lo >= self.select.window_hi:
            raise ValueError("select.window_lo must be below select.window_hi")
        return self

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> CampaignConfig:
        """Read and validate a TOML file; errors name the file and the field."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such campaign file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "campaign config") -> CampaignConfig:
        """Validate a dict (e.g. stored in the database); raise ConfigError naming the bad fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"{source}: {problems}") from None

    def to_toml(self) -> str:
        """The config as TOML (unset optional values are left out: TOML has no null)."""
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
