"""The Hermes tool-call parser on the shapes small local models write calls in."""

from __future__ import annotations

import itertools
from collections.abc import Collection

import pytest

from avengers_graph.experts.tool_parsers import (
    bound_tool_names,
    bound_tool_parameters,
    format_hermes_tool_calls,
    new_call_id,
    parse_hermes_tool_calls,
    parse_tool_calls,
)

TOOLS = frozenset({"calculator", "convert_units"})
CALC = '{"name": "calculator", "arguments": {"expression": "234 * 17"}}'
CONVERT = (
    '{"name": "convert_units", "arguments": {"value": 5, "from_unit": "miles", "to_unit": "km"}}'
)


def _ids() -> itertools.count[int]:
    return itertools.count()


def parse(text: str, tools: Collection[str] = TOOLS) -> tuple[str, list[tuple[str, dict]]] | None:
    counter = _ids()
    parsed = parse_hermes_tool_calls(text, tools, make_id=lambda: f"call_{next(counter)}")
    if parsed is None:
        return None
    assert [call["id"] for call in parsed.tool_calls] == [
        f"call_{index}" for index in range(len(parsed.tool_calls))
    ]
    return parsed.content, [(call["name"], call["args"]) for call in parsed.tool_calls]


CALC_CALL = ("calculator", {"expression": "234 * 17"})
CONVERT_CALL = ("convert_units", {"value": 5, "from_unit": "miles", "to_unit": "km"})


@pytest.mark.parametrize(
    "text",
    [
        CALC,
        f"  {CALC}\n",
        f"```json\n{CALC}\n```",
        f"```\n{CALC}\n```",
        f"<tool_call>\n{CALC}\n</tool_call>",
        f"<tool_call>{CALC}",  # cut off before the closing tag
        f"<tools>\n    {CALC}\n</tools>",
        '{\n  "name": "calculator",\n  "arguments": {\n    "expression": "234 * 17"\n  }\n}',
        '{"name": "calculator", "arguments": "{\\"expression\\": \\"234 * 17\\"}"}',
        '{"name": "calculator", "parameters": {"expression": "234 * 17"}}',
        f"[{CALC}]",
    ],
    ids=[
        "bare",
        "whitespace",
        "json-fence",
        "plain-fence",
        "tagged",
        "tag-unclosed",
        "tools-wrapper",
        "pretty-printed",
        "arguments-as-json-string",
        "parameters-synonym",
        "json-list",
    ],
)
def test_one_call_in_every_shape(text: str) -> None:
    assert parse(text) == ("", [CALC_CALL])


@pytest.mark.parametrize(
    "text",
    [
        f"{CALC}\n{CONVERT}",
        f"{CALC}, {CONVERT}",
        f"[{CALC}, {CONVERT}]",
        f"```json\n{CALC}\n{CONVERT}\n```",
        f"```json\n{CALC}\n```\n```json\n{CONVERT}\n```",
        f"<tool_call>\n{CALC}\n</tool_call>\n<tool_call>\n{CONVERT}\n</tool_call>",
        f"<tools>\n{CALC}\n{CONVERT}\n</tools>",
    ],
    ids=["lines", "commas", "list", "one-fence", "two-fences", "two-tags", "tools-wrapper"],
)
def test_parallel_calls_keep_their_order(text: str) -> None:
    assert parse(text) == ("", [CALC_CALL, CONVERT_CALL])


def test_tagged_calls_keep_the_text_around_them() -> None:
    text = f"I will compute it.\n<tool_call>\n{CALC}\n</tool_call>"
    assert parse(text) == ("I will compute it.", [CALC_CALL])


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 3978.",
        "",
        "   ",
        '{"name": "search", "arguments": {"query": "x"}}',  # not a bound tool
        f'{CALC}\n{{"name": "search", "arguments": {{}}}}',  # one of them unknown
        f"<tool_call>\n{CALC}\n</tool_call>\n<tool_call>\n{{broken\n</tool_call>",
        '{"name": "calculator", "arguments": {"expression": "234 * 17"}',  # cut off
        '{"name": "calculator", "arguments": "not json"}',
        '{"name": "calculator", "arguments": [1, 2]}',
        '{"name": "calculator"}',  # no arguments
        '{"name": "calculator", "description": "Evaluate.", "parameters": '
        '{"type": "object", "properties": {"expression": {"type": "string"}}}}',
        '{"name": "Alice", "age": 30}',
        "[1, 2, 3]",
        "42",
        "```python\nprint(234 * 17)\n```",
        "<tool_call>\n</tool_call>",
    ],
    ids=[
        "prose",
        "empty",
        "blank",
        "unknown-tool",
        "one-unknown-tool",
        "one-tagged-block-broken",
        "broken-json",
        "arguments-not-json",
        "arguments-not-an-object",
        "no-arguments",
        "tool-definition-echoed",
        "json-not-a-call",
        "json-list-of-numbers",
        "json-number",
        "code-fence",
        "empty-tags",
    ],
)
def test_anything_else_is_no_call(text: str) -> None:
    assert parse(text) is None


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (
            f"To multiply them, I call:\n```json\n{CALC}\n```\nThis returns the product.",
            "To multiply them, I call:\n\nThis returns the product.",
        ),
        (f"Sure! {CALC}", "Sure!"),
        (f"Let's compute:\n<tools>\n{{{CALC}}}\n</tools>", "Let's compute:"),  # {{...}}
        (
            f'With {{"unit": "km"}} in mind: {CALC}',
            'With {"unit": "km"} in mind:',
        ),
        (
            f'{CALC}\n{{"name": "calculator", "arguments": {{"expression": "1 +',  # cut off
            '{"name": "calculator", "arguments": {"expression": "1 +',
        ),
    ],
    ids=["prose-around-a-fence", "prose-before", "double-braces", "other-json", "then-broken"],
)
def test_calls_between_sentences_are_taken_out_of_the_text(text: str, content: str) -> None:
    assert parse(text) == (content, [CALC_CALL])


