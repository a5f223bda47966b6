"""The plots: titles, labels, legends, error bars, reference lines, the cluster map's geometry.

Figures are built on matplotlib's Agg backend (no display) and read back as objects;
the PNG files are decoded to check they are real images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avengers_graph.stores.base import (
    ExpertStats,
    StoredQuestion,
    StoreInfo,
    validate_calibration,
)
from avengers_graph.stores.memory import MemoryStore
from tests.fakes import KeywordEmbeddings, ScriptedExpert

pytest.importorskip("matplotlib", reason="the plot extra is not installed")

# matplotlib only once it is known to be installed
import matplotlib.image
from matplotlib.container import ErrorbarContainer

from avengers_graph.eval.plots import (
    Reference,
    Series,
    accuracy_figure,
    cluster_figure,
    curves_figure,
    plot_curves,
    plot_store,
    project_clusters,
)


def assert_png(path: Path) -> None:
    """The file is a PNG that decodes to a non-empty image."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100
    assert image.shape[1] > 100


def legend_texts(ax: Any) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "no legend"
    return [text.get_text() for text in legend.get_texts()]


# -- curves ---------------------------------------------------------------------------

TWO_SERIES = [
    Series("ensemble", [1, 2, 4], [0.40, 0.42, 0.45], [0.01, 0.02, 0.015]),
    Series("other", [1, 2, 4], [0.38, 0.39, 0.41], [0.02, 0.02, 0.02]),
]
REFERENCES = [Reference("Best-Single", 0.41, 0.02), Reference("Oracle", 0.81, 0.02)]


def test_curves_have_title_labels_legend_error_bars_and_reference_lines(tmp_path: Path) -> None:
    fig = curves_figure(
        TWO_SERIES,
        title="Accuracy against K\nmean of 5 splits",
        xlabel="K (clusters)",
        references=REFERENCES,
        legend_title="error bars: 1 std",
    )
    ax = fig.axes[0]
    assert ax.get_title() == "Accuracy against K\nmean of 5 splits"
    assert ax.get_xlabel() == "K (clusters)"
    assert "%" in ax.get_ylabel()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    assert bars[0].has_yerr
    texts = legend_texts(ax)
    assert texts[:2] == ["ensemble", "other"]
    lines = {line.get_label(): line for line in ax.lines}
    best = next(line for label, line in lines.items() if label.startswith("Best-Single"))
    assert list(best.get_ydata()) == [0.41, 0.41]
    assert any(label.startswith("Oracle") for label in lines)
    assert ax.get_legend().get_title().get_text() == "error bars: 1 std"
    # the ticks are at the swept values, shown as percentages on the y axis
    assert list(ax.get_xticks()) == [1, 2, 4]
    assert ax.yaxis.get_major_formatter()(0.4, 0).endswith("%")
    path = plot_curves(TWO_SERIES, tmp_path / "sub" / "curves.png", title="t", xlabel="x")
    assert_png(path)


def test_a_far_reference_is_named_at_the_edge_not_squeezing_the_curves() -> None:
    ax = curves_figure(TWO_SERIES, title="t", xlabel="x", references=REFERENCES).axes[0]
    low, high = ax.get_ylim()
    assert low <= 0.36
    assert 0.47 <= high < 0.81
    assert low <= 0.39
    assert high >= 0.43
    texts = legend_texts(ax)
    assert "Oracle: 81.0% (off the axis, above)" in texts
    assert "Best-Single: 41.0%" in texts
    assert any("Oracle" in t.get_text() for t in ax.texts)  # and written at the top edge


def test_error_bars_sharing_x_values_are_dodged() -> None:
    ax = curves_figure(TWO_SERIES, title="t", xlabel="x").axes[0]
    first, second = (c.lines[0].get_xdata() for c in ax.containers)
    assert all(a < b for a, b in zip(first, second, strict=True))
    assert np.allclose((np.asarray(first) + np.asarray(second)) / 2, [1, 2, 4])


def test_one_series_has_no_legend_and_labelled_points_are_written() -> None:
    one = Series("1.5B alone", [10.0, 20.0], [0.4, 0.45], point_labels=["1 sample", "SC of 2"])
    ax = curves_figure([one], title="t", xlabel="compute").axes[0]
    assert ax.get_legend() is None
    assert not ax.containers  # no spread: no error bars
    assert [t.get_text() for t in ax.texts] == ["1 sample", "SC of 2"]


