"""Process-wide settings, read from the environment (prefix ``SAPIS_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict


class _SapisDotEnv(DotEnvSettingsSource):
    """The .env source, keeping only keys with the SAPIS_ prefix."""

    def _load_env_vars(self) -> Any:
        prefix = self.env_prefix if self.case_sensitive else self.env_prefix.lower()
        return {k: v for k, v in super()._load_env_vars().items() if k.startswith(prefix)}


class Settings(BaseSettings):
    """sapis settings. Every field can be set as ``SAPIS_<NAME>`` in the environment."""

    # A .env file is shared with other tools (deploy/README.md puts PREFECT_API_URL there): only its SAPIS_ keys
    # are read; an unknown SAPIS_ key is still an error.
    model_config = SettingsConfigDict(env_prefix="SAPIS_", env_file=".env", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SapisDotEnv(settings_cls), file_secret_settings

    home: Path = Field(
        default=Path("~/.sapis"),
        description="Directory holding the default SQLite database and artifacts (checkpoints, plots, exports).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: SQLite file sapis.db in `home`. "
        "PostgreSQL via psycopg 3: postgresql+psycopg://user@host:5432/db",
    )
    torch_threads: int = Field(default=1, ge=1, description="Threads per torch process (training, MD).")
    dft_threads: int = Field(default=1, ge=1, description="OpenMP threads per PySCF labelling worker.")
    dft_max_memory_mb: int = Field(default=4000, ge=100, description="PySCF max_memory per worker, MB.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Torch device for training and inference; auto picks CUDA when present."
    )
    lease_seconds: float = Field(
        default=600.0, gt=0, description="How long a worker's claim on a label lasts without a heartbeat."
    )

    @field_validator("home")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        v = v.expanduser().resolve()
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} is a file, not a directory")
        return v

    @property
    def url(self) -> str:
        """The database URL, defaulting to the SQLite file in ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'sapis.db'}"

    @property
    def artifacts(self) -> Path:
        """Directory for checkpoints, plots and exports."""
        return self.home / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (read once; call ``get_settings.cache_clear()`` after changing env).

    A bad value raises :class:`sapis.errors.ConfigError` naming the variable, e.g.
    ``SAPIS_TORCH_THREADS='abc': Input should be a valid integer``.
    """
    from pydantic import ValidationError

    from sapis.errors import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = "_".join(str(p) for p in e["loc"]).upper()
            name = name if name.startswith("SAPIS_") else f"SAPIS_{name}"
            msg = str(e["msg"]).removeprefix("Value error, ")
            value = e.get("input")
            shown = f"={value!r}" if isinstance(value, str | int | float) else ""
            problems.append(f"{name}{shown}: {msg}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
