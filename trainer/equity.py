"""A trial's out-of-sample path as files: ``oos_returns.csv`` and the equity chart
``oos_equity.png`` (the strategy's cumulative log return beside buy-and-hold's).

Drawn like ``trainer.plots``: the object API on an Agg canvas, one figure per process cleared
and reused, a light PNG compression. The curves are thinned to at most ``MAX_POINTS`` points
(every k-th bar, the last kept): a chart 800 pixels wide shows little more, and drawing every bar
of a long path would cost more than the scores themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.trading import FoldTrades

RETURNS_FILE = "oos_returns.csv"
EQUITY_FILE = "oos_equity.png"
MAX_POINTS = 1000
TICKS = 6
_DPI = 100

_figure: Figure | None = None
_lock = threading.Lock()


def write_files(path: FoldTrades, directory: Path, title: str) -> list[Path]:
    """Write ``oos_returns.csv`` and ``oos_equity.png`` of the stitched path into ``directory``."""
    return [write_returns(path, directory / RETURNS_FILE), equity_chart(path, directory / EQUITY_FILE, title)]


def write_returns(path: FoldTrades, out: Path) -> Path:
    """One row per out-of-sample bar: time (UTC), position, strategy return, buy-and-hold return."""
    times = np.datetime_as_string(path.times.astype("datetime64[s]"), unit="s")
    body = "\n".join(
        f"{t},{p:g},{s:.7g},{r:.7g}"
        for t, p, s, r in zip(
            times.tolist(),
            path.positions.tolist(),
            path.strategy.tolist(),
            path.bar_returns.tolist(),
            strict=True,
        )
    )
    out.write_text("time,position,strategy_return,buy_and_hold_return\n" + body + ("\n" if body else ""))
    return out


def _thinned(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    step = -(-n // MAX_POINTS)
    picked = np.arange(0, n, step)
    return picked if picked[-1] == n - 1 else np.append(picked, n - 1)


def equity_chart(path: FoldTrades, out: Path, title: str) -> Path:
    """Cumulative strategy and buy-and-hold log returns over the out-of-sample bars."""
    global _figure
    strategy = np.cumsum(path.strategy)
    hold = np.cumsum(path.bar_returns)
    keep = _thinned(len(strategy))
    # bars on the x axis, labelled with their dates at fixed places: matplotlib's date locator
    # would cost more than the rest of the chart
    ticks: list[int] = []
    labels: list[str] = []
    if len(keep):
        ticks = sorted({round(x) for x in np.linspace(0, len(strategy) - 1, TICKS)})
        labels = np.datetime_as_string(path.times[ticks].astype("datetime64[D]"), unit="D").tolist()
    with _lock:
        if _figure is None:
            _figure = Figure(dpi=_DPI)
            FigureCanvasAgg(_figure)
        figure = _figure
        figure.clear()
        figure.set_size_inches(8.0, 3.5)
        figure.subplots_adjust(left=0.1, right=0.94, top=0.9, bottom=0.14)
        axes = figure.add_subplot()
        axes.plot(
            keep, strategy[keep], color="#4c72b0", linewidth=1.1, label="strategy (sign of the prediction)"
        )
        axes.plot(keep, hold[keep], color="#999999", linewidth=0.9, label="buy and hold")
        axes.axhline(0.0, color="#cccccc", linewidth=0.8)
        axes.set_title(title, fontsize=11)
        axes.set_ylabel("cumulative log return", fontsize=9)
        axes.set_xticks(ticks, labels)
        axes.set_xlim(0, max(len(strategy) - 1, 1))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize=8, frameon=False)
        if not len(keep):
            axes.text(0.5, 0.5, "no out-of-sample bars", ha="center", va="center", transform=axes.transAxes)
        figure.savefig(out, format="png", pil_kwargs={"compress_level": 1})
        figure.clear()
    return out
