"""Answer formats: detection from the question, instructions, constraints, keys, grading.

Each kind of answer lives in one module (:mod:`.numbers`, :mod:`.choice`, :mod:`.label`,
:mod:`.text`, :mod:`.code`, :mod:`.structured`); :mod:`.base` gathers them into
:data:`FORMATS` with what each strategy sends for them, and :mod:`.detect` tells a
question's format from its text. Pure code on strings (grading code runs it in the
sandbox). May import :mod:`avengers_graph.errors` and :mod:`avengers_graph.sandbox` only.
"""

from avengers_graph.formats.base import (
    FORMATS,
    STRATEGIES,
    AnswerFormat,
    Grader,
    Strategy,
    get_format,
    get_grader,
)
from avengers_graph.formats.choice import extract_choice, grade_choice
from avengers_graph.formats.code import extract_code, grade_code, last_code_block
from avengers_graph.formats.detect import Detected, detect, option_letters, option_text
from avengers_graph.formats.label import extract_label
from avengers_graph.formats.numbers import (
    canonical_math,
    extract_math,
    extract_number,
    grade_math,
    grade_number,
    last_boxed,
)
from avengers_graph.formats.structured import canonical_json, extract_json, parse_json_object
from avengers_graph.formats.text import extract_text, grade_text

__all__ = [
    "FORMATS",
    "STRATEGIES",
    "AnswerFormat",
    "Detected",
    "Grader",
    "Strategy",
    "canonical_json",
    "canonical_math",
    "detect",
    "extract_choice",
    "extract_code",
    "extract_json",
    "extract_label",
    "extract_math",
    "extract_number",
    "extract_text",
    "get_format",
    "get_grader",
    "grade_choice",
    "grade_code",
    "grade_math",
    "grade_number",
    "grade_text",
    "last_boxed",
    "last_code_block",
    "option_letters",
    "option_text",
    "parse_json_object",
]
