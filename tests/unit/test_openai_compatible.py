"""ChatOpenAICompatible sends the generation cap under the field llama.cpp reads."""

from __future__ import annotations

from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from avengers_graph.openai_compatible import ChatOpenAICompatible


def _client(**kwargs: object) -> ChatOpenAICompatible:
    return ChatOpenAICompatible(
        model="m", base_url="http://127.0.0.1:9/v1", api_key=SecretStr("EMPTY"), **kwargs
    )


def test_constructor_cap_is_sent_as_max_tokens() -> None:
    payload = _client(max_tokens=384)._get_request_payload([HumanMessage("hi")])
    assert payload["max_tokens"] == 384
    assert "max_completion_tokens" not in payload


def test_per_call_cap_overrides_the_constructor() -> None:
    payload = _client(max_tokens=384)._get_request_payload([HumanMessage("hi")], max_tokens=16)
    assert payload["max_tokens"] == 16
    assert "max_completion_tokens" not in payload


def test_no_cap_sends_none() -> None:
    payload = _client()._get_request_payload([HumanMessage("hi")], temperature=0.5, seed=3)
    assert "max_tokens" not in payload
    assert "max_completion_tokens" not in payload
    assert payload["seed"] == 3
