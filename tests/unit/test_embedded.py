"""The public ways into a pool: pool_experts, init_avengers, and calibrate's plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from avengers_graph import (
    ChatAvengers,
    EmptyStoreError,
    InvalidInputError,
    init_avengers,
    pool_experts,
)
from avengers_graph.app.embedded import calibration_plan, pool_path
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible
from tests.fakes import KeywordEmbeddings
from tests.unit.conftest import write_two_domain_store


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's cache folder (its servers.json is not ours to read)."""
    monkeypatch.setenv("AVENGERS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AVENGERS_CONFIG", raising=False)


@pytest.fixture
def pool_file(tmp_path: Path, embeddings: KeywordEmbeddings) -> Path:
    """Three experts behind (unreachable) servers and the two-domain store, by relative path."""
    write_two_domain_store(tmp_path / "store", embeddings)
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n"
        "  - {name: mathy, base_url: 'http://127.0.0.1:9/v1', model: m, max_tokens: 16}\n"
        "  - {name: coder, base_url: 'http://127.0.0.1:9/v1', model: c, strategies: [direct]}\n"
        "  - {name: bard, base_url: 'http://127.0.0.1:9/v1', model: b}\n"
        "store: {path: store, name: unit}\n"
        "routing: {top_n: 1, samples: 2}\n"
    )
    return config


def test_pool_experts_keep_the_token_cap_llama_cpp_reads(pool_file: Path) -> None:
    experts = pool_experts(pool_file)
    assert list(experts) == ["mathy", "coder", "bard"]
    assert experts["coder"].strategy == "direct"
    model = experts["mathy"].model
    assert isinstance(model, ChatOpenAICompatible)
    payload = model._get_request_payload([HumanMessage("hi")])
    assert payload["max_tokens"] == 16  # the field llama.cpp reads
    assert "max_completion_tokens" not in payload


def test_pool_experts_of_a_bundled_pool_say_how_to_start_its_servers(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="avengers local up"):
        pool_experts("local")  # the test's cache folder has no server running
    assert pool_path("local").name == "local_pool.yaml"
    assert pool_path("avengers:tools").name == "tools_pool.yaml"
    assert pool_path(tmp_path / "mine.yaml") == tmp_path / "mine.yaml"


def test_init_avengers_is_init_chat_model_for_a_pool(pool_file: Path) -> None:
    llm = init_avengers(f"avengers:{pool_file}", top_n=2, temperature=0.2, model_provider=None)
    assert isinstance(llm, ChatAvengers)
    assert (llm.top_n, llm.samples, llm.temperature) == (2, 2, 0.2)  # the file's, then ours
    assert llm.store.name == "unit"
    assert llm.expert_models() == ["m", "c", "b"]
    with pytest.raises(InvalidInputError, match="'openai'"):
        init_avengers(pool_file, model_provider="openai")
    with pytest.raises(InvalidInputError, match="top_nn"):
        init_avengers(pool_file, top_nn=2)


def test_init_avengers_on_an_uncalibrated_pool_says_what_to_run(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "experts:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "store: {path: nowhere}\n"
    )
    with pytest.raises(EmptyStoreError, match="avengers calibrate"):
        init_avengers(config)
    assert not (tmp_path / "nowhere").exists()


# -- calibrate on a calibrated store ------------------------------------------------------


def test_a_calibrated_store_is_kept_when_the_clustering_is_the_same(
    tmp_path: Path, embeddings: KeywordEmbeddings
) -> None:
    store = write_two_domain_store(tmp_path / "store", embeddings)  # K=2, seed 0, 2 questions
    plan = calibration_plan(store, {"n_clusters": 2}, rows=None, explicit={"samples": 5})
    assert not plan.replace
    assert plan.rows is None  # experts added on the stored questions
    assert plan.note is not None
    assert "calibrated (K=2, seed 0, 2 questions)" in plan.note
    assert "--samples applies to those only" in plan.note


def test_other_clustering_options_recluster_the_stored_questions(
    tmp_path: Path, embeddings: KeywordEmbeddings
) -> None:
    store = write_two_domain_store(tmp_path / "store", embeddings)
    plan = calibration_plan(store, {"n_clusters": 1}, rows=None)
    assert plan.replace
    assert [row["id"] for row in plan.rows or []] == ["q-math", "q-code"]
    assert plan.note is not None
    assert "K 2 -> 1" in plan.note
    assert "answer cache" in plan.note
    reseeded = calibration_plan(store, {"n_clusters": 2, "seed": 3}, rows=None)
    assert reseeded.replace
    assert reseeded.note is not None
    assert "seed 0 -> 3" in reseeded.note
    assert "asked again" in reseeded.note  # new seeds, new samples: said so


def test_reclustering_that_cannot_be_done_says_why(
    tmp_path: Path, embeddings: KeywordEmbeddings
) -> None:
    store = write_two_domain_store(tmp_path / "store", embeddings)
    with pytest.raises(InvalidInputError, match="only 2 questions"):
        calibration_plan(store, {"n_clusters": 5}, rows=None)
    fresh = calibration_plan(store, {"n_clusters": 5}, rows=None, replace=True)
    assert fresh.replace
    assert fresh.note is None
