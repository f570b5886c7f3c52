"""What a trainer run logs under the contract (params, metrics, artifacts), and the small sweep
configuration the server-backed trainer tests run."""

SMALL_YAML = """
trials: 2
jobs: 2
walk_forward: {train_months: 6, test_months: 6}
importance: {n_repeats: 1}
search_space:
  n_estimators: {type: int, low: 30, high: 50}
  max_depth: {type: int, low: 3, high: 4}
  learning_rate: {type: float, low: 0.08, high: 0.15}
  subsample: {type: float, low: 0.7, high: 1.0}
"""
HYPERPARAMETERS = ("n_estimators", "max_depth", "learning_rate", "subsample")
DATA_PARAMS = (
    "symbol",
    "train_months",
    "test_months",
    "data_source",
    "feature_names",
    "total_features",
    "window",
    "time_column",
    "data_mode",
    "trial_seed",
    "periods_per_year",
    "cost_bps",
)
TRADING_SCORES = ("ic", "hit_rate", "return", "sharpe", "turnover")
AVERAGES = (
    "avg_test_r2",
    "avg_test_rmse",
    "avg_test_mae",
    "avg_train_r2",
    "avg_train_rmse",
    "avg_train_mae",
    "avg_test_r2_os",
    *(f"{agg}_test_{score}" for agg in ("std", "min", "median") for score in ("r2", "rmse", "mae")),
    "num_folds",
    # trading scores (OHLCV mode)
    *(f"{agg}_test_{score}" for agg in ("avg", "std", "min", "median") for score in TRADING_SCORES),
    "ic_ir",
    "ic_t",
    *(f"oos_{name}" for name in ("sharpe", "return", "max_drawdown", "bars", "skew", "kurtosis")),
)
PER_FOLD = (
    "test_r2",
    "test_rmse",
    "test_mae",
    "train_r2",
    "train_rmse",
    "train_mae",
    "test_r2_os",
    *(f"test_{score}" for score in TRADING_SCORES),
)
IMPORTANCE_STATS = ("importance_max", "importance_mean", "importance_median", "importance_min")
ARTIFACTS = (
    "permutation_importance.json",
    "feature_importance.csv",
    "feature_importance.png",
    "shap_importance.csv",
    "shap_importance.png",
    "oos_returns.csv",
    "oos_equity.png",
)
