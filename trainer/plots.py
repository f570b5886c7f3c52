"""Importance bar charts as PNG files.

Figures are built with the object API on an Agg canvas, never through pyplot: no global
figure registry to leak from long sweeps, and no display needed in a container or a worker
process.

A trial writes two charts, so they are kept cheap. Drawing the text (~45 labels a chart) is
most of what is left; what is not drawing is avoided:

- A chart is drawn on a kept figure of the same shape (number of bars, with or without error
  bars): its axes, bars, error bars and ticks are built once per process and each chart only
  moves them (bar widths, error bar ends, tick labels, title, value labels, limits), instead
  of building ~150 artists anew. The PNG is the same as from a freshly built figure.
- The title sits at the top of the axes, where matplotlib's automatic placement (which measures
  every tick label to move it above anything drawn on top of the axes) puts it anyway.
- The margins are computed from the labels instead of a constrained layout (which draws the
  figure several times to measure it), and the PNG is compressed lightly.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
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
_BAR_COLOR, _TEXT_COLOR, _ZERO_COLOR = "#4c72b0", "#333333", "#999999"
# Kept figures; a sweep draws one or two shapes, so a few are plenty.
_MAX_KEPT = 4

_lock = threading.Lock()


def short_label(name: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """A feature name cut to ``limit`` characters with an ellipsis in the middle."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return f"{name[:head]}…{name[-tail:]}"


class _Chart:
    """A figure holding one bar chart of ``count`` bars, redrawn with other numbers and labels."""

    def __init__(self, count: int, with_errors: bool) -> None:
        self.count = count
        self.height = max(_MIN_HEIGHT_INCHES, 1.2 + _BAR_HEIGHT_INCHES * count)
        self.figure = Figure(figsize=(_WIDTH_INCHES, self.height), dpi=_DPI)
        FigureCanvasAgg(self.figure)
        self.axes: Axes = self.figure.add_subplot()
        positions = list(range(count))
        self.bars: BarContainer = self.axes.barh(
            positions,
            [0.0] * count,
            xerr=[0.0] * count if with_errors else None,
            color=_BAR_COLOR,
            ecolor=_TEXT_COLOR,
            capsize=2.5,
        )
        self.value_labels: list[Any] = []
        axes = self.axes
        axes.set_yticks(positions, [""] * count, fontsize=9)
        axes.invert_yaxis()
        axes.axvline(0.0, color=_ZERO_COLOR, linewidth=0.8)
        axes.grid(axis="x", alpha=0.3)
        if count == 0:
            axes.text(0.5, 0.5, "no features", ha="center", va="center", transform=axes.transAxes)

    def draw(
        self,
        path: Path,
        *,
        labels: list[str],
        values: np.ndarray,
        errors: np.ndarray | None,
        title: str,
        xlabel: str,
        left: float,
    ) -> None:
        axes = self.axes
        self.figure.subplots_adjust(
            left=min(left / _WIDTH_INCHES, 0.5),
            right=1 - _RIGHT_INCHES / _WIDTH_INCHES,
            top=1 - _TOP_INCHES / self.height,
            bottom=_BOTTOM_INCHES / self.height,
        )
        for bar, value in zip(self.bars.patches, values, strict=True):
            bar.set_width(float(value))
        self.bars.datavalues = values  # what bar_label prints, and which side it puts it on
        low, high = (values, values) if errors is None else (values - errors, values + errors)
        if errors is not None and self.count > 0 and self.bars.errorbar is not None:
            _, caps, (lines, *_) = self.bars.errorbar.lines
            rows = np.arange(self.count, dtype=float)
            lines.set_segments([[(lo, y), (hi, y)] for lo, hi, y in zip(low, high, rows, strict=True)])
            caps[0].set_xdata(low)
            caps[1].set_xdata(high)
        if self.count > 0:
            # The x data limits as adding these bars, error bars and the zero line to a new axes
            # sets them (Axes.relim would compute them through the last chart's view, off by
            # an ulp); the y ones do not change.
            points = axes.dataLim.get_points().copy()
            points[:, 0] = min(0.0, float(low.min())), max(0.0, float(high.max()))
            axes.dataLim.set_points(points)
            axes.autoscale_view(scaley=False)
        for label in self.value_labels:
            label.remove()
        self.value_labels = axes.bar_label(self.bars, fmt="%.3g", padding=4, fontsize=7, color=_TEXT_COLOR)
        axes.set_yticks(range(self.count), labels, fontsize=9)
        axes.set_title(title, fontsize=11, y=1.0)
        axes.set_xlabel(xlabel, fontsize=9)
        self.figure.savefig(path, format="png", pil_kwargs={"compress_level": 1})


_charts: dict[tuple[int, bool], _Chart] = {}


def _chart(count: int, with_errors: bool) -> _Chart:
    key = (count, with_errors)
    chart = _charts.get(key)
    if chart is None:
        if len(_charts) >= _MAX_KEPT:
            _charts.clear()
        chart = _charts[key] = _Chart(count, with_errors)
    return chart


def drop_kept_figures() -> None:
    """Free the kept figures (the next chart builds its figure anew)."""
    with _lock:
        _charts.clear()


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
    shown = [short_label(label) for label in labels]
    left = 0.2 + _LABEL_CHAR_INCHES * max((len(label) for label in shown), default=0)
    with _lock:
        _chart(len(shown), errors is not None).draw(
            path,
            labels=shown,
            values=np.asarray(values, dtype=float),
            errors=None if errors is None else np.asarray(errors, dtype=float),
            title=title,
            xlabel=xlabel,
            left=left,
        )
    return path
