"""Deprecated: moved to :mod:`avengers_graph.app.embedded`.

This path keeps working, with a ``DeprecationWarning``, until the next release.
"""

import sys
import warnings
from typing import TYPE_CHECKING

import avengers_graph.app.embedded as _moved

if TYPE_CHECKING:  # the names, for type checkers
    from avengers_graph.app.embedded import *  # noqa: F403

warnings.warn(
    "avengers_graph.embedded moved to avengers_graph.app.embedded; "
    "the old path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
