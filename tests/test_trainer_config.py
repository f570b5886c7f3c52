"""Trainer config: the documented file is the default, overrides apply, sampling is in range."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import (
    DOMAINS,
    Choice,
    FloatRange,
    IntRange,
    TrainerConfig,
    domain_problem,
    load_config,
    sample_trial,
)
from trainer.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_example_config_file_equals_builtin_defaults() -> None:
    """config/trainer.yaml documents exactly the defaults used without --config."""
    assert load_config(REPO / "config" / "trainer.yaml") == TrainerConfig()


def test_dotted_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    """Command-line values (dotted keys) override the file's and keep its other keys."""
    path = tmp_path / "c.yaml"
    path.write_text("symbol: AAPL\nwalk_forward: {train_months: 4, window: expanding}\n")
    config = load_config(path, {"walk_forward.train_months": 2, "trials": 3, "data.target": "y"})
    assert config.symbol == "AAPL"
    assert config.walk_forward.train_months == 2
    assert config.walk_forward.window == "expanding"
    assert config.trials == 3
    assert config.data.target == "y"


def test_default_experiment_name_follows_the_contract() -> None:
    """wf_xgboost_{SYMBOL}_f{n_features}_tr{train}m_te{test}m unless --experiment is given."""
    config = load_config(None, {"symbol": "AAPL"})
    assert config.experiment_name(150) == "wf_xgboost_AAPL_f150_tr3m_te1m"
    assert load_config(None, {"experiment": "mine"}).experiment_name(150) == "mine"


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    """An empty YAML file is the built-in defaults."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == TrainerConfig()


def test_non_mapping_config_is_rejected(tmp_path: Path) -> None:
    """A YAML list instead of a mapping is an InputError naming the file."""
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_config(path)


def test_search_space_without_n_estimators_is_rejected() -> None:
    """Boosting rounds must be part of the search space."""
    with pytest.raises(InputError, match="needs n_estimators"):
        load_config(None, {"search_space": {"max_depth": {"type": "int", "low": 2, "high": 3}}})


def test_sampled_values_stay_in_their_ranges() -> None:
    """Ints (uniform and log), floats and choices are drawn inside their bounds."""
    space = {
        "n_estimators": IntRange(low=10, high=20, log=True),
        "max_depth": IntRange(low=2, high=3),
        "learning_rate": FloatRange(low=0.01, high=0.1, log=True),
        "subsample": FloatRange(low=0.5, high=0.5),
        "grow_policy": Choice(values=["depthwise", "lossguide"]),
    }
    draws = [sample_trial(space, 1, i) for i in range(200)]
    assert {d["max_depth"] for d in draws} == {2, 3}
    assert all(10 <= d["n_estimators"] <= 20 for d in draws)
    assert all(0.01 <= d["learning_rate"] <= 0.1 for d in draws)
    assert {d["subsample"] for d in draws} == {0.5}
    assert {d["grow_policy"] for d in draws} == {"depthwise", "lossguide"}


@pytest.mark.parametrize(
    ("overrides", "symbol"),
    [
        ({}, "SAMPLE"),
        ({"data.path": "/data/EURUSD.csv"}, "EURUSD"),
        ({"data.path": "/data/BRK.B daily.parquet"}, "BRK_B_daily"),
        ({"data.path": "/data/日本.csv"}, "DATA"),
        ({"data.path": "/data/EURUSD.csv", "symbol": "EUR/USD"}, "EUR_USD"),
    ],
)
def test_symbol_is_the_option_else_the_file_stem(overrides: dict[str, str], symbol: str) -> None:
    """--symbol wins, else the data file's stem, else SAMPLE; always a legal experiment-name part."""
    config = load_config(None, overrides)
    assert config.resolved_symbol() == symbol
    assert config.experiment_name(12) == f"wf_xgboost_{symbol}_f12_tr3m_te1m"


def test_a_bare_value_in_the_search_space_is_fixed() -> None:
    """`subsample: 0.8` draws 0.8 in every trial."""
    config = load_config(None, {"search_space": {"n_estimators": 20, "subsample": 0.8}})
    assert {sample_trial(config.search_space, 1, i)["subsample"] for i in range(5)} == {0.8}
    assert {sample_trial(config.search_space, 1, i)["n_estimators"] for i in range(5)} == {20}


def test_the_default_search_space_is_inside_xgboosts_domains() -> None:
    """Every documented range passes its own domain check (the check is not vacuous: see the CLI tests)."""
    space = TrainerConfig().search_space
    assert set(space) <= set(DOMAINS)
    assert all(domain_problem(name, dist) is None for name, dist in space.items())
    assert domain_problem("subsample", FloatRange(low=0.5, high=1.01)) is not None
