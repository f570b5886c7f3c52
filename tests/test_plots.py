"""Importance bar charts (trainer.plots): a chart drawn on a kept figure is, pixel for pixel, the
chart matplotlib draws when the figure is built straight from the numbers, whatever was drawn on
the kept figure before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from trainer import plots


def _chart(rng: np.random.Generator, count: int, errors: bool) -> dict[str, object]:
    scale = 10.0 ** float(rng.integers(-6, 1))
    values = np.sort(rng.normal(0.2, 1.0, count))[::-1] * scale
    return {
        "labels": [f"{'feature_' * int(rng.integers(1, 8))}{i}" for i in range(count)],
        "values": values.tolist(),
        "errors": (np.abs(rng.normal(0.0, 0.4, count)) * scale).tolist() if errors else None,
        "title": f"Permutation importance, top {count} of {count + 7} features",
        "xlabel": f"mean decrease in R² ({int(rng.integers(1, 9))} repeats)",
    }


def _built_directly(
    path: Path, labels: list[str], values: list[float], errors: list[float] | None, title: str, xlabel: str
) -> Path:
    """The chart from a new figure, every artist made from the numbers (the plain way)."""
    shown = [plots.short_label(label) for label in labels]
    count = len(shown)
    height = max(2.5, 1.2 + 0.32 * count)
    left = 0.2 + 0.075 * max((len(label) for label in shown), default=0)
    figure = Figure(figsize=(9.0, height), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(
        left=min(left / 9.0, 0.5), right=1 - 0.55 / 9.0, top=1 - 0.45 / height, bottom=0.55 / height
    )
    axes = figure.add_subplot()
    bars = axes.barh(range(count), values, xerr=errors, color="#4c72b0", ecolor="#333333", capsize=2.5)
    axes.bar_label(bars, fmt="%.3g", padding=4, fontsize=7, color="#333333")
    axes.set_yticks(range(count), shown, fontsize=9)
    axes.invert_yaxis()
    axes.axvline(0.0, color="#999999", linewidth=0.8)
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel, fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    if count == 0:
        axes.text(0.5, 0.5, "no features", ha="center", va="center", transform=axes.transAxes)
    figure.savefig(path, format="png")
    return path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_a_chart_on_a_kept_figure_equals_the_same_chart_on_a_fresh_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    shapes = [(20, True), (20, False), (20, True), (3, True), (20, True), (1, False), (0, True), (20, False)]
    shapes += [(20, bool(rng.integers(2))) for _ in range(6)] + [(1, False), (3, True)]
    charts = [_chart(rng, count, errors) for count, errors in shapes]
    plots.drop_kept_figures()
    kept = [plots.importance_bars(tmp_path / f"kept_{i}.png", **c) for i, c in enumerate(charts)]  # type: ignore[arg-type]
    for i, chart in enumerate(charts):
        direct = _built_directly(tmp_path / f"direct_{i}.png", **chart)  # type: ignore[arg-type]
        assert np.array_equal(_pixels(kept[i]), _pixels(direct)), f"chart {i} {shapes[i]} differs"
    # and the charts differ from one another: the figure is redrawn, not left as it was
    assert not np.array_equal(_pixels(kept[0]), _pixels(kept[2]))
