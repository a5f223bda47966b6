"""Calibration: cluster validation questions and score every expert per cluster.

:func:`calibrate` follows ``ALGORITHM.md`` ("Calibration"):

1. :func:`load_dataset` validates the items (``question``, ``answer``, ``kind``, ``id``).
2. The embeddings embed every question; vectors are L2-normalised.
3. scikit-learn ``KMeans(n_clusters, random_state=seed, n_init="auto")`` clusters
   them; centroids are re-normalised for cosine routing.
4. :func:`run_experts` asks every expert ``samples`` times per question (bounded
   concurrency, one request per sample with its own seed). Every answer goes to the
   SQLite :class:`~avengers_graph.experts.cache.AnswerCache` as soon as it arrives, so a
   re-run, or a killed run started again, repeats no call.
5. :func:`grade_expert` takes each expert's majority answer per question
   (:func:`~avengers_graph.voting.majority_answer`) and grades it with the item's
   grader (:mod:`avengers_graph.grading`) or the caller's.
6. Per cluster and expert, ``correct``, ``total``, mean tokens and seconds go to the
   :class:`~avengers_graph.stores.chroma.ClusterStore` with the centroids and the questions.
7. :func:`fit_confidence` votes every question as the graph would, with statistics of
   the other questions only, and fits the map from a vote's posterior to how often it
   is right (:mod:`avengers_graph.confidence`); the store keeps it with the clusters.

On a store that already holds a calibration, only the experts it does not know yet
are run, on the stored questions, and their statistics are added without
re-clustering. ``replace=True`` starts over.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from avengers_graph import voting
from avengers_graph.confidence import RecordedQuestion, cross_fitted_votes, fit_confidence_map
from avengers_graph.embeddings import embedding_model_name
from avengers_graph.errors import CacheError, CalibrationError, InvalidInputError
from avengers_graph.experts.cache import AnswerCache, CachedAnswer, cache_key, default_cache_path
from avengers_graph.experts.contract import Contract, Expert, as_expert, contract, validate_pool
from avengers_graph.formats import FORMATS, Grader, detect, get_format, get_grader
from avengers_graph.options import AvengersOptions
from avengers_graph.redact import environment_secrets, redact, secrets_of, terminal_safe
from avengers_graph.routing import compact
from avengers_graph.stores.base import (
    CalibrationStore,
    ConfidenceMap,
    ExpertStats,
    Graded,
    StoredQuestion,
    StoreInfo,
    tally,
)

DEFAULT_ROUTING = AvengersOptions(weighted=True, threshold=0.9)
"""The routing options a confidence map is fitted for when :func:`calibrate` is given none."""

Progress = Callable[[int, int], None]
"""Called with ``(finished calls, total calls)`` as expert answers arrive."""


@dataclass(frozen=True)
class ValidationItem:
    """One validation question."""

    id: str
    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class CalibrationReport:
    """What a calibration measured."""

    experts: dict[str, float]
    """Accuracy of every expert in the store over all validation questions."""
    clusters: dict[int, dict[str, float]]
    """Accuracy per cluster and expert."""
    sizes: dict[int, int]
    """Questions per cluster."""
    n_questions: int
    n_clusters: int
    calibrated: tuple[str, ...]
    """Experts that were run by this call (empty when the store was already complete)."""
    calls: int = 0
    """Expert calls made by this run."""
    cached: int = 0
    """Answers taken from the cache instead of calling an expert."""
    stats: dict[int, dict[str, ExpertStats]] = field(default_factory=dict, repr=False)
    confidence: ConfidenceMap | None = None
    """The store's map from a vote's posterior to a calibrated probability (None: not
    fitted, see :func:`fit_confidence`)."""


def _item_id(question: str, answer: str) -> str:
    return hashlib.sha256(f"{question}\x00{answer}".encode()).hexdigest()[:16]


def _validation_item(position: int, raw: object, *, custom_grader: bool) -> ValidationItem:
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"Dataset item {position} is a {type(raw).__name__}, not a dict.")
    question, answer = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError(f"Dataset item {position} has no 'question' text.")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise InvalidInputError(f"Dataset item {position} has no 'answer' (str or number).")
    kind = raw.get("kind", "text" if custom_grader else None)
    kinds = sorted(name for name, fmt in FORMATS.items() if fmt.gradable)
    if not isinstance(kind, str) or (not custom_grader and kind not in kinds):
        raise InvalidInputError(
            f"Dataset item {position} has kind {kind!r}; valid kinds are "
            f"{kinds} (or pass grader=...)."
        )
    item_id = raw.get("id") or _item_id(question, str(answer))
    return ValidationItem(id=str(item_id), question=question, answer=str(answer), kind=kind)


def load_dataset(
    dataset: Iterable[Mapping[str, Any]], *, custom_grader: bool = False
) -> list[ValidationItem]:
    """Validate and normalise validation items.

    Args:
        dataset: Mappings with ``question`` and ``answer`` (str or number), ``kind``
            (a gradable format of :data:`avengers_graph.formats.FORMATS`, optional with a custom
            grader) and an optional ``id`` (default: a hash of question and answer).
        custom_grader: Whether a custom grader is given (then any ``kind`` is accepted).

    Raises:
        InvalidInputError: An item is not a mapping, lacks a question or an answer,
            has an unknown kind, or two items share an id.
    """
    items: list[ValidationItem] = []
    seen: set[str] = set()
    for position, raw in enumerate(dataset):
        item = _validation_item(position, raw, custom_grader=custom_grader)
        if item.id in seen:
            raise InvalidInputError(f"Dataset item {position} repeats id {item.id!r}.")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise InvalidInputError("The dataset is empty.")
    return items


def default_n_clusters(n_questions: int) -> int:
    """K keeping about 10 questions per cluster, within the paper's range (at most 64)."""
    return max(1, min(64, n_questions // 10))


def cluster_questions(
    vectors: np.ndarray, n_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded K-means on L2-normalised vectors.

    Returns:
        ``(labels, centroids)`` with centroids re-normalised to unit length.
    """
    from sklearn.cluster import KMeans

    if not 1 <= n_clusters <= len(vectors):
        raise InvalidInputError(
            f"n_clusters must be between 1 and the number of questions ({len(vectors)}), "
            f"got {n_clusters}."
        )
    kmeans = KMeans(n_clusters=n_clusters, random_state=seed, init="k-means++", n_init="auto")
    labels = kmeans.fit_predict(vectors)
    centroids = kmeans.cluster_centers_
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return labels.astype(int), centroids / np.where(norms == 0, 1.0, norms)


def _model_identity(expert: BaseChatModel) -> str:
    name = expert._get_ls_params().get("ls_model_name")
    return name if isinstance(name, str) and name else type(expert).__name__


def build_prompt(item: ValidationItem, expert: BaseChatModel | Expert) -> list[BaseMessage]:
    """The messages sent to an expert for one validation question (the prompt contract).

    The same as service sends for the same question: the strategy's instruction for the
    question's detected format (:mod:`avengers_graph.experts.contract`), then the question.
    """
    return item_contract(item, as_expert(expert)).messages([HumanMessage(item.question)])


def item_contract(item: ValidationItem, expert: Expert) -> Contract:
    """The contract of one expert for one validation question (as service detects it)."""
    return contract(item.question, expert.strategy, constrain=expert.constrain)


def serves(expert: Expert, item: ValidationItem) -> bool:
    """Whether the expert's strategy serves the question's format (else it is not asked)."""
    return get_format(detect(item.question).format).serves(expert.strategy)


@dataclass(frozen=True)
class _Call:
    expert: str
    item: ValidationItem
    index: int
    messages: list[BaseMessage]
    params: dict[str, Any]
    key: str


def _plan_calls(
    experts: Mapping[str, BaseChatModel | Expert],
    items: Sequence[ValidationItem],
    samples: int | Mapping[str, int],
    seed: int,
    temperature: float | None,
    max_tokens: int | Mapping[str, int] | None,
) -> list[_Call]:
    # in (question, expert, sample) order: one expert's samples of a prompt follow each
    # other, so a llama.cpp slot that just read the prompt serves the next sample from
    # its prompt cache; an expert whose strategy does not serve the format is not asked
    pool = {name: as_expert(expert) for name, expert in experts.items()}
    models = {name: _model_identity(expert.model) for name, expert in pool.items()}
    counts = {name: samples if isinstance(samples, int) else samples.get(name, 0) for name in pool}
    calls: list[_Call] = []
    for item in items:
        cap = max_tokens.get(item.kind) if isinstance(max_tokens, Mapping) else max_tokens
        asked = {name: item_contract(item, e) for name, e in pool.items() if serves(e, item)}
        prompts = {name: c.messages([HumanMessage(item.question)]) for name, c in asked.items()}
        for name, terms in asked.items():
            for index in range(counts[name]):
                params: dict[str, Any] = {"seed": seed + index, **terms.options(cap)}
                if temperature is not None:
                    params["temperature"] = temperature
                key = cache_key(name, models[name], prompts[name], params)
                calls.append(_Call(name, item, index, prompts[name], params, key))
    return calls


def run_experts(
    experts: Mapping[str, BaseChatModel | Expert],
    items: Sequence[ValidationItem],
    cache: AnswerCache,
    *,
    samples: int | Mapping[str, int],
    seed: int,
    temperature: float | None,
    max_tokens: int | Mapping[str, int] | None,
    max_concurrency: int,
    progress: Progress | None = None,
) -> tuple[dict[tuple[str, str], list[CachedAnswer]], int, int]:
    """Ask every expert ``samples`` times per item, through the cache.

    ``samples`` may differ per expert (a mapping by expert name; missing experts are
    not asked) and ``max_tokens`` per item kind (a mapping by kind; missing kinds are
    not capped). Sample ``j`` of every expert has seed ``seed + j``.

    The calls run on ``max_concurrency`` daemon threads; each answer is cached by the
    thread that got it, before it is counted. On an interrupt (Ctrl-C, or an exception
    raised by ``progress``) no new call starts, the calls in flight get
    :data:`INTERRUPT_GRACE_S` seconds to finish (and be cached), and the interrupt is
    raised again: a hung expert never keeps the process alive.

    Returns:
        ``(answers by (expert, item id), calls made, answers from the cache)``.

    Raises:
        CalibrationError: Some calls failed; every other answer is cached, so a re-run
            retries only the failed calls. The errors' text is redacted (no API key
            or bearer token from an upstream server's message).
        CacheError: An answer could not be written to the cache (a full disk): the run
            stops before calling more experts; the answers cached before are kept.
    """
    calls = _plan_calls(experts, items, samples, seed, temperature, max_tokens)
    models = {name: as_expert(expert).model for name, expert in experts.items()}
    answers, missing = _from_cache(calls, cache)
    done = len(calls) - len(missing)
    if progress:
        progress(done, len(calls))
    secrets = [*secrets_of(experts.values()), *environment_secrets()]

    def ask(call: _Call) -> CachedAnswer:
        started = time.perf_counter()
        message = models[call.expert].invoke(call.messages, **call.params)
        if not isinstance(message, AIMessage):
            raise InvalidInputError(f"Expert {call.expert!r} returned {type(message).__name__}.")
        answer = CachedAnswer(message=message, seconds=time.perf_counter() - started)
        cache.put(call.key, call.expert, call.params, answer)  # saved even if the run is killed
        return answer

    failures: dict[str, list[str]] = defaultdict(list)
    # a failed cache write stops every thread before its next call: no answer is thrown away
    outcomes = _run_calls(ask, missing, max_concurrency, fatal=(CacheError,))
    try:
        for call, outcome in outcomes:
            if isinstance(outcome, CacheError):
                raise CacheError(
                    f"Calibration stopped before calling more experts: {outcome}"
                ) from outcome
            if isinstance(outcome, BaseException):
                text = terminal_safe(redact(f"{type(outcome).__name__}: {outcome}", secrets))
                failures[call.expert].append(text)
            else:
                answers[(call.expert, call.item.id)][call.index] = outcome
            done += 1
            if progress:
                progress(done, len(calls))
    finally:
        outcomes.close()  # on an interrupt: no new call, a short grace for those in flight
    if failures:
        detail = "; ".join(
            f"{name}: {len(errors)} failed calls (first: {errors[0]})"
            for name, errors in failures.items()
        )
        raise CalibrationError(
            f"Calibration stopped: {detail}. The {len(calls) - sum(map(len, failures.values()))} "
            "finished answers are cached; fix the experts and run the same command again: "
            "only the failed calls are made."
        )
    ordered = {key: [by_index[i] for i in sorted(by_index)] for key, by_index in answers.items()}
    return ordered, len(missing), len(calls) - len(missing)


def _from_cache(
    calls: Sequence[_Call], cache: AnswerCache
) -> tuple[dict[tuple[str, str], dict[int, CachedAnswer]], list[_Call]]:
    """The cached answers of ``calls`` by (expert, item id) and sample, and the calls missing."""
    answers: dict[tuple[str, str], dict[int, CachedAnswer]] = defaultdict(dict)
    missing: list[_Call] = []
    for call in calls:
        hit = cache.get(call.key)
        if hit is None:
            missing.append(call)
        else:
            answers[(call.expert, call.item.id)][call.index] = hit
    return answers, missing


def cached_answers(
    experts: Mapping[str, BaseChatModel | Expert],
    items: Sequence[ValidationItem],
    cache: AnswerCache,
    *,
    samples: int | Mapping[str, int],
    seed: int,
    temperature: float | None,
    max_tokens: int | Mapping[str, int] | None,
) -> dict[tuple[str, str], list[CachedAnswer]] | None:
    """The answers :func:`run_experts` would return, from the cache alone (no call).

    None when any is missing from the cache.
    """
    calls = _plan_calls(experts, items, samples, seed, temperature, max_tokens)
    answers, missing = _from_cache(calls, cache)
    if missing:
        return None
    return {key: [by_index[i] for i in sorted(by_index)] for key, by_index in answers.items()}


@dataclass(frozen=True)
class GradedSamples:
    """An expert's answers to one item, keyed and graded (:func:`grade_samples`)."""

    keys: list[str | None]
    """Each sample's key (None: no answer), as the vote reads it."""
    right: list[bool]
    """Whether each sample is right (a sample with no answer is wrong)."""
    majority: bool
    """Whether the majority answer is right."""


def grade_samples(
    answers: Sequence[CachedAnswer],
    item: ValidationItem,
    grader: Grader | None,
    expert: BaseChatModel | Expert | None = None,
) -> GradedSamples:
    """Grade an expert's answers to one item: every sample, and its majority answer.

    The replies are read by the expert's contract (a program's output, a ``direct``
    answer unwrapped) and keyed by the question's format; a question detected as free
    text is keyed by its validation kind's format, as service votes on what the
    replies hold. A sample with no answer is wrong. Where the format grades keys
    (``AnswerFormat.grades_key``: numbers, math, choices, labels) the built-in grader
    reads the key, the answer that votes; a custom ``grader`` reads the reply.
    """
    terms = item_contract(item, as_expert(expert)) if expert is not None else None
    texts = [terms.answer(a.message).text if terms else a.message.text for a in answers]
    if terms is not None and not terms.format.votes_by_meaning:
        fmt = terms.format
        keys = [terms.key(text) for text in texts]
    else:
        fmt = get_format(item.kind) if item.kind in FORMATS else get_format("text")
        detected = detect(item.question)
        keys = [fmt.key(text, detected) for text in texts]
    grade = grader or get_grader(item.kind)
    by_key = grader is None and fmt.grades_key  # a custom grader reads the reply
    right: dict[str, bool] = {}
    for key, text in zip(keys, texts, strict=True):
        if key is not None and key not in right:
            right[key] = bool(grade(key if by_key else text, item.answer))
    samples = [key is not None and right[key] for key in keys]
    if not right:
        return GradedSamples(keys, samples, False)
    result = voting.majority_vote(keys, [0] * len(keys))
    return GradedSamples(keys, samples, right[result.answer])


INTERRUPT_GRACE_S = 1.0
"""Seconds the calls in flight get to finish (and be cached) when a calibration is interrupted."""

_T = TypeVar("_T")
_R = TypeVar("_R")


def _run_calls(
    function: Callable[[_T], _R],
    tasks: Sequence[_T],
    workers: int,
    fatal: tuple[type[BaseException], ...] = (),
) -> Generator[tuple[_T, _R | BaseException], None, None]:
    """Run ``function`` over ``tasks`` on daemon threads; yield each outcome as it arrives.

    An outcome is the result or the exception raised; a ``fatal`` exception stops
    every thread from taking a new task at once. Closing the generator early (an
    interrupt in the consumer) stops the threads from taking new tasks and waits at
    most :data:`INTERRUPT_GRACE_S` seconds for the tasks in flight. The threads are
    daemons (unlike ``ThreadPoolExecutor``'s, which the interpreter joins at exit), so
    a call that never returns cannot keep the process alive.
    """
    todo: queue.SimpleQueue[_T] = queue.SimpleQueue()
    for task in tasks:
        todo.put(task)
    results: queue.SimpleQueue[tuple[_T, _R | BaseException]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                task = todo.get_nowait()
            except queue.Empty:
                return
            try:
                outcome: _R | BaseException = function(task)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, nothing lost
                outcome = exc
                if isinstance(exc, fatal):
                    stop.set()
            results.put((task, outcome))

    threads = [
        threading.Thread(target=work, name=f"avengers-calibration-{i}", daemon=True)
        for i in range(min(workers, len(tasks)))
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(len(tasks)):
            while True:
                try:
                    yield results.get(timeout=0.5)  # a bounded wait: Ctrl-C is seen at once
                    break
                except queue.Empty:
                    if not any(thread.is_alive() for thread in threads) and results.empty():
                        return  # stopped by a fatal outcome the consumer did not raise
                    continue
    finally:
        stop.set()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def grade_expert(
    answers: Sequence[CachedAnswer],
    item: ValidationItem,
    grader: Grader | None,
    expert: BaseChatModel | Expert | None = None,
) -> bool:
    """Grade an expert's majority answer to one item (see :func:`grade_samples`)."""
    return grade_samples(answers, item, grader, expert).majority


def _output_tokens(message: AIMessage) -> int:
    return message.usage_metadata["output_tokens"] if message.usage_metadata else 0


def graded_items(
    answers: Mapping[tuple[str, str], Sequence[CachedAnswer]],
    items: Sequence[ValidationItem],
    labels: Mapping[str, int],
    experts: Mapping[str, BaseChatModel | Expert],
    grader: Grader | None,
) -> dict[str, dict[str, tuple[GradedSamples, Graded]]]:
    """Item id to expert to its graded samples and its row of the statistics.

    An expert counts only the questions its strategy serves (it was not asked the others).
    """
    graded: dict[str, dict[str, tuple[GradedSamples, Graded]]] = {}
    for item in items:
        for name, expert in experts.items():
            item_answers = answers.get((name, item.id))
            if not item_answers:
                continue
            samples = grade_samples(item_answers, item, grader, expert)
            graded.setdefault(item.id, {})[name] = (
                samples,
                Graded(
                    labels[item.id],
                    name,
                    samples.majority,
                    float(np.mean([_output_tokens(a.message) for a in item_answers])),
                    float(np.mean([a.seconds for a in item_answers])),
                    sum(samples.right),
                    len(samples.right),
                ),
            )
    return graded


def expert_stats(
    answers: Mapping[tuple[str, str], Sequence[CachedAnswer]],
    items: Sequence[ValidationItem],
    labels: Mapping[str, int],
    experts: Mapping[str, BaseChatModel | Expert],
    grader: Grader | None,
) -> dict[int, dict[str, ExpertStats]]:
    """Per-cluster, per-expert statistics from graded answers (:func:`graded_items`)."""
    graded = graded_items(answers, items, labels, experts, grader)
    return tally(row for by_expert in graded.values() for _, row in by_expert.values())


def fit_confidence(
    graded: Mapping[str, Mapping[str, tuple[GradedSamples, Graded]]],
    items: Sequence[ValidationItem],
    vectors: np.ndarray,
    centroids: np.ndarray,
    routing: AvengersOptions,
    *,
    seed: int = 0,
    expert_costs: Mapping[str, float] | None = None,
) -> ConfidenceMap | None:
    """The map from a vote's posterior to a calibrated probability, for this calibration.

    :func:`~avengers_graph.confidence.cross_fitted_votes` on the items whose format
    votes by key (those adaptive sampling serves), with ``routing``'s options, then
    :func:`~avengers_graph.confidence.fit_confidence_map`. With one sample per expert
    recorded, a simulated vote holds at most one sample of each expert.
    """
    questions = []
    for item, vector in zip(items, vectors, strict=True):
        detected = detect(item.question)
        if not voting.votes_by_key(detected.format) or item.id not in graded:
            continue
        by_expert = graded[item.id]
        questions.append(
            RecordedQuestion(
                item.id,
                vector,
                voting.chance_rate(detected),
                keys={name: samples.keys for name, (samples, _) in by_expert.items()},
                right={name: samples.right for name, (samples, _) in by_expert.items()},
                graded=[row for _, row in by_expert.values()],
            )
        )
    pairs = cross_fitted_votes(questions, centroids, routing, seed=seed, unit_costs=expert_costs)
    return fit_confidence_map(pairs)


def _report(
    store: CalibrationStore, calibrated: Sequence[str], calls: int, cached: int
) -> CalibrationReport:
    info = store.info()
    stats = store.stats()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for cluster in stats.values():
        for name, s in cluster.items():
            totals[name][0] += s.correct
            totals[name][1] += s.total
    return CalibrationReport(
        experts={
            name: (totals[name][0] / totals[name][1] if totals[name][1] else 0.0)
            for name in info.experts
        },
        clusters={c: {n: s.accuracy for n, s in cluster.items()} for c, cluster in stats.items()},
        sizes=store.sizes(),
        n_questions=sum(store.sizes().values()),
        n_clusters=info.n_clusters,
        calibrated=tuple(calibrated),
        calls=calls,
        cached=cached,
        stats=stats,
        confidence=info.confidence,
    )


def _open_cache(cache: AnswerCache | str | os.PathLike[str] | None) -> AnswerCache:
    if isinstance(cache, AnswerCache):
        return cache
    return AnswerCache(Path(cache) if cache is not None else default_cache_path())


def calibrate(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    dataset: Iterable[Mapping[str, Any]] | None,
    store: CalibrationStore,
    *,
    n_clusters: int | None = None,
    samples: int = 3,
    seed: int = 0,
    temperature: float | None = 0.7,
    max_tokens: int | None = None,
    max_concurrency: int = 4,
    cache: AnswerCache | str | os.PathLike[str] | None = None,
    grader: Grader | None = None,
    replace: bool = False,
    progress: Progress | None = None,
    routing: AvengersOptions | None = None,
    expert_costs: Mapping[str, float] | None = None,
) -> CalibrationReport:
    """Calibrate a pool of experts on validation data and write the store.

    Args:
        experts: The pool: expert name to chat model.
        embeddings: Any LangChain ``Embeddings``; use the same ones for routing.
        dataset: Validation items (see :func:`load_dataset`). May be ``None`` when the
            store already holds a calibration and only new experts are added.
        store: Where the calibration is written.
        n_clusters: K of K-means; default keeps about 10 questions per cluster.
        samples: Answers per expert and question; the majority answer is graded.
        seed: Seed of K-means and base seed of the samples (sample ``i`` uses ``seed + i``).
        temperature: Sampling temperature sent to experts (``None``: the expert's own).
        max_tokens: Generation cap sent to experts (``None``: the expert's own).
        max_concurrency: Expert calls in flight at once.
        cache: The answer cache, or a path to its SQLite file (default: the user cache
            folder, see :func:`avengers_graph.experts.cache.default_cache_path`).
        grader: A callable ``(output, reference) -> bool`` used instead of the
            per-kind graders.
        replace: Discard the store's calibration and start over. The new one is
            written beside the old and switched in at the end, so the old one keeps
            serving until then (and if the run is interrupted).
        progress: Called with ``(finished calls, total calls)``.
        routing: The routing options the graph will run with: the confidence map
            (:func:`fit_confidence`) is fitted on votes cast with them (default:
            weighted votes, ``threshold`` 0.9, the other options' defaults). Adding
            experts refits it with the whole pool when the earlier experts are passed
            too and their answers are all in the cache; else the stored map stays.
        expert_costs: Expert name to its cost per generated token, as the graph gets
            them (adaptive sampling's draw order).

    Returns:
        The accuracy of every expert overall and per cluster, and the confidence map.

    Raises:
        InvalidInputError: Bad arguments or dataset, or a dataset that differs from the
            store's questions when adding experts.
        EmbeddingMismatchError: Adding experts with other embeddings than the store's.
        CalibrationError: Expert calls failed (the rest is cached; run again to resume).
        CacheError: The answer cache is damaged or could not be written (a full disk):
            the run stops before calling more experts; what was cached is kept.
        StoreBusyError: Another calibration is writing to the store.
        StoreError: The store is damaged or did not answer in time.
    """
    validate_pool(experts)
    if samples < 1 or max_concurrency < 1:
        raise InvalidInputError("samples and max_concurrency must be >= 1.")
    answer_cache = _open_cache(cache)
    run = {
        "samples": samples,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "max_concurrency": max_concurrency,
        "progress": progress,
    }
    # One writer per store for the whole run: a second calibration fails at once with
    # StoreBusyError instead of calling experts and then overwriting this one.
    with store.write_lock():
        if not replace and not store.is_empty():
            return _add_experts(
                experts,
                embeddings,
                dataset,
                store,
                answer_cache,
                grader,
                run,
                routing=routing if routing is not None else DEFAULT_ROUTING,
                expert_costs=expert_costs,
            )
        return _calibrate_new(
            experts,
            embeddings,
            dataset,
            store,
            answer_cache,
            grader,
            run,
            n_clusters,
            seed,
            routing=routing if routing is not None else DEFAULT_ROUTING,
            expert_costs=expert_costs,
        )


def _calibrate_new(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    dataset: Iterable[Mapping[str, Any]] | None,
    store: CalibrationStore,
    answer_cache: AnswerCache,
    grader: Grader | None,
    run: Mapping[str, Any],
    n_clusters: int | None,
    seed: int,
    *,
    routing: AvengersOptions,
    expert_costs: Mapping[str, float] | None,
) -> CalibrationReport:
    """Cluster, run every expert and write a new calibration (beside the old one, if any)."""
    if dataset is None:
        raise InvalidInputError("calibrate needs a dataset to build a new store.")
    items = load_dataset(dataset, custom_grader=grader is not None)
    # embedded as the graph routes them (a long question compacted to head and tail)
    vectors = np.asarray(embeddings.embed_documents([compact(item.question) for item in items]))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    k = n_clusters if n_clusters is not None else default_n_clusters(len(items))
    labels, centroids = cluster_questions(vectors, k, seed)
    label_of = {item.id: int(label) for item, label in zip(items, labels, strict=True)}

    answers, calls, cached = run_experts(experts, items, answer_cache, **run)
    graded = graded_items(answers, items, label_of, experts, grader)
    stats = tally(row for by_expert in graded.values() for _, row in by_expert.values())
    confidence = fit_confidence(
        graded, items, vectors, centroids, routing, seed=seed, expert_costs=expert_costs
    )
    store.write(
        StoreInfo(
            name=store.name,
            embedding_model=embedding_model_name(embeddings),
            embedding_dim=int(vectors.shape[1]),
            n_clusters=k,
            seed=seed,
            experts=tuple(experts),
            confidence=confidence,
        ),
        centroids=centroids,
        sizes=[int(np.sum(labels == c)) for c in range(k)],
        stats=stats,
        questions=[
            StoredQuestion(item.id, item.question, item.answer, item.kind, label_of[item.id])
            for item in items
        ],
        question_vectors=vectors,
    )
    return _report(store, list(experts), calls, cached)


def _add_experts(
    experts: Mapping[str, BaseChatModel | Expert],
    embeddings: Embeddings,
    dataset: Iterable[Mapping[str, Any]] | None,
    store: CalibrationStore,
    cache: AnswerCache,
    grader: Grader | None,
    run: Mapping[str, Any],
    *,
    routing: AvengersOptions,
    expert_costs: Mapping[str, float] | None,
) -> CalibrationReport:
    """Run the experts the store lacks on its questions and add their statistics.

    The confidence map is refitted with the whole pool when every earlier expert is in
    ``experts`` and its answers are all in the cache (no call is made for them); else
    the stored map is kept.
    """
    info = store.info()
    store.check_compatible(embedding_model_name(embeddings), info.embedding_dim)
    stored = store.questions()
    if dataset is not None:
        given = {item.id for item in load_dataset(dataset, custom_grader=grader is not None)}
        if given != {q.id for q in stored}:
            raise InvalidInputError(
                "The dataset differs from the questions this store was calibrated on; "
                "pass dataset=None to add experts on the stored questions, or replace=True "
                "to calibrate from scratch."
            )
    new = [name for name in experts if name not in info.experts]
    if not new:
        return _report(store, [], 0, 0)
    items = [ValidationItem(q.id, q.question, q.answer, q.kind) for q in stored]
    answers, calls, cached = run_experts({n: experts[n] for n in new}, items, cache, **run)
    added = {name: experts[name] for name in new}
    labels = {q.id: q.cluster for q in stored}
    stats = expert_stats(answers, items, labels, added, grader)
    confidence = None
    earlier = {name: experts[name] for name in info.experts if name in experts}
    if len(earlier) == len(info.experts):
        keys = ("samples", "seed", "temperature", "max_tokens")
        found = cached_answers(earlier, items, cache, **{key: run[key] for key in keys})
        if found is not None:
            pool = {**earlier, **added}
            confidence = fit_confidence(
                graded_items({**found, **answers}, items, labels, pool, grader),
                items,
                store.question_vectors(),
                store.centroids(),
                routing,
                seed=info.seed or 0,
                expert_costs=expert_costs,
            )
    store.add_expert_stats(stats, confidence=confidence)
    return _report(store, new, calls, cached)
