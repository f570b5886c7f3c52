"""Selection statistics in the pass, on real servers: boards whose answer is known by
construction (no skill, clear skill), PBO equal to a straightforward CSCV over the values
logged, tied_with_leader kept true, and the max_pbo gate holding production tags back and
releasing them when the board changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.cscv import pbo as reference_pbo
from tests.support.mlflow_server import ServerHandle
from tests.support.watcher_runs import make_fold_runs, new_experiment
from watcher import cli
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import WatcherSettings

pytestmark = pytest.mark.server

FOLDS = 24
BLOCKS = 8


@pytest.fixture
def client(mlflow_server: ServerHandle) -> MlflowClient:
    return MlflowClient(mlflow_server.url)


def watcher_for(url: str, pattern: str, **selection: object) -> Watcher:
    rule = {
        "name": "r",
        "experiments": [pattern],
        "metric": "avg_test_r2",
        "trigger": "run_finished",
        "selection": {"fold_metric": "test_r2", "blocks": BLOCKS, **selection},
    }
    return Watcher(
        WatcherSettings(tracking_uri=url, rules=[rule], http={"enabled": False}), MlflowTracking(url)
    )


def board_order(values: np.ndarray) -> np.ndarray:
    """The rule's order of runs logged in row order: best mean first (no ties by construction)."""
    return values[np.argsort(-values.mean(axis=1), kind="stable")]


def selection_tag(client: MlflowClient, exp_id: str) -> dict[str, object]:
    return json.loads(client.get_experiment(exp_id).tags["podium.selection"])


def holders(client: MlflowClient, exp_id: str, tag: str) -> set[str]:
    runs = client.search_runs([exp_id], f"tags.`{tag}` = 'true'", max_results=1000)
    return {r.info.run_id for r in runs}


def noise(seed: int, runs: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, size=(runs, FOLDS))


def test_a_board_without_skill_and_one_with_clear_skill_say_so(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """No skill: PBO near a coin toss and most runs tied with the leader (values from the
    metric's history). Clear skill: PBO 0 and a handful tied (values from podium.folds)."""
    exp_id, name = new_experiment(client, "wf_sel_noise")
    no_skill = noise(1)
    made = make_fold_runs(client, exp_id, no_skill)
    skill_id, skill_name = new_experiment(client, "wf_sel_skill")
    skill = noise(2) + np.linspace(0, 0.3, 20)[:, None]
    skilled = make_fold_runs(client, skill_id, skill, folds_tag=True)

    for exp, values, pattern in ((exp_id, no_skill, name), (skill_id, skill, skill_name)):
        assert watcher_for(mlflow_server.url, pattern).run_pass().ok
        tag = selection_tag(client, exp)
        assert tag["pbo"] == round(reference_pbo(board_order(values), BLOCKS), 4)
        assert (tag["folds"], tag["runs"], tag["splits"], tag["runs_left_out"]) == (FOLDS, 20, 70, 0)
        assert tag["tied_with_leader"] == len(holders(client, exp, "tied_with_leader"))

    noise_tag, skill_tag = selection_tag(client, exp_id), selection_tag(client, skill_id)
    assert noise_tag["tied_with_leader"] >= 12
    assert skill_tag["pbo"] == 0.0
    assert 1 <= skill_tag["tied_with_leader"] <= 4
    assert skilled[-1].run_id in holders(client, skill_id, "tied_with_leader")
    assert len(holders(client, exp_id, "production_candidate")) == 3  # no max_pbo: no gate
    assert {m.run_id for m in made} >= holders(client, exp_id, "tied_with_leader")


def test_the_gate_holds_production_tags_back_and_releases_them_when_the_board_changes(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    seed = next(s for s in range(50) if reference_pbo(board_order(noise(s)), BLOCKS) > 0.5)
    exp_id, name = new_experiment(client, "wf_sel_gate")
    make_fold_runs(client, exp_id, noise(seed))
    watcher = watcher_for(mlflow_server.url, name, max_pbo=0.3)

    assert watcher.run_pass().ok
    assert selection_tag(client, exp_id)["pbo"] > 0.5
    assert len(holders(client, exp_id, "top_10")) == 10  # ranks and top_N stay
    assert holders(client, exp_id, "production_candidate") == set()
    idle = watcher.run_pass()
    assert (idle.tag_writes, idle.experiments_changed) == (0, 0)

    # A run far ahead in every fold: the data now tells the leader apart.
    ahead = make_fold_runs(client, exp_id, [np.full(FOLDS, 0.5)], prefix="ahead")[0]
    assert watcher.run_pass().ok
    tag = selection_tag(client, exp_id)
    assert (tag["pbo"], tag["runs"]) == (0.0, 21)
    assert len(holders(client, exp_id, "production_candidate")) == 3
    assert ahead.run_id in holders(client, exp_id, "production_candidate")
    assert holders(client, exp_id, "tied_with_leader") == {ahead.run_id}  # the others left the set


def test_dry_run_prints_the_selection_it_would_write_and_writes_nothing(
    sqlite_server: ServerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(sqlite_server.url)
    exp_id, name = new_experiment(client, "wf_sel_dry")
    make_fold_runs(client, exp_id, noise(4, runs=6))
    config = {
        "tracking_uri": sqlite_server.url,
        "http": {"enabled": False},
        "rules": [
            {
                "name": "r",
                "experiments": [name],
                "metric": "avg_test_r2",
                "selection": {"fold_metric": "test_r2", "blocks": 4, "max_pbo": 0.0},
            }
        ],
    }
    path = tmp_path / "watcher.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["--dry-run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    tag_line = next(line for line in out.splitlines() if "podium.selection:" in line)
    assert json.loads(tag_line.split("podium.selection: ", 1)[1])["runs"] == 6
    assert f"{name} [{exp_id}]  selection: PBO " in out
    held = reference_pbo(board_order(noise(4, runs=6)), 4) > 0.0
    assert ("(production_candidate and the alias held back)" in out) == held
    assert "podium.selection" not in client.get_experiment(exp_id).tags


def test_a_podium_selection_tag_edited_by_hand_is_written_again_on_the_next_pass(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """The board is unchanged (no run tag to change, the same state): the recomputed statistics
    are written all the same, so the next pass has nothing to recompute."""
    exp_id, name = new_experiment(client, "wf_sel_edited")
    make_fold_runs(client, exp_id, noise(5, runs=4))
    watcher = watcher_for(mlflow_server.url, name)
    assert watcher.run_pass().ok
    first = selection_tag(client, exp_id)
    client.set_experiment_tag(exp_id, "podium.selection", "edited by hand")
    assert watcher.run_pass().ok
    assert {k: v for k, v in selection_tag(client, exp_id).items() if k != "computed_at"} == {
        k: v for k, v in first.items() if k != "computed_at"
    }
