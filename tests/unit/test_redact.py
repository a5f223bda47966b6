"""Redaction of secrets and removal of terminal control sequences (pure functions)."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from avengers_graph.redact import (
    MASK,
    RedactingFilter,
    environment_secrets,
    redact,
    secrets_of,
    terminal_safe,
)

KEY = "sk-proj-Abc123Def456Ghi789Jkl0"


@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        (f"Error code: 401 - {{'error': 'bad header Bearer {KEY}'}}", KEY),
        ("Authorization: Bearer abcdef0123456789", "abcdef0123456789"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', "dXNlcjpwYXNz"),
        ("request failed: api_key=hunter2hunter2&x=1", "hunter2hunter2"),
        ('{"api-key": "zzz-secret-zzz"}', "zzz-secret-zzz"),
        ("x-api-key: opaque-value-42", "opaque-value-42"),
        ("access_token=eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("GET https://maps.example/api?key=AIzaSyXYZ123&q=1", "AIzaSyXYZ123"),
        ("cannot reach https://bob:s3cr3tpw@db.example:5432/x", "s3cr3tpw"),
        (f"the key {KEY} is invalid", KEY[3:]),
        ("hf_abcdefghijklmnopqrstuvwx leaked", "abcdefghijklmnopqrstuvwx"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123 leaked", "abcdefghijklmnopqrstuvwxyz0123"),
        ("aws AKIAABCDEFGHIJKLMNOP id", "AKIAABCDEFGHIJKLMNOP"),
    ],
)
def test_redact_hides_credential_shapes(text: str, secret_part: str) -> None:
    out = redact(text)
    assert secret_part not in out
    assert MASK in out


def test_redact_hides_configured_values_raw_and_url_quoted() -> None:
    secret = "my plain/secret+value"  # noqa: S105 - a made-up value to hide
    text = (
        f"echo: {secret} and in a url: q=my%20plain%2Fsecret%2Bvalue and my+plain%2Fsecret%2Bvalue"
    )
    out = redact(text, [secret])
    assert "plain" not in out
    assert out.count(MASK) == 3


def test_redact_keeps_ordinary_text() -> None:
    text = "The answer is \\boxed{42}. Use `Bearer {token}` in the header; the tokenizer said 7."
    assert redact(text, ["EMPTY", ""]) == text  # short values are no secrets
    assert redact("EMPTY key EMPTY", ["EMPTY"]) == "EMPTY key EMPTY"


def test_environment_secrets_reads_the_named_variables_and_the_key_list() -> None:
    env = {
        "QWEN_KEY": "qwen-secret-1",
        "UNSET_EMPTY": "",
        "AVENGERS_API_KEYS": "k-one-111, k-two-222\nk-three-333",
    }
    values = environment_secrets(["QWEN_KEY", "UNSET_EMPTY", "MISSING"], env)
    assert values == ["qwen-secret-1", "k-one-111", "k-two-222", "k-three-333"]
    assert redact("k-two-222 and qwen-secret-1", values) == f"{MASK} and {MASK}"


def test_secrets_of_reads_secret_fields_of_pydantic_models() -> None:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="m", api_key=SecretStr("sk-test-value-0000"), base_url="http://x/v1")
    assert "sk-test-value-0000" in secrets_of([model, object(), "text"])


@pytest.mark.parametrize(
    "attack",
    [
        "\x1b[2J\x1b[H",  # clear screen, cursor home
        "\x1b]52;c;ZXZpbA==\x07",  # OSC 52 clipboard write, BEL-terminated
        "\x1b]52;c;ZXZpbA==\x1b\\",  # ... ST-terminated
        "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\",  # hyperlink
        "\x1b]0;title\n",  # unterminated OSC: removed up to the end of its line
        "\x9b31m",  # 8-bit CSI
        "\x9d52;c;eA==\x9c",  # 8-bit OSC and ST
        "\x1bPq#0;2;0;0;0\x1b\\",  # DCS (sixel)
        "\x1bc",  # reset terminal
        "\x1b(0",  # charset switch
        "\x07\x08\x00\x7f\x85",  # BEL, BS, NUL, DEL, NEL
        "fake\rreal",  # carriage return overwriting the line
    ],
)
def test_terminal_safe_removes_control_sequences(attack: str) -> None:
    out = terminal_safe(f"before {attack} after")
    assert out.startswith("before ")
    assert out.endswith(" after")
    assert not any(ord(c) < 32 and c not in "\n\t" for c in out)
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)
    assert "]52" not in out
    assert "2J" not in out


def test_terminal_safe_keeps_text_newlines_tabs_and_unicode() -> None:
    text = "Line 1\n\tindented ✓ 数学 — [bold]not markup[/]\r\nend"
    assert terminal_safe(text) == "Line 1\n\tindented ✓ 数学 — [bold]not markup[/]\nend"


def test_redacting_filter_redacts_messages_arguments_and_tracebacks() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter(["configured-secret"]))
    logger = logging.getLogger("test_redact.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("server said %s", f"Bearer {KEY} configured-secret")
        try:
            raise RuntimeError(f"api_key={KEY}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = records
    assert first.getMessage() == f"server said Bearer {MASK} {MASK}"
    assert KEY not in (second.exc_text or "")
    assert "RuntimeError" in (second.exc_text or "")
