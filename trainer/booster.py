"""The target's scale, and a booster moved back into the data's units.

XGBoost takes a split only when its gain clears a fixed floor, and the gain of a squared error
grows with the square of the target's scale: on hourly or minute returns (spread 1e-4 to 1e-3)
most trees never split, and the model predicts one value for every row. So the trainer fits
each window on the target standardised over that window (``TargetScale``: mean out, divided
by the standard deviation), and turns the model back into the data's units before anything is
scored or logged: ``in_data_units`` multiplies every leaf value (and node weight) by the
standard deviation and sets the base score to ``std * base + mean``, so the booster itself
predicts returns, its SHAP values are in returns, and it is logged as a plain XGBoost model.

Only objectives whose prediction is the raw sum of the trees (identity link) are standardised;
the log-link ones (Poisson, gamma, Tweedie, squared log error) need a positive target and
predict through ``exp``, so they see the target as given (``TargetScale.identity``).

The edit is made on XGBoost's UBJSON model (the binary form of its JSON schema): arrays of
numbers there are typed and fixed-size, so the leaf values are rewritten in place, and only
the base score's text is spliced. A round trip costs tens of milliseconds where the JSON form
takes most of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

# Objectives whose prediction is base score + the sum of leaf values.
IDENTITY_LINK = frozenset(
    {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror"}
)


def scales_target(objective: str) -> bool:
    """Whether the trainer standardises the target for ``objective``."""
    return objective in IDENTITY_LINK


@dataclass(frozen=True)
class TargetScale:
    """``standardised(y) = (y - mean) / std``; predictions go back as ``p * std + mean``."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def of(cls, y: np.ndarray) -> TargetScale:
        """The scale of a training window's target; a constant window keeps its units (std 1)."""
        values = np.asarray(y, dtype=np.float64)
        mean = float(values.mean()) if len(values) else 0.0
        std = float(values.std()) if len(values) else 0.0
        if not (math.isfinite(mean) and math.isfinite(std)) or std == 0.0:
            return cls(mean if math.isfinite(mean) else 0.0, 1.0)
        return cls(mean, std)

    @classmethod
    def identity(cls) -> TargetScale:
        return cls()

    @property
    def is_identity(self) -> bool:
        return self.mean == 0.0 and self.std == 1.0

    def standardised(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.mean) / self.std

    def to_data(self, prediction: np.ndarray) -> np.ndarray:
        """Predictions of a booster trained on ``standardised(y)``, in the data's units (float64)."""
        return np.asarray(prediction, dtype=np.float64) * self.std + self.mean


def in_data_units(booster: xgb.Booster, scale: TargetScale) -> xgb.Booster:
    """A copy of ``booster`` (trained on ``scale.standardised(y)``) that predicts in the data's
    units: leaf values and node weights times ``std``, gains times ``std²``, base score
    ``std * base + mean``. ``booster`` itself is left as it was (with the identity scale it is
    returned as it is)."""
    if scale.is_identity:
        return booster
    raw = bytearray(booster.save_raw("ubj"))
    document, _ = _Reader(raw, wanted=("base_score",)).value(0)
    learner = document["learner"]
    for tree in learner["gradient_booster"]["model"]["trees"]:
        if tree["tree_param"].get("size_leaf_vector", "1") not in ("0", "1"):
            raise ValueError("a booster with vector leaves cannot be rescaled")
        leaves = tree["left_children"] == -1
        conditions = tree["split_conditions"]  # a leaf's value; a split's threshold
        conditions[leaves] = conditions[leaves] * scale.std
        tree["base_weights"][:] = tree["base_weights"] * scale.std
        tree["loss_changes"][:] = tree["loss_changes"] * scale.std**2
    start, end, text = learner["learner_model_param"]["base_score"]
    # a new buffer: the arrays above still view ``raw``, which cannot be resized under them
    edited = bytearray(raw[:start]) + _string(_rescaled_base_score(text, scale)) + raw[end:]
    out = xgb.Booster()
    out.load_model(edited)
    return out


def _rescaled_base_score(text: str, scale: TargetScale) -> str:
    """XGBoost writes the base score as ``"5E-1"``, or as a vector ``"[5E-1]"`` since 3.0."""
    vector = text.startswith("[")
    values = [float(v) for v in text.strip("[]").split(",")]
    scaled = ",".join(f"{v * scale.std + scale.mean:.9E}" for v in values)
    return f"[{scaled}]" if vector else scaled


# --- UBJSON, as XGBoost writes it --------------------------------------------------------------

_INTEGERS = {"i": (1, True), "U": (1, False), "I": (2, True), "l": (4, True), "L": (8, True)}
_TYPED = {"d": ">f4", "D": ">f8", "i": "i1", "U": "u1", "I": ">i2", "l": ">i4", "L": ">i8"}


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"SL" + len(data).to_bytes(8, "big", signed=True) + data


class _Reader:
    """Decodes UBJSON from a bytearray. Typed arrays come back as numpy views of the buffer
    (writing to them edits the model in place); the string values of the ``wanted`` keys come
    back as ``(start, end, text)``, their token's span, so they can be spliced."""

    def __init__(self, buf: bytearray, wanted: tuple[str, ...] = ()) -> None:
        self.buf = buf
        self.wanted = frozenset(wanted)

    def _length(self, i: int) -> tuple[int, int]:
        size, signed = _INTEGERS[chr(self.buf[i])]
        return int.from_bytes(self.buf[i + 1 : i + 1 + size], "big", signed=signed), i + 1 + size

    def value(self, i: int, key: str | None = None) -> tuple[Any, int]:
        buf = self.buf
        start, marker = i, chr(buf[i])
        i += 1
        if marker == "{":
            obj: dict[str, Any] = {}
            while chr(buf[i]) != "}":
                n, i = self._length(i)
                name = bytes(buf[i : i + n]).decode("utf-8")
                obj[name], i = self.value(i + n, name)
            return obj, i + 1
        if marker == "[":
            return self._array(i)
        if marker == "S":
            n, i = self._length(i)
            text = bytes(buf[i : i + n]).decode("utf-8")
            return ((start, i + n, text) if key in self.wanted else text), i + n
        if marker in _INTEGERS:
            return self._length(start)
        if marker in ("d", "D"):
            dtype = np.dtype(_TYPED[marker])
            return float(np.frombuffer(buf, dtype, 1, i)[0]), i + dtype.itemsize
        if marker in ("T", "F", "Z"):
            return {"T": True, "F": False, "Z": None}[marker], i
        raise ValueError(f"UBJSON marker {marker!r} at byte {start} is not one XGBoost writes")

    def _array(self, i: int) -> tuple[Any, int]:
        buf = self.buf
        if chr(buf[i]) == "$":
            dtype = np.dtype(_TYPED[chr(buf[i + 1])])
            n, i = self._length(i + 3)  # past "$", the type and "#"
            return np.frombuffer(buf, dtype, n, i), i + n * dtype.itemsize
        items: list[Any] = []
        if chr(buf[i]) == "#":
            n, i = self._length(i + 1)
            for _ in range(n):
                item, i = self.value(i)
                items.append(item)
            return items, i
        while chr(buf[i]) != "]":
            item, i = self.value(i)
            items.append(item)
        return items, i + 1
