"""Retries and timeouts against a real HTTP server on 127.0.0.1.

The experts are real ``langchain_openai.ChatOpenAI`` clients with their SDK default of
2 retries (or the pool file's ``ChatOpenAICompatible``); the server answers 503, or
hangs until the test ends, and counts the requests it gets. Routing runs on the unit
tests' keyword embeddings and two-cluster Chroma store: what is under test here is the
HTTP traffic, not the routing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from avengers_graph import AllExpertsFailedError, ChatAvengers, create_avengers_graph
from avengers_graph.app.config import load_pool_config
from tests.fakes import KeywordEmbeddings
from tests.unit.conftest import KEYWORDS, write_two_domain_store

QUESTION = "a math problem: what is 6 * 7?"
MATH = {"messages": [HumanMessage(QUESTION)]}
_SERVER_THREAD = "test-http-server"
_HANG_S = 30.0
"""Longest the hanging server holds a request (released when the test ends)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # named, so the thread count of the test can leave the server's own out
        threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=_SERVER_THREAD,
            daemon=True,
        ).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.server.lock:
            self.server.requests += 1
        if self.server.mode == "hang":
            self.server.release.wait(_HANG_S)
        body = json.dumps({"error": {"message": "busy", "type": "server_error"}}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up on a hanging request
            return


def _serve(mode: str) -> Iterator[_Server]:
    server = _Server(mode)
    thread = threading.Thread(target=server.serve_forever, name=_SERVER_THREAD, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def unavailable() -> Iterator[_Server]:
    """A server that answers every request with 503."""
    yield from _serve("503")


@pytest.fixture
def hanging() -> Iterator[_Server]:
    """A server that holds every request until the test ends."""
    yield from _serve("hang")


@pytest.fixture
def embeddings() -> KeywordEmbeddings:
    return KeywordEmbeddings(KEYWORDS)


@pytest.fixture
def store(tmp_path: Path, embeddings: KeywordEmbeddings) -> Any:
    return write_two_domain_store(tmp_path / "store", embeddings)


def _pool(server: _Server) -> dict[str, ChatOpenAI]:
    expert = ChatOpenAI(base_url=server.base_url, api_key="EMPTY", model="m")  # type: ignore[arg-type]
    assert expert.root_client.max_retries == 2  # the SDK default this test is about
    return {"mathy": expert, "coder": expert, "bard": expert}


def _client_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name != _SERVER_THREAD}


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_503_server_gets_max_retries_plus_one_requests_per_sample_through_the_graph(
    unavailable: _Server, embeddings, store, max_retries: int
) -> None:
    graph = create_avengers_graph(
        _pool(unavailable), embeddings, store, top_n=1, samples=3, max_retries=max_retries
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        graph.invoke(MATH)
    assert unavailable.requests == 3 * (max_retries + 1)


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_503_server_gets_max_retries_plus_one_requests_per_sample_through_chat_avengers(
    unavailable: _Server, embeddings, store, max_retries: int
) -> None:
    llm = ChatAvengers(
        experts=_pool(unavailable),
        embeddings=embeddings,
        store=store,
        top_n=1,
        samples=2,
        max_retries=max_retries,
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        llm.invoke(QUESTION)
    assert unavailable.requests == 2 * (max_retries + 1)
    unavailable.requests = 0
    with pytest.raises(AllExpertsFailedError, match="503"):
        asyncio.run(llm.ainvoke(QUESTION))
    assert unavailable.requests == 2 * (max_retries + 1)


def test_a_pool_files_experts_make_max_retries_plus_one_requests(
    unavailable: _Server, embeddings, store, tmp_path: Path
) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        f"experts:\n  - {{name: mathy, base_url: '{unavailable.base_url}', model: m}}\n"
        "routing: {top_n: 1, samples: 2, max_retries: 1}\n"
    )
    pool = load_pool_config(config)
    graph = create_avengers_graph(
        pool.build_experts(), embeddings, store, **pool.routing.as_kwargs()
    )
    with pytest.raises(AllExpertsFailedError, match="503"):
        graph.invoke(MATH)
    assert unavailable.requests == 2 * 2


def test_a_hanging_server_times_out_once_per_sample_and_leaves_no_thread(
    hanging: _Server, embeddings, store
) -> None:
    graph = create_avengers_graph(
        _pool(hanging), embeddings, store, top_n=1, samples=2, timeout=0.5, max_retries=2
    )
    before = _client_threads()
    with pytest.raises(AllExpertsFailedError, match=r"ExpertTimeoutError: no answer within 0\.5 s"):
        graph.invoke(MATH)
    assert _client_threads() == before  # the HTTP requests ended; nothing was abandoned
    assert hanging.requests == 2  # a timeout is a budget: not retried


def test_a_hanging_server_times_out_async(hanging: _Server, embeddings, store) -> None:
    llm = ChatAvengers(
        experts=_pool(hanging), embeddings=embeddings, store=store, top_n=1, samples=2, timeout=0.5
    )
    with pytest.raises(AllExpertsFailedError, match=r"no answer within 0\.5 s"):
        asyncio.run(llm.ainvoke(QUESTION))
    assert hanging.requests == 2
