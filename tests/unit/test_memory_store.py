"""The in-memory store: the same protocol as Chroma's, a calibration as a plain object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import HumanMessage

from avengers_graph import calibrate, create_avengers_graph
from avengers_graph.errors import EmbeddingMismatchError, EmptyStoreError, InvalidInputError
from avengers_graph.stores import (
    Calibration,
    CalibrationStore,
    ClusterStore,
    ExpertStats,
    MemoryStore,
    StoreInfo,
)
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.unit.conftest import write_two_domain_store

KEYWORDS = {"math": 0, "code": 1}


def test_both_stores_are_calibration_stores(tmp_path: Path) -> None:
    assert isinstance(MemoryStore(), CalibrationStore)
    assert isinstance(ClusterStore(path=tmp_path / "s"), CalibrationStore)


def test_a_calibration_moves_between_stores_unchanged(tmp_path: Path) -> None:
    embeddings = KeywordEmbeddings(KEYWORDS)
    chroma = write_two_domain_store(tmp_path / "store", embeddings)
    memory = MemoryStore.from_store(chroma)
    assert memory.info().experts == chroma.info().experts
    assert memory.stats() == chroma.stats()
    assert memory.sizes() == chroma.sizes()
    assert [q.id for q in memory.questions()] == [q.id for q in chroma.questions()]
    vector = embeddings.embed_query("a math question")
    assert [c for c, _ in memory.nearest(vector, 2)] == [c for c, _ in chroma.nearest(vector, 2)]
    assert memory.nearest(vector, 1)[0][1] == pytest.approx(
        chroma.nearest(vector, 1)[0][1], abs=1e-5
    )
    copy = ClusterStore(path=tmp_path / "copy", name="unit")
    memory.save(copy)
    assert Calibration.read(copy).stats == Calibration.read(chroma).stats


def test_the_graph_and_calibration_run_on_memory(tmp_path: Path) -> None:
    embeddings = KeywordEmbeddings(KEYWORDS)
    store = MemoryStore("mem")
    experts = {
        "mathy": ScriptedExpert(model="m", respond=constant("\\boxed{42}")),
        "coder": ScriptedExpert(model="c", respond=constant("\\boxed{7}")),
    }
    dataset = [
        {"id": f"m{i}", "question": f"math item {i}", "answer": "42", "kind": "number"}
        for i in range(4)
    ] + [
        {"id": f"c{i}", "question": f"code item {i}", "answer": "7", "kind": "number"}
        for i in range(4)
    ]
    report = calibrate(
        experts, embeddings, dataset, store, n_clusters=2, samples=1, cache=tmp_path / "c.db"
    )
    assert report.experts == {"mathy": 0.5, "coder": 0.5}
    graph = create_avengers_graph(experts, embeddings, store, top_n=1, samples=1)
    out = graph.invoke({"messages": [HumanMessage("a math item")]})
    assert out["avengers"]["winner"] == "mathy"


def test_errors() -> None:
    store = MemoryStore()
    with pytest.raises(EmptyStoreError, match="calibrate"):
        store.info()
    info = StoreInfo(
        name="", embedding_model="e", embedding_dim=2, n_clusters=1, seed=0, experts=("a",)
    )
    with pytest.raises(InvalidInputError, match="shape"):
        store.write(info, np.ones((2, 2)), [1], {}, [], np.zeros((0, 2)))
    store.write(info, np.ones((1, 2)), [0], {0: {"a": ExpertStats(1, 2)}}, [], np.zeros((0, 2)))
    with pytest.raises(EmbeddingMismatchError):
        store.check_compatible("other", 2)
    with pytest.raises(InvalidInputError, match="already have statistics"):
        store.add_expert_stats({0: {"a": ExpertStats(1, 1)}})
    store.add_expert_stats({0: {"b": ExpertStats(2, 2)}})
    assert store.info().experts == ("a", "b")
