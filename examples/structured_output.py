"""Structured output from the ensemble: fields extracted from a message, voted.

Run it (after ``make install-local``)::

    python examples/structured_output.py

``ChatAvengers.with_structured_output(Order, include_raw=True)`` forces every sampled
expert to call ``Order`` as a tool (llama.cpp constrains the call with a grammar, so
each sample is valid JSON), the samples vote on whole objects (field by field when no
two agree), and the result is the parsed ``Order`` next to the raw voted message,
whose ``response_metadata["avengers"]`` tells who answered and how the vote went.
The example exits with status 1 when a message's quantity is not extracted right.
"""

from __future__ import annotations

import sys

from pydantic import BaseModel, Field

from avengers_graph.app.embedded import local_avengers


class Order(BaseModel):
    """An order placed in a customer's message."""

    customer: str = Field(description="The customer's full name")
    product: str = Field(description="What the customer wants")
    quantity: int = Field(description="How many units the customer wants")


MESSAGES = {  # message -> the quantity it orders
    "Hello, this is Priya Raman. Please send 3 boxes of green tea to my office.": 3,
    "Hi! Tom Becker here, I'd like to order 12 blue notebooks for the team.": 12,
}


def main() -> int:
    """Extract an :class:`Order` from each of :data:`MESSAGES`; 1 if a quantity is wrong."""
    wrong = 0
    with local_avengers(seed=0) as llm:
        extract = llm.with_structured_output(Order, include_raw=True)
        for text, quantity in MESSAGES.items():
            result = extract.invoke(f"Extract the order from this message:\n{text}")
            order, routing = result["parsed"], result["raw"].response_metadata["avengers"]
            ok = isinstance(order, Order) and order.quantity == quantity
            wrong += not ok
            print(f"message: {text}")
            print(f"order:   {order!r}  [{'ok' if ok else f'WRONG: expected {quantity}'}]")
            if result["parsing_error"] is not None:
                print(f"parsing error: {result['parsing_error']}")
            print(f"experts: {', '.join(e['name'] for e in routing['experts'])}")
            print(f"votes ({routing['answer_format']}):")
            for answer, count in routing["votes"].items():
                print(f"  {count} x {answer}")
            print()
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
