"""Any Unicode a user sends is answered, or refused with one clear error.

Real parts: MiniLM (whose tokenizer raised a raw ``TypeError`` on a lone surrogate),
an embedded Chroma store, experts behind an OpenAI-compatible HTTP server on
127.0.0.1 spoken to through langchain-openai (the request body is UTF-8 JSON), and
the ``avengers ask`` command in its own process, given the raw bytes of its argument.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import SecretStr

from avengers_graph import ChatAvengers, create_avengers_graph
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.openai_compatible import KEYLESS_API_KEY, ChatOpenAICompatible
from avengers_graph.stores.chroma import ClusterStore
from tests.reliability._run_fixtures import finishes, one_cluster_store
from tests.reliability._store_fixtures import (
    CLI,
    ROOT,
    FakeOpenAI,
    child_env,
    fake_openai,
    write_pool_file,
)

pytestmark = [pytest.mark.enable_socket]

ANSWER = "The answer is \\boxed{7}."

REFUSED: dict[str, list[BaseMessage]] = {
    "a high surrogate": [HumanMessage("What is 3 + 4? \ud83d")],
    "a low surrogate (a 0xFF byte decoded with surrogateescape)": [
        HumanMessage(b"What is 3 + 4? \xff".decode("utf-8", "surrogateescape"))
    ],
    "a reversed pair": [HumanMessage("What is \udc00\ud800 3 + 4?")],
    "a surrogate in the system prompt": [
        SystemMessage("Answer briefly \udfff"),
        HumanMessage("What is 3 + 4?"),
    ],
    "an empty question": [HumanMessage("")],
    "a question of spaces and newlines": [HumanMessage(" \n\t ")],
    "no human message": [SystemMessage("What is 3 + 4?")],
}

ANSWERED = {
    "NUL and C0 controls": "What is 3 + 4?\x00\x01\x07\x1b[2J",
    "8-bit C1 controls (CSI, OSC, ST)": "What is 3 + 4? \x9b31m\x9d0;title\x9c",
    "a right-to-left override": "What is 3 + 4? \u202eeman ym si",
    "a byte order mark, zero-width characters": "\ufeffWhat\u200b is\u200d 3 + 4?\u2060",
    "noncharacters and the last code point": "What is 3 + 4? \ufffe\uffff\U0010ffff",
    "private use code points": "What is 3 + 4? \ue000\U000f0000\U00100000",
    "an emoji ZWJ sequence and flags": (
        "What is 3 + 4? \U0001f469\u200d\U0001f4bb \U0001f1eb\U0001f1f7"
    ),
    "stacked combining marks": "What is 3 + 4? Z\u0351\u0352\u0353\u0354\u0355" * 50,
    "CJK, Arabic, Devanagari": "3 + 4 是多少? ما هو 3 + 4؟ ३ + ४ क्या है?",
    "line and paragraph separators": "What is\u2028 3 + 4?\u2029",
    "a replacement character": "What is 3 + 4? \ufffd",
    "one 200,000-character word": "What is 3 + 4? " + "x" * 200_000,
    "20,000 lines": "What is 3 + 4?\n" * 20_000,
    "a 1 MB question": "What is 3 + 4? " * 70_000,
}


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


@pytest.fixture
def server() -> Iterator[tuple[FakeOpenAI, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    def reply(request: dict[str, Any]) -> str:
        received.append(request)
        return ANSWER

    with fake_openai(FakeOpenAI(reply=reply)) as running:
        yield running, received


def _expert(server: FakeOpenAI) -> ChatOpenAICompatible:
    return ChatOpenAICompatible(
        model="m", base_url=server.base_url, api_key=SecretStr(KEYLESS_API_KEY)
    )


def _runs(
    server: FakeOpenAI, store: ClusterStore, embeddings: LocalEmbeddings
) -> dict[str, Callable[[list[BaseMessage]], Any]]:
    experts = {"expert": _expert(server)}
    graph = create_avengers_graph(experts, embeddings, store, top_n=1, samples=1)
    llm = ChatAvengers(experts=experts, embeddings=embeddings, store=store, top_n=1, samples=1)
    return {
        "graph.invoke": lambda m: graph.invoke({"messages": m})["messages"][-1],
        "graph.ainvoke": lambda m: asyncio.run(graph.ainvoke({"messages": m}))["messages"][-1],
        "ChatAvengers.invoke": llm.invoke,
        "ChatAvengers.ainvoke": lambda m: asyncio.run(llm.ainvoke(m)),
    }


def test_text_that_is_not_unicode_or_no_question_is_refused_before_any_call(
    tmp_path: Path, embeddings: LocalEmbeddings, server: tuple[FakeOpenAI, list[dict[str, Any]]]
) -> None:
    running, _ = server
    store = one_cluster_store(tmp_path / "store", ["expert"])
    for path, run in _runs(running, store, embeddings).items():
        for case, messages in REFUSED.items():
            with pytest.raises(InvalidInputError) as raised:
                finishes(lambda run=run, messages=messages: run(messages))
            assert str(raised.value), (path, case)
    assert running.requests == 0


def test_every_other_text_is_answered_and_reaches_the_expert_as_it_was(
    tmp_path: Path, embeddings: LocalEmbeddings, server: tuple[FakeOpenAI, list[dict[str, Any]]]
) -> None:
    running, received = server
    store = one_cluster_store(tmp_path / "store", ["expert"])
    for path, run in _runs(running, store, embeddings).items():
        for case, text in ANSWERED.items():
            received.clear()
            answer = finishes(lambda run=run, text=text: run([HumanMessage(text)]))
            assert answer.text == ANSWER, (path, case)
            [request] = received
            assert request["messages"][-1]["content"] == text, (path, case)  # nothing lost


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (
            b"What is 3 + 4? \xff\xfe",
            "error: messages[0] (human message) holds a lone surrogate U+DCFF at character 15",
        ),
        (b"\xed\xa0\x80", "error: messages[0] (human message) holds a lone surrogate U+DCED"),
        (b" ", "error: The last human message has no text to answer."),
    ],
    ids=["invalid UTF-8", "an encoded surrogate", "blank"],
)
def test_ask_refuses_an_argument_that_is_not_text_in_one_line(
    tmp_path: Path, server: tuple[FakeOpenAI, list[dict[str, Any]]], argument: bytes, expected: str
) -> None:
    running, _ = server
    one_cluster_store(tmp_path / "store", ["expert"])
    pool = write_pool_file(tmp_path / "pool.json", {"expert": running.base_url}, tmp_path / "store")
    result = subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [*(part.encode() for part in CLI), b"ask", argument, b"--config", str(pool).encode()],
        capture_output=True,
        check=False,
        env=child_env(AVENGERS_CACHE_DIR=str(tmp_path / "cache")),
        cwd=ROOT,
        timeout=300,
    )
    stdout = result.stdout.decode("utf-8", "backslashreplace")
    assert result.returncode == 1, stdout + result.stderr.decode("utf-8", "backslashreplace")
    assert b"Traceback" not in result.stderr
    [line] = stdout.strip().splitlines()
    assert line.startswith(expected)
    assert running.requests == 0
