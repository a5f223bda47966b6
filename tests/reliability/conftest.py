"""Reliability tests: sandbox escapes tried with real bubblewrap and real programs.

Every test here runs only where bubblewrap isolates programs (``make test`` installs
it); elsewhere it is skipped with the reason the probe gave. The programs run with
``require_isolation=True``, so a broken bubblewrap fails them instead of running an
escape attempt (``kill(-1)`` as root) unisolated.
"""

from __future__ import annotations

import pytest

from avengers_graph import sandbox


@pytest.fixture(autouse=True)
def _bubblewrap_isolation() -> None:
    if sandbox.isolation() is not sandbox.Isolation.BUBBLEWRAP:
        pytest.skip(f"bubblewrap unavailable: {sandbox._bubblewrap()[1]}")
