"""ChatOpenAICompatible: the generation cap llama.cpp reads, and tool calls written as text."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import SecretStr

from avengers_graph.errors import InvalidInputError
from avengers_graph.experts.openai_compatible import ChatOpenAICompatible, RequestLimiter


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


# -- client-side tool-call parsing ---------------------------------------------------


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return expression


CALL_TEXT = '```json\n{"name": "calculator", "arguments": {"expression": "234 * 17"}}\n```'


def _completion(content: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "qwen",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class FakeServer:
    """An OpenAI-compatible server in an httpx transport: no socket is opened."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        return httpx.Response(200, json=self.body)


def _served(
    server: FakeServer, parser: Literal["hermes"] | None = "hermes"
) -> ChatOpenAICompatible:
    transport = httpx.MockTransport(server.handle)

    async def handle_async(request: httpx.Request) -> httpx.Response:
        return server.handle(request)

    return _client(
        tool_call_parser=parser,
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(handle_async)),
        max_retries=0,
    )


def test_text_calls_become_tool_calls_when_tools_are_bound() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    message = _served(server).bind_tools([calculator]).invoke("234 * 17?")
    assert isinstance(message, AIMessage)
    assert message.content == ""
    [call] = message.tool_calls
    assert call["name"] == "calculator"
    assert call["args"] == {"expression": "234 * 17"}
    assert call["id"] is not None
    assert call["id"].startswith("call_")
    assert message.response_metadata["tool_call_parser"] == "hermes"
    assert message.usage_metadata is not None
    assert message.usage_metadata["total_tokens"] == 15
    assert server.requests[0]["tools"][0]["function"]["name"] == "calculator"


async def test_async_calls_are_parsed_too() -> None:
    message = (
        await _served(FakeServer(_completion(CALL_TEXT)))
        .bind_tools([calculator])
        .ainvoke("234 * 17?")
    )
    assert [call["name"] for call in message.tool_calls] == ["calculator"]


def test_without_tools_the_text_stays_text() -> None:
    message = _served(FakeServer(_completion(CALL_TEXT))).invoke("234 * 17?")
    assert message.content == CALL_TEXT
    assert message.tool_calls == []


def test_the_parser_is_opt_in() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    message = _served(server, parser=None).bind_tools([calculator]).invoke("234 * 17?")
    assert message.content == CALL_TEXT
    assert message.tool_calls == []


def test_tool_choice_none_leaves_the_text() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    message = _served(server).bind_tools([calculator], tool_choice="none").invoke("234 * 17?")
    assert message.tool_calls == []


def test_prose_is_left_untouched() -> None:
    text = "234 * 17 is 3978."
    message = _served(FakeServer(_completion(text))).bind_tools([calculator]).invoke("234 * 17?")
    assert message.content == text
    assert message.tool_calls == []
    assert "tool_call_parser" not in message.response_metadata


def test_server_parsed_calls_are_kept_as_they_are() -> None:
    server_call = {
        "id": "call_server",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "1 + 1"}'},
    }
    server = FakeServer(_completion(CALL_TEXT, tool_calls=[server_call]))
    message = _served(server).bind_tools([calculator]).invoke("1 + 1?")
    assert [(c["id"], c["args"]) for c in message.tool_calls] == [
        ("call_server", {"expression": "1 + 1"})
    ]


def test_streaming_with_tools_yields_the_parsed_answer_as_one_chunk() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    chunks = list(_served(server).bind_tools([calculator]).stream("234 * 17?"))
    assert len(chunks) == 1
    assert chunks[0].tool_calls[0]["args"] == {"expression": "234 * 17"}
    assert chunks[0].usage_metadata is not None
    assert "stream" not in server.requests[0] or server.requests[0]["stream"] is False


async def test_async_streaming_with_tools_yields_one_chunk() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    chunks = [c async for c in _served(server).bind_tools([calculator]).astream("234 * 17?")]
    assert [[call["name"] for call in chunk.tool_calls] for chunk in chunks] == [["calculator"]]


def test_a_streamed_tool_loop_sees_the_same_message_as_invoke() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    llm = _served(server).bind_tools([calculator])
    merged = None
    for chunk in llm.stream("234 * 17?"):
        merged = chunk if merged is None else merged + chunk
    invoked = llm.invoke("234 * 17?")
    assert merged is not None
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in invoked.tool_calls
    ]
    assert merged.content == invoked.content == ""


