"""Validated configurations of a model and of its training (pydantic, JSON-able, stored in checkpoints)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Δ-learning baselines: labels minus GFN2-xTB or GFN1-xTB (tblite; sapis.models.xtb.BASELINE_METHODS)
Baseline = Literal["none", "gfn2-xtb", "gfn1-xtb"]


# Capacity presets for ``ModelConfig.size`` and ``MaceConfig.size``. M has 24 channels, not 32: at
# N=50 and equal CPU time, 24 channels trained to 0.97x the force error of 32 on ethanol and 0.95x on acetic acid
# (4 seeds each; 0.95x / 0.95x at 4x the budget; wider was worse: 48 channels 1.11x / 1.27x), with 39 % fewer
# parameters and cheaper calls (models/README.md, "Width"). A stored campaign keeps the width it was created with.
class _Preset(NamedTuple):
    channels: int
    layers: int
    lmax: int
    heads: int
    mace_channels: int  # MACE's preset keeps its own width (the sapis width change was measured on sapis only)


_SIZES: dict[str, _Preset] = {
    "XS": _Preset(8, 1, 1, 2, mace_channels=8),
    "S": _Preset(16, 2, 2, 2, mace_channels=16),
    "M": _Preset(24, 2, 2, 4, mace_channels=32),
    "L": _Preset(64, 3, 2, 4, mace_channels=64),
}


def _preset(name: str) -> _Preset:
    """The preset ``name`` (any case); ConfigError naming the choices for an unknown one."""
    preset = _SIZES.get(name.upper())
    if preset is None:
        from sapis.errors import ConfigError

        raise ConfigError(f"unknown model size {name!r}; choose one of {', '.join(_SIZES)}")
    return preset


class ModelConfig(BaseModel):
    """Capacity and geometry of the equivariant transformer (the knobs the scaling controller turns).

    >>> ModelConfig.size("S").channels
    16
    >>> ModelConfig().scaled(width=2.0, depth=1).layers
    3
    """

    model_config = ConfigDict(extra="forbid")

    architecture: Literal["sapis"] = Field("sapis", description="discriminator: the sapis transformer")
    channels: int = Field(24, ge=1, description="multiplicity of every irrep in the node features (width)")
    layers: int = Field(2, ge=1, description="number of attention + feed-forward blocks (depth)")
    lmax: int = Field(2, ge=0, le=4, description="highest angular momentum of node and edge features")
    heads: int = Field(4, ge=1, description="attention heads")
    cutoff: float = Field(5.0, gt=0.5, description="radial cutoff in Å")
    num_radial: int = Field(8, ge=1, description="Bessel functions in the radial basis")
    radial_hidden: int = Field(32, ge=1, description="width of the radial MLP that makes tensor-product weights")
    envelope_p: int = Field(6, ge=2, description="exponent of the polynomial cutoff envelope")
    readout_hidden: int = Field(16, ge=1, description="hidden width of the per-atom energy readout")
    correlation: int = Field(
        2, ge=1, le=3, description="body order - 1 of each block: products of the aggregated message (1: two-body)"
    )
    block_norm: Literal["irreps", "scalars", "none"] = Field(
        "none",
        description="pre-norm at the input of every attention and feed-forward block: 'irreps' (an equivariant layer "
        "norm per irrep type, Equiformer's), 'scalars' (the l = 0 channels only) or 'none' (MACE has none: a "
        "per-irrep norm rescales each node's l > 0 features to unit size, so their magnitude, e.g. how "
        "asymmetric the environment is, never reaches the next block)",
    )
    attention: bool = Field(
        True,
        description="softmax attention over neighbours in every block; False aggregates messages by the enveloped "
        "neighbour sum alone (the density term, a learned scale per head: MACE's aggregation; the ablation)",
    )
    density: bool = Field(
        True,
        description="add the plain enveloped neighbour sum (MACE's density, a learned scale per head) to the "
        "attention weights, so aggregated messages keep the neighbour count softmax weights normalise away",
    )
    species_gains: bool = Field(
        True,
        description="element-dependent gain per channel on every body order before they are mixed (as MACE's "
        "element-dependent product weights)",
    )
    layer_readouts: bool = Field(
        True, description="every block but the last adds a linear per-atom energy of its scalars (as MACE)"
    )
    species_skip: bool = Field(
        False,
        description="every attention block's residual adds an element-dependent linear map of its input, "
        "x + W_Z x (MACE's skip tensor product with the one-hot element; W starts at zero). Off: no gain measured "
        "(models/README.md)",
    )
    zbl: bool = Field(False, description="add a ZBL screened-nuclear repulsion prior (stops atoms collapsing in MD)")
    zbl_radius_scale: float = Field(
        1.0, gt=0, description="ZBL switched off smoothly at this multiple of the summed covalent radii"
    )
    baseline: Baseline = Field(
        "none", description="Δ-learning: the model learns labels minus this baseline (gfn2-xtb, gfn1-xtb: tblite)"
    )

    @classmethod
    def size(cls, name: str, **overrides: object) -> ModelConfig:
        """A preset capacity: 'XS' (tests), 'S', 'M' (default), 'L'."""
        p = _preset(name)
        return cls(**{"channels": p.channels, "layers": p.layers, "lmax": p.lmax, "heads": p.heads, **overrides})

    def scaled(self, width: float = 1.0, depth: int = 0, lmax: int | None = None) -> ModelConfig:
        """A validated copy with ``width`` times the channels, ``depth`` more layers and optionally another ``lmax``."""
        return _grown(self, width, depth, lmax=self.lmax if lmax is None else lmax)

    def describe(self) -> str:
        """The capacity as a person reads it in a log line.

        >>> ModelConfig.size("S", baseline="gfn2-xtb").describe()
        'sapis: 16 channels, 2 layers, lmax 2, 2 heads, Δ-GFN2-xTB'
        """
        return f"sapis: {self.channels} channels, {self.layers} layers, lmax {self.lmax}, {self.heads} heads" + _delta(
            self.baseline
        )


# ModelConfig fields added after checkpoints were first written, each with the value that rebuilds the model
# such a checkpoint holds (a checkpoint's config lacks the field; the default may have moved on since)
ARCHITECTURE_BEFORE_FIELD: dict[str, Any] = {
    "density": False,
    "species_gains": False,
    "layer_readouts": False,
    "block_norm": "irreps",
}


class MaceConfig(BaseModel):
    """Capacity of the MACE reference model (names follow mace's run_train options).

    >>> MaceConfig(channels=8).hidden_irreps()
    '8x0e + 8x1o'
    """

    model_config = ConfigDict(extra="forbid")

    architecture: Literal["mace"] = Field("mace", description="discriminator: mace-torch's ScaleShiftMACE")
    channels: int = Field(32, ge=1, description="multiplicity of hidden irreps")
    max_L: int = Field(1, ge=0, le=2, description="highest l of hidden features (0: scalars only)")
    max_ell: int = Field(3, ge=1, description="highest l of edge spherical harmonics")
    correlation: int = Field(3, ge=1, description="body order of the product basis minus one")
    layers: int = Field(2, ge=1, description="interactions")
    cutoff: float = Field(5.0, gt=0.5, description="r_max in Å")
    num_radial: int = Field(8, ge=1, description="Bessel functions")
    num_polynomial_cutoff: int = Field(5, ge=1)
    radial_mlp: list[int] = Field(default_factory=lambda: [64, 64, 64])
    mlp_irreps: str = "16x0e"
    baseline: Baseline = Field("none", description="Δ-learning baseline (as ModelConfig)")

    @classmethod
    def size(cls, name: str, **overrides: object) -> MaceConfig:
        """The sapis preset ``name`` mapped onto MACE: its layers, ``max_L = min(lmax, 1)``, MACE's own channels."""
        p = _preset(name)
        base = {"channels": p.mace_channels, "layers": p.layers, "max_L": min(p.lmax, 1)}
        return cls.model_validate({**base, **overrides})

    @classmethod
    def from_sapis(cls, cfg: ModelConfig) -> MaceConfig:
        """The MACE model of the same width, depth, cutoff and radial basis as a sapis config."""
        return cls(
            channels=cfg.channels,
            layers=cfg.layers,
            cutoff=cfg.cutoff,
            num_radial=cfg.num_radial,
            max_L=min(cfg.lmax, 1),
            baseline=cfg.baseline,
        )

    def scaled(self, width: float = 1.0, depth: int = 0, lmax: int | None = None) -> MaceConfig:
        """A validated copy with ``width`` times the channels, ``depth`` more interactions, ``max_L = min(lmax, 2)``."""
        return _grown(self, width, depth, max_L=self.max_L if lmax is None else min(lmax, 2))

    def describe(self) -> str:
        """The capacity as a person reads it in a log line.

        >>> MaceConfig(channels=8).describe()
        'MACE: 8 channels, 2 interactions, max_L 1, correlation 3'
        """
        return (
            f"MACE: {self.channels} channels, {self.layers} interactions, max_L {self.max_L}, correlation "
            f"{self.correlation}" + _delta(self.baseline)
        )

    def hidden_irreps(self) -> str:
        """e.g. '32x0e + 32x1o' for channels=32, max_L=1."""
        return " + ".join(f"{self.channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(self.max_L + 1))


def _delta(baseline: str) -> str:
    """', Δ-GFN2-xTB' for a baseline, '' for none."""
    return "" if baseline == "none" else f", Δ-{baseline.upper().replace('-XTB', '-xTB')}"


_Capacity = TypeVar("_Capacity", ModelConfig, MaceConfig)


def _grown(cfg: _Capacity, width: float, depth: int, **angular: int) -> _Capacity:
    """``cfg`` with ``width`` times the channels and ``depth`` more layers (at least one of each), validated."""
    data = {**cfg.model_dump(), "channels": max(1, round(cfg.channels * width)), "layers": max(1, cfg.layers + depth)}
    return type(cfg).model_validate({**data, **angular})


AnyModelConfig = Annotated[ModelConfig | MaceConfig, Field(discriminator="architecture")]
"""A model's configuration, whichever architecture (pydantic picks the class by ``architecture``)."""

ARCHITECTURES = ("sapis", "mace")
_ANY_MODEL: TypeAdapter[ModelConfig | MaceConfig] = TypeAdapter(AnyModelConfig)


def model_config_for(
    model: ModelConfig | MaceConfig | Mapping[str, Any] | None, architecture: str | None = None
) -> ModelConfig | MaceConfig:
    """The validated config of ``model`` (a config, a dict, or None for the defaults) for ``architecture``.

    A sapis :class:`ModelConfig` asked for as ``architecture="mace"`` maps onto the MACE model of the same
    width, depth, cutoff and radial basis (:meth:`MaceConfig.from_sapis`). ConfigError names every problem.
    """
    from sapis.errors import ConfigError, config_error

    if architecture is not None and architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r} (choose 'sapis' or 'mace')")
    if isinstance(model, ModelConfig | MaceConfig):
        if architecture is None or architecture == model.architecture:
            return model
        if isinstance(model, ModelConfig):
            return MaceConfig.from_sapis(model)
        raise ConfigError("a MaceConfig cannot be trained as architecture 'sapis'")
    data = dict(model or {})
    if architecture is not None:
        data["architecture"] = architecture
    data.setdefault("architecture", "sapis")
    try:
        return _ANY_MODEL.validate_python(data)
    except ValidationError as exc:
        raise config_error("invalid model config", exc, drop=ARCHITECTURES) from None


class TrainConfig(BaseModel):
    """How one ensemble member is trained (all members share it; each gets seed + index)."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: int = Field(200, ge=1, description="upper bound on epochs")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget per member (minutes)")
    max_cpu_minutes: float | None = Field(
        None, gt=0, description="CPU-time budget per member (minutes): equal compute on a shared machine"
    )
    lr: float = Field(2e-2, gt=0, description="peak learning rate of AdamW (sweep: models/README.md)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(4, ge=1, description="structures per optimisation step")
    energy_weight: float = Field(1.0, ge=0, description="weight of the per-atom energy MSE (eV²/atom²)")
    forces_weight: float = Field(
        30.0,
        ge=0,
        description="weight of the force-component MSE (eV²/Å²); 30 (it was 100): 0.94× the force error from "
        "scratch in 5 of 5 runs, no change with a Δ baseline (models/README.md)",
    )
    ema_decay: float = Field(0.99, ge=0, lt=1, description="decay of the exponential moving average of weights")
    patience: int = Field(30, ge=1, description="epochs without validation improvement before stopping")
    warmup_epochs: float = Field(2.0, ge=0, description="linear learning-rate warm-up (epochs)")
    plateau_patience: int = Field(8, ge=1, description="epochs without improvement before the lr is cut")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="lr multiplier on a plateau")
    min_lr: float = Field(1e-5, ge=0, description="floor of the learning rate")
    clip_grad: float = Field(10.0, gt=0, description="gradient-norm clipping")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="held out for early stopping when no valid set")
    bootstrap: bool = Field(True, description="resample the training set with replacement per member (M > 1)")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda'")
    seed: int = Field(0, description="base seed; member i uses seed + i")
    dtype: Literal["float32", "float64"] = "float32"
    warm_start: Path | None = Field(None, description="checkpoint (file or ensemble dir) to start from")
    warm_start_readout: bool = Field(
        True,
        description="take the energy readouts from the warm start too; False starts them fresh and keeps the trunk "
        "(fine-tuning a model pre-trained at another level of theory, e.g. GFN2-xTB, on DFT labels)",
    )
    threads: int = Field(1, ge=1, description="torch threads per member process")
    workers: int = Field(1, ge=1, description="members trained at once (separate processes)")
    eval_every: int = Field(1, ge=1, description="epochs between validation passes")
