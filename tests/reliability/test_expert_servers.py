"""Expert servers that hang, answer 429s, or echo the key in their error bodies.

Real parts: OpenAI-compatible HTTP servers on 127.0.0.1 (``_store_fixtures.FakeOpenAI``:
one answers, one accepts requests and never answers, one fails every request with a
body quoting the request's ``Authorization`` header), spoken to through
langchain-openai (``ChatOpenAICompatible``, the pool file's client, with its SDK
retries), MiniLM embeddings and an embedded Chroma store; the ``avengers`` CLI in its
own process.

The graph runs on a helper thread that the test waits on for a bounded time: a run
that hangs fails the test instead of hanging it (before the run deadline, a hung
expert held a run for its whole ``timeout``, 300 s by default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from avengers_graph import AllExpertsFailedError, ChatAvengers, create_avengers_graph
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import ExpertTimeoutError
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible
from avengers_graph.stores.chroma import ClusterStore
from tests.reliability._run_fixtures import GUARD_S, finishes, one_cluster_store
from tests.reliability._store_fixtures import (
    FakeOpenAI,
    child_env,
    cli,
    fake_openai,
    write_dataset,
    write_pool_file,
)

pytestmark = [pytest.mark.enable_socket]

KEY = "opaque-key-0123456789-abcdef"  # no well-known shape: only the expert's own key hides it
QUESTION = "What is 3 + 4?"
ANSWER = "The answer is \\boxed{7}."
RUN_TIMEOUT = 3.0

Run = Callable[[dict[str, Any], ClusterStore, LocalEmbeddings, dict[str, Any]], Any]


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


def client(server: FakeOpenAI, **kwargs: Any) -> ChatOpenAICompatible:
    """The pool file's client for ``server``, with the SDK's own retries (the graph's twin
    makes one request per attempt)."""
    return ChatOpenAICompatible(
        model="m", base_url=server.base_url, api_key=SecretStr(KEY), **kwargs
    )


def _graph_sync(
    experts: dict[str, Any],
    store: ClusterStore,
    embeddings: LocalEmbeddings,
    options: dict[str, Any],
) -> Any:
    graph = create_avengers_graph(experts, embeddings, store, **options)
    return graph.invoke({"messages": [HumanMessage(QUESTION)]})["avengers"]


def _graph_async(
    experts: dict[str, Any],
    store: ClusterStore,
    embeddings: LocalEmbeddings,
    options: dict[str, Any],
) -> Any:
    graph = create_avengers_graph(experts, embeddings, store, **options)
    return asyncio.run(graph.ainvoke({"messages": [HumanMessage(QUESTION)]}))["avengers"]


def _chat_sync(
    experts: dict[str, Any],
    store: ClusterStore,
    embeddings: LocalEmbeddings,
    options: dict[str, Any],
) -> Any:
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, **options)
    return llm.invoke(QUESTION).response_metadata["avengers"]


def _chat_async(
    experts: dict[str, Any],
    store: ClusterStore,
    embeddings: LocalEmbeddings,
    options: dict[str, Any],
) -> Any:
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, **options)
    return asyncio.run(llm.ainvoke(QUESTION)).response_metadata["avengers"]


RUNS: dict[str, Run] = {
    "graph.invoke": _graph_sync,
    "graph.ainvoke": _graph_async,
    "ChatAvengers.invoke": _chat_sync,
    "ChatAvengers.ainvoke": _chat_async,
}


@pytest.fixture
def good() -> Iterator[FakeOpenAI]:
    with fake_openai(FakeOpenAI(reply=lambda request: ANSWER)) as server:
        yield server


@pytest.fixture
def hung() -> Iterator[FakeOpenAI]:
    with fake_openai(FakeOpenAI(answer_first=0)) as server:
        yield server


# a server that accepts requests and never answers ------------------------------------------
@pytest.mark.parametrize("slots", [None, 1], ids=["no-slot-limit", "one-slot"])
@pytest.mark.parametrize("run", list(RUNS))
def test_a_hung_server_costs_the_run_its_deadline_and_the_vote_goes_on(
    tmp_path: Path,
    embeddings: LocalEmbeddings,
    good: FakeOpenAI,
    hung: FakeOpenAI,
    run: str,
    slots: int | None,
) -> None:
    experts = {
        "hung": client(hung, max_concurrent_requests=slots),
        "good": client(good),
    }
    store = one_cluster_store(tmp_path / "store", ["hung", "good"])
    options = {"top_n": 2, "samples": 2, "run_timeout": RUN_TIMEOUT}  # timeout: 300 s
    record = finishes(lambda: RUNS[run](experts, store, embeddings, options))
    assert record["votes"] == {"7": 2}
    assert record["winner"] == "good"
    assert "no answer before the run's deadline" in record["failures"]["hung"]
    assert good.answered == 2
    if slots is None:
        assert hung.requests == 2
    else:  # one sample queued behind the other; a sync run's abandoned call may send later
        assert 1 <= hung.requests <= 2


@pytest.mark.parametrize("run", ["graph.invoke", "graph.ainvoke"])
def test_with_every_server_hung_the_run_names_the_experts_pending(
    tmp_path: Path, embeddings: LocalEmbeddings, hung: FakeOpenAI, run: str
) -> None:
    with fake_openai(FakeOpenAI(answer_first=0)) as other:
        experts = {"first": client(hung), "second": client(other)}
        store = one_cluster_store(tmp_path / "store", ["first", "second"])
        options = {"top_n": 2, "samples": 1, "run_timeout": RUN_TIMEOUT}
        with pytest.raises(ExpertTimeoutError) as raised:
            finishes(lambda: RUNS[run](experts, store, embeddings, options))
    message = str(raised.value)
    assert f"run's deadline (run_timeout={RUN_TIMEOUT:g} s)" in message
    assert "Still pending: first (" in message
    assert "; second (" in message


# a server that answers 429 ------------------------------------------------------------------
@pytest.mark.parametrize("max_retries", [0, 2])
@pytest.mark.parametrize("run", ["graph.invoke", "graph.ainvoke"])
def test_429s_are_retried_max_retries_then_fail_the_expert_and_the_vote_goes_on(
    tmp_path: Path, embeddings: LocalEmbeddings, good: FakeOpenAI, run: str, max_retries: int
) -> None:
    with fake_openai(FakeOpenAI(fail_status=429)) as limited:
        experts = {"limited": client(limited), "good": client(good)}
        store = one_cluster_store(tmp_path / "store", ["limited", "good"])
        options = {"top_n": 2, "samples": 2, "max_retries": max_retries}
        record = finishes(lambda: RUNS[run](experts, store, embeddings, options))
    assert limited.requests == 2 * (max_retries + 1)
    assert "429" in record["failures"]["limited"]
    assert record["votes"] == {"7": 2}
    assert record["winner"] == "good"


# a server that echoes the key in its error body -----------------------------------------------
def _no_key(text: str, where: str) -> None:
    assert KEY not in text, f"the key leaked into {where}"


@pytest.mark.parametrize("run", ["graph.invoke", "graph.ainvoke"])
def test_a_key_echoed_by_a_server_reaches_no_failure_exception_or_log(
    tmp_path: Path,
    embeddings: LocalEmbeddings,
    good: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    run: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: LangGraph logs each retry
    with (
        fake_openai(FakeOpenAI(fail_status=429)) as limited,
        fake_openai(FakeOpenAI(fail_status=401)) as refused,
    ):
        store = one_cluster_store(tmp_path / "store", ["limited", "refused", "good"])
        experts = {"limited": client(limited), "refused": client(refused), "good": client(good)}
        options = {"top_n": 3, "samples": 1, "max_retries": 1}
        record = finishes(lambda: RUNS[run](experts, store, embeddings, options))
        assert set(record["failures"]) == {"limited", "refused"}
        _no_key(json.dumps(record), "the routing record")
        assert "Bearer ***" in record["failures"]["limited"]
        assert "Bearer ***" in record["failures"]["refused"]

        del experts["good"]  # every expert fails: the error the caller gets
        with pytest.raises(AllExpertsFailedError) as raised:
            finishes(lambda: RUNS[run](experts, store, embeddings, options))
        _no_key("".join(traceback.format_exception(raised.value)), "the exception")
        assert limited.requests == 4  # both runs retried once: the servers got the key
        assert refused.requests == 2  # a 401 is not retried
    assert any("Retrying task sample" in r.getMessage() for r in caplog.records)
    _no_key(caplog.text, "the logs")


# the command line -------------------------------------------------------------------------
def test_ask_ends_at_the_per_call_timeout_against_a_hung_server(
    tmp_path: Path, good: FakeOpenAI, hung: FakeOpenAI
) -> None:
    one_cluster_store(tmp_path / "store", ["hung", "good"])
    pool = write_pool_file(
        tmp_path / "pool.json",
        {"hung": hung.base_url, "good": good.base_url},
        tmp_path / "store",
        routing={"timeout": 2},
    )
    result = cli(
        "ask",
        QUESTION,
        "--config",
        str(pool),
        "--samples",
        "1",
        env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "cache")),
        timeout=GUARD_S,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, output
    assert "failed: hung: ExpertTimeoutError: no answer within 2 s" in output
    assert "A: The answer is \\boxed{7}." in output


def test_ask_ends_at_the_run_deadline_when_every_server_hangs(
    tmp_path: Path, hung: FakeOpenAI
) -> None:
    one_cluster_store(tmp_path / "store", ["hung"])
    pool = write_pool_file(
        tmp_path / "pool.json",
        {"hung": hung.base_url},
        tmp_path / "store",
        routing={"run_timeout": RUN_TIMEOUT, "top_n": 1},
    )
    result = cli(
        "ask",
        QUESTION,
        "--config",
        str(pool),
        env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "cache")),
        timeout=GUARD_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    [line] = result.stdout.strip().splitlines()  # stderr: the embedding model's load bar
    assert line.startswith("error: No answer within the run's deadline")
    assert "Still pending: hung (ExpertTimeoutError: no answer before the run's deadline" in line


def test_calibrate_ends_at_the_experts_timeout_against_a_hung_server(
    tmp_path: Path, hung: FakeOpenAI
) -> None:
    pool = write_pool_file(
        tmp_path / "pool.json",
        {"hung": hung.base_url},
        tmp_path / "store",
        cache=tmp_path / "answers.sqlite",
        calibration={"samples": 1, "n_clusters": 1},
        timeout=2,  # the expert client's own timeout: what calibration waits per call
    )
    dataset = write_dataset(tmp_path / "data.jsonl", 2)
    result = cli(
        "calibrate",
        "--config",
        str(pool),
        "--dataset",
        str(dataset),
        env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "cache")),
        timeout=GUARD_S,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "error: Calibration stopped: hung: 2 failed calls" in output
    assert "(first: OpenAITimeoutError: Request timed out.)" in output
    assert hung.requests == 2
