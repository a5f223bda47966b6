"""Deprecated: moved to :mod:`avengers_graph.local.pool`.

This path keeps working, with a ``DeprecationWarning``, until the next release.
"""

import sys
import warnings
from typing import TYPE_CHECKING

import avengers_graph.local.pool as _moved

if TYPE_CHECKING:  # the names, for type checkers
    from avengers_graph.local.pool import *  # noqa: F403

warnings.warn(
    "avengers_graph.local_pool moved to avengers_graph.local.pool; "
    "the old path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