def test_tool_calling_turns_send_empty_content_not_null() -> None:
    history = [
        HumanMessage("234 * 17?"),
        AIMessage(
            content="",
            tool_calls=[{"name": "calculator", "args": {"expression": "234 * 17"}, "id": "c1"}],
        ),
        ToolMessage("3978", tool_call_id="c1"),
    ]
    payload = _client()._get_request_payload(history)
    assistant = payload["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == ""  # llama.cpp's server refuses null
    assert assistant["tool_calls"][0]["function"]["name"] == "calculator"


def test_with_the_parser_earlier_calls_go_back_as_hermes_text() -> None:
    history = [
        HumanMessage("234 * 17?"),
        AIMessage(
            content="",
            tool_calls=[{"name": "calculator", "args": {"expression": "234 * 17"}, "id": "c1"}],
        ),
        ToolMessage("3978", tool_call_id="c1"),
    ]
    payload = _client(tool_call_parser="hermes")._get_request_payload(history)
    assistant, tool_result = payload["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "234 * 17"}}'
        "\n</tool_call>",
    }
    assert tool_result == {"role": "tool", "content": "3978", "tool_call_id": "c1"}


def test_parallel_tool_calls_false_keeps_the_first_parsed_call() -> None:
    two = (
        '{"name": "calculator", "arguments": {"expression": "1 + 1"}}\n'
        '{"name": "calculator", "arguments": {"expression": "2 + 2"}}'
    )
    llm = _served(FakeServer(_completion(two)))
    assert len(llm.bind_tools([calculator]).invoke("?").tool_calls) == 2
    [call] = llm.bind_tools([calculator], parallel_tool_calls=False).invoke("?").tool_calls
    assert call["args"] == {"expression": "1 + 1"}


def test_one_call_per_reply_keeps_only_the_text_before_the_call() -> None:
    text = (
        "First the product.\n"
        '{"name": "calculator", "arguments": {"expression": "1 + 1"}}\n'
        'Then: {"name": "calculator", "arguments": {"expression": 2 * x'  # a broken plan
    )
    llm = _served(FakeServer(_completion(text)))
    both = llm.bind_tools([calculator]).invoke("?")
    assert "Then:" in both.text
    single = llm.bind_tools([calculator], parallel_tool_calls=False).invoke("?")
    assert single.text == "First the product."
    assert [call["args"] for call in single.tool_calls] == [{"expression": "1 + 1"}]


def test_argument_keys_the_tool_does_not_declare_are_dropped() -> None:
    echoed = (
        '{"name": "calculator", "arguments": {"expression": "1 + 1", '
        '"parameters": {}, "type": "object"}}'
    )
    [call] = (
        _served(FakeServer(_completion(echoed))).bind_tools([calculator]).invoke("?").tool_calls
    )
    assert call["args"] == {"expression": "1 + 1"}


def test_the_hermes_parser_stops_the_model_before_it_invents_a_tool_response() -> None:
    server = FakeServer(_completion(CALL_TEXT))
    llm = _served(server)
    llm.bind_tools([calculator]).invoke("234 * 17?", stop=["\n\n"])
    llm.invoke("no tools")
    _served(server, parser=None).bind_tools([calculator]).invoke("234 * 17?")
    with_tools, without_tools, without_parser = server.requests
    assert with_tools["stop"] == ["\n\n", "<tool_response>"]
    assert "<tool_response>" not in (without_tools.get("stop") or [])
    assert "<tool_response>" not in (without_parser.get("stop") or [])


def test_assistant_content_blocks_go_out_as_text() -> None:
    history = [
        HumanMessage("234 * 17?"),
        AIMessage(
            content=[
                {"type": "text", "text": "Let me compute. "},
                {"type": "text", "text": "One moment."},
                {"type": "tool_use", "id": "c1", "name": "calculator", "input": {}},
            ],
            tool_calls=[{"name": "calculator", "args": {"expression": "234 * 17"}, "id": "c1"}],
        ),
        ToolMessage("3978", tool_call_id="c1"),
    ]
    plain = _client()._get_request_payload(history)["messages"][1]
    assert plain["content"] == "Let me compute. One moment."
    hermes = _client(tool_call_parser="hermes")._get_request_payload(history)["messages"][1]
    assert hermes["content"].startswith("Let me compute. One moment.\n<tool_call>\n")


# -- at most as many requests as the server has slots ---------------------------------


class SlowServer:
    """Counts the requests in flight at once; each takes a little while (threads, or a loop)."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.served = 0

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def _leave(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.active -= 1
            self.served += 1
        if not json.loads(request.content).get("stream"):
            return httpx.Response(200, json=_completion("ok"))
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
        }
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self._enter()
        time.sleep(self.seconds)
        return self._leave(request)

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        self._enter()
        await asyncio.sleep(self.seconds)
        return self._leave(request)


def _limited(server: SlowServer, limit: int | None) -> ChatOpenAICompatible:
    return _client(
        max_concurrent_requests=limit,
        http_client=httpx.Client(transport=httpx.MockTransport(server.handle)),
        http_async_client=httpx.AsyncClient(transport=httpx.MockTransport(server.ahandle)),
        max_retries=0,
    )


def test_sync_calls_from_many_threads_never_exceed_the_slots() -> None:
    server = SlowServer()
    expert = _limited(server, 2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda i: expert.invoke(f"q{i}").text, range(6)))
    assert answers == ["ok"] * 6
    assert server.peak == 2
    assert expert.limiter is not None
    assert expert.limiter.active == 0


def test_without_a_limit_every_call_goes_at_once() -> None:
    server = SlowServer(seconds=0.2)
    expert = _limited(server, None)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: expert.invoke(f"q{i}"), range(4)))
    assert server.peak > 2  # what the limit prevents
    assert expert.limiter is None


async def test_async_calls_and_streams_never_exceed_the_slots() -> None:
    server = SlowServer()
    expert = _limited(server, 3)

    async def streamed(i: int) -> str:
        return "".join([chunk.text async for chunk in expert.astream(f"s{i}")])

    results = await asyncio.gather(
        *(expert.ainvoke(f"q{i}") for i in range(6)), *(streamed(i) for i in range(3))
    )
    assert len(results) == 9
    assert server.served == 9
    assert server.peak == 3


def test_bound_tools_and_structured_output_share_the_client_s_slots() -> None:
    server = SlowServer()
    expert = _limited(server, 1)
    bound = expert.bind_tools([calculator])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: (bound if i % 2 else expert).invoke(f"q{i}"), range(4)))
    assert server.peak == 1


def test_sync_and_async_calls_share_one_count() -> None:
    limiter = RequestLimiter(2)
    lock = threading.Lock()
    active = [0, 0]  # now, peak

    def note(delta: int) -> None:
        with lock:
            active[0] += delta
            active[1] = max(active[1], active[0])

    def work() -> None:
        with limiter.slot():
            note(1)
            time.sleep(0.03)
            note(-1)

    async def awork() -> None:
        async with limiter.aslot():
            note(1)
            await asyncio.sleep(0.03)
            note(-1)

    async def tasks() -> None:
        await asyncio.gather(*(awork() for _ in range(6)))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join(timeout=30)
    assert active == [0, 2]
    assert limiter.active == 0


async def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    limiter = RequestLimiter(1)
    await limiter.aacquire()
    waiting = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0)  # it queues
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limiter.release()
    assert limiter.active == 0
    await asyncio.wait_for(limiter.aacquire(), timeout=5)  # free again
    limiter.release()


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    limiter = RequestLimiter(1)
    await limiter.aacquire()
    first = asyncio.create_task(limiter.aacquire())
    second = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0)
    limiter.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, timeout=5)  # the slot went on to `second`
    assert limiter.active == 1
    limiter.release()
    assert limiter.active == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="must be >= 1"):
        RequestLimiter(0)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _client(max_concurrent_requests=0)


# -- a required call forced by a JSON schema (hermes parser) ---------------------------


@tool
def weather(city: str) -> str:
    """The weather of a city."""
    return city


def test_a_required_call_is_forced_by_a_schema_of_the_allowed_calls() -> None:
    server = FakeServer(_completion('{"name": "calculator", "arguments": {"expression": "1+1"}}'))
    message = _served(server).bind_tools([calculator, weather], tool_choice="any").invoke("hi")
    [call] = message.tool_calls
    assert call["name"] == "calculator"
    [request] = server.requests
    assert request["tool_choice"] == "none"  # the server's own forcing does not hold
    assert [t["function"]["name"] for t in request["tools"]] == ["calculator", "weather"]
    names = [option["properties"]["name"]["const"] for option in request["json_schema"]["anyOf"]]
    assert names == ["calculator", "weather"]


def test_a_named_call_is_forced_to_that_tool() -> None:
    server = FakeServer(_completion('{"name": "weather", "arguments": {"city": "Paris"}}'))
    message = _served(server).bind_tools([calculator, weather], tool_choice="weather").invoke("hi")
    assert [call["name"] for call in message.tool_calls] == ["weather"]
    schema = server.requests[0]["json_schema"]
    assert schema["properties"]["name"] == {"const": "weather"}
    assert schema["properties"]["arguments"]["required"] == ["city"]


def test_auto_and_servers_that_parse_are_left_alone() -> None:
    server = FakeServer(_completion("no call"))
    _served(server).bind_tools([calculator], tool_choice="auto").invoke("hi")
    _served(server, parser=None).bind_tools([calculator], tool_choice="any").invoke("hi")
    auto, trusted = server.requests
    assert "json_schema" not in auto
    assert auto["tool_choice"] == "auto"
    assert "json_schema" not in trusted
    assert trusted["tool_choice"] == "required"


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    },
}


def test_a_schema_answer_cut_at_its_budget_is_text_not_an_error() -> None:
    # Bug: langchain-openai parses a response_format answer, and raised
    # LengthFinishReasonError when a small model's JSON ran to max_tokens: the sample
    # was lost and the recorder retried it for ever. The text now comes back as is.
    body = _completion('{"answer": "the longest answer that never clo')
    body["choices"][0]["finish_reason"] = "length"
    server = FakeServer(body)
    reply = _served(server, parser=None).invoke("Q?", response_format=SCHEMA, max_tokens=8)
    assert reply.text == '{"answer": "the longest answer that never clo'
    assert reply.response_metadata["finish_reason"] == "length"
    sent = server.requests[0]
    assert sent["response_format"] == SCHEMA  # in the request body, as llama-server reads it
    assert sent["max_tokens"] == 8
