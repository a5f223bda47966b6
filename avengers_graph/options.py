"""The routing and sampling options, in one place.

:class:`AvengersOptions` is the one list of the knobs that shape a question's run:
every field with its default, its bounds and a docstring under it. Everything else
derives from it instead of repeating it:

- :func:`~avengers_graph.graph.build_avengers_graph` and
  :func:`~avengers_graph.graph.create_avengers_graph` validate their keyword options
  (``top_n=2, samples=3, ...``) as an ``AvengersOptions``: the graph's defaults.
- :class:`AvengersContext` is the graph's ``context_schema``: the fields a run sets
  (``context=AvengersContext(top_n=3)`` or ``context={"top_n": 3}``) override the
  graph's defaults, the others keep them (:func:`resolve_options`).
- :class:`~avengers_graph.chat_models.ChatAvengers` inherits these fields; every call
  sends their current values, merged with the call's options, as the run's context.
- A pool file's ``routing:`` section is an ``AvengersOptions``
  (:class:`~avengers_graph.app.config.PoolConfig`).

Every path rejects an unknown option with the same :class:`InvalidInputError`, which
names the key and the closest valid one; non-finite numbers are rejected with the
knob named.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from avengers_graph import routing
from avengers_graph.errors import InvalidInputError
from avengers_graph.stores.base import ExpertStats

MAX_RETRIES = 10
"""Upper bound of ``max_retries``."""
DEFAULT_TIMEOUT = 300.0
"""Seconds one expert call may take by default: a local 1.5B model's 256-token answer
takes about 14 s on a quiet 2-core CPU and has taken up to two minutes on a busy one;
300 s leaves room for that without letting a hung server hold a question for ever."""
DEFAULT_RUN_TIMEOUT = 900.0
"""Seconds one question's run may take by default: three rounds of calls at the default
``timeout`` (adaptive sampling's budget of six samples in rounds of two)."""
MAX_RUN_TIMEOUT = 86400.0
"""Upper bound of ``run_timeout``: a day."""


def _accepted_names(model: type[BaseModel]) -> set[str]:
    """Field names of ``model`` plus the aliases it accepts."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return names


def unknown_options_message(unknown: Iterable[str], valid: Iterable[str]) -> str:
    """``unknown option 'top_nn' (did you mean 'top_n'?)`` for each unknown key."""
    valid = sorted(valid)
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"unknown option {key!r}{hint}")
    return "; ".join(parts)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem of a pydantic error: ``top_n: Input should be ... (got 0)``."""
    lines = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        got = "" if error["type"] == "value_error" else f" (got {reprlib.repr(error.get('input'))})"
        lines.append(f"{location}: {message}{got}" if location else message)
    return "; ".join(lines)


class OptionsModel(BaseModel):
    """Base of the option models: frozen, unknown keys and non-finite numbers refused.

    Constructing one raises :class:`InvalidInputError` (not pydantic's
    ``ValidationError``); validating one nested in another model (a pool file)
    raises the outer model's ``ValidationError`` with the same messages.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True
    )

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInputError(
                f"Invalid {type(self).__name__}: {describe_validation_error(exc)}."
            ) from exc

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            valid = _accepted_names(cls)
            if unknown := [key for key in data if key not in valid]:
                raise ValueError(unknown_options_message(map(str, unknown), valid))
        return data

    def as_kwargs(self) -> dict[str, Any]:
        """The options set explicitly (not left at their defaults), as keyword arguments."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class AvengersOptions(OptionsModel):
    """The routing and sampling options of one question's run, with their defaults."""

    top_k: int = Field(default=1, ge=1)
    """Nearest clusters to weigh when routing (the paper's default is 1)."""
    top_n: int = Field(default=2, ge=1)
    """Experts to sample."""
    samples: int = Field(default=3, ge=1)
    """Samples per selected expert, each a separate request with its own seed."""
    beta: float = Field(default=3.0, ge=0)
    """Softmax sharpness over the matched clusters' cosine distances."""
    context_weight: float = Field(default=0.25, ge=0)
    """Weight of the previous human message's embedding blended into the question's
    (:func:`~avengers_graph.routing.blend`); 0 routes on the last human message alone."""
    temperature: float | None = Field(default=0.7, ge=0)
    """Sampling temperature sent to the experts; ``None`` keeps each expert's own."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Cap on the tokens each expert generates; ``None`` keeps each expert's own."""
    stop: list[str] | None = Field(
        default=None, validation_alias=AliasChoices("stop", "stop_sequences")
    )
    """Stop sequences sent to the experts (a single string is one sequence)."""
    seed: int | None = Field(default=None, ge=0)
    """Base seed: sample ``i`` of the expert ranked ``r`` gets ``seed + r * samples + i``;
    ``None`` draws a fresh one per question (recorded in the routing record)."""
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    """Seconds one expert call may take before it counts as failed (that sample is
    lost, the vote goes on). Async calls are cancelled; sync calls to clients that
    take a per-request timeout (langchain-openai) end their HTTP request, others are
    abandoned on their own thread (:mod:`avengers_graph.experts.calls`)."""
    run_timeout: float = Field(default=DEFAULT_RUN_TIMEOUT, gt=0, le=MAX_RUN_TIMEOUT)
    """Seconds the whole run may take, counted from the expert selection: every expert
    call, retry, program and adaptive sampling round shares them. At the deadline the
    run stops waiting for samples (they fail as pending), draws no further round and
    votes on what it has; with nothing to vote on it raises
    :class:`~avengers_graph.errors.ExpertTimeoutError` naming the experts still
    pending. Each expert call gets ``min(timeout, time left)``."""
    max_retries: int = Field(default=2, ge=0, le=MAX_RETRIES)
    """Retries of an expert call that failed with a transient error (connection, 408,
    429, 5xx): a failing sample makes at most ``max_retries + 1`` requests."""
    answer_format: str | SkipJsonSchema[Callable[[str], str | None]] = "auto"
    """The question's answer format, which decides the instruction each strategy sends
    and how answers are compared: ``"auto"`` (detected from the question,
    :func:`~avengers_graph.formats.detect`), a name of
    :data:`~avengers_graph.formats.FORMATS` (``number``, ``math``, ``choice``,
    ``label``, ``text``, ``code``, ``json``, ``free``), ``"semantic"`` (free text), or
    a callable ``text -> key``."""
    similarity_threshold: float = Field(default=0.85, gt=0, le=1)
    """Cosine similarity above which two free-text answers count as the same."""
    prior_strength: float = Field(default=0.0, ge=0)
    """Beta-prior pseudo-counts pulling a cluster's accuracy toward the expert's overall
    accuracy (0: raw accuracy)."""
    quality_weight: float = Field(default=1.0, ge=0, le=1)
    """Avengers-Pro's trade-off: 1 ranks experts by accuracy, lower values favour
    cheaper ones."""
    cost: routing.Cost = "seconds"
    """What the cost-aware ranking counts as cost (:func:`~avengers_graph.routing.expert_cost`):
    ``"seconds"`` or ``"tokens"`` per answer as calibrated, or ``"compute"``, the tokens
    times the expert's cost per token (``expert_costs``, the pool file's ``cost``)."""
    tools: list[dict[str, Any]] | None = None
    """Tools in OpenAI format bound to every expert; the samples then vote on their tool
    calls (set by ``ChatAvengers.bind_tools``)."""
    tool_choice: str | dict[str, Any] | bool | None = None
    """Passed as is to every expert's ``bind_tools`` (``"auto"``, ``"any"``, a name...)."""
    parallel_tool_calls: bool | None = None
    """Passed to every expert's ``bind_tools`` when set."""
    response_format: dict[str, Any] | None = None
    """Sent to every expert as ``response_format`` (JSON mode, a JSON schema)."""
    structured_output: bool = False
    """The answer is one object (``with_structured_output``): when no two samples agree
    on the whole object, it is voted field by field."""
    early_stop: bool | None = None
    """Stop waiting for (and, async, cancel) the samples still running once they can no
    longer change the winning answer. ``None``: on when ``ChatAvengers`` streams, off
    otherwise (the routing record then counts every sample)."""
    weighted: bool = False
    """Weigh every sample's vote by its expert's calibrated reliability in the matched
    clusters, relative to the answer format's chance rate
    (:func:`~avengers_graph.voting.weighted_vote`): the vote of an expert at or below
    chance there does not count; with ``threshold``, such an expert is not sampled at
    all. ``False``: one sample, one vote (the paper's majority)."""
    threshold: float | None = Field(default=None, gt=0, le=1)
    """Adaptive sampling: draw samples in rounds of ``round_size``, cheapest informative
    first (:func:`~avengers_graph.routing.plan_sampling`), and stop once the weighted
    vote is at least this sure of its answer (its posterior, before the store's
    calibrated map: :mod:`avengers_graph.confidence`), or once the samples still
    planned could not change its winner (:func:`~avengers_graph.voting.is_decided`).
    ``None``: draw every planned sample at once. Applies to answers with a key
    (numbers, choices, labels, short text, code); free text, tool calls and structured
    output draw every sample. With ``weighted=False`` every vote weighs the candidates'
    mean reliability, so the posterior is still a probability."""
    budget: int | None = Field(default=None, ge=1)
    """Most samples per question with adaptive sampling (``None``: ``top_n * samples``)."""
    round_size: int = Field(default=2, ge=1)
    """Samples drawn at once between two confidence checks of adaptive sampling."""
    depth: bool = False
    """Adaptive sampling draws each expert's samples before the next expert's (default:
    round-robin over the experts)."""
    reliability_prior: float = Field(default=4.0, ge=0)
    """Pseudo-samples pulling an expert's reliability in a cluster toward its overall
    per-sample accuracy (:func:`~avengers_graph.routing.reliability`)."""
    discount: float = Field(default=1.0, gt=0, le=1)
    """Weight of an expert's ``j``-th sample relative to its first (``discount ** j``):
    below 1, repeated samples of one model count for less."""

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_sequence(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cost", mode="before")
    @classmethod
    def _known_cost(cls, value: Any) -> Any:
        routing.check_cost(value, [])
        return value

    @field_validator("answer_format")
    @classmethod
    def _known_answer_format(
        cls, value: str | Callable[[str], str | None]
    ) -> str | Callable[[str], str | None]:
        if isinstance(value, str) and value not in ("auto", "semantic"):
            from avengers_graph.formats import get_format

            get_format(value)  # raises on an unknown name
        return value

    def sampling_plan(
        self,
        clusters: Sequence[routing.ClusterMatch],
        stats: Mapping[int, Mapping[str, ExpertStats]],
        eligible: Sequence[str],
        *,
        chance: float,
        unit_costs: Mapping[str, float] | None = None,
    ) -> routing.SamplingPlan:
        """Adaptive sampling's plan for one question with these options.

        :func:`~avengers_graph.routing.plan_sampling` with ``top_n``, ``samples`` per
        expert, ``budget`` (default ``top_n * samples``), ``round_size``, ``depth`` and
        ``reliability_prior``: what the graph's ``select_experts`` plans and
        :func:`avengers_graph.confidence.replay_vote` replays.
        """
        return routing.plan_sampling(
            clusters,
            stats,
            eligible,
            chance=chance,
            top_n=self.top_n,
            per_expert=self.samples,
            budget=self.budget or self.top_n * self.samples,
            round_size=self.round_size,
            depth=self.depth,
            prior_strength=self.reliability_prior,
            unit_costs=unit_costs,
        )

    def vote_weights(self, plan: routing.SamplingPlan) -> dict[str, float]:
        """Each planned expert's vote weight: its evidence, or their mean if not ``weighted``.

        Equal votes still weigh the candidates' mean evidence, so the posterior stays
        a probability adaptive sampling can stop on.
        """
        weights = dict(plan.evidence)
        if not self.weighted:
            weights = dict.fromkeys(weights, sum(weights.values()) / len(weights))
        return weights


def _no_defaults(schema: dict[str, Any]) -> None:
    """A run's context has no defaults of its own: unset fields keep the graph's."""
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class AvengersContext(AvengersOptions):
    """Per-run options of the Avengers graph (its ``context_schema``).

    Only the fields a run sets override the graph's defaults (``model_fields_set``):
    ``graph.invoke(inputs, context=AvengersContext(top_n=3))`` or
    ``context={"top_n": 3}`` changes ``top_n`` alone, and ``temperature=None`` is an
    override too (each expert's own temperature). Its JSON schema (what LangGraph
    Studio shows) lists no defaults, since a field left out keeps the value the graph
    was built with (a pool file's ``routing:``), not the class default.
    """

    model_config = ConfigDict(json_schema_extra=_no_defaults)


def resolve_options(defaults: AvengersOptions, context: Any) -> AvengersOptions:
    """The options of one run: the graph's ``defaults`` with the run's context over them.

    Args:
        defaults: The options the graph was built with.
        context: The run's context: ``None``, an :class:`AvengersOptions` (only its
            explicitly set fields count), a mapping of options, or a parent graph's
            own context object, whose attributes named like an option and not
            ``None`` count.

    Raises:
        InvalidInputError: Unknown or invalid options.
    """
    if context is None:
        return defaults
    if isinstance(context, AvengersOptions):
        overrides = context.as_kwargs()
    elif isinstance(context, Mapping):
        overrides = AvengersContext(**context).as_kwargs()
    else:
        names = AvengersOptions.model_fields
        overrides = {
            name: value for name in names if (value := getattr(context, name, None)) is not None
        }
    if not overrides:
        return defaults
    return AvengersOptions(**{**defaults.as_kwargs(), **overrides})


__all__ = [
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_RETRIES",
    "MAX_RUN_TIMEOUT",
    "AvengersContext",
    "AvengersOptions",
    "OptionsModel",
    "resolve_options",
]
