"""Importance bar charts as PNG files.

Figures are built with the object API on an Agg canvas, never through pyplot: no global
figure registry to leak from long sweeps, and no display needed in a container or a worker
process.

A trial writes two charts, so they are kept cheap: one figure per process is cleared and reused
(no new canvas, fonts already loaded), the margins are computed from the labels instead of a
constrained layout (which draws the figure several times to measure it), and the PNG is
compressed lightly (the files are small either way).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LABEL_LENGTH = 40
_BAR_HEIGHT_INCHES = 0.32
_MIN_HEIGHT_INCHES = 2.5
_WIDTH_INCHES = 9.0
_DPI = 100
# Inches per character of a 9 pt tick label (DejaVu Sans averages ~0.6 em), and the fixed room
# around the axes: title above, x label below, value labels right of the longest bar.
_LABEL_CHAR_INCHES = 0.075
_TOP_INCHES, _BOTTOM_INCHES, _RIGHT_INCHES = 0.45, 0.55, 0.55

_figure: Figure | None = None
_lock = threading.Lock()


def _reused_figure(height: float) -> Figure:
    global _figure
    if _figure is None:
        _figure = Figure(dpi=_DPI)
        FigureCanvasAgg(_figure)
    _figure.clear()
    _figure.set_size_inches(_WIDTH_INCHES, height)
    return _figure


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
    shown = [short_label(label) for label in labels]
    left = 0.2 + _LABEL_CHAR_INCHES * max((len(label) for label in shown), default=0)
    with _lock:
        figure = _reused_figure(height)
        figure.subplots_adjust(
            left=min(left / _WIDTH_INCHES, 0.5),
            right=1 - _RIGHT_INCHES / _WIDTH_INCHES,
            top=1 - _TOP_INCHES / height,
            bottom=_BOTTOM_INCHES / height,
        )
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
        axes.set_yticks(positions, shown, fontsize=9)
        axes.invert_yaxis()
        axes.axvline(0.0, color="#999999", linewidth=0.8)
        axes.set_title(title, fontsize=11)
        axes.set_xlabel(xlabel, fontsize=9)
        axes.grid(axis="x", alpha=0.3)
        if count == 0:
            axes.text(0.5, 0.5, "no features", ha="center", va="center", transform=axes.transAxes)
        figure.savefig(path, format="png", pil_kwargs={"compress_level": 1})
        figure.clear()  # the next chart starts empty; nothing of this one is kept alive
    return path
