"""Real data files as the `arch` package ships them (``arch/data/*/*.csv.gz``, NCSA licence), read
from the installed package: Yahoo daily bars (sp500), FRED series with their ``.`` markers (wti,
vix), FRED monthly rates (default), monthly crude prices with a byte-order mark (crude)."""

from __future__ import annotations

import gzip
from importlib.resources import files
from pathlib import Path


def arch_file(name: str) -> Path:
    """``arch/data/{name}/{name}.csv.gz`` (core_cpi's is core-cpi.csv.gz)."""
    stem = name.replace("_", "-")
    return Path(str(files("arch.data") / name / f"{stem}.csv.gz"))


def arch_bytes(name: str) -> bytes:
    """The decompressed bytes of ``arch_file(name)``."""
    return gzip.decompress(arch_file(name).read_bytes())
