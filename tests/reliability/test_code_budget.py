"""Model-written code runs only within the call's time budget.

Real parts: the sandbox (bubblewrap where it works) runs every program; the graph with
MiniLM and an embedded Chroma store; scripted experts answer with programs that loop
for ever. ``run_python`` is wrapped to record the budget of each run (what the sandbox
was allowed, from its ``timeout`` and ``deadline``), then runs the program for real.

The bug seen: "Six looping programs added 30 s to a call with timeout=2": the code vote
ran each candidate for 5 s, one after the other, whatever the call's budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from avengers_graph import create_avengers_graph, sandbox
from avengers_graph.embeddings import LocalEmbeddings
from avengers_graph.experts import contract as contract_module
from avengers_graph.experts.contract import Expert
from avengers_graph.formats import behaviour as behaviour_module
from avengers_graph.sandbox import SandboxResult
from tests.fakes import ScriptedExpert, constant
from tests.reliability._run_fixtures import finishes, one_cluster_store

QUESTION = (
    "Complete this function.\n\n"
    "def add(a: int, b: int) -> int:\n"
    '    """Add two numbers.\n'
    "    >>> add(2, 3)\n"
    "    5\n"
    '    """\n'
)


class Budgets:
    """Wraps ``run_python``: records each run's budget and result, runs it for real."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, SandboxResult]] = []

    def __call__(
        self, code: str, *, timeout: float = 10.0, deadline: float | None = None, **kwargs: Any
    ) -> SandboxResult:
        budget = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        result = sandbox.run_python(code, timeout=timeout, deadline=deadline, **kwargs)
        self.runs.append((budget, result))
        return result


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


def looping(index: int) -> ScriptedExpert:
    body = f"def add(a, b):\n    n = {index}\n    while True:\n        n += 1\n"
    return ScriptedExpert(respond=constant(f"```python\n{body}```"))


def test_six_looping_programs_share_the_calls_budget_in_the_code_vote(
    tmp_path: Path, embeddings: LocalEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = Budgets()
    monkeypatch.setattr(behaviour_module, "run_python", budgets)
    experts = {name: looping(i) for i, name in enumerate(("first", "second", "third"))}
    store = one_cluster_store(tmp_path / "store", list(experts))
    graph = create_avengers_graph(experts, embeddings, store, top_n=3, samples=2, timeout=2)
    result = finishes(lambda: graph.invoke({"messages": [HumanMessage(QUESTION)]}), 60)
    record = result["avengers"]
    assert record["question_format"] == "code"
    assert record["answer_format"] == "code"  # no program finished: keyed by their syntax
    assert len(record["samples"]) == 6
    assert len(budgets.runs) == 6
    assert all(result.timed_out for _, result in budgets.runs)
    # one budget of 2 s for all six, never 6 x 5 s: each run gets what is left of it
    assert sum(max(budget, 0.0) for budget, _ in budgets.runs) <= 2.0
    assert budgets.runs[0][0] <= 2.0


@pytest.mark.skipif(
    sandbox.isolation() is not sandbox.Isolation.BUBBLEWRAP,
    reason="programs answer only where bubblewrap works",
)
def test_a_looping_program_answer_gets_only_what_is_left_of_its_call(
    tmp_path: Path, embeddings: LocalEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = Budgets()
    monkeypatch.setattr(contract_module, "run_python", budgets)
    program = Expert(
        ScriptedExpert(respond=constant("```python\nwhile True:\n    pass\n```")), "program"
    )
    store = one_cluster_store(tmp_path / "store", ["program"])
    graph = create_avengers_graph(
        {"program": program}, embeddings, store, top_n=1, samples=2, timeout=0.5
    )
    result = finishes(lambda: graph.invoke({"messages": [HumanMessage("What is 6 * 7?")]}), 60)
    samples = result["avengers"]["samples"]
    assert [sample["text"] for sample in samples] == ["", ""]  # killed: no answer
    assert len(budgets.runs) == 2
    for budget, run in budgets.runs:
        assert budget <= 0.5  # not the old 1 s floor, nor PROGRAM_TIMEOUT (10 s)
        assert run.timed_out
