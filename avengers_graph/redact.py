"""Text that is safe to show: secrets redacted, terminal control sequences removed.

Two pure functions, applied before text from outside (an upstream server's error, a
model's answer, a user's question) reaches an exception, a log record or a terminal:

- :func:`redact` replaces credentials with ``***``: bearer tokens, ``sk-...``-style
  API keys, the values of ``api_key=``/``Authorization:``/``token=``-like fields,
  passwords in URLs, and any given secret values (for example the keys named by a
  pool file's ``api_key_env``; :func:`environment_secrets` collects them, plus the
  keys listed in ``AVENGERS_API_KEYS``).
- :func:`terminal_safe` removes what a terminal would execute rather than show:
  CSI and OSC sequences (colours, cursor moves, clear-screen, OSC 52 clipboard
  writes, hyperlinks), other escape sequences, and C0/C1 control characters except
  newline and tab.

:class:`RedactingFilter` applies :func:`redact` to log records.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "API_KEYS_VARIABLE",
    "MASK",
    "RedactingFilter",
    "environment_secrets",
    "redact",
    "secrets_of",
    "terminal_safe",
]

MASK = "***"
"""What a redacted secret is replaced with."""

API_KEYS_VARIABLE = "AVENGERS_API_KEYS"
"""Environment variable with extra secret values to redact (comma or space separated)."""

_MIN_SECRET_LENGTH = 6
# Shorter configured values (such as the keyless placeholder "EMPTY") are not secrets
# worth mangling every occurrence of a common word for.

_TOKEN_CHARS = r"[A-Za-z0-9._~+/=-]"  # noqa: S105 - the characters of a token, no secret
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / Authorization: Basic xyz / "authorization": "xyz"
    (
        re.compile(
            r"""(?i)(\bauthorization["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?[^\s"',;}]+"""
        ),
        r"\1" + MASK,
    ),
    # Bearer xyz anywhere else (a server echoing the header in its error body)
    (re.compile(rf"(?i)\b(bearer\s+){_TOKEN_CHARS}{{6,}}"), r"\1" + MASK),
    # api_key=..., "api-key": "...", x-api-key: ..., access_token=..., password=...
    (
        re.compile(
            r"""(?i)(\b(?:x-)?(?:api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token"""
            r"""|client[_-]?secret|secret[_-]?key|password|passwd|token|secret)["']?\s*[:=]\s*["']?)"""
            r"""[^\s"',;&}]+"""
        ),
        r"\1" + MASK,
    ),
    # ?key=... in a URL
    (re.compile(r"(?i)([?&]key=)[^\s&#\"']+"), r"\1" + MASK),
    # https://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s/@]+@"), r"\1" + MASK + "@"),
    # Well-known key shapes: OpenAI-style sk-..., Hugging Face, GitHub, Slack, AWS ids
    (re.compile(r"\b(sk-)[A-Za-z0-9_-]{16,}"), r"\1" + MASK),
    (re.compile(r"\b(hf_)[A-Za-z0-9]{20,}"), r"\1" + MASK),
    (re.compile(r"\b(gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"), r"\1" + MASK),
    (re.compile(r"\b(xox[abprs]-)[A-Za-z0-9-]{10,}"), r"\1" + MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), MASK),
)


def _variants(secret: str) -> set[str]:
    """The forms a secret value may take in an error text (raw and URL-quoted)."""
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with credentials replaced by ``***``.

    Args:
        text: Any text: an error message, a server's response body, a log line.
        secrets: Exact secret values to hide wherever they appear (values shorter than
            6 characters are ignored: they are not credentials).

    Returns:
        The text with each given secret, bearer token, ``sk-...``-style key, value of an
        ``api_key=``/``Authorization:``/``token=``/``password=``-like field and URL
        password replaced by ``***``.
    """
    values = sorted(
        {
            variant
            for secret in secrets
            if isinstance(secret, str) and len(secret.strip()) >= _MIN_SECRET_LENGTH
            for variant in _variants(secret.strip())
        },
        key=len,
        reverse=True,
    )
    for value in values:
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def environment_secrets(
    names: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> list[str]:
    """Secret values configured in the environment.

    Args:
        names: Variables holding secrets, such as the ``api_key_env`` of each expert of
            a pool file.
        env: The environment (default ``os.environ``).

    Returns:
        The values of the named variables that are set, plus every key listed in
        ``AVENGERS_API_KEYS`` (separated by commas or whitespace).
    """
    env = os.environ if env is None else env
    values = [env[name] for name in names if env.get(name)]
    values.extend(part for part in re.split(r"[\s,]+", env.get(API_KEYS_VARIABLE, "")) if part)
    return values


def secrets_of(objects: Iterable[Any]) -> list[str]:
    """The secret values held by pydantic models, such as chat models' API keys.

    Every field whose value is a pydantic ``SecretStr`` (``ChatOpenAI.openai_api_key``,
    for example) gives its value.

    Args:
        objects: Any objects; those that are not pydantic models give nothing.
    """
    from pydantic import BaseModel, SecretStr

    values: list[str] = []
    for obj in objects:
        if not isinstance(obj, BaseModel):
            continue
        for name in type(obj).model_fields:
            value = getattr(obj, name, None)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
    return values


# ESC-introduced sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (ended by
# BEL or ST; an unterminated one up to the end of its line), two-character escapes; the same
# with the 8-bit C1 introducers. Then any remaining control character except \n and \t.
_CONTROL = re.compile(
    r"""
      (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?                 # CSI ... final byte
    | (?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|(?=\n)|\Z)  # OSC...
    | \x1b[ -/]*[0-~]?                                  # other escapes (ESC c, ESC ( B...)
    | [\x00-\x08\x0b-\x1f\x7f-\x9f]                     # C0 (but \t \n), DEL, C1
    """,
    re.VERBOSE | re.DOTALL,
)


def terminal_safe(text: str) -> str:
    """Return ``text`` without terminal control sequences, keeping newlines and tabs.

    Removes CSI sequences (colours, cursor moves, clear-screen), OSC sequences
    (window titles, OSC 52 clipboard writes, hyperlinks) and other escape sequences,
    then every C0 and C1 control character except newline and tab (a CR LF pair
    becomes a newline; a lone carriage return, which could overwrite the line, is
    removed).

    Args:
        text: Text from a model, a user or a server.
    """
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and traceback) in place.

    Attach it to a handler so every record that handler emits is redacted, whatever
    logger it came from.

    Args:
        secrets: Exact secret values to hide, in addition to the patterns of
            :func:`redact`.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's formatted message and exception text; always emit it."""
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, self.secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True
