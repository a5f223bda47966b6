"""PNG plots (``avengers inspect --plot``, ``avengers eval replay``); need the ``plot`` extra.

Each plot is built by a function that returns the matplotlib ``Figure`` (so tests can
read its title, labels, legend and error bars) and written by :func:`save_figure`
(``bbox_inches="tight"``: nothing clipped):

- :func:`curves_figure` (:func:`plot_curves` writes it): the sweeps of the offline
  replay, one line per :class:`Series` over its own x values, with error bars where the
  series has a spread over splits, horizontal :class:`Reference` lines (Best-Single,
  Oracle), optional labels on points and an optional right axis;
- :func:`accuracy_figure`: every expert's accuracy in every cluster of a calibration,
  as an annotated heatmap;
- :func:`cluster_figure`: the validation questions and the centroids in one 2-D PCA
  projection (:func:`project_clusters`), coloured by cluster, each centroid marked and
  labelled with its cluster's id and size (and, in the legend, the question nearest it);
- :func:`plot_store` writes the last two as ``accuracy.png`` and ``clusters.png``.

matplotlib is imported only when a plot is made (Agg backend: no display needed).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from avengers_graph.errors import MissingExtraError
from avengers_graph.stores.base import CalibrationStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ACCURACY_LABEL",
    "ClusterProjection",
    "Reference",
    "Series",
    "accuracy_figure",
    "cluster_figure",
    "curves_figure",
    "plot_curves",
    "plot_store",
    "project_clusters",
    "save_figure",
]

ACCURACY_LABEL = "average test accuracy (%)"
"""The y label of the replay's accuracy plots (accuracies are given as 0-1 fractions)."""
_REFERENCE_STYLES = (("0.35", "--"), ("black", ":"), ("0.55", "-."))
_LEGEND_CLUSTERS = 20
"""Up to this many clusters, the cluster map has one legend entry per cluster."""
_EXAMPLE_CHARS = 48
_CURVES_SHARE = 0.4
"""The least share of the accuracy axis's height the curves keep (see :func:`_view`)."""
_MIN_SPAN = 0.05
_PAD = 0.1


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


def _subplots(width: float, height: float) -> tuple[Figure, Axes]:
    """One axes in a figure with constrained layout (titles, labels and legends fit)."""
    fig, ax = _pyplot().subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def save_figure(fig: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Write a figure as a PNG (nothing clipped) and close it."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


# -- curves -------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One line of a curve plot."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    spread: Sequence[float] | None = None
    """Half-length of each point's error bar (e.g. the std over splits); None: no bars."""
    point_labels: Sequence[str] | None = None
    """A short text written next to each point."""
    secondary: bool = False
    """Drawn against the right axis (``secondary_label``), not the accuracy axis."""


@dataclass(frozen=True)
class Reference:
    """A horizontal reference line (e.g. Best-Single's accuracy on the same splits)."""

    name: str
    value: float
    spread: float = 0.0
    """Its std over splits, shaded as a band around the line (0: no band)."""


def _is_integral(values: Sequence[float]) -> bool:
    return all(float(v).is_integer() for v in values)


def _format_x(ax: Axes, xs: Sequence[float], *, log_x: bool) -> None:
    """Ticks at the swept values when they are few integers (K, pool size, samples)."""
    if log_x:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ticks = sorted(set(xs))
    if ticks and (log_x or (_is_integral(ticks) and len(ticks) <= 16)):
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])


def curves_figure(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str = ACCURACY_LABEL,
    references: Sequence[Reference] = (),
    log_x: bool = False,
    percent: bool = True,
    secondary_label: str | None = None,
    legend_title: str | None = None,
) -> Figure:
    """One line per series, error bars where a series has a spread, reference lines.

    Args:
        series: The lines, each over its own x values.
        title: The figure's title (may hold a second line).
        xlabel: The x axis, with its unit.
        ylabel: The left axis, with its unit.
        references: Horizontal lines on the left axis, labelled with their value.
        log_x: A base-2 logarithmic x axis (K = 2, 4, ... 64).
        percent: The left axis holds fractions shown as percentages.
        secondary_label: The right axis's label (for series with ``secondary``).
        legend_title: A title over the legend (e.g. what the error bars are).

    Returns:
        The figure; a legend is drawn when it has more than one labelled line.
    """
    fig, ax = _subplots(8.5, 4.8)
    from matplotlib.ticker import PercentFormatter

    right: Axes | None = None
    handles: list[Any] = []
    shifts = _dodge(series, log_x=log_x)
    for index, line in enumerate(series):
        target = ax
        style: dict[str, Any] = {"color": f"C{index}", "marker": "o", "markersize": 4}
        if line.secondary:
            right = right or ax.twinx()
            target = right
            style.update(linestyle="--", marker="s", alpha=0.8)
        if line.spread is not None:
            shift = shifts[index]
            xs = [x * 2**shift if log_x else x + shift for x in line.x]
            handles.append(
                target.errorbar(xs, line.y, yerr=line.spread, capsize=3, label=line.name, **style)
            )
        else:
            handles += target.plot(line.x, line.y, label=line.name, **style)
        for x, y, text in zip(line.x, line.y, line.point_labels or (), strict=False):
            if text:  # beside the point, clear of its error bar
                target.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(5, 4),
                    ha="left",
                    fontsize=7,
                    color=style["color"],
                )
    low, high = _view(series, references, percent=percent)
    handles += _draw_references(ax, references, (low, high), percent=percent)
    ax.set_ylim(low, high)
    if any(line.point_labels for line in series):
        ax.margins(x=0.1)  # room for the labels beside the last points
    _format_x(ax, [x for line in series for x in line.x], log_x=log_x)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if right is not None:
        right.set_ylabel(secondary_label or "")
    if len(handles) > 1:
        ax.legend(  # below the axes: long names do not narrow the plot
            handles=handles,
            title=legend_title,
            fontsize=8,
            title_fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncols=2,
        )
    return fig


