"""Deprecated: the graders live with their answer formats in :mod:`avengers_graph.formats`.

``GRADERS[kind]`` is ``formats.get_format(kind).grade``; this module keeps the old names
for one release.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from types import MappingProxyType

from avengers_graph.formats import (
    FORMATS,
    Grader,
    grade_choice,
    grade_code,
    grade_number,
    grade_text,
)
from avengers_graph.formats.base import get_grader

__all__ = [
    "GRADERS",
    "Grader",
    "get_grader",
    "grade_choice",
    "grade_code",
    "grade_number",
    "grade_text",
]

warnings.warn(
    "avengers_graph.grading moved to avengers_graph.formats (get_format(kind).grade); "
    "the old module goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)

GRADERS: Mapping[str, Grader] = MappingProxyType(
    {name: fmt.grade for name, fmt in FORMATS.items() if fmt.gradable}
)
"""The built-in graders by dataset kind."""
