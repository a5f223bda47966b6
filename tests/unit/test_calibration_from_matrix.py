"""A calibration built from a recorded matrix equals what calibrate() measures."""

from __future__ import annotations

import pytest

from avengers_graph.errors import InvalidInputError
from avengers_graph.eval.calibrate import calibration_from_matrix
from avengers_graph.eval.recording import Response, ResponseMatrix
from avengers_graph.stores import MemoryStore
from tests.fakes import KeywordEmbeddings


def _matrix() -> ResponseMatrix:
    questions, responses = [], []
    for topic in ("math", "code"):
        for i in range(4):
            qid = f"{topic}-{i}"
            questions.append(
                {
                    "id": qid,
                    "dataset": topic,
                    "kind": "number",
                    "question": f"{topic} {i}",
                    "answer": "1",
                    "source": "",
                }
            )
            for expert, good_at in (("m:reason", "math"), ("c:program", "code")):
                for j in range(3):
                    right = topic == good_at and j < 2  # two of three samples right
                    responses.append(
                        Response(
                            qid,
                            topic,
                            expert,
                            j,
                            j,
                            "x",
                            "1" if right else f"w{j}",
                            right,
                            10 if expert == "m:reason" else 4,
                            0.5,
                        )
                    )
    return ResponseMatrix(questions, responses)


def test_statistics_are_those_of_the_recorded_answers() -> None:
    embeddings = KeywordEmbeddings({"math": 0, "code": 1})
    calibration = calibration_from_matrix(
        _matrix(), embeddings, ["m:reason", "c:program"], n_clusters=2
    )
    assert calibration.info.experts == ("m:reason", "c:program")
    assert sorted(calibration.sizes) == [4, 4]
    math = next(q.cluster for q in calibration.questions if q.id == "math-0")
    stats = calibration.stats[math]
    assert (stats["m:reason"].correct, stats["m:reason"].total) == (4, 4)
    assert (stats["m:reason"].sample_correct, stats["m:reason"].samples) == (8, 12)
    assert (stats["c:program"].correct, stats["c:program"].sample_correct) == (0, 0)
    assert stats["c:program"].mean_tokens == 4
    store = MemoryStore("demo")
    calibration.write(store)
    assert store.info().name == "demo"
    assert store.nearest(embeddings.embed_query("math 9"), 1)[0][0] == math


def test_experts_the_matrix_lacks_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"no answers of \['x:direct'\]"):
        calibration_from_matrix(_matrix(), KeywordEmbeddings({"math": 0}), ["x:direct"])