def _draw_references(
    ax: Axes, references: Sequence[Reference], view: tuple[float, float], *, percent: bool
) -> list[Any]:
    """Horizontal lines (with their spread as a band); one outside ``view`` is named at the edge."""
    low, high = view
    handles = []
    for (colour, dash), reference in zip(_REFERENCE_STYLES, references, strict=False):
        shown = f"{reference.value:.1%}" if percent else f"{reference.value:.3g}"
        label = f"{reference.name}: {shown}"
        if not low <= reference.value <= high:  # far from the curves: named at the edge
            above = reference.value > high
            label += f" (off the axis, {'above' if above else 'below'})"
            arrow = "\u2191" if above else "\u2193"
            ax.annotate(
                f"{arrow} {reference.name}: {shown}",
                (0.01, 0.98 if above else 0.02),
                xycoords="axes fraction",
                ha="left",
                va="top" if above else "bottom",
                fontsize=8,
                color=colour,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85, "lw": 0},
                zorder=5,
            )
        elif reference.spread:
            ax.axhspan(
                reference.value - reference.spread,
                reference.value + reference.spread,
                color=colour,
                alpha=0.08,
                linewidth=0,
            )
        handles.append(
            ax.axhline(reference.value, color=colour, linestyle=dash, linewidth=1.3, label=label)
        )
    return handles


def _dodge(series: Sequence[Series], *, log_x: bool) -> list[float]:
    """Per series, a small x shift so that error bars at the same x values stay apart.

    Only series with error bars on the accuracy axis that all share the same x values
    are shifted (together, a quarter of the gap between swept values; in octaves on a
    logarithmic axis).
    """
    barred = [i for i, line in enumerate(series) if line.spread is not None and not line.secondary]
    shifts = [0.0] * len(series)
    xs = sorted({float(x) for i in barred for x in series[i].x})
    shared = len(barred) > 1 and all(
        len(set(series[i].x)) == len(series[i].x) == len(xs) for i in barred
    )
    if not shared or len(xs) < 2 or (log_x and xs[0] <= 0):
        return shifts
    steps = np.diff(np.log2(xs) if log_x else np.asarray(xs))
    width = 0.25 * float(steps.min()) / len(barred)
    for rank, index in enumerate(barred):
        shifts[index] = (rank - (len(barred) - 1) / 2) * width
    return shifts


def _view(
    series: Sequence[Series], references: Sequence[Reference], *, percent: bool
) -> tuple[float, float]:
    """The left axis's range: the curves with their error bars, and the references near them.

    A reference that would squeeze the curves into less than ``_CURVES_SHARE`` of the
    height (Oracle far above) is left off the range; :func:`curves_figure` names it at
    the edge instead.
    """
    ends = [
        (y - e, y + e)
        for line in series
        if not line.secondary
        for y, e in zip(line.y, line.spread or [0.0] * len(line.y), strict=True)
    ]
    if ends:
        low, high = min(e[0] for e in ends), max(e[1] for e in ends)
    else:
        low = high = references[0].value if references else 0.5
    span = max(high - low, _MIN_SPAN)
    for reference in references:
        wider = max(high, reference.value + reference.spread) - min(
            low, reference.value - reference.spread
        )
        if span >= _CURVES_SHARE * wider:
            low = min(low, reference.value - reference.spread)
            high = max(high, reference.value + reference.spread)
    pad = _PAD * max(high - low, _MIN_SPAN)
    low, high = low - pad, high + pad
    if percent:
        low, high = max(low, -0.02), min(high, 1.02)
    return low, high


