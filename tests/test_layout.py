"""The layout rule every module of the two packages keeps: no module over 500 lines."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("package", ["watcher", "trainer"])
def test_no_module_passes_500_lines(package: str) -> None:
    """A module past 500 lines is split along a seam of what it does; the failure names every
    one that passes, with its count."""
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p in modules if (n := line_count(p)) > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines:\n" + "\n".join(over)
