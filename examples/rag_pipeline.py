"""Retrieval-augmented answers: a Chroma retriever and ChatAvengers in one LCEL chain.

Run it (after ``make install-local``)::

    python examples/rag_pipeline.py

A few short documents about a made-up observatory are embedded with the MiniLM model
that also routes the questions, stored in a Chroma collection on disk (a temporary
folder), and retrieved for each question. An LCEL chain (retriever, prompt,
``ChatAvengers``, ``StrOutputParser``) answers from them with the ensemble of the
bundled local pool (three small models served by llama.cpp), and the example prints
each answer, its sources and how the ensemble reached it (experts, votes). It exits
with status 1 when an answer lacks the fact it should contain.
"""

from __future__ import annotations

import sys
import tempfile
from operator import itemgetter
from typing import Any

import chromadb
import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableParallel, RunnablePassthrough
from pydantic import ConfigDict

from avengers_graph import ChatAvengers
from avengers_graph.app.embedded import local_avengers

DOCUMENTS = {
    "history.md": "The Heliotrope Observatory opened in 1987 on Mount Caldera. "
    "It was founded by the astronomer Ines Varga.",
    "telescope.md": "The observatory's main telescope is called Corvid. "
    "Its mirror is 3.2 metres wide.",
    "visits.md": "Visitors may tour the Heliotrope Observatory on Saturdays. "
    "Tickets cost 12 euros.",
    "staff.md": "Eleven people work at the observatory, including four night technicians.",
}

QUESTIONS = {  # question -> a word its answer must contain
    "In which year did the Heliotrope Observatory open?": "1987",
    "What is the name of the observatory's main telescope?": "Corvid",
    "On which day of the week can visitors tour the observatory?": "Saturday",
}

PROMPT = ChatPromptTemplate.from_messages(
    [
        (
            "human",
            "Answer the question in one short sentence, using only this context.\n\n"
            "Context:\n{context}\n\nQuestion: {question}",
        )
    ]
)


class ChromaRetriever(BaseRetriever):
    """The ``k`` documents of a Chroma collection nearest to the query.

    Chroma gets vectors only (the collection has no embedding function of its own),
    so nothing reaches the network.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Collection
    embeddings: Embeddings
    k: int = 2

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        del run_manager
        vector = np.array([self.embeddings.embed_query(query)], dtype=np.float32)
        hits = self.collection.query(query_embeddings=vector, n_results=self.k)
        texts, metadatas = (hits["documents"] or [[]])[0], (hits["metadatas"] or [[]])[0]
        return [
            Document(page_content=text, metadata=dict(metadata))
            for text, metadata in zip(texts, metadatas, strict=True)
        ]


def index(folder: str, embeddings: Embeddings) -> Collection:
    """Embed :data:`DOCUMENTS` into a cosine Chroma collection stored in ``folder``."""
    client = chromadb.PersistentClient(folder, settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection(
        "observatory",
        embedding_function=None,  # or Chroma attaches its own, which downloads a model
        configuration={"hnsw": {"space": "cosine"}},
    )
    names, texts = list(DOCUMENTS), list(DOCUMENTS.values())
    collection.add(
        ids=names,
        documents=texts,
        embeddings=np.array(embeddings.embed_documents(texts), dtype=np.float32),
        metadatas=[{"source": name} for name in names],
    )
    return collection


def format_docs(inputs: dict[str, Any]) -> str:
    """The retrieved documents as the prompt's context."""
    return "\n".join(doc.page_content for doc in inputs["docs"])


def rag_chain(retriever: BaseRetriever, llm: ChatAvengers) -> Runnable[str, dict[str, Any]]:
    """A question in; out a dict of ``question``, ``docs``, ``context``, ``message``, ``answer``.

    ``message`` is the ensemble's voted ``AIMessage``: its ``response_metadata``
    holds the routing record under ``"avengers"``.
    """
    return (
        RunnableParallel(question=RunnablePassthrough(), docs=retriever)
        .assign(context=format_docs)
        .assign(message=PROMPT | llm)
        .assign(answer=itemgetter("message") | StrOutputParser())
    )


def main() -> int:
    """Answer :data:`QUESTIONS`; return 1 if an answer misses its expected word."""
    wrong = 0
    with local_avengers(seed=0) as llm, tempfile.TemporaryDirectory() as folder:
        retriever = ChromaRetriever(
            collection=index(folder, llm.embeddings), embeddings=llm.embeddings
        )
        chain = rag_chain(retriever, llm)
        for question, expected in QUESTIONS.items():
            out = chain.invoke(question)
            answer, routing = out["answer"], out["message"].response_metadata["avengers"]
            ok = expected.lower() in answer.lower()
            wrong += not ok
            print(f"Q: {question}")
            print(f"A: {answer.strip()}  [{'ok' if ok else f'WRONG: expected {expected!r}'}]")
            print(f"   sources: {', '.join(doc.metadata['source'] for doc in out['docs'])}")
            print(f"   experts: {', '.join(e['name'] for e in routing['experts'])}")
            print(f"   winner: {routing['winner']}, votes: {routing['votes']}\n")
    print(f"{len(QUESTIONS) - wrong} of {len(QUESTIONS)} answers contain the expected fact.")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
