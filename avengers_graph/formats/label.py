"""Label answers: one word out of the few a closed question names (``positive or negative?``).

Pure functions on strings. The labels come from :func:`avengers_graph.formats.detect.detect`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from avengers_graph.formats.text import extract_text

__all__ = ["extract_label"]

_ANSWER_RE = re.compile(r"\banswer\b\s*(?:is\b)?\s*[:=\uff1a]?\s*", re.IGNORECASE)


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a reply gives, lower-cased, or None when it gives none of ``labels``.

    In order: a reply that is just a label (``Positive.``); the first label after the
    last ``Answer:``; the label mentioned last.

    Args:
        text: A model reply.
        labels: The answers the question allows (lower-case words).
    """
    allowed = {label.lower() for label in labels}
    if not allowed:
        return None
    whole = extract_text(text)
    if whole in allowed:
        return whole
    words = re.compile(
        r"\b(" + "|".join(re.escape(label) for label in allowed) + r")\b", re.IGNORECASE
    )
    markers = list(_ANSWER_RE.finditer(text))
    if markers:
        found = words.search(text, markers[-1].end())
        if found is not None:
            return found.group(1).lower()
    mentioned = words.findall(text)
    return mentioned[-1].lower() if mentioned else None
