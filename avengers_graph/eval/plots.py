"""PNG plots (``avengers inspect --plot``, ``avengers eval replay``); need the ``plot`` extra.

- :func:`plot_store` writes ``accuracy.png``, a heatmap of every expert's accuracy in
  every cluster, and ``clusters.png``, the validation questions projected to 2-D with
  scikit-learn's PCA, coloured by cluster, with the centroids marked.
- :func:`plot_curves` draws the sweeps of the offline replay: one line per curve,
  each over its own x values (accuracy against K, samples, or compute).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from avengers_graph.errors import MissingExtraError
from avengers_graph.stores.chroma import ClusterStore


def _pyplot() -> ModuleType:
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError(
            "Plots need matplotlib: pip install 'avengers-graph[plot]'"
        ) from exc
    return plt


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
) -> Path:
    """One line per curve, each over its own ``x`` (``name -> (x, y)``), written as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (x, values) in curves.items():
        ax.plot(x, values, marker="o", label=name)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_store(store: ClusterStore, folder: Path) -> list[Path]:
    """Write the heatmap and the cluster map of ``store`` into ``folder``."""
    plt = _pyplot()
    from sklearn.decomposition import PCA

    folder.mkdir(parents=True, exist_ok=True)
    info, stats = store.info(), store.stats()
    clusters = sorted(stats)
    grid = np.array(
        [
            [stats[c][e].accuracy if e in stats[c] else np.nan for e in info.experts]
            for c in clusters
        ]
    )
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(info.experts), 1 + 0.45 * len(clusters)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(info.experts)), info.experts, rotation=30, ha="right")
    ax.set_yticks(range(len(clusters)), [f"#{c} ({store.sizes()[c]})" for c in clusters])
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.0%}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"Expert accuracy per cluster ({info.name})")
    fig.tight_layout()
    heatmap = folder / "accuracy.png"
    fig.savefig(heatmap, dpi=120)
    plt.close(fig)

    vectors, centroids = store.question_vectors(), store.centroids()
    labels = [q.cluster for q in store.questions()]
    pca = PCA(n_components=2, random_state=info.seed or 0).fit(vectors)
    points, centres = pca.transform(vectors), pca.transform(centroids)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=14, alpha=0.8)
    ax.scatter(centres[:, 0], centres[:, 1], c="black", marker="x", s=60, label="centroids")
    for cluster, (x, y) in zip(clusters, centres, strict=True):
        ax.annotate(f"#{cluster}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_title(f"Validation questions by cluster (PCA of {info.embedding_model})")
    ax.legend(loc="best")
    fig.tight_layout()
    cluster_map = folder / "clusters.png"
    fig.savefig(cluster_map, dpi=120)
    plt.close(fig)
    return [heatmap, cluster_map]