def test_schema_bits_echoed_next_to_the_arguments_are_ignored() -> None:
    text = (
        '{"name": "calculator", "arguments": {"expression": "234 * 17"}, '
        '"parameters": {"properties": {"expression": {"type": "string"}}}, '
        '"required": ["expression"], "type": "object"}}'  # and one brace too many
    )
    assert parse(text) == ("", [CALC_CALL])


SCHEMAS = {
    "calculator": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
    "lookup": {"type": "object", "properties": {}, "additionalProperties": True},
    "free": {},
}


@pytest.mark.parametrize(
    "arguments",
    [
        '{"expression": "234 * 17", "type": "object", "required": ["expression"]}',
        '{"expression": "234 * 17", "parameters": {"properties": {}}}',
        '{"parameters": {}, "expression": "234 * 17"}',
    ],
    ids=["type-and-required", "parameters", "first"],
)
def test_argument_keys_the_schema_does_not_declare_are_dropped(arguments: str) -> None:
    text = f'{{"name": "calculator", "arguments": {arguments}}}'
    assert parse(text, SCHEMAS) == ("", [CALC_CALL])
    # without the schemas, the arguments go through as written
    assert parse(text) != ("", [CALC_CALL])


def test_schemas_that_declare_no_keys_or_allow_others_keep_every_argument() -> None:
    for name in ("lookup", "free"):
        text = f'{{"name": "{name}", "arguments": {{"q": "x", "type": "object"}}}}'
        assert parse(text, SCHEMAS) == ("", [(name, {"q": "x", "type": "object"})])


def test_the_text_before_the_first_call_is_kept_apart() -> None:
    text = f'I will compute it.\n{CALC}\nThen I convert it: {{"name": "convert_units", '
    parsed = parse_hermes_tool_calls(text, TOOLS)
    assert parsed is not None
    assert parsed.lead == "I will compute it."
    assert parsed.content.startswith("I will compute it.")
    assert "Then I convert it" in parsed.content
    tagged = parse_hermes_tool_calls(f"Computing.\n<tool_call>\n{CALC}\n</tool_call>", TOOLS)
    assert tagged is not None
    assert tagged.lead == "Computing."
    only_calls = parse_hermes_tool_calls(f"```json\n{CALC}\n```\nand more", TOOLS)
    assert only_calls is not None
    assert only_calls.lead == ""


def test_a_call_nested_in_another_object_is_not_a_call() -> None:
    assert parse(f'{{"example": {CALC}}}') is None


def test_no_bound_tools_means_no_call() -> None:
    assert parse(CALC, frozenset()) is None


def test_default_ids_look_like_openai_ids() -> None:
    parsed = parse_hermes_tool_calls(f"{CALC}\n{CALC}", TOOLS)
    assert parsed is not None
    first, second = (call["id"] for call in parsed.tool_calls)
    assert first != second
    for call_id in (first, second, new_call_id()):
        assert call_id is not None
        assert call_id.startswith("call_")
        assert len(call_id) == len("call_") + 32
    assert parsed.tool_calls[0]["type"] == "tool_call"


def test_bound_tool_names_reads_function_tools_only() -> None:
    tools = [
        {"type": "function", "function": {"name": "calculator", "parameters": {}}},
        {"type": "web_search"},
        {"type": "function", "function": {"description": "no name"}},
    ]
    assert bound_tool_names(tools) == {"calculator"}
    assert bound_tool_names(None) == frozenset()
    assert bound_tool_parameters(tools) == {"calculator": {}}
    assert bound_tool_parameters(None) == {}


def test_parse_tool_calls_dispatches_and_rejects_unknown_parsers() -> None:
    parsed = parse_tool_calls("hermes", CALC, TOOLS)
    assert parsed is not None
    assert parsed.tool_calls[0]["name"] == "calculator"
    with pytest.raises(
        ValueError, match="Unknown tool-call parser 'mistral'; known parsers: hermes"
    ):
        parse_tool_calls("mistral", CALC, TOOLS)  # type: ignore[arg-type]


def test_calls_are_written_back_in_the_format_they_are_parsed_from() -> None:
    openai_calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "234 * 17"}'},
        },
        {"name": "convert_units", "args": {"value": 5, "from_unit": "miles", "to_unit": "km"}},
    ]
    text = format_hermes_tool_calls("", openai_calls)
    assert text == f"<tool_call>\n{CALC}\n</tool_call>\n<tool_call>\n{CONVERT}\n</tool_call>"
    assert parse(text) == ("", [CALC_CALL, CONVERT_CALL])
    assert format_hermes_tool_calls("Let me compute.", openai_calls[:1]) == (
        f"Let me compute.\n<tool_call>\n{CALC}\n</tool_call>"
    )


def test_unparsable_arguments_are_written_back_as_they_were() -> None:
    call = {"function": {"name": "calculator", "arguments": "not json"}}
    assert format_hermes_tool_calls("", [call]) == (
        '<tool_call>\n{"name": "calculator", "arguments": "not json"}\n</tool_call>'
    )


def test_formatting_calls_back_keeps_the_text_of_content_blocks() -> None:
    calls = [{"name": "add", "args": {"a": 1}}]
    blocks = [{"type": "text", "text": "Let me add."}, {"type": "image_url", "image_url": "x"}]
    assert format_hermes_tool_calls(blocks, calls) == (
        'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    )
