"""Calibrate on a small mixed dataset with the real MiniLM and real Chroma, then route.

Each expert is good at one domain only; after calibration, new questions of every
domain must go to the expert that is good at it, through a store on disk and through
a ``chroma run`` server, and the whole graph must answer with that expert's answer.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from avengers_graph import (
    ChatAvengers,
    ClusterStore,
    LocalEmbeddings,
    calibrate,
    create_avengers_graph,
)
from tests.fakes import ScriptedExpert

MATH = [
    "What is 12 plus 30?",
    "Compute 7 times 8.",
    "What is 100 minus 58?",
    "How much is 9 multiplied by 9?",
    "What is 144 divided by 12?",
    "Add 25 and 17.",
    "What is 15 times 3?",
    "Subtract 19 from 60.",
    "What is 6 squared?",
    "What is 81 divided by 9?",
]
MEDICINE = [
    "Which organ produces insulin? A) liver B) pancreas C) kidney D) spleen",
    "Which vitamin deficiency causes scurvy? A) vitamin C B) vitamin D C) vitamin A D) vitamin K",
    "What is the normal resting heart rate of adults? A) 20-40 B) 60-100 C) 120-160 D) 200",
    "Which blood cells fight infection? A) red cells B) platelets C) white cells D) plasma",
    "Which organ filters blood to make urine? A) heart B) lung C) kidney D) stomach",
    "Hypertension means high A) glucose B) blood pressure C) temperature D) cholesterol",
    "Which bone protects the brain? A) femur B) skull C) rib D) pelvis",
    "Antibiotics treat infections caused by A) viruses B) bacteria C) allergies D) fractures",
    "Which hormone regulates blood sugar? A) insulin B) adrenaline C) melatonin D) thyroxine",
    "The lungs exchange A) oxygen and carbon dioxide B) blood C) bile D) urine",
]
REVIEWS = [
    "Review: 'An absolute delight, I loved every minute of this film.' Sentiment?",
    "Review: 'Boring plot and terrible acting, a waste of money.' Sentiment?",
    "Review: 'The soundtrack was wonderful and the cast superb.' Sentiment?",
    "Review: 'I walked out halfway, it was that bad.' Sentiment?",
    "Review: 'A heartwarming story that made me smile.' Sentiment?",
    "Review: 'Dull, predictable and far too long.' Sentiment?",
    "Review: 'Brilliant direction, I would watch it again.' Sentiment?",
    "Review: 'The worst movie I have seen this year.' Sentiment?",
    "Review: 'Charming, funny and beautifully shot.' Sentiment?",
    "Review: 'Awful dialogue and a confusing ending.' Sentiment?",
]
MED_KEY = "BACBCBBBAA"
NEGATIVE_WORDS = ("boring", "bad", "dull", "worst", "awful", "waste")

NEW = {
    "mathematician": ["What is 11 times 4?", "Compute 250 minus 75."],
    "doctor": [
        "Which organ pumps blood? A) heart B) liver C) skin D) eye",
        "Which vitamin comes from sunlight? A) vitamin B B) vitamin D C) vitamin E D) vitamin C",
    ],
    "critic": [
        "Review: 'Gorgeous visuals and a moving score.' Sentiment?",
        "Review: 'Tedious and badly edited.' Sentiment?",
    ],
}


def _math(question: str) -> str:
    a, b = ([int(x) for x in re.findall(r"\d+", question)] + [0, 0])[:2]
    q = question.lower()
    if "squared" in q:
        return str(a * a)
    if "times" in q or "multiplied" in q:
        return str(a * b)
    if "divided" in q:
        return str(a // b)
    if "minus" in q:
        return str(a - b)
    if "subtract" in q:
        return str(b - a)
    return str(a + b)


def _sentiment(question: str) -> str:
    return "negative" if any(w in question.lower() for w in NEGATIVE_WORDS) else "positive"


def mathematician(question: str, seed: int | None) -> str:
    if "Review" in question:
        return "neutral"
    if "A)" in question:
        return "Answer: E"
    return f"The result is \\boxed{{{_math(question)}}}."


def doctor(question: str, seed: int | None) -> str:
    if "Review" in question:
        return "neutral"
    if "A)" in question:
        answer = MED_KEY[MEDICINE.index(question)] if question in MEDICINE else "A"
        return f"Answer: {answer}"
    return "\\boxed{-1}"


def critic(question: str, seed: int | None) -> str:
    if "Review" in question:
        return _sentiment(question)
    if "A)" in question:
        return "Answer: E"
    return "\\boxed{-1}"


def dataset() -> list[dict[str, Any]]:
    items = [{"question": q, "answer": _math(q), "kind": "number"} for q in MATH]
    items += [
        {"question": q, "answer": k, "kind": "choice"}
        for q, k in zip(MEDICINE, MED_KEY, strict=True)
    ]
    items += [{"question": q, "answer": _sentiment(q), "kind": "text"} for q in REVIEWS]
    return items


def experts() -> dict[str, ScriptedExpert]:
    return {
        "mathematician": ScriptedExpert(model="math-7b", respond=mathematician),
        "doctor": ScriptedExpert(model="med-7b", respond=doctor),
        "critic": ScriptedExpert(model="review-7b", respond=critic),
    }


@pytest.fixture(scope="module")
def minilm() -> LocalEmbeddings:
    return LocalEmbeddings()


@pytest.fixture(scope="module")
def disk_store(tmp_path_factory: pytest.TempPathFactory, minilm: LocalEmbeddings) -> ClusterStore:
    tmp = tmp_path_factory.mktemp("domains")
    store = ClusterStore(path=tmp / "store", name="domains")
    report = calibrate(
        experts(), minilm, dataset(), store, n_clusters=3, samples=1, cache=tmp / "c.sqlite"
    )
    # every expert is right on exactly its own domain
    assert report.experts == pytest.approx(
        {"mathematician": 1 / 3, "doctor": 1 / 3, "critic": 1 / 3}
    )
    return store


def _assert_routes_by_domain(store: ClusterStore, minilm: LocalEmbeddings) -> None:
    graph = create_avengers_graph(experts(), minilm, store, top_n=1, samples=1, seed=0)
    for expected, new_questions in NEW.items():
        for question in new_questions:
            record = graph.invoke({"messages": [HumanMessage(question)]})["avengers"]
            assert record["experts"][0]["name"] == expected, (question, record["experts"])


def test_clusters_separate_the_domains(disk_store: ClusterStore) -> None:
    by_id = {q.question: q.cluster for q in disk_store.questions()}
    clusters = [{by_id[q] for q in domain} for domain in (MATH, MEDICINE, REVIEWS)]
    assert all(len(c) == 1 for c in clusters)
    assert len(set.union(*clusters)) == 3
    stats = disk_store.stats()
    (math_cluster,) = clusters[0]
    assert stats[math_cluster]["mathematician"].accuracy == 1.0
    assert stats[math_cluster]["doctor"].accuracy == 0.0


def test_new_questions_route_to_the_domain_expert_on_disk(disk_store, minilm) -> None:
    _assert_routes_by_domain(disk_store, minilm)


def test_new_questions_route_to_the_domain_expert_on_a_chroma_server(
    disk_store: ClusterStore, minilm: LocalEmbeddings, chroma_server: tuple[str, int]
) -> None:
    host, port = chroma_server
    remote = ClusterStore(host=host, port=port, name="domains-remote")
    info = dataclasses.replace(disk_store.info(), name="domains-remote")
    remote.write(
        info,
        disk_store.centroids(),
        [disk_store.sizes()[c] for c in range(info.n_clusters)],
        disk_store.stats(),
        disk_store.questions(),
        disk_store.question_vectors(),
    )
    _assert_routes_by_domain(ClusterStore(host=host, port=port, name="domains-remote"), minilm)


def test_calibrating_straight_into_a_chroma_server(
    tmp_path: Path, minilm: LocalEmbeddings, chroma_server: tuple[str, int]
) -> None:
    host, port = chroma_server
    store = ClusterStore(host=host, port=port, name="domains-direct")
    calibrate(
        experts(), minilm, dataset(), store, n_clusters=3, samples=1, cache=tmp_path / "c.sqlite"
    )
    assert store.info().embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert store.info().embedding_dim == 384
    _assert_routes_by_domain(store, minilm)


def test_chat_model_answers_with_the_domain_expert(disk_store, minilm) -> None:
    llm = ChatAvengers(
        experts=experts(), embeddings=minilm, store=disk_store, top_n=2, samples=2, seed=1
    )
    message = llm.invoke("What is 13 times 3?")
    assert message.text == "The result is \\boxed{39}."
    assert message.response_metadata["avengers"]["winner"] == "mathematician"
    review = llm.invoke("Review: 'Painfully boring, avoid it.' Sentiment?")
    assert review.text == "negative"


def test_store_from_other_embeddings_is_refused(disk_store, tmp_path) -> None:
    from avengers_graph import EmbeddingMismatchError
    from tests.fakes import KeywordEmbeddings

    graph = create_avengers_graph(experts(), KeywordEmbeddings({"math": 0}), disk_store)
    with pytest.raises(EmbeddingMismatchError, match="all-MiniLM-L6-v2"):
        graph.invoke({"messages": [HumanMessage("What is 2 plus 2?")]})
