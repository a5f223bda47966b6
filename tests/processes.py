"""Helpers for tests that start processes and signal them."""

from __future__ import annotations

import signal


def terminal_signals() -> None:
    """A ``preexec_fn``: the child takes SIGINT and SIGHUP as it would from a terminal.

    A suite started in the background by a non-interactive shell (``cmd &``) inherits
    SIGINT ignored, and under ``nohup`` SIGHUP too; every child would inherit that, and a
    test that stops a child with Ctrl-C or a hangup would wait for nothing.
    """
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
