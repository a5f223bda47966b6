"""Deployment settings read from environment variables, in one place (pydantic-settings).

- ``AVENGERS_CACHE_DIR``: folder of the answer cache, the model files and the
  llama.cpp build (default ``$XDG_CACHE_HOME/avengers-graph``, else
  ``~/.cache/avengers-graph``); model files and a build the default folder already
  holds are used from there, not copied.
- ``AVENGERS_STORE_PATH``: folder of the embedded Chroma store (default ``store`` in
  the cache folder; a pool file's ``store: {path: ...}`` wins, read relative to the
  pool file). Never the working directory: ``avengers ask`` works the same from any
  folder.
- ``AVENGERS_CHROMA_HOST`` / ``AVENGERS_CHROMA_PORT``: a Chroma server instead of the
  embedded store (default unset / ``8000``).
- ``AVENGERS_POOL``: pool name inside the store (default ``avengers``).
- ``AVENGERS_CONFIG``: pool config file, YAML or JSON (see :mod:`avengers_graph.app.config`).

A relative ``AVENGERS_CACHE_DIR`` or ``AVENGERS_STORE_PATH`` is read against the working
directory once, when the settings are read. ``.env.example`` at the repository root
documents the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.cache import cache_root, default_cache_path

if TYPE_CHECKING:
    from avengers_graph.stores.chroma import ClusterStore

__all__ = ["Settings", "default_cache_path"]

_PREFIX = "AVENGERS_"


class Settings(BaseSettings):
    """Settings of a deployment (LangGraph Studio, the CLI), read by :meth:`from_env`."""

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )

    cache_dir: Path = Field(default_factory=lambda: cache_root(os.environ))
    """``AVENGERS_CACHE_DIR``."""
    store_path: Path = Field(default_factory=lambda data: Path(data["cache_dir"]) / "store")
    """``AVENGERS_STORE_PATH``; default ``store`` in the cache folder."""
    chroma_host: str | None = None
    """``AVENGERS_CHROMA_HOST``."""
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    """``AVENGERS_CHROMA_PORT``."""
    pool: str = "avengers"
    """``AVENGERS_POOL``."""
    config_file: Path | None = Field(default=None, alias="config")
    """``AVENGERS_CONFIG``."""

    @field_validator("cache_dir", "store_path", "config_file", mode="after")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """``~`` expanded, a relative path read against the working directory now."""
        return None if path is None else path.expanduser().absolute()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the ``AVENGERS_*`` variables (see the module docstring).

        Args:
            env: The environment (default ``os.environ``).

        Raises:
            InvalidInputError: A value that does not parse, naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            key.removeprefix(_PREFIX).lower(): value
            for key, value in env.items()
            if key.startswith(_PREFIX) and value
        }
        values.setdefault("cache_dir", cache_root(env))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{_PREFIX}{str(error['loc'][0]).upper()}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise InvalidInputError(f"Invalid settings: {problems}.") from exc

    def cluster_store(self) -> ClusterStore:
        """The store these settings point at: a Chroma server if a host is set."""
        from avengers_graph.stores.chroma import ClusterStore

        if self.chroma_host:
            return ClusterStore(host=self.chroma_host, port=self.chroma_port, name=self.pool)
        return ClusterStore(path=self.store_path, name=self.pool)
