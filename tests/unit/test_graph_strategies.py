"""The graph with strategy experts: the prompt contract, weighted votes, adaptive sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from avengers_graph import create_avengers_graph
from avengers_graph.calibration import ValidationItem, build_prompt, item_contract
from avengers_graph.experts.contract import Expert
from avengers_graph.routing import OVERALL_PRIOR
from avengers_graph.stores.base import ConfidenceMap
from avengers_graph.stores.chroma import ClusterStore, ExpertStats, StoredQuestion, StoreInfo
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant

KEYWORDS = {"apples": 0, "planet": 1}
WORD = "Tom has 3 apples and buys 5 more. How many apples does he have?"
CHOICE = "Which planet is red?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn"


def _store(
    path: Path,
    embeddings: KeywordEmbeddings,
    stats: dict[str, tuple[int, int]],
    planet: dict[str, tuple[int, int]] | None = None,
    confidence: ConfidenceMap | None = None,
) -> ClusterStore:
    """One cluster per keyword; every expert with the same (right, samples) in both
    (``planet``: other counts in the planet cluster)."""
    store = ClusterStore(path=path, name="strategies")
    questions = [
        StoredQuestion("q-apples", "apples", "8", "number", 0),
        StoredQuestion("q-planet", "planet", "B", "choice", 1),
    ]
    vectors = np.asarray(embeddings.embed_documents([q.question for q in questions]))
    store.write(
        StoreInfo(
            name="strategies",
            embedding_model=embeddings.model_name,
            embedding_dim=embeddings.dim,
            n_clusters=2,
            seed=0,
            experts=tuple(stats),
            confidence=confidence,
        ),
        centroids=vectors,
        sizes=[1, 1],
        stats={
            cluster: {
                name: ExpertStats(right, drawn, 10.0, 0.1, right, drawn)
                for name, (right, drawn) in (planet if cluster and planet else stats).items()
            }
            for cluster in (0, 1)
        },
        questions=questions,
        question_vectors=vectors,
    )
    return store


def _by_strategy(replies: dict[str, str]):
    """Reply by the system instruction's first words (the strategy's contract)."""

    def respond(messages: list[BaseMessage], seed: int | None) -> str:
        system = next((m.text for m in messages if isinstance(m, SystemMessage)), "")
        for start, reply in replies.items():
            if system.startswith(start):
                return reply
        return "no instruction"

    return respond


@pytest.fixture
def embeddings() -> KeywordEmbeddings:
    return KeywordEmbeddings(KEYWORDS)


def test_one_model_three_strategies_answer_by_the_contract(tmp_path: Path, embeddings) -> None:
    model = ScriptedExpert(
        model="qwen",
        respond_to=_by_strategy(
            {
                "Give the final answer only": '{"answer": 8}',
                "Solve the problem step by step": "3 + 5 = 8, so \\boxed{8}.",
                "Write a Python program": "```python\nprint(3 + 5)\n```",
            }
        ),
    )
    experts = {s: Expert(model, s) for s in ("direct", "reason", "program")}
    store = _store(tmp_path / "s", embeddings, dict.fromkeys(experts, (6, 10)))
    graph = create_avengers_graph(experts, embeddings, store, top_n=3, samples=1, seed=1)
    out = graph.invoke({"messages": [HumanMessage(WORD)]})
    record = out["avengers"]
    assert record["question_format"] == "number"
    assert record["votes"] == {"8": 3}
    assert {e["name"]: e["strategy"] for e in record["experts"]} == {
        "direct": "direct",
        "reason": "reason",
        "program": "program",
    }
    answers = {s["expert"]: s["text"] for s in record["samples"]}
    assert answers == {"direct": "8", "reason": "3 + 5 = 8, so \\boxed{8}.", "program": "8"}


def test_service_sends_what_calibration_sent(tmp_path: Path, embeddings) -> None:
    model = ScriptedExpert(model="qwen", respond=constant('{"answer": "B"}'))
    expert = Expert(model, "direct")
    store = _store(tmp_path / "s", embeddings, {"q": (6, 10)})
    graph = create_avengers_graph({"q": expert}, embeddings, store, top_n=1, samples=1)
    out = graph.invoke({"messages": [HumanMessage(CHOICE)]})
    assert out["messages"][-1].text == "B) Mars"
    item = ValidationItem("q1", CHOICE, "B", "choice")
    sent = model.seen[0]
    terms = item_contract(item, expert)
    assert sent["max_tokens"] == terms.options()["max_tokens"] == 16
    assert sent["response_format"] == terms.options()["response_format"]
    assert (
        build_prompt(item, expert)[0].text == "Answer with the letter of the correct option only."
    )


def test_programs_do_not_answer_choice_questions(tmp_path: Path, embeddings) -> None:
    model = ScriptedExpert(model="qwen", respond=constant("Answer: B"))
    experts = {"reason": Expert(model, "reason"), "program": Expert(model, "program")}
    store = _store(tmp_path / "s", embeddings, dict.fromkeys(experts, (6, 10)))
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=1)
    record = graph.invoke({"messages": [HumanMessage(CHOICE)]})["avengers"]
    assert [e["name"] for e in record["experts"]] == ["reason"]
    assert record["excluded"] == ["program"]
    assert model.calls == 1


def test_two_guessers_do_not_outvote_one_reliable_expert(tmp_path: Path, embeddings) -> None:
    # the demo's failure: two wrong answers of a weak model beat the right one
    experts = {
        "good": ScriptedExpert(model="good", respond=constant("\\boxed{8}")),
        "weak": ScriptedExpert(model="weak", respond=constant("\\boxed{2}")),
    }
    stats = {"good": (6, 10), "weak": (1, 10)}
    store = _store(tmp_path / "s", embeddings, stats)
    counted = create_avengers_graph(
        experts, embeddings, store, top_n=2, samples=1, weighted=False
    ).invoke({"messages": [HumanMessage(WORD)]}, context={"samples": 2})
    assert counted["avengers"]["votes"] == {"8": 2, "2": 2}  # a tie, the better rank wins
    experts["weak2"] = ScriptedExpert(model="weak2", respond=constant("\\boxed{2}"))
    stats["weak2"] = (1, 10)
    store = _store(tmp_path / "t", embeddings, stats)
    plain = create_avengers_graph(experts, embeddings, store, top_n=3, samples=1, weighted=False)
    assert plain.invoke({"messages": [HumanMessage(WORD)]})["avengers"]["votes"] == {
        "8": 1,
        "2": 2,
    }
    weighted = create_avengers_graph(experts, embeddings, store, top_n=3, samples=1, weighted=True)
    record = weighted.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    assert next(iter(record["votes"])) == "8"
    assert record["votes"]["8"] > record["votes"]["2"]
    assert 0 < record["confidence"] < 1


def test_the_overall_prior_ranks_experts_by_their_overall_accuracy(
    tmp_path: Path, embeddings
) -> None:
    # "local" is the better expert in the apples cluster (9/10 against 2/10), "overall"
    # the better one over both clusters (12/20 against 9/20)
    experts = {
        "local": ScriptedExpert(model="local", respond=constant("\\boxed{8}")),
        "overall": ScriptedExpert(model="overall", respond=constant("\\boxed{7}")),
    }
    store = _store(
        tmp_path / "s",
        embeddings,
        {"local": (9, 10), "overall": (2, 10)},
        planet={"local": (0, 10), "overall": (10, 10)},
    )
    graph = create_avengers_graph(
        experts, embeddings, store, top_n=1, samples=2, weighted=True, threshold=0.99
    )
    by_cluster = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    assert by_cluster["winner"] == "local"
    overall = graph.invoke(
        {"messages": [HumanMessage(WORD)]}, context={"reliability_prior": OVERALL_PRIOR}
    )["avengers"]
    assert overall["winner"] == "overall"
    assert experts["overall"].calls >= 1


def test_experts_at_chance_are_not_sampled(tmp_path: Path, embeddings) -> None:
    experts = {
        "good": ScriptedExpert(model="good", respond=constant('{"answer": "B"}')),
        "guesser": ScriptedExpert(model="guesser", respond=constant('{"answer": "A"}')),
    }
    direct = {name: Expert(model, "direct") for name, model in experts.items()}
    # four options: chance is 1/4; the guesser is right a quarter of the time
    store = _store(tmp_path / "s", embeddings, {"good": (7, 10), "guesser": (1, 4)})
    graph = create_avengers_graph(
        direct, embeddings, store, top_n=2, samples=2, weighted=True, threshold=0.99
    )
    record = graph.invoke({"messages": [HumanMessage(CHOICE)]})["avengers"]
    assert experts["guesser"].calls == 0
    assert "guesser" in record["excluded"]
    assert record["winner"] == "good"


def test_adaptive_sampling_stops_once_sure(tmp_path: Path, embeddings) -> None:
    sure = ScriptedExpert(model="sure", respond=constant("\\boxed{8}"))
    store = _store(tmp_path / "s", embeddings, {"sure": (19, 20)})
    graph = create_avengers_graph(
        {"sure": sure}, embeddings, store, top_n=1, samples=6, threshold=0.9, round_size=1
    )
    record = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    # reliability 0.95 over a 0.05 chance: one vote is sure enough
    assert sure.calls == 1
    assert record["rounds"] == 1
    assert record["confidence"] > 0.9
    assert record["cancelled"] == 5


def test_adaptive_sampling_widens_on_disagreement(tmp_path: Path, embeddings) -> None:
    replies = iter(["\\boxed{8}", "\\boxed{9}", "\\boxed{8}", "\\boxed{8}", "\\boxed{8}"])
    doubtful = ScriptedExpert(model="d", respond=lambda q, seed: next(replies))
    store = _store(tmp_path / "s", embeddings, {"d": (5, 10)})
    graph = create_avengers_graph(
        {"d": doubtful}, embeddings, store, top_n=1, samples=5, threshold=0.95, round_size=1
    )
    record = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    # each vote weighs w = logit(0.5) - logit(0.05) = ln 19; with 20 alternatives:
    # 8 is 19/38 sure, 9 ties it, a second 8 makes 19^2 / (19^2 + 19 + 18) = 0.907, a
    # third 19^3 / (19^3 + 19 + 18) = 0.995 >= 0.95
    assert doubtful.calls == 4
    assert record["rounds"] == 4
    assert record["votes"]["8"] > record["votes"]["9"]
    assert record["confidence"] == pytest.approx(19**3 / (19**3 + 19 + 18))


def test_adaptive_sampling_stops_once_the_samples_left_cannot_change_the_winner(
    tmp_path: Path, embeddings
) -> None:
    agreeing = ScriptedExpert(model="a", respond=constant("\\boxed{8}"))
    store = _store(tmp_path / "s", embeddings, {"a": (5, 10)})
    graph = create_avengers_graph(
        {"a": agreeing}, embeddings, store, top_n=1, samples=3, threshold=0.999, round_size=1
    )
    record = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    # two votes of ln 19 for 8 are 19^2 / (19^2 + 19) = 0.95 sure, short of 0.999, but
    # the one sample left could not outvote them: it is not drawn
    assert agreeing.calls == 2
    assert record["rounds"] == 2
    assert record["confidence"] == pytest.approx(19**2 / (19**2 + 19))
    assert record["winner"] == "a"


def test_empty_program_output_never_wins(tmp_path: Path, embeddings) -> None:
    model = ScriptedExpert(
        model="q",
        respond_to=_by_strategy(
            {
                "Write a Python program": "```python\nx = 1\n```",  # prints nothing
                "Solve the problem step by step": "\\boxed{8}",
            }
        ),
    )
    experts = {"program": Expert(model, "program"), "reason": Expert(model, "reason")}
    store = _store(tmp_path / "s", embeddings, {"program": (9, 10), "reason": (3, 10)})
    graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=2, weighted=True)
    out = graph.invoke({"messages": [HumanMessage(WORD)]})
    assert out["messages"][-1].text == "\\boxed{8}"
    assert out["avengers"]["winner"] == "reason"


def test_upstream_error_text_is_redacted_in_failures(tmp_path: Path, embeddings) -> None:
    leaky = ScriptedExpert(
        model="leaky",
        always_fail=True,
        fail_with=lambda: ValueError("401: bad key in 'Authorization: Bearer sk-live-123456789'"),
    )
    fine = ScriptedExpert(model="fine", respond=constant("\\boxed{8}"))
    store = _store(tmp_path / "s", embeddings, {"leaky": (6, 10), "fine": (5, 10)})
    graph = create_avengers_graph(
        {"leaky": leaky, "fine": fine}, embeddings, store, top_n=2, samples=1
    )
    record = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    assert "sk-live-123456789" not in record["failures"]["leaky"]
    assert "401: bad key" in record["failures"]["leaky"]


def test_the_vote_reports_the_stores_calibrated_map_of_its_posterior(
    tmp_path: Path, embeddings
) -> None:
    experts = {
        "good": ScriptedExpert(model="good", respond=constant("\\boxed{8}")),
        "weak": ScriptedExpert(model="weak", respond=constant("\\boxed{2}")),
    }
    stats = {"good": (6, 10), "weak": (3, 10)}
    # evidence over the open chance 1/20: ln(0.6/0.4 * 19) = ln 28.5 and ln(3/7 * 19);
    # 18 answers nobody gave weigh e^0 = 1 each
    good, weak = 1.5 * 19, 3 / 7 * 19
    posterior = good / (good + weak + 18)
    fitted = ConfidenceMap(slope=0.5, intercept=0.0, votes=100)
    for name, confidence, expected in [
        ("mapped", fitted, fitted(posterior)),
        ("unmapped", None, posterior),
    ]:
        store = _store(tmp_path / name, embeddings, stats, confidence=confidence)
        graph = create_avengers_graph(experts, embeddings, store, top_n=2, samples=1, weighted=True)
        record = graph.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
        assert record["posterior"] == pytest.approx(posterior)
        assert record["confidence"] == pytest.approx(expected)
    assert fitted(posterior) == pytest.approx(0.511, abs=1e-3)  # half the log-odds of 0.522
    # a majority's confidence is the winner's share: no map applies to it
    store = _store(tmp_path / "counted", embeddings, stats, confidence=fitted)
    counted = create_avengers_graph(experts, embeddings, store, top_n=2, samples=1)
    record = counted.invoke({"messages": [HumanMessage(WORD)]})["avengers"]
    assert record["confidence"] == record["posterior"] == 0.5
