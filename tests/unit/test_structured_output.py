"""with_structured_output: samples vote on parsed objects, field by field when all differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from avengers_graph import ChatAvengers, ClusterStore, InvalidInputError
from tests.fakes import KeywordEmbeddings, ScriptedExpert, constant
from tests.unit.conftest import write_two_domain_store

QUESTION = "math: who wrote the first program, and when was she born?"
EXPERTS = ("mathy", "bard", "coder")


class Person(BaseModel):
    """A person and their birth year."""

    name: str
    year: int


class PersonDict(TypedDict):
    """A person and their birth year."""

    name: str
    year: int


def _calling(args: dict[str, Any], tool: str = "Person") -> ScriptedExpert:
    return ScriptedExpert(call_tools=lambda messages, tools, seed: [{"name": tool, "args": args}])


@pytest.fixture
def store(tmp_path: Path) -> ClusterStore:
    return write_two_domain_store(tmp_path / "store", KeywordEmbeddings({"math": 0, "code": 1}))


def _llm(experts: dict[str, ScriptedExpert], store: ClusterStore) -> ChatAvengers:
    return ChatAvengers(
        experts=experts,
        embeddings=KeywordEmbeddings({"math": 0, "code": 1}),
        store=store,
        top_n=3,
        samples=1,
        seed=0,
    )


def test_function_calling_returns_the_majority_object(store: ClusterStore) -> None:
    experts = dict(
        zip(
            EXPERTS,
            [
                _calling({"name": "Ada", "year": 1815}),
                _calling({"year": 1815.0, "name": "Ada"}),
                _calling({"name": "Bob", "year": 1900}),
            ],
            strict=True,
        )
    )
    result = _llm(experts, store).with_structured_output(Person).invoke(QUESTION)
    assert result == Person(name="Ada", year=1815)
    seen = experts["mathy"].seen[0]
    assert seen["tool_choice"] == "Person"  # every expert is forced to call the schema
    assert [t["function"]["name"] for t in seen["tools"]] == ["Person"]


def test_objects_that_all_differ_are_voted_field_by_field(store: ClusterStore) -> None:
    experts = dict(
        zip(
            EXPERTS,
            [
                _calling({"name": "Ada", "year": 1816}),
                _calling({"name": "Ada", "year": 1815}),
                _calling({"name": "Bob", "year": 1815}),
            ],
            strict=True,
        )
    )
    structured = _llm(experts, store).with_structured_output(Person, include_raw=True)
    out = structured.invoke(QUESTION)
    assert out["parsed"] == Person(name="Ada", year=1815)
    assert out["parsing_error"] is None
    record = out["raw"].response_metadata["avengers"]
    assert record["answer_format"] == "tool_calls+fields"
    assert set(record["votes"].values()) == {1}


def test_incomplete_objects_do_not_win_and_complete_each_other(store: ClusterStore) -> None:
    halves = [_calling({"name": "Ada"}), _calling({"name": "Ada"})]
    cases = (({"name": "Bob", "year": 1900}, 1900, 2), ({"year": 1815}, 1815, 3))
    for last, expected, incomplete in cases:
        experts = dict(zip(EXPERTS, [*halves, _calling(last)], strict=True))
        structured = _llm(experts, store).with_structured_output(Person, include_raw=True)
        out = structured.invoke(QUESTION)
        # the two objects without the required year abstain as wholes (they used to win
        # 2 to 1 and fail to parse); the fields are voted over every object
        assert out["parsing_error"] is None
        assert out["parsed"] == Person(name="Ada", year=expected)
        record = out["raw"].response_metadata["avengers"]
        assert record["answer_format"] == "tool_calls+fields"
        assert [s["answer"] for s in record["samples"]].count(None) == incomplete


def test_typed_dict_schema_gives_a_dict(store: ClusterStore) -> None:
    experts = {name: _calling({"name": "Ada", "year": 1815}, "PersonDict") for name in EXPERTS}
    result = _llm(experts, store).with_structured_output(PersonDict).invoke(QUESTION)
    assert result == {"name": "Ada", "year": 1815}


def test_json_mode_ignores_an_invalid_output(store: ClusterStore) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant("Sorry, I cannot answer in JSON.")),
        "bard": ScriptedExpert(respond=constant('{"name": "Ada", "year": 1815}')),
        "coder": ScriptedExpert(respond=constant('```json\n{"year": 1815, "name": "Ada"}\n```')),
    }
    structured = _llm(experts, store).with_structured_output(Person, method="json_mode")
    assert structured.invoke(QUESTION) == Person(name="Ada", year=1815)
    assert experts["mathy"].seen[0]["response_format"] == {"type": "json_object"}


def test_json_schema_sends_the_schema_and_merges_fields(store: ClusterStore) -> None:
    experts = {
        "mathy": ScriptedExpert(respond=constant('{"name": "Ada", "year": 1816}')),
        "bard": ScriptedExpert(respond=constant('{"name": "Ada", "year": 1815}')),
        "coder": ScriptedExpert(respond=constant('{"name": "Bob", "year": 1815}')),
    }
    structured = _llm(experts, store).with_structured_output(PersonDict, method="json_schema")
    assert structured.invoke(QUESTION) == {"name": "Ada", "year": 1815}
    sent = experts["bard"].seen[0]["response_format"]
    assert sent["type"] == "json_schema"
    assert set(sent["json_schema"]["schema"]["properties"]) == {"name", "year"}


def test_include_raw_reports_a_parsing_error(store: ClusterStore) -> None:
    experts = {name: ScriptedExpert(respond=constant("no json here")) for name in EXPERTS}
    structured = _llm(experts, store).with_structured_output(
        Person, method="json_mode", include_raw=True
    )
    out = structured.invoke(QUESTION)
    assert out["parsed"] is None
    assert out["parsing_error"] is not None
    assert out["raw"].text == "no json here"


def test_unknown_method_is_refused(store: ClusterStore) -> None:
    llm = _llm({name: ScriptedExpert() for name in EXPERTS}, store)
    with pytest.raises(InvalidInputError, match="Unknown structured output method"):
        llm.with_structured_output(Person, method="xml")  # type: ignore[arg-type]