def plot_curves(series: Sequence[Series], path: Path, **options: Any) -> Path:
    """:func:`curves_figure` written as a PNG at ``path`` (options as there)."""
    return save_figure(curves_figure(series, **options), path)


# -- a calibration store --------------------------------------------------------------


def accuracy_figure(store: CalibrationStore) -> Figure:
    """Every expert's accuracy in every cluster: an annotated heatmap (experts x clusters)."""
    info, stats, sizes = store.info(), store.stats(), store.sizes()
    clusters = sorted(stats)
    experts = list(info.experts)
    grid = np.full((len(clusters), len(experts)), np.nan)
    for row, cluster in enumerate(clusters):
        for col, expert in enumerate(experts):
            if expert in stats[cluster]:
                grid[row, col] = stats[cluster][expert].accuracy
    fig, ax = _subplots(3.2 + 1.2 * max(len(experts), 3), 2.4 + 0.42 * max(len(clusters), 3))
    from matplotlib.ticker import PercentFormatter

    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
    ax.set_yticks(range(len(clusters)), [f"#{c} ({sizes.get(c, 0)})" for c in clusters])
    for (row, col), value in np.ndenumerate(grid):
        if np.isnan(value):
            ax.text(col, row, "-", ha="center", va="center", color="0.4", fontsize=8)
            continue
        counts = stats[clusters[row]][experts[col]]
        ax.text(
            col,
            row,
            f"{value:.0%} ({counts.correct}/{counts.total})",
            ha="center",
            va="center",
            color="black" if value > 0.6 else "white",  # viridis is light at the top
            fontsize=8,
        )
    fig.colorbar(image, ax=ax, label="accuracy (%)", format=PercentFormatter(xmax=1.0))
    ax.set_xlabel("expert")
    ax.set_ylabel("cluster #id (validation questions)")
    ax.set_title(
        f"Expert accuracy per cluster: {info.name}\n"
        "majority answer graded per question (right/asked)"
    )
    return fig


@dataclass(frozen=True)
class ClusterProjection:
    """A calibration's questions and centroids in one fitted 2-D PCA projection."""

    points: npt.NDArray[np.float64]
    """``(questions, 2)`` projected question vectors."""
    labels: npt.NDArray[np.int_]
    """Each question's cluster."""
    centres: npt.NDArray[np.float64]
    """``(n_clusters, 2)`` projected centroids, by cluster id."""
    explained: tuple[float, float]
    """Share of the variance each axis keeps."""


def project_clusters(store: CalibrationStore) -> ClusterProjection:
    """Questions and centroids of a calibration in the same fitted 2-D projection.

    PCA is fitted on the question vectors (on the centroids when the store keeps no
    questions) and the same fitted projection maps the centroids. Calibration keeps
    unit-length centroids (K-means on unit vectors, re-normalised), while the mean of
    a cluster's unit vectors is shorter: a linear projection of the unit centroid would
    land beyond its own points. So each centroid is drawn along its own direction at
    the point nearest its cluster's mean vector (for K-means that is the mean itself,
    which the projection keeps inside its points); a cluster without questions keeps
    its unit centroid.
    """
    from sklearn.decomposition import PCA

    centroids = np.asarray(store.centroids(), dtype=np.float64)
    vectors = np.asarray(store.question_vectors(), dtype=np.float64).reshape(-1, centroids.shape[1])
    labels = np.asarray([q.cluster for q in store.questions()], dtype=np.int_)
    anchors = centroids.copy()
    for cluster, centroid in enumerate(centroids):
        members = vectors[labels == cluster]
        if len(members):
            direction = centroid / np.linalg.norm(centroid)
            anchors[cluster] = direction * max(float(direction @ members.mean(axis=0)), 0.0)
    fitted_on = vectors if len(vectors) >= 2 else anchors
    components = min(2, *fitted_on.shape)
    pca = PCA(n_components=components, svd_solver="full").fit(fitted_on)

    def project(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = np.zeros((len(rows), 2))
        if len(rows):
            out[:, :components] = pca.transform(rows)
        return out

    ratios = [float(r) for r in np.nan_to_num(pca.explained_variance_ratio_)] + [0.0, 0.0]
    return ClusterProjection(project(vectors), labels, project(anchors), (ratios[0], ratios[1]))


def _cluster_colours(count: int) -> list[Any]:
    plt = _pyplot()
    if count <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(count)]
    if count <= _LEGEND_CLUSTERS:  # tab20's strong shades first, then the light ones
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [plt.get_cmap("tab20")(order[i]) for i in range(count)]
    return [plt.get_cmap("turbo")(v) for v in np.linspace(0.05, 0.95, count)]


