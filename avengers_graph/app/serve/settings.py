"""The server's settings: API keys, limits, the bind check.

- :class:`ServeSettings`: the keys and the limits of one server (request body size,
  messages, concurrent requests, the per-request timeout), read by
  :meth:`ServeSettings.from_env` from ``AVENGERS_API_KEYS`` (comma-separated) and
  ``AVENGERS_API_KEYS_FILE`` (one key a line), with the CLI's options over them.
- :func:`check_binding`: a server on anything but the loopback interface needs a key.

Keys are held as ``SecretStr`` and never printed, logged or put in an error message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from avengers_graph.errors import InvalidInputError
from avengers_graph.options import describe_validation_error
from avengers_graph.redact import API_KEYS_VARIABLE

__all__ = [
    "API_KEYS_FILE_VARIABLE",
    "MIN_KEY_LENGTH",
    "ServeSettings",
    "check_binding",
    "is_loopback",
    "read_keys",
]

API_KEYS_FILE_VARIABLE = "AVENGERS_API_KEYS_FILE"
"""Environment variable naming a file of API keys, one a line (``#`` starts a comment)."""

MIN_KEY_LENGTH = 16
"""Shortest API key accepted: a short key is guessable."""

_KEY_HINT = "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


class ServeSettings(BaseModel):
    """The keys and limits of one ``avengers serve`` server."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    api_keys: tuple[SecretStr, ...] = ()
    """Keys accepted as ``Authorization: Bearer <key>``; none: no auth (loopback only)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body (413 beyond it)."""
    max_messages: int = Field(default=256, ge=1)
    """Most messages in one request (400 beyond it)."""
    max_chars: int = Field(default=200_000, ge=1)
    """Most characters over all messages of one request (400 beyond it)."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests answered at once; more are refused with 429 and ``Retry-After``."""
    timeout: float = Field(default=600.0, gt=0)
    """Seconds one request may take (504 after it); also how long a shutdown waits for
    the requests in flight."""
    retry_after: int = Field(default=1, ge=1)
    """Seconds a refused client is told to wait (``Retry-After``)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInputError(
                f"Invalid server settings: {describe_validation_error(exc)}."
            ) from None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        keys_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> ServeSettings:
        """Settings with the keys of the environment and of a key file.

        Args:
            env: The environment (default ``os.environ``): ``AVENGERS_API_KEYS``
                (separated by commas or whitespace) and ``AVENGERS_API_KEYS_FILE``.
            keys_file: A key file (one key a line), instead of ``AVENGERS_API_KEYS_FILE``.
            **overrides: Limits (``max_concurrency=4``...); ``None`` values are ignored.

        Raises:
            InvalidInputError: A key shorter than :data:`MIN_KEY_LENGTH`, an unreadable
                key file, or a limit out of bounds.
        """
        env = os.environ if env is None else env
        keys = [part for part in re.split(r"[\s,]+", env.get(API_KEYS_VARIABLE, "")) if part]
        path = keys_file or env.get(API_KEYS_FILE_VARIABLE) or None
        if path is not None:
            keys.extend(read_keys(path))
        for number, key in enumerate(keys, start=1):
            if len(key) < MIN_KEY_LENGTH:
                raise InvalidInputError(
                    f"API key number {number} is shorter than {MIN_KEY_LENGTH} characters; "
                    f"{_KEY_HINT}."
                )
        limits = {name: value for name, value in overrides.items() if value is not None}
        return cls(api_keys=tuple(SecretStr(key) for key in dict.fromkeys(keys)), **limits)

    def secrets(self) -> list[str]:
        """The keys' values, for :func:`~avengers_graph.redact.redact`."""
        return [key.get_secret_value() for key in self.api_keys]


def read_keys(path: str | os.PathLike[str]) -> list[str]:
    """The keys of a key file: one a line; blank lines and ``#`` comments are skipped.

    Raises:
        InvalidInputError: The file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"Cannot read the API key file {path}: {exc.strerror}.") from None
    keys = []
    for line in text.splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return keys


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, settings: ServeSettings) -> None:
    """Refuse to serve on anything but loopback without an API key.

    Raises:
        InvalidInputError: ``host`` is not a loopback address and no key is configured.
    """
    if not settings.api_keys and not is_loopback(host):
        raise InvalidInputError(
            f"Refusing to serve on {host!r} without an API key: anyone who can reach it "
            f"could use the ensemble. Set {API_KEYS_VARIABLE} (comma-separated keys) or "
            f"{API_KEYS_FILE_VARIABLE} / --api-keys-file ({_KEY_HINT}), or bind to 127.0.0.1."
        )
