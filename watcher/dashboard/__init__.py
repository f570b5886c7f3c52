"""The training dashboard: the page at ``GET /`` and the JSON routes it uses.

The page (``watcher/static``: HTML, CSS and JS, no build step, nothing fetched from elsewhere)
shows the watched experiments a page at a time (search, rule and state filters, sortable
columns, counts per state), one rule's universe of leaders (CSV export), an experiment's
leaderboard, a run's feature importance, the features that matter across an experiment's
leaders, and the guide's two dialogs: "Rank Top Models" (the guide's ``POST /models/rank``)
and "Retrain Existing Model" (``POST /api/retrain``, a job running ``python -m trainer
retrain``, see :mod:`watcher.jobs`).

- :mod:`~watcher.dashboard.routes`: the routes, at module level, and :func:`install`;
- :mod:`~watcher.dashboard.query`: the query object, everything the routes read;
- :mod:`~watcher.dashboard.models`: the pydantic request and response models;
- :mod:`~watcher.dashboard.universe`: the experiments table and universe view (pure);
- :mod:`~watcher.dashboard.board`, :mod:`~watcher.dashboard.importance`: the kept board and
  feature importance (pure).
"""

from watcher.dashboard.board import KeptBoard, kept_board, ranking_of, sorted_metric_keys
from watcher.dashboard.importance import across_leaders, check_retrain, read_importance
from watcher.dashboard.models import FeatureRow, RetrainRequest
from watcher.dashboard.query import DashboardQuery
from watcher.dashboard.routes import install

__all__ = [
    "DashboardQuery",
    "FeatureRow",
    "KeptBoard",
    "RetrainRequest",
    "across_leaders",
    "check_retrain",
    "install",
    "kept_board",
    "ranking_of",
    "read_importance",
    "sorted_metric_keys",
]