def _example(store: CalibrationStore, projection_labels: npt.NDArray[np.int_]) -> dict[int, str]:
    """Per cluster, the text of its question nearest the centroid, shortened."""
    questions = store.questions()
    vectors = np.asarray(store.question_vectors(), dtype=np.float64)
    centroids = np.asarray(store.centroids(), dtype=np.float64)
    examples: dict[int, str] = {}
    for cluster, centroid in enumerate(centroids):
        members = np.flatnonzero(projection_labels == cluster)
        if not len(members):
            continue
        nearest = members[int(np.argmax(vectors[members] @ centroid))]
        text = " ".join(questions[nearest].question.split())
        if text:
            short = textwrap.shorten(text, _EXAMPLE_CHARS, placeholder="...")
            examples[cluster] = short.replace("$", r"\$")  # not mathtext
    return examples


def cluster_figure(store: CalibrationStore) -> Figure:
    """The validation questions by cluster and the centroids, in one PCA projection."""
    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D

    info, sizes = store.info(), store.sizes()
    projection = project_clusters(store)
    count = len(projection.centres)
    colours = _cluster_colours(count)
    examples = _example(store, projection.labels)
    in_legend = count <= _LEGEND_CLUSTERS
    fig, ax = _subplots(10.5 if in_legend else 8.5, 6.5)
    for cluster in range(count):
        members = projection.points[projection.labels == cluster]
        size = sizes.get(cluster, len(members))
        label = f"#{cluster} ({size} q)"
        if cluster in examples:
            label += f": {examples[cluster]}"
        dots = ax.scatter(
            members[:, 0],
            members[:, 1],
            color=colours[cluster],
            s=16,
            alpha=0.65,
            linewidths=0,
            label=label if in_legend else None,
        )
        dots.set_gid(f"cluster-{cluster}")
    centres = ax.scatter(
        projection.centres[:, 0],
        projection.centres[:, 1],
        c=colours,
        marker="X",
        s=150,
        edgecolors="black",
        linewidths=1.2,
        zorder=3,
    )
    centres.set_gid("centroids")
    for cluster, (x, y) in enumerate(projection.centres):
        ax.annotate(
            f"#{cluster} ({sizes.get(cluster, 0)})",
            (x, y),
            textcoords="offset points",
            xytext=(7, 7),
            fontsize=8,
            fontweight="bold",
            zorder=4,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75, "lw": 0},
        )
    marker = Line2D(
        [],
        [],
        linestyle="none",
        marker="X",
        markersize=10,
        markerfacecolor="white",
        markeredgecolor="black",
        label="centroid (#id and its questions)",
    )
    if in_legend:
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(
            handles=[marker, *handles],
            title="cluster (questions): the question nearest its centroid",
            fontsize=7,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            markerscale=1.5,
        )
    else:
        ax.legend(handles=[marker], fontsize=8, loc="best")
        mappable = plt.cm.ScalarMappable(
            cmap=ListedColormap(colours), norm=BoundaryNorm(np.arange(count + 1) - 0.5, count)
        )
        bar = fig.colorbar(mappable, ax=ax, label="cluster id")
        bar.set_ticks(range(0, count, max(1, count // 16)))
    first, second = projection.explained
    ax.set_xlabel(f"principal component 1 ({first:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({second:.0%} of the variance)")
    ax.set_title(
        f"Validation questions by cluster: {info.name}, K={info.n_clusters}\n"
        f"{len(projection.points)} questions embedded with {info.embedding_model}, "
        "projected to 2-D by PCA"
    )
    ax.grid(alpha=0.2)
    _widen_flat_axis(ax, np.vstack([projection.points, projection.centres]))
    return fig


def _widen_flat_axis(ax: Axes, drawn: npt.NDArray[np.float64]) -> None:
    """Give an axis along which the points barely vary a third of the other's range.

    Without it matplotlib zooms into rounding noise (a component of no variance) and
    points that coincide look far apart.
    """
    spans = np.ptp(drawn, axis=0) if len(drawn) else np.zeros(2)
    least = spans.max() / 3
    for axis, span in enumerate(spans):
        if span < least:
            middle = (drawn[:, axis].max() + drawn[:, axis].min()) / 2
            limits = (middle - 0.6 * least, middle + 0.6 * least)
            ax.set_xlim(*limits) if axis == 0 else ax.set_ylim(*limits)


def plot_store(store: CalibrationStore, folder: Path) -> list[Path]:
    """Write the heatmap (``accuracy.png``) and the cluster map (``clusters.png``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save_figure(accuracy_figure(store), folder / "accuracy.png"),
        save_figure(cluster_figure(store), folder / "clusters.png"),
    ]