def test_a_secondary_series_goes_on_a_labelled_right_axis() -> None:
    fig = curves_figure(
        [TWO_SERIES[0], Series("compute", [1, 2, 4], [10, 20, 40], secondary=True)],
        title="t",
        xlabel="a",
        secondary_label="compute per question",
    )
    ax, right = fig.axes
    assert right.get_ylabel() == "compute per question"
    assert legend_texts(ax) == ["ensemble", "compute"]


# -- the cluster map and the heatmap ------------------------------------------------------

KEYWORDS = {"math": 0, "code": 1, "poem": 2, "sum": 3, "loop": 4, "rhyme": 5}
TOPICS = {"math": "sum", "code": "loop", "poem": "rhyme"}
DATASET = [
    {
        "id": f"{topic}-{i}",
        "question": f"{topic} {' '.join([word] * (i % 3))} {'math' if i % 4 == 0 else ''} item {i}",
        "answer": "B",
        "kind": "choice",
    }
    for topic, word in TOPICS.items()
    for i in range(8)
]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> MemoryStore:
    """A real calibration (K-means on keyword embeddings, graded scripted experts)."""
    from avengers_graph import calibrate

    experts = {
        "mathy": ScriptedExpert(
            model="mathy", respond=lambda q, s: "Answer: B" if "math" in q else "Answer: C"
        ),
        "coder": ScriptedExpert(
            model="coder", respond=lambda q, s: "Answer: B" if "code" in q else "Answer: D"
        ),
    }
    store = MemoryStore("unit")
    calibrate(
        experts,
        KeywordEmbeddings(KEYWORDS),
        DATASET,
        store,
        n_clusters=3,
        samples=1,
        cache=tmp_path_factory.mktemp("cache") / "answers.sqlite",
    )
    return store


def _drawn(fig: Any) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The cluster map's points per cluster and its centroids, as drawn."""
    ax = fig.axes[0]
    points = {}
    centres = None
    for collection in ax.collections:
        gid = collection.get_gid() or ""
        if gid.startswith("cluster-"):
            points[int(gid.removeprefix("cluster-"))] = np.asarray(collection.get_offsets())
        elif gid == "centroids":
            centres = np.asarray(collection.get_offsets())
    assert centres is not None
    return points, centres


def test_every_centroid_is_drawn_inside_its_clusters_points(calibrated: MemoryStore) -> None:
    fig = cluster_figure(calibrated)
    points, centres = _drawn(fig)
    sizes = calibrated.sizes()
    assert sorted(points) == [0, 1, 2]
    assert len(centres) == 3
    for cluster, members in points.items():
        assert len(members) == sizes[cluster]
        low, high = members.min(axis=0), members.max(axis=0)
        assert np.all(low - 1e-9 <= centres[cluster]), cluster
        assert np.all(centres[cluster] <= high + 1e-9), cluster
    # the same projection the drawing used
    projection = project_clusters(calibrated)
    assert np.allclose(centres, projection.centres)


def test_cluster_map_is_titled_labelled_and_explains_each_cluster(
    calibrated: MemoryStore,
) -> None:
    fig = cluster_figure(calibrated)
    ax = fig.axes[0]
    assert ax.get_title().startswith("Validation questions by cluster: unit, K=3")
    assert ax.get_xlabel().startswith("principal component 1 (")
    assert ax.get_ylabel().startswith("principal component 2 (")
    texts = legend_texts(ax)
    assert texts[0].startswith("centroid")
    sizes = calibrated.sizes()
    for cluster in range(3):
        entry = next(t for t in texts if t.startswith(f"#{cluster} "))
        assert entry.startswith(f"#{cluster} ({sizes[cluster]} q): ")
        assert "item" in entry  # an example question of the cluster
    labels = {t.get_text() for t in ax.texts}
    assert labels == {f"#{c} ({sizes[c]})" for c in range(3)}


def test_heatmap_has_labelled_axes_and_annotated_cells(calibrated: MemoryStore) -> None:
    fig = accuracy_figure(calibrated)
    ax = fig.axes[0]
    assert ax.get_title().startswith("Expert accuracy per cluster: unit")
    assert ax.get_xlabel() == "expert"
    assert ax.get_ylabel().startswith("cluster")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mathy", "coder"]
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 3 * 2
    stats = calibrated.stats()
    mathy = stats[0]["mathy"]
    assert f"{mathy.accuracy:.0%} ({mathy.correct}/{mathy.total})" in cells
    assert fig.axes[1].get_ylabel() == "accuracy (%)"  # the colour bar


