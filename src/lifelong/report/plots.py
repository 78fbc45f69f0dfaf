"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot, so no global figure
state is kept and nothing needs closing; each function returns the encoded PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from lifelong.report.stats import Summary

DPI = 100
#: Colours of the lines of up to ten tasks or layers; more use the viridis colour map.
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf")


def to_png(figure: Figure) -> bytes:
    """Encode ``figure`` as PNG (Agg canvas, tight bounding box)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    figure.clear()
    return buffer.getvalue()


def accuracy_heatmap(matrix: np.ndarray, task_labels: Sequence[str], title: str) -> bytes:
    """R[i, j] as an annotated heatmap. Cells above the diagonal (tasks not trained yet, the
    accuracies behind FWT) are grey with grey numbers, so the colours show trained tasks only."""
    n = matrix.shape[0]
    side = min(max(3.2, 0.4 * n + 1.6), 7.0)
    figure = Figure(figsize=(side + 0.9, side))
    axes = figure.add_subplot()
    future = np.triu(np.ones_like(matrix, dtype=bool), k=1)
    image = axes.imshow(np.where(future, np.nan, matrix), cmap="viridis", vmin=0.0, vmax=1.0)
    axes.imshow(np.where(future, 0.0, np.nan), cmap=ListedColormap(["#e8e8e8"]))
    size = 9 if n <= 6 else 7 if n <= 10 else 6 if n <= 16 else 5
    for i in range(n if n <= 30 else 0):  # beyond 30 tasks the numbers would not fit
        for j in range(n):
            value = matrix[i, j]
            if np.isnan(value):
                continue
            text = f"{value:.2f}" if n <= 10 else f"{100 * value:.0f}"
            colour = "#888888" if future[i, j] else "black" if value > 0.6 else "white"
            axes.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)
    ticks = range(n)
    step = 1 if n <= 12 else math.ceil(n / 12)
    axes.set_xticks(list(ticks)[::step], [task_labels[j] for j in ticks][::step], fontsize=8,
                    rotation=45 if max(len(t) for t in task_labels) > 3 else 0)
    axes.set_yticks(list(ticks)[::step], [task_labels[i] for i in ticks][::step], fontsize=8)
    axes.set_xlabel("evaluated on task j")
    axes.set_ylabel("after training task i")
    axes.set_title(title, fontsize=10)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("accuracy" if n <= 10 else "accuracy (cells: %)")
    return to_png(figure)


def accuracy_through_stream(panels: Sequence[tuple[str, np.ndarray, Sequence[str]]]) -> bytes:
    """One small panel per method: each task j's accuracy R[i, j] after training tasks i >= j."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows + 0.6), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    n_tasks = max(matrix.shape[0] for _, matrix, _ in panels)
    trained = [v for _, matrix, _ in panels for v in matrix[np.tril_indices_from(matrix)]]
    low = min([v for v in trained if not np.isnan(v)] + [1.0])
    bottom = 0.0 if low < 0.5 else math.floor((low - 0.02) * 10) / 10  # zoom in when all is high
    for index, (label, matrix, task_labels) in enumerate(panels):
        axes = grid[index // columns][index % columns]
        n = matrix.shape[0]
        steps = np.arange(1, n + 1)
        for j in range(n):
            axes.plot(steps[j:], matrix[j:, j], marker="o" if n <= 10 else None, markersize=3,
                      linewidth=1.4, color=_colour(j, n), label=str(task_labels[j]))
        axes.set_title(label, fontsize=10)
        axes.set_ylim(bottom - 0.02 * (1 - bottom), 1 + 0.02 * (1 - bottom))
        axes.set_xlim(0.7, n + 0.3)
        axes.set_xticks(steps if n <= 12 else steps[:: math.ceil(n / 12)])
        axes.grid(alpha=0.3)
        axes.set_xlabel("after training task i")
        if index % columns == 0:
            axes.set_ylabel("accuracy on task j")
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if n_tasks <= 10:
        handles, labels = grid[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, title="task j", loc="outside lower center",
                      ncols=min(n_tasks, 10), fontsize=8, title_fontsize=8)
    else:
        mappable = figure.colorbar(_viridis_mappable(n_tasks), ax=grid, shrink=0.8)
        mappable.set_label("task j (position in the stream)")
    return to_png(figure)


def acc_bwt_bars(labels: Sequence[str], acc: Sequence[Summary], bwt: Sequence[Summary]) -> bytes:
    """Horizontal bars of ACC and BWT per method, with 95% confidence intervals as error bars.

    ACC spans [0, 1]; BWT is centred on 0 and wide enough for every interval (at most [-1, 1]).
    Intervals reaching past the axes are cut at the edge; the value labels stay inside.
    """
    height = 0.45 * len(labels) + 1.5
    figure = Figure(figsize=(10.0, height), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(labels))[::-1]
    spread = max([abs(s.mean or 0.0) + (s.half_width or 0.0) for s in bwt] + [0.01])
    limits = ((0.0, 1.12), (-1.3 * min(spread, 1.0), 1.3 * min(spread, 1.0)))
    panels = ((left, acc, "ACC (final average accuracy)", "accuracy", "{:.3f}"),
              (right, bwt, "BWT (backward transfer)", "change in accuracy", "{:+.3f}"))
    for (axes, values, title, xlabel, fmt), (low, high) in zip(panels, limits, strict=True):
        means = np.array([np.nan if s.mean is None else s.mean for s in values])
        errors = np.array([0.0 if s.half_width is None else s.half_width for s in values])
        colours = [TAB10[k % len(TAB10)] for k in range(len(labels))]
        axes.barh(positions, np.nan_to_num(means), xerr=errors, color=colours, alpha=0.85,
                  capsize=4, error_kw={"elinewidth": 1.2})
        axes.set_xlim(low, high)
        for y, mean, error in zip(positions, means, errors, strict=True):
            if np.isnan(mean):
                continue
            end = mean + error if mean >= 0 else mean - error
            room = 0.12 * (high - low)  # for the label beyond the end of the interval
            inside = end < high - room if mean >= 0 else end > low + room
            x = float(np.clip(end, low, high))
            towards_right = (mean >= 0) == inside  # labels cut at an edge turn back inwards
            axes.annotate(fmt.format(mean), (x, y), xytext=(4 if towards_right else -4, 0),
                          textcoords="offset points", ha="left" if towards_right else "right",
                          va="center", fontsize=8,
                          bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        axes.set_title(title, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
        axes.set_xlabel(xlabel)
    right.axvline(0.0, color="black", linewidth=0.8)
    left.set_yticks(positions, labels, fontsize=9)
    figure.suptitle("error bars: 95% confidence interval over runs", fontsize=8)
    return to_png(figure)


def capacity_curves(panels: Sequence[tuple[str, dict[str, np.ndarray]]]) -> bytes:
    """One panel per method: the fraction of each layer in use after each task (HAT capacity)."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows + 0.4), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    for index, (label, curves) in enumerate(panels):
        axes = grid[index // columns][index % columns]
        for k, (layer, values) in enumerate(curves.items()):
            steps = np.arange(1, len(values) + 1)
            axes.plot(steps, values, marker="o" if len(values) <= 20 else None, markersize=3,
                      color=_colour(k, len(curves)), label=layer)
        axes.set_title(label, fontsize=10)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.set_xlabel("after training task i")
        if index % columns == 0:
            axes.set_ylabel("fraction of layer in use")
        axes.legend(fontsize=7, title="layer", title_fontsize=7)
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    return to_png(figure)


def _colour(index: int, count: int) -> str | tuple[float, float, float, float]:
    if count <= len(TAB10):
        return TAB10[index]
    from matplotlib import colormaps

    return colormaps["viridis"](index / max(count - 1, 1))


def _viridis_mappable(count: int):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(1, count), cmap="viridis")
