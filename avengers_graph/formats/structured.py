"""JSON-object answers (structured output): parsing and canonical keys. Pure functions."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

__all__ = ["canonical_json", "extract_json", "parse_json_object"]

_JSON_FENCE_RE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def parse_json_object(text: str) -> dict[str, object] | None:
    """The JSON object a reply holds: the whole reply, a fenced block, or its outer braces.

    Args:
        text: A model reply.

    Returns:
        The object, or None when the reply holds no valid JSON object.
    """
    candidates = [text.strip()]
    candidates += [block.strip() for block in _JSON_FENCE_RE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def canonical_json(value: object) -> str:
    """Canonical JSON text: sorted keys, compact, integral floats as ints."""
    return json.dumps(
        _canonical_json(value), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def extract_json(text: str) -> str | None:
    """Key of a JSON-object reply: its canonical JSON (None when it holds no object)."""
    value = parse_json_object(text)
    return None if value is None else canonical_json(value)


def _canonical_json(value: object) -> object:
    """Arguments with integral floats as ints, so ``2`` and ``2.0`` vote together."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_json(v) for v in value]
    return value