def test_plot_store_writes_both_pngs(calibrated: MemoryStore, tmp_path: Path) -> None:
    paths = plot_store(calibrated, tmp_path / "png")
    assert [p.name for p in paths] == ["accuracy.png", "clusters.png"]
    for path in paths:
        assert_png(path)


def _hand_built(clusters: int, *, questions: bool = True) -> MemoryStore:
    """``clusters`` directions in the x-y plane, each with two unit questions 30 degrees off.

    Cluster ``c``'s questions are ``cos(30) d_c +- sin(30) z``; its centroid is their
    normalised mean ``d_c`` (what calibration stores): unit length, while the questions'
    mean is ``cos(30) d_c``, shorter.
    """
    tilt = np.radians(30)
    vectors, items, centroids = [], [], []
    for cluster, angle in enumerate(np.linspace(0, np.pi / 2, clusters)):
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        for sign in (-1, 1):
            vectors.append(np.cos(tilt) * direction + sign * np.sin(tilt) * np.array([0, 0, 1]))
            items.append(
                StoredQuestion(f"q{cluster}{sign}", f"question {cluster}", "1", "number", cluster)
            )
        centroids.append(direction)
    info = StoreInfo("hand", "toy", 3, clusters, 0, ("only",))
    calibration = validate_calibration(
        info,
        np.asarray(centroids),
        [2] * clusters,
        {c: {"only": ExpertStats(1, 2)} for c in range(clusters)},
        items if questions else [],
        np.asarray(vectors) if questions else np.zeros((0, 3)),
    )
    return MemoryStore("hand", calibration)


def test_unit_centroids_would_fall_outside_a_separate_projection_does_not() -> None:
    """The bug this layout fixes: a unit centroid projected as is lands beyond its points."""
    from sklearn.decomposition import PCA

    store = _hand_built(2)
    vectors = np.asarray(store.question_vectors(), dtype=np.float64)
    centroids = np.asarray(store.centroids(), dtype=np.float64)
    naive = PCA(n_components=2, svd_solver="full").fit(vectors).transform(centroids)
    projection = project_clusters(store)
    for cluster in range(2):
        members = projection.points[projection.labels == cluster]
        low, high = members.min(axis=0) - 1e-9, members.max(axis=0) + 1e-9
        assert np.all((low <= projection.centres[cluster]) & (projection.centres[cluster] <= high))
        assert not np.all((low <= naive[cluster]) & (naive[cluster] <= high))
        # drawn at the questions' mean, which the unit centroid overshoots
        assert np.allclose(projection.centres[cluster], members.mean(axis=0))


def test_many_clusters_get_a_colour_bar_instead_of_a_long_legend() -> None:
    fig = cluster_figure(_hand_built(24))
    ax, bar = fig.axes
    assert bar.get_ylabel() == "cluster id"
    assert legend_texts(ax) == ["centroid (#id and its questions)"]
    points, centres = _drawn(fig)
    assert len(points) == 24
    assert len(centres) == 24


def test_a_store_without_questions_still_maps_its_centroids() -> None:
    fig = cluster_figure(_hand_built(3, questions=False))
    points, centres = _drawn(fig)
    assert all(len(p) == 0 for p in points.values())
    assert centres.shape == (3, 2)
    assert "0 questions" in fig.axes[0].get_title()


def test_an_axis_without_variance_is_not_zoomed_into_rounding_noise() -> None:
    # two questions, each its own cluster's centroid: the second component is empty
    vectors = np.eye(3)[:2]
    calibration = validate_calibration(
        StoreInfo("flat", "toy", 3, 2, 0, ("only",)),
        vectors,
        [1, 1],
        {},
        [StoredQuestion(f"q{c}", f"q {c}", "1", "number", c) for c in range(2)],
        vectors,
    )
    ax = cluster_figure(MemoryStore("flat", calibration)).axes[0]
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    assert y_high - y_low >= (x_high - x_low) / 4
    assert ax.get_ylabel() == "principal component 2 (0% of the variance)"
