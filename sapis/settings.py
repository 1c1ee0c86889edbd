"""Process-wide settings, read from the environment (prefix ``SAPIS_``) and an optional ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """sapis settings. Every field can be set as ``SAPIS_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SAPIS_", env_file=".env", extra="forbid")

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
        return v.expanduser().resolve()

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
    """The settings of this process (read once; call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
