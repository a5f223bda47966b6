"""The server's Prometheus metrics, in a registry of its own (one per app).

- ``avengers_requests_total{route, status}`` and ``avengers_request_seconds{route}``:
  every HTTP request (refusals included), counted and timed until its last byte;
- ``avengers_requests_in_flight``: chat completions and feedback being answered;
- ``avengers_expert_calls_total{expert, status}``: every expert call, ``ok``,
  ``failed`` or ``cancelled`` (the vote was decided without it);
  ``avengers_expert_failures_total{expert}`` counts the failed ones alone;
- ``avengers_votes_total{early}``: votes, ``early="true"`` when decided before every
  planned sample had answered (``early_stop``);
- ``avengers_time_to_first_token_seconds{target}``: streamed answers, ensemble or a
  single expert;
- ``avengers_feedback_total{correct}``: verdicts recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ROUTES", "Metrics"]

ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/feedback"})
"""Paths counted under their own name; others count as ``other`` (bounded labels)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one server (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "avengers_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "avengers_request_seconds",
            "Seconds from a request's arrival to its last byte, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "avengers_requests_in_flight",
            "Chat completions and feedback being answered now.",
            registry=self.registry,
        )
        self.expert_calls = Counter(
            "avengers_expert_calls",
            "Expert calls, by expert and status (ok, failed, cancelled).",
            ["expert", "status"],
            registry=self.registry,
        )
        self.expert_failures = Counter(
            "avengers_expert_failures",
            "Expert calls that failed, by expert.",
            ["expert"],
            registry=self.registry,
        )
        self.votes = Counter(
            "avengers_votes",
            "Votes taken, by whether they were decided before every sample answered.",
            ["early"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "avengers_time_to_first_token_seconds",
            "Seconds from a streamed request's arrival to its first content, by target.",
            ["target"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.feedback = Counter(
            "avengers_feedback",
            "Verdicts recorded through POST /v1/feedback.",
            ["correct"],
            registry=self.registry,
        )

    @staticmethod
    def route(path: str) -> str:
        """The ``route`` label of a path."""
        if path in ROUTES:
            return path
        return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

    def request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        route = self.route(path)
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def progress(self, event: Mapping[str, Any]) -> None:
        """Count a graph progress event (a sample's outcome, a vote)."""
        kind = event.get("avengers")
        if kind == "sample":
            expert, status = str(event.get("expert")), str(event.get("status"))
            self.expert_calls.labels(expert=expert, status=status).inc()
            if status == "failed":
                self.expert_failures.labels(expert=expert).inc()
        elif kind == "vote":
            early = bool(event.get("cancelled"))
            self.votes.labels(early=str(early).lower()).inc()

    def expert_call(self, expert: str, ok: bool) -> None:
        """Count a direct call to one expert (a request naming it as its model)."""
        self.expert_calls.labels(expert=expert, status="ok" if ok else "failed").inc()
        if not ok:
            self.expert_failures.labels(expert=expert).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
