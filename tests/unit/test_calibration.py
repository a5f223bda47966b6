"""Calibration with scripted experts: store contents, report, resume, adding experts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from avengers_graph import (
    AnswerCache,
    CacheError,
    CalibrationError,
    ClusterStore,
    InvalidInputError,
    StoreBusyError,
    calibrate,
)
from avengers_graph.calibration import load_dataset
from avengers_graph.options import AvengersOptions
from tests.fakes import KeywordEmbeddings, Responder, ScriptedExpert

KEYWORDS = {"math": 0, "code": 1}
DATASET = [
    *(
        {"id": f"m{i}", "question": f"math item {i}: add", "answer": str(i), "kind": "number"}
        for i in range(6)
    ),
    *(
        {"id": f"c{i}", "question": f"code item {i}: pick", "answer": "B", "kind": "choice"}
        for i in range(6)
    ),
]


def solver(math_ok: bool, code_ok: bool):
    """Answers math items with their number and code items with B, when it is good at them."""

    def respond(question: str, seed: int | None) -> str:
        number = question.split("item ")[1].split(":", maxsplit=1)[0]
        if "math" in question:
            return f"\\boxed{{{number if math_ok else 999}}}"
        return "Answer: B" if code_ok else "Answer: D"

    return respond


def pool() -> dict[str, ScriptedExpert]:
    return {
        "mathy": ScriptedExpert(model="mathy", respond=solver(math_ok=True, code_ok=False)),
        "coder": ScriptedExpert(model="coder", respond=solver(math_ok=False, code_ok=True)),
    }


def run(experts: dict[str, Any], store: ClusterStore, cache: Path, **kwargs: Any):
    kwargs.setdefault("n_clusters", 2)
    kwargs.setdefault("samples", 2)
    return calibrate(experts, KeywordEmbeddings(KEYWORDS), DATASET, store, cache=cache, **kwargs)


def test_calibration_writes_clusters_and_per_expert_statistics(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path / "store")
    experts = pool()
    report = run(experts, store, tmp_path / "cache.sqlite")
    assert report.n_questions == 12
    assert report.n_clusters == 2
    assert report.experts == {"mathy": 0.5, "coder": 0.5}
    assert report.calls == 2 * 12 * 2
    assert report.cached == 0
    info = store.info()
    assert info.embedding_model == "keyword-embeddings"
    assert info.embedding_dim == 3
    assert info.seed == 0
    assert info.experts == ("mathy", "coder")
    # one cluster per domain, each won by its expert with full accuracy
    stored = {q.id: q.cluster for q in store.questions()}
    math_cluster, code_cluster = stored["m0"], stored["c0"]
    assert math_cluster != code_cluster
    assert {stored[f"m{i}"] for i in range(6)} == {math_cluster}
    stats = store.stats()
    assert stats[math_cluster]["mathy"].accuracy == 1.0
    assert stats[math_cluster]["coder"].accuracy == 0.0
    assert stats[code_cluster]["coder"].correct == 6
    assert stats[code_cluster]["coder"].total == 6
    assert stats[code_cluster]["mathy"].mean_tokens == pytest.approx(2.0)  # "Answer: D"
    assert store.sizes() == {math_cluster: 6, code_cluster: 6}


def test_rerun_repeats_no_expert_call(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    run(pool(), ClusterStore(path=tmp_path / "a"), cache)
    experts = pool()
    report = run(experts, ClusterStore(path=tmp_path / "b"), cache)
    assert sum(e.calls for e in experts.values()) == 0
    assert report.calls == 0
    assert report.cached == 48
    assert report.experts == {"mathy": 0.5, "coder": 0.5}


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def test_killed_run_resumes_without_redoing_work(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    # Instant experts could drain the whole queue before the main thread sees the
    # tenth result, so only 12 calls answer before the kill; the calls started after
    # them wait for it, like calls still in flight when a process is killed.
    permits = threading.Semaphore(12)
    killed = threading.Event()

    def gated(respond: Responder) -> Responder:
        def answer(question: str, seed: int | None) -> str:
            if not permits.acquire(blocking=False):
                killed.wait()
            return respond(question, seed)

        return answer

    experts = {
        name: ScriptedExpert(model=expert.model, respond=gated(expert.respond))
        for name, expert in pool().items()
    }

    def kill_after_ten(done: int, total: int) -> None:
        if done >= 10:
            killed.set()
            raise Killed

    with pytest.raises(Killed):
        run(
            experts,
            ClusterStore(path=tmp_path / "s"),
            cache,
            max_concurrency=2,
            progress=kill_after_ten,
        )
    first = sum(e.calls for e in experts.values())
    assert 10 <= first < 48  # the calls in flight finished, the queued ones were dropped
    assert len(AnswerCache(cache)) == first  # every call that ran is cached

    experts = pool()
    report = run(experts, ClusterStore(path=tmp_path / "s"), cache, max_concurrency=2)
    second = sum(e.calls for e in experts.values())
    assert first + second == 48
    assert report.calls == second
    assert report.cached == first


def test_failed_calls_raise_and_keep_the_finished_answers(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    experts = pool()
    experts["broken"] = ScriptedExpert(always_fail=True)
    store = ClusterStore(path=tmp_path / "s")
    with pytest.raises(CalibrationError, match=r"broken: 24 failed calls .*ConnectionError"):
        run(experts, store, cache)
    assert store.is_empty()
    assert len(AnswerCache(cache)) == 48
    experts["broken"] = ScriptedExpert(model="fixed", respond=solver(True, True))
    report = run(experts, store, cache)
    assert report.calls == 24  # only the failed expert's calls
    assert report.experts["broken"] == 1.0


def test_adding_an_expert_runs_only_that_expert(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    store = ClusterStore(path=tmp_path / "s")
    run(pool(), store, cache)
    before = store.stats()
    experts = pool()
    experts["allrounder"] = ScriptedExpert(model="all", respond=solver(True, True))
    report = calibrate(experts, KeywordEmbeddings(KEYWORDS), None, store, cache=cache, samples=2)
    assert report.calibrated == ("allrounder",)
    assert experts["mathy"].calls == experts["coder"].calls == 0
    assert experts["allrounder"].calls == 24
    after = store.stats()
    for cluster, by_expert in before.items():
        for name, stats in by_expert.items():
            assert after[cluster][name] == stats
        assert after[cluster]["allrounder"].accuracy == 1.0
    assert store.info().experts == ("mathy", "coder", "allrounder")
    assert report.experts["allrounder"] == 1.0


def test_adding_with_a_different_dataset_is_refused(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path / "s")
    run(pool(), store, tmp_path / "c.sqlite")
    other = [{"question": "new math", "answer": "1", "kind": "number"}]
    with pytest.raises(InvalidInputError, match="replace=True"):
        calibrate(pool(), KeywordEmbeddings(KEYWORDS), other, store, cache=tmp_path / "c.sqlite")


def test_replace_starts_over(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path / "s")
    run(pool(), store, tmp_path / "c.sqlite")
    report = run(
        {"mathy": pool()["mathy"]}, store, tmp_path / "c.sqlite", replace=True, n_clusters=1
    )
    assert store.info().experts == ("mathy",)
    assert report.n_clusters == 1


def test_custom_grader(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path / "s")
    report = run(pool(), store, tmp_path / "c.sqlite", grader=lambda output, reference: True)
    assert report.experts == {"mathy": 1.0, "coder": 1.0}


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ([], "empty"),
        (["just a string"], "not a dict"),
        ([{"answer": "1", "kind": "number"}], "no 'question'"),
        ([{"question": "q", "kind": "number"}], "no 'answer'"),
        ([{"question": "q", "answer": "1", "kind": "poetry"}], "valid kinds"),
        ([{"id": "x", "question": "q", "answer": "1", "kind": "number"}] * 2, "repeats id"),
    ],
)
def test_bad_datasets_are_explicit_errors(dataset: list[Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        load_dataset(dataset)


def test_too_many_clusters_is_an_explicit_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="n_clusters"):
        run(pool(), ClusterStore(path=tmp_path / "s"), tmp_path / "c.sqlite", n_clusters=50)


def test_an_interrupt_does_not_wait_for_a_hung_expert(tmp_path: Path) -> None:
    # Ctrl-C while an expert never answers: the run ends within the grace period
    # instead of waiting for the hung call (the threads must not keep it alive).
    release = threading.Event()
    experts = {
        "fast": ScriptedExpert(model="fast", respond=solver(True, True)),
        "hung": ScriptedExpert(model="hung", respond=lambda q, s: release.wait(600) and "late"),
    }
    cache = tmp_path / "cache.sqlite"
    seen: list[int] = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        if done >= 3:
            raise KeyboardInterrupt

    outcome: list[BaseException] = []

    def calibrate_in_thread() -> None:
        try:
            run(experts, ClusterStore(path=tmp_path / "s"), cache, progress=interrupt)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=calibrate_in_thread, daemon=True)
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), "the interrupted calibration waited for the hung call"
        assert isinstance(outcome[0], KeyboardInterrupt)
        answered = experts["fast"].calls
        assert len(AnswerCache(cache)) == answered  # every finished answer is cached
    finally:
        release.set()


def test_a_full_cache_stops_the_run_before_more_expert_calls(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "cache.sqlite")
    (pages,) = cache._conn.execute("PRAGMA page_count").fetchone()
    cache._conn.execute(f"PRAGMA max_page_count = {pages + 6}")  # "database or disk is full"
    big = "x" * 3000 + " \\boxed{1}"
    experts = {
        "a": ScriptedExpert(model="a", respond=lambda q, s: big),
        "b": ScriptedExpert(model="b", respond=lambda q, s: big),
    }
    with pytest.raises(CacheError) as excinfo:
        run(experts, ClusterStore(path=tmp_path / "s"), cache, max_concurrency=1)
    message = str(excinfo.value)
    assert "before calling more experts" in message
    assert str(cache.path) in message
    saved = len(cache)
    assert 0 < saved < 48
    calls = sum(e.calls for e in experts.values())
    assert calls == saved + 1  # the one answer that could not be written, and no more


def test_failure_text_is_redacted_and_terminal_safe(tmp_path: Path) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    leaked = "sk-live-0123456789abcdefXYZ"
    # A pool member configured with a key: calibration learns the key from the model.
    keyed = ChatOpenAI(
        model="m",
        api_key=SecretStr("my-configured-key-777"),
        base_url="http://127.0.0.1:9/v1",
        max_retries=0,
    )

    def server_error() -> Exception:
        return RuntimeError(
            f"Error code: 401 - invalid header 'Authorization: Bearer {leaked}' "
            "for key my-configured-key-777\x1b]52;c;ZXZpbA==\x07\x1b[2J"
        )

    experts = {
        "broken": ScriptedExpert(always_fail=True, fail_with=server_error),
        "keyed": keyed,
    }
    with pytest.raises(CalibrationError) as excinfo:
        run(experts, ClusterStore(path=tmp_path / "s"), tmp_path / "c.sqlite", samples=1)
    message = str(excinfo.value)
    assert "broken: 12 failed calls" in message
    assert leaked not in message
    assert "my-configured-key-777" not in message
    assert "\x1b" not in message
    assert "\x07" not in message


def test_a_second_calibration_of_the_same_store_is_refused_at_once(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(question: str, seed: int | None) -> str:
        started.set()
        release.wait(60)
        return solver(True, False)(question, seed)

    first_experts = {"mathy": ScriptedExpert(model="mathy", respond=slow)}
    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            run(first_experts, ClusterStore(path=tmp_path / "s"), tmp_path / "a.sqlite")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        second = pool()
        with pytest.raises(StoreBusyError, match="one writer at a time") as excinfo:
            run(second, ClusterStore(path=tmp_path / "s"), tmp_path / "b.sqlite", n_clusters=1)
        assert str(tmp_path / "s") in str(excinfo.value)
        assert sum(e.calls for e in second.values()) == 0  # refused before any expert call
    finally:
        release.set()
    thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    store = ClusterStore(path=tmp_path / "s")
    assert store.info().experts == ("mathy",)
    assert store.info().n_clusters == 2


def test_grade_samples_reads_labels_as_the_vote_does() -> None:
    from langchain_core.messages import AIMessage

    from avengers_graph.calibration import ValidationItem, grade_samples
    from avengers_graph.experts.cache import CachedAnswer

    item = ValidationItem(
        id="sst2-1",
        question="Is the sentiment of this review positive or negative?\n\nReview: a joy.",
        answer="positive",
        kind="text",
    )
    replies = [
        "The sentiment of this review is positive.",
        "It is warm and funny.\nAnswer: positive",
        "negative",
    ]
    answers = [CachedAnswer(AIMessage(text), 1.0) for text in replies]
    expert = ScriptedExpert(model="reasoner-1b", respond=lambda q, seed: "")
    graded = grade_samples(answers, item, None, expert)
    assert graded.keys == ["positive", "positive", "negative"]
    assert (graded.majority, graded.right) == (True, [True, True, False])
    # a custom grader reads the whole reply, as it always did
    exact = grade_samples(answers, item, lambda output, reference: output == reference, expert)
    assert (exact.majority, exact.right) == (False, [False, False, False])


# 60 number questions the detector reads as numbers (service samples them adaptively)
NUMBERS = [
    {"id": f"n{i}", "question": f"What is {i} plus 0?", "answer": str(i), "kind": "number"}
    for i in range(60)
]


def numbers_expert(name: str, right: Callable[[int], bool], wrong: int = 1000) -> ScriptedExpert:
    """Answers question i with i when ``right(i)``, else with i + ``wrong``."""

    def respond(question: str, seed: int | None) -> str:
        number = int(question.split()[2])
        return f"\\boxed{{{number if right(number) else number + wrong}}}"

    return ScriptedExpert(model=name, respond=respond)


def calibrate_numbers(experts: dict[str, Any], store: ClusterStore, cache: Path):
    return calibrate(
        experts,
        KeywordEmbeddings(KEYWORDS),
        NUMBERS,
        store,
        n_clusters=2,
        samples=1,
        cache=cache,
        routing=AvengersOptions(weighted=True, threshold=0.9, top_n=2, samples=1),
    )


def test_calibration_fits_and_stores_the_confidence_map(tmp_path: Path) -> None:
    # "steady" is right unless i % 3 == 0, "erratic" when i is even, and both give
    # i + 1000 when wrong. Over i % 6: they agree on 2, 3, 4 (right, wrong, right) and
    # split on 0, 1, 5, where the steadier one wins (wrong, right, right): a sure vote
    # and a split one are both right 2 times in 3
    experts = {
        "steady": numbers_expert("steady", lambda i: i % 3 != 0),
        "erratic": numbers_expert("erratic", lambda i: i % 2 == 0),
    }
    store = ClusterStore(path=tmp_path / "store")
    report = calibrate_numbers(experts, store, tmp_path / "cache.sqlite")
    fitted = report.confidence
    assert fitted is not None
    assert fitted.votes == 60  # every question voted once, with statistics of the others
    assert store.info().confidence == fitted
    # so the map says 2/3 whatever the posterior
    assert fitted.slope == pytest.approx(0.0, abs=0.05)
    assert fitted(0.99) == pytest.approx(2 / 3, abs=0.01)
    assert fitted(0.5) == pytest.approx(2 / 3, abs=0.01)


def test_adding_an_expert_refits_the_map_from_the_cache(tmp_path: Path) -> None:
    # alone, "steady" (right unless i % 3 == 0) is right 2 times in 3 at one posterior;
    # "erratic" (right when i is even) is wrong in its own way, so when they agree they
    # are right, and when they split the vote is right 2 times in 4: the refitted map
    # says a sure vote is surer than a split one
    steady = numbers_expert("steady", lambda i: i % 3 != 0)
    erratic = numbers_expert("erratic", lambda i: i % 2 == 0, wrong=2000)
    cache = tmp_path / "cache.sqlite"
    store = ClusterStore(path=tmp_path / "store")
    alone = calibrate_numbers({"steady": steady}, store, cache).confidence
    assert alone is not None
    assert alone(0.9) == pytest.approx(2 / 3, abs=0.01)
    both = calibrate_numbers({"steady": steady, "erratic": erratic}, store, cache).confidence
    assert steady.calls == 60  # steady's answers came from the cache
    assert both is not None
    assert both != alone
    assert store.info().confidence == both
    assert both.votes == 60
    assert both.slope > 0.5
    assert both(0.99) > 0.8 > both(0.5)
    # without steady's answers in the cache, the map it has stays
    other = ClusterStore(path=tmp_path / "other")
    calibrate_numbers({"steady": steady}, other, tmp_path / "first.sqlite")
    calibrate_numbers({"steady": steady, "erratic": erratic}, other, tmp_path / "second.sqlite")
    assert other.info().confidence == alone
    assert other.info().experts == ("steady", "erratic")


def test_too_few_questions_fit_no_map(tmp_path: Path) -> None:
    store = ClusterStore(path=tmp_path / "store")
    report = run(pool(), store, tmp_path / "cache.sqlite")  # 12 questions: < 30 votes
    assert report.confidence is None
    assert store.info().confidence is None
