"""Deployment settings read from environment variables, in one place.

- ``AVENGERS_CACHE_DIR``: folder of the answer cache (default
  ``$XDG_CACHE_HOME/avengers-graph``, else ``~/.cache/avengers-graph``).
- ``AVENGERS_STORE_PATH``: folder of the embedded Chroma store (default
  ``.avengers/store`` under the working directory).
- ``AVENGERS_CHROMA_HOST`` / ``AVENGERS_CHROMA_PORT``: a Chroma server instead of the
  embedded store (default unset / ``8000``).
- ``AVENGERS_POOL``: pool name inside the store (default ``avengers``).
- ``AVENGERS_CONFIG``: pool config file, YAML or JSON (see :mod:`avengers_graph.config`).

``.env.example`` at the repository root documents the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from avengers_graph.errors import InvalidInputError
from avengers_graph.stores.chroma import ClusterStore


def _cache_root(env: Mapping[str, str]) -> Path:
    if env.get("AVENGERS_CACHE_DIR"):
        return Path(env["AVENGERS_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "avengers-graph"


def default_cache_path(env: Mapping[str, str] | None = None) -> Path:
    """Where calibration caches expert answers unless told otherwise."""
    return _cache_root(os.environ if env is None else env) / "answers.sqlite"


@dataclass(frozen=True)
class Settings:
    """Settings of a deployment (LangGraph Studio, the CLI), read by :meth:`from_env`."""

    cache_dir: Path
    store_path: Path
    chroma_host: str | None
    chroma_port: int
    pool: str
    config_file: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the ``AVENGERS_*`` variables (see the module docstring)."""
        env = os.environ if env is None else env
        port = env.get("AVENGERS_CHROMA_PORT", "8000")
        if not port.isdigit():
            raise InvalidInputError(f"AVENGERS_CHROMA_PORT must be a port number, got {port!r}.")
        config = env.get("AVENGERS_CONFIG")
        return cls(
            cache_dir=_cache_root(env),
            store_path=Path(env.get("AVENGERS_STORE_PATH", ".avengers/store")),
            chroma_host=env.get("AVENGERS_CHROMA_HOST") or None,
            chroma_port=int(port),
            pool=env.get("AVENGERS_POOL", "avengers"),
            config_file=Path(config) if config else None,
        )

    def cluster_store(self) -> ClusterStore:
        """The store these settings point at: a Chroma server if a host is set."""
        if self.chroma_host:
            return ClusterStore(host=self.chroma_host, port=self.chroma_port, name=self.pool)
        return ClusterStore(path=self.store_path, name=self.pool)
