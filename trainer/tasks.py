"""What a trial predicts: a number (``regression``) or which of two classes (``direction``,
``classification``), and what that decides elsewhere -- the scores, the metric a trial is
ranked by, the XGBoost objective and the experiment name.

- ``regression``: the next bar's log return (OHLCV mode) or the ``--target`` column.
- ``direction``: OHLCV mode only; the label is 1 when the return the regression task predicts
  (the next bar's, or the next H bars' with a horizon) is above zero, else 0.
- ``classification``: a two-valued ``--target`` column; the larger value is the positive class.

Pure: plain values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskName = Literal["regression", "direction", "classification"]

REGRESSION_SCORES = ("r2", "rmse", "mae")
CLASSIFICATION_SCORES = ("auc", "logloss", "accuracy", "brier")
BINARY_OBJECTIVE = "binary:logistic"


@dataclass(frozen=True)
class Task:
    name: TaskName
    scores: tuple[str, ...]  # per fold, for train and test rows: {part}_{score}, avg_{part}_{score}
    main: str  # the score a trial is ranked by (higher is better): avg_test_{main}
    infix: str  # in the default experiment name, after the symbol
    classifies: bool  # labels 0/1, binary:logistic, probabilities as predictions

    @property
    def main_metric(self) -> str:
        return f"avg_test_{self.main}"

    @property
    def importance_scoring(self) -> Literal["r2", "roc_auc"]:
        """The score whose drop permutation importance measures (sklearn's scoring name)."""
        return "roc_auc" if self.classifies else "r2"

    def objective(self, configured: str) -> str:
        """The XGBoost objective: ``binary:logistic`` for a classifier, else the configured one."""
        return BINARY_OBJECTIVE if self.classifies else configured


TASKS: dict[str, Task] = {
    "regression": Task("regression", REGRESSION_SCORES, "r2", "", classifies=False),
    "direction": Task("direction", CLASSIFICATION_SCORES, "auc", "dir_", classifies=True),
    "classification": Task("classification", CLASSIFICATION_SCORES, "auc", "cls_", classifies=True),
}
REGRESSION = TASKS["regression"]
