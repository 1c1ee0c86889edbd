"""Campaign configuration: a validated TOML file composed of the task configs themselves.

The level of theory is :class:`sapis.tasks.dft.LevelOfTheory`, exploration extends
:class:`sapis.tasks.explore.ExploreConfig`, the model is a :class:`sapis.models.ModelConfig` or
:class:`sapis.models.MaceConfig` (chosen by ``architecture``), training is a :class:`sapis.models.TrainConfig`
and the controller is :class:`sapis.tasks.scaling.ControllerConfig`: the objects validated here are the objects
the round's steps receive.

>>> cfg = CampaignConfig(name="water", pools=["water"])
>>> cfg.select.k, cfg.targets.max_rounds, cfg.model.architecture, cfg.model.channels
(12, 3, 'sapis', 16)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sapis.errors import ConfigError, config_error
from sapis.models.config import ARCHITECTURES, AnyModelConfig, MaceConfig, ModelConfig, TrainConfig
from sapis.tasks.dft import XTB_METHODS, LevelOfTheory
from sapis.tasks.explore import ExploreConfig, Explorer, positive_kelvins
from sapis.tasks.scaling import ControllerConfig

# Campaigns learn labels minus GFN2-xTB (Δ-learning) unless the config says `baseline = "none"`: at 50 rMD17
# ethanol frames and equal CPU time it gave 2.5x lower validation force error than the same model from scratch
# (33.5 vs 83.1 meV/Å, benchmarks/results/model_N50*.json), for ~3 ms of xTB per ethanol call. Stored campaigns
# keep the baseline they were created with (the stored config names it).
CAMPAIGN_BASELINE: Final = "gfn2-xtb"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refuse(data: Any, fields: tuple[str, ...], why: str) -> Any:
    """Reject keys of a section that the round sets itself (they would be silently overridden)."""
    if isinstance(data, dict):
        given = [f for f in fields if f in data]
        if given:
            raise ValueError(f"{', '.join(given)}: {why}")
    return data


class ExploreSection(ExploreConfig):
    """Coarse MD that proposes candidates each round: the ExploreConfig every explorer of the round shares, plus
    which explorers run and how many candidates a round keeps. ``explorer``, ``seed``, ``round_index`` and
    ``trust_hi`` are set per pass by the round (see :meth:`for_explorer`)."""

    explorer: Explorer = Field(default="xtb", exclude=True)
    seed: int = Field(default=0, exclude=True)
    round_index: int | None = Field(default=None, exclude=True)
    trust_hi: float | None = Field(default=None, gt=0, exclude=True)
    explorers: list[Explorer] = Field(
        default=["xtb", "perturb"],
        min_length=1,
        description="Explorers used; 'committee' runs from the first promoted model on.",
    )
    max_candidates: int = Field(default=2000, ge=1, description="Cap on candidates stored per round.")
    committee_temperatures: list[float] | None = Field(
        default=None,
        description="K: the committee explorer's own MD temperatures (None: `temperatures`). Hotter committee MD, "
        "stopped at the trust ceiling select.window_hi, reaches what a room-temperature pool rarely visits",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_round(cls, data: Any) -> Any:
        return _refuse(
            data,
            ("explorer", "seed", "round_index", "trust_hi"),
            "set by the round (use explore.explorers, the campaign seed and select.window_hi)",
        )

    @field_validator("committee_temperatures")
    @classmethod
    def _positive_kelvin(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else positive_kelvins(v, "committee_temperatures")

    def for_explorer(self, explorer: Explorer, *, seed: int, round_index: int, trust_hi: float | None) -> ExploreConfig:
        """The validated ExploreConfig of one pass of ``explorer`` in a round."""
        shared = self.model_dump(exclude={"explorers", "max_candidates", "committee_temperatures"})
        if explorer == "committee" and self.committee_temperatures is not None:
            shared["temperatures"] = list(self.committee_temperatures)
        return ExploreConfig.model_validate(
            {**shared, "explorer": explorer, "seed": seed, "round_index": round_index, "trust_hi": trust_hi}
        )


class TrainSection(TrainConfig):
    """How each ensemble member is trained (:class:`sapis.models.TrainConfig`, with the campaign's defaults).

    ``seed`` and ``warm_start`` are set per round by the plan (campaign seed; ``ensemble.warm_start``)."""

    max_epochs: int = Field(150, ge=1, description="upper bound on epochs (times the round's train factor)")
    max_minutes: float | None = Field(2.0, gt=0, description="wall-clock budget per member per round (minutes)")
    batch_size: int = Field(8, ge=1, description="structures per optimisation step")
    valid_fraction: float = Field(0.15, ge=0, lt=0.5, description="labels held out for validation")
    seed: int = Field(0, exclude=True)
    warm_start: Path | None = Field(None, exclude=True)
    warm_start_readout: bool = Field(True, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _per_round(cls, data: Any) -> Any:
        return _refuse(
            data,
            ("seed", "warm_start", "warm_start_readout"),
            "set by the round (use the campaign seed, ensemble.warm_start, ensemble.pretrained)",
        )

    def for_round(
        self, *, seed: int, factor: float, warm_start: Path | None, members: int, warm_start_readout: bool = True
    ) -> TrainConfig:
        """The validated TrainConfig of a round: budget times ``factor``, the round's seed and warm start
        (``warm_start_readout=False``: a pre-trained trunk with fresh energy readouts)."""
        data = self.model_dump()
        data.update(
            max_epochs=round(self.max_epochs * factor),
            max_minutes=None if self.max_minutes is None else self.max_minutes * factor,
            seed=seed,
            warm_start=warm_start,
            warm_start_readout=warm_start_readout,
            workers=min(self.workers, members),
        )
        return TrainConfig.model_validate(data)


class EnsembleSection(_Section):
    """The committee: how many members, whether a round fine-tunes the last one, and its NVE gate."""

    members: int = Field(default=3, ge=2, description="Ensemble members (>= 2 for a disagreement).")
    warm_start: bool = Field(default=True, description="Fine-tune from last round unless capacity changed.")
    pretrained: Path | None = Field(
        default=None,
        description="A model pre-trained on cheap labels (`sapis model train` output, e.g. on GFN2-xTB-labelled MD "
        "frames with baseline gfn1-xtb for a Δ-GFN2-xTB campaign) of the campaign's architecture and size: round 0 "
        "fine-tunes its trunk with fresh energy readouts (models/README.md, 'Pre-training on cheap labels').",
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
    drop_below: float | None = Field(
        default=None,
        ge=0,
        description="After each training, cancel this campaign's pending labels whose calibrated deviation under "
        "the new ensemble is below this, eV/Å (it is already confident there); None: window_lo.",
    )
    window_quantile: bool = Field(
        default=False,
        description="Read window_lo/window_hi as quantiles (0..1) of the round's calibrated deviations instead of "
        "eV/Å (e.g. 0.0-0.8 leaves the most uncertain fifth, the hot and distorted frames, out).",
    )
    strategy: Literal["uncertainty", "random", "kcenter", "cluster"] = Field(
        default="uncertainty",
        description="uncertainty: calibrated disagreement x diversity in the trust window; random: uniform among "
        "the round's candidates (a baseline: everything else about the round is the same); kcenter: k-center "
        "greedy in the previous ensemble's own feature space, labelled structures as the first centres "
        "(coverage, no uncertainty); cluster: one pick per cluster of a k-means in that space weighted by calibrated "
        "disagreement (representative and uncertain).",
    )
    sources: list[Explorer] | None = Field(
        default=None,
        min_length=1,
        description="Explorers whose candidates training labels may be drawn from (e.g. ['xtb'] leaves the "
        "'perturb' candidates out of selection; they are still stored and may still be held-out test labels); "
        "None: every explorer's.",
    )
    source_shares: dict[Explorer, float] | None = Field(
        default=None,
        description="Share of each round's k ranked within each explorer's candidates alone (uncertainty rule, "
        "the round's window), e.g. {xtb = 0.5, committee = 0.5} keeps half the labels on plain MD when a "
        "biased committee MD would out-rank it everywhere; a share that finds too few, and k left over, go "
        "to one ranking over the rest. None: one ranking over all. strategy = 'uncertainty' only.",
    )
    random_within: list[Explorer] = Field(
        default_factory=list,
        description="Explorers whose share (source_shares) is drawn uniformly at random among their candidates "
        "instead of ranked by disagreement: typical frames of a plain MD rather than its most uncertain ones.",
    )

    @field_validator("source_shares")
    @classmethod
    def _shares_sum_to_at_most_one(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            if any(not 0.0 <= s <= 1.0 for s in v.values()):
                raise ValueError(f"each share must lie in [0, 1], got {v}")
            if sum(v.values()) > 1.0 + 1e-9:
                raise ValueError(f"shares must sum to at most 1, got {sum(v.values()):g}")
        return v

    @model_validator(mode="after")
    def _shares_need_their_rule(self) -> SelectSection:
        # both settings act only through source_shares under the uncertainty rule: anything else would be ignored
        if self.source_shares is not None and self.strategy != "uncertainty":
            raise ValueError(f"source_shares needs strategy = 'uncertainty', not {self.strategy!r}")
        orphans = [e for e in self.random_within if e not in (self.source_shares or {})]
        if orphans:
            raise ValueError(f"random_within names {orphans}, which have no share in source_shares")
        return self


class LabelSection(_Section):
    """Where DFT runs."""

    mode: Literal["local", "work-pool", "inline"] = Field(
        default="local",
        description="local: worker processes on this machine; work-pool: Prefect workers; inline: in the round's "
        "own process (for millisecond levels such as GFN2-xTB).",
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


# Keys of the old single [model] section that now live in [train] / [ensemble] (old files still read).
_LEGACY_TRAIN: tuple[str, ...] = (
    "max_epochs",
    "max_minutes",
    "batch_size",
    "lr",
    "forces_weight",
    "energy_weight",
    "valid_fraction",
    "workers",
)
_LEGACY_ENSEMBLE = ("members", "warm_start", "nve_steps")


class CampaignConfig(_Section):
    """A whole campaign. Every field has a default except the name and pools."""

    name: str = Field(min_length=1)
    pools: list[str] = Field(min_length=1, description="Names of submitted pools to learn.")
    seed: int = 0
    level: LevelOfTheory = Field(
        default_factory=lambda: LevelOfTheory(method="PBE", basis="def2-svp"),
        description="Level of theory of every label (sapis.tasks.dft.LevelOfTheory).",
    )
    explore: ExploreSection = Field(default_factory=ExploreSection)
    model: AnyModelConfig = Field(
        default_factory=lambda: ModelConfig.size("S", baseline=CAMPAIGN_BASELINE),
        description="architecture = 'sapis' (ModelConfig) or 'mace' (MaceConfig); `size` picks a preset that "
        "explicit fields override.",
    )
    train: TrainSection = Field(default_factory=TrainSection)
    ensemble: EnsembleSection = Field(default_factory=EnsembleSection)
    select: SelectSection = Field(default_factory=SelectSection)
    label: LabelSection = Field(default_factory=LabelSection)
    targets: TargetsSection = Field(default_factory=TargetsSection)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    work_pools: dict[str, str] = Field(default_factory=lambda: {"dft": "sapis-dft", "train": "sapis-gpu"})

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        """Read the earlier layout: training and ensemble keys in [model], and `explore.perturbations`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model = data.get("model")
        if isinstance(model, dict) and any(k in model for k in _LEGACY_TRAIN + _LEGACY_ENSEMBLE):
            model = dict(model)
            for keys, section in ((_LEGACY_TRAIN, "train"), (_LEGACY_ENSEMBLE, "ensemble")):
                moved = {k: model.pop(k) for k in keys if k in model}
                if moved:
                    data[section] = {**moved, **dict(data.get(section) or {})}
            data["model"] = model
        explore = data.get("explore")
        if isinstance(explore, dict) and "perturbations" in explore:
            explore = dict(explore)
            n = explore.pop("perturbations")
            if n and "n_perturb" not in explore:
                explore["n_perturb"] = n
            elif not n and "perturb" in (explore.get("explorers") or []):
                raise ValueError(
                    "explore.perturbations = 0 with the 'perturb' explorer: leave 'perturb' out of "
                    "explore.explorers to run none, or set explore.n_perturb"
                )
            data["explore"] = explore
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_baseline_for_xtb_labels(cls, data: Any) -> Any:
        """Labels computed with xTB itself leave nothing for a Δ-to-xTB model to learn: such a campaign learns
        its labels directly unless its [model] names a baseline."""
        if not isinstance(data, dict):
            return data
        level = data.get("level")
        method = level.get("method") if isinstance(level, dict) else getattr(level, "method", None)
        if not isinstance(method, str) or method.upper() not in XTB_METHODS:
            return data
        model = data.get("model")
        if model is None:
            return {**data, "model": {"baseline": "none"}}
        if isinstance(model, dict) and "baseline" not in model and "baseline" not in (model.get("knobs") or {}):
            return {**data, "model": {**model, "baseline": "none"}}
        return data

    @field_validator("name")
    @classmethod
    def _name_storable(cls, v: str) -> str:
        """The store's rule for names (empty, too long, a control character), before any row is written."""
        from sapis.errors import InputError
        from sapis.storage.configs import check_name

        try:
            check_name("name", v)
        except InputError as exc:
            raise ValueError(exc.problem) from None
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> Any:
        """`size` (default 'S') picks a preset; explicit fields (and the old `knobs` table) override it."""
        if not isinstance(v, dict):
            return v
        v = dict(v)
        knobs = v.pop("knobs", None) or {}
        if not isinstance(knobs, dict):
            raise ValueError("knobs must be a table of model fields")
        v = {**v, **knobs}
        arch = v.get("architecture", "sapis")
        size = str(v.pop("size", "S"))
        if arch not in ARCHITECTURES:
            return v  # the discriminated union reports it
        if size.upper() not in ("XS", "S", "M", "L"):
            raise ValueError(f"unknown model size {size!r}; choose one of XS, S, M, L")
        preset = (ModelConfig.size(size) if arch == "sapis" else MaceConfig.size(size)).model_dump()
        return {**preset, "baseline": CAMPAIGN_BASELINE, **v}

    @model_validator(mode="after")
    def _window(self) -> CampaignConfig:
        if self.select.window_lo >= self.select.window_hi:
            raise ValueError("select.window_lo must be below select.window_hi")
        if self.select.window_quantile and self.select.window_hi > 1.0:
            raise ValueError("select.window_quantile: window_hi is a quantile and must be at most 1")
        sources = self.select.sources
        if sources is not None and not set(sources) & set(self.explore.explorers):
            raise ValueError(
                f"select.sources: none of {sources} is in explore.explorers {self.explore.explorers}, "
                "so no candidate could ever be selected"
            )
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
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
        except OSError as exc:  # a folder, no permission
            raise ConfigError(f"{path}: cannot read the campaign file: {exc.strerror or exc}") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "campaign config") -> CampaignConfig:
        """Validate a dict (e.g. stored in the database); raise ConfigError naming the bad fields."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(source, exc, drop=ARCHITECTURES) from None

    def to_toml(self) -> str:
        """The config as TOML (unset optional values are left out: TOML has no null)."""
        return tomli_w.dumps(_drop_none(self.model_dump(mode="json")))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
