"""LangChain's standard unit tests for ``ChatAvengers``, against offline parts.

The experts are scripted, the embeddings count keywords, and the store is a real
embedded Chroma database written once for the module in a temporary folder (the
suite reads ``chat_model_params`` for every model it builds, so the store is cached).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from typing import Any

import numpy as np
from langchain_tests.unit_tests import ChatModelUnitTests

from avengers_graph import ChatAvengers, ClusterStore, ExpertStats, StoreInfo
from avengers_graph.store import StoredQuestion
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.standard import ChatAvengersCapabilities

KEYWORDS = {"hello": 0, "math": 1}
"""Axis 0: greetings and chat; axis 1: arithmetic."""

EXPERTS = ("greeter", "mathy")


@functools.cache
def _embeddings() -> KeywordEmbeddings:
    return KeywordEmbeddings(KEYWORDS, model_name="standard-keywords")


@functools.cache
def _store_dir() -> str:
    path = tempfile.mkdtemp(prefix="avengers-standard-unit-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _store() -> ClusterStore:
    """A two-cluster store: greetings (greeter is best) and math (mathy is best)."""
    embeddings = _embeddings()
    store = ClusterStore(path=_store_dir(), name="standard")
    questions = [
        StoredQuestion("q-hello", "hello there, how are you?", "hi", "text", 0),
        StoredQuestion("q-math", "a math problem: 2 + 2", "4", "number", 1),
    ]
    vectors = np.asarray(embeddings.embed_documents([q.question for q in questions]))
    store.write(
        StoreInfo(
            name="standard",
            embedding_model=embeddings.model_name,
            embedding_dim=embeddings.dim,
            n_clusters=2,
            seed=0,
            experts=EXPERTS,
        ),
        centroids=vectors,
        sizes=[1, 1],
        stats={
            0: {"greeter": ExpertStats(9, 10), "mathy": ExpertStats(4, 10)},
            1: {"greeter": ExpertStats(3, 10), "mathy": ExpertStats(9, 10)},
        },
        questions=questions,
        question_vectors=vectors,
    )
    return store


def _experts() -> dict[str, ScriptedExpert]:
    return {
        "greeter": ScriptedExpert(
            model="greeter-1b", respond=constant("Hello! How can I help you today?")
        ),
        "mathy": ScriptedExpert(model="mathy-1b", respond=constant("So it is \\boxed{4}.")),
    }


class TestChatAvengersStandard(ChatAvengersCapabilities, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatAvengers]:
        return ChatAvengers

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite adds api_key="test"; the ensemble has no key of its own (its
        # experts have theirs) and refuses unknown options instead of ignoring them.
        params = super().standard_chat_model_params
        params.pop("api_key", None)
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "experts": _experts(),
            "embeddings": _embeddings(),
            "store": _store(),
            "model": "avengers-standard",
            "top_n": 2,
            "samples": 1,
            "seed": 0,
        }
