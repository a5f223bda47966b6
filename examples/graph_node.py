"""The Avengers graph as a subgraph of your own LangGraph graph, with memory.

Run it (after ``make install-local``)::

    python examples/graph_node.py

The parent graph is ``classify -> avengers -> report``: ``classify`` tags the
question, ``avengers`` is the compiled ensemble graph added as a node (it shares the
``messages`` and ``avengers`` keys with the parent), and ``report`` logs who answered
and how the vote went. An ``InMemorySaver`` checkpointer keeps the conversation per
``thread_id``: the second question only makes sense with the first one in memory,
and the experts see the whole conversation. Per-run options (an ``AvengersContext``)
given to the parent reach the subgraph.
"""

from __future__ import annotations

import operator
import re
from typing import Annotated, Any

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict

from avengers_graph import AvengersContext, RoutingRecord, create_avengers_graph
from avengers_graph.app.embedded import local_avengers

TURNS = [
    "I have 3 cats and 2 dogs. How many pets do I have?",
    "How many of them are cats?",
]


class ConversationState(TypedDict, total=False):
    """The parent graph's state; ``messages`` and ``avengers`` are shared with the subgraph."""

    messages: Annotated[list[AnyMessage], add_messages]
    avengers: RoutingRecord
    """The routing record of the last turn, written by the Avengers subgraph."""
    kind: str
    """What ``classify`` made of the last question."""
    log: Annotated[list[str], operator.add]
    """One line per turn, appended by ``report``."""


def classify(state: ConversationState) -> dict[str, Any]:
    """Tag the last question: ``numeric`` if it holds a number or asks for one."""
    question = str(state["messages"][-1].content)
    numeric = re.search(r"\d|how (many|much)", question, re.IGNORECASE)
    return {"kind": "numeric" if numeric else "general"}


def report(state: ConversationState) -> dict[str, Any]:
    """Log who answered the turn and how the samples voted."""
    record = state["avengers"]
    turn = sum(isinstance(m, HumanMessage) for m in state["messages"])
    line = (
        f"turn {turn} ({state['kind']}): {record['winner']} won "
        f"{max(record['votes'].values())} of {sum(record['votes'].values())} votes "
        f"(confidence {record['confidence']:.2f})"
    )
    return {"log": [line]}


def build_assistant(
    avengers: CompiledStateGraph[Any, Any, Any, Any],
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """``classify -> avengers -> report``, checkpointed in memory."""
    builder = StateGraph(ConversationState, context_schema=AvengersContext)
    builder.add_node("classify", classify)
    builder.add_node("avengers", avengers)
    builder.add_node("report", report)
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "avengers")
    builder.add_edge("avengers", "report")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=InMemorySaver())


def main() -> None:
    """Ask :data:`TURNS` on one thread and print the checkpointed state."""
    with local_avengers() as llm:
        avengers = create_avengers_graph(llm.experts, llm.embeddings, llm.store, seed=0)
        assistant = build_assistant(avengers)
        config: RunnableConfig = {"configurable": {"thread_id": "example"}}
        for question in TURNS:
            out = assistant.invoke(
                {"messages": [("user", question)]},
                config,
                context=AvengersContext(top_n=2, samples=2),
            )
            print(f"user: {question}\nassistant: {out['messages'][-1].text.strip()}\n")
        state = assistant.get_state(config).values
    print("State of thread 'example':")
    for message in state["messages"]:
        print(f"  {message.type}: {' '.join(message.text.split())}")
    print(f"  kind: {state['kind']}")
    print(f"  experts: {[e['name'] for e in state['avengers']['experts']]}")
    print(f"  votes: {state['avengers']['votes']}")
    print("  log:\n    " + "\n    ".join(state["log"]))


if __name__ == "__main__":
    main()
