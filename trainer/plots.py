"""Importance bar charts as PNG files.

Figures are built with the object API on an Agg canvas, never through pyplot: no global
figure registry to leak from long sweeps, and no display needed in a container or a worker
process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LABEL_LENGTH = 40
_BAR_HEIGHT_INCHES = 0.32
_MIN_HEIGHT_INCHES = 2.5


def short_label(name: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """A feature name cut to ``limit`` characters with an ellipsis in the middle."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return f"{name[:head]}…{name[-tail:]}"


def importance_bars(
    path: Path,
    *,
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float] | None,
    title: str,
    xlabel: str,
) -> Path:
    """A horizontal bar chart, largest value on top, one readable row per bar.

    Callers pass only the bars to show (the top 20), so the chart keeps its size however many
    features the model has; long names are shortened in the middle, where they differ least.
    """
    count = len(labels)
    height = max(_MIN_HEIGHT_INCHES, 1.2 + _BAR_HEIGHT_INCHES * count)
    figure = Figure(figsize=(9.0, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(count))
    bars = axes.barh(
        positions,
        list(values),
        xerr=list(errors) if errors is not None else None,
        color="#4c72b0",
        ecolor="#333333",
        capsize=2.5,
    )
    axes.bar_label(bars, fmt="%.3g", padding=4, fontsize=7, color="#333333")
    axes.set_yticks(positions, [short_label(label) for label in labels], fontsize=9)
    axes.invert_yaxis()
    axes.axvline(0.0, color="#999999", linewidth=0.8)
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel, fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    if count == 0:
        axes.text(0.5, 0.5, "no features", ha="center", va="center", transform=axes.transAxes)
    figure.savefig(path, format="png")
    return path
