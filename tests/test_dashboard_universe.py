"""The experiments table and the universe view (pure, no server): each experiment's overview from
its kept tags, the filters and counts per state, sorting in the rule's direction with nulls last,
paging, the parameters it refuses (naming them), and the CSV export."""

from __future__ import annotations

import csv
import io
import json
import zlib

import pytest

from watcher.dashboard.universe import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BadParameter,
    LeaderInfo,
    Overview,
    TableQuery,
    csv_text,
    experiment_view,
    overviews,
    table,
    table_query,
    universe_row,
)
from watcher.model import ExperimentRecord
from watcher.ranking import Candidate
from watcher.selection import SELECTION_TAG
from watcher.settings import RuleConfig, SelectionConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint

UP = RuleConfig(name="up", experiments=["up_*"], metric="avg_test_r2", selection=SelectionConfig(max_pbo=0.5))
DOWN = RuleConfig(name="down", experiments=["down_*"], metric="avg_test_rmse", ascending=True)
SETTINGS = WatcherSettings(rules=[UP, DOWN])


def record(
    name: str,
    value: float | None,
    *,
    rule: RuleConfig | None = None,
    held: bool = False,
    selection: dict | None = None,
    alerted: tuple[str, ...] = (),
    seen: int = 1_000,
    on_demand: bool = False,
) -> ExperimentRecord:
    """An experiment as the kept listing holds it: its state tag (a board led by ``value``, or
    none while it waits for a first ranking) and its selection tag."""
    rule = rule or (UP if name.startswith("up_") else DOWN)
    ascending = rule.ascending
    board = () if value is None else (Candidate(f"{name}-lead", "", value, seen),)
    state = ExperimentState(
        rule="api" if on_demand else rule.name,
        fingerprint=UNRANKED if value is None else fingerprint(rule.metric, ascending, rule.filter),
        top_n=3,
        production_candidates=1,
        seen=seen,
        board=board,
        ranked_runs=len(board),
        metric=None if value is None else rule.metric,
        ascending=None if value is None else ascending,
        held=held,
        alerted=alerted,
    )
    tags = {STATE_TAG: state.to_tag()}
    if selection is not None:
        tags[SELECTION_TAG] = json.dumps(selection)
    return ExperimentRecord(str(zlib.crc32(name.encode())), name, tags)


UNIVERSE = [
    record("up_AAPL", 0.30, selection={"pbo": 0.2, "tied_with_leader": 4, "dsr": 0.97}, seen=3_000),
    record("up_MSFT", 0.50, held=True, selection={"pbo": 0.8, "tied_with_leader": 9}, seen=2_000),
    record("up_NVDA", 0.10, selection={"pbo": 0.4, "tied_with_leader": 2, "dsr": 0.55}, seen=1_000),
    record("up_TSLA", None, alerted=("r1", "r2")),
    record("down_AAPL", 0.05),  # lower is better: the best of its rule
    record("down_MSFT", 0.20),
    record("adhoc_ranked", 0.7, rule=UP, on_demand=True),
    record("gone_elsewhere", 0.9, rule=UP),  # a board a rule left behind: not listed
]
ROWS = overviews(UNIVERSE, SETTINGS)


def names(rows: list[Overview]) -> list[str]:
    return [o.name for o in rows]


def query(**kw: object) -> TableQuery:
    base: dict = {
        "page": 1,
        "page_size": 50,
        "sort": "name",
        "order": None,
        "q": "",
        "rule": None,
        "state": "all",
    }
    base.update(kw)
    return table_query(**base, known_rules=("up", "down"))


def test_overviews_list_watched_and_on_demand_experiments_not_boards_left_behind() -> None:
    assert sorted(names(ROWS)) == sorted(r.name for r in UNIVERSE if r.name != "gone_elsewhere")
    by = {o.name: o for o in ROWS}
    assert (by["up_MSFT"].gate, by["up_AAPL"].gate, by["down_AAPL"].gate) == ("held", "passed", "none")
    assert by["up_TSLA"].attention == ("not ranked yet", "2 stalled runs")
    assert by["up_AAPL"].attention == ()
    assert by["adhoc_ranked"].rules == {"api"}
    assert (by["down_AAPL"].metric, by["down_AAPL"].ascending) == ("avg_test_rmse", True)


def test_the_name_search_narrows_to_one_symbol_and_counts_follow_the_name_and_rule_filters() -> None:
    shown = table(ROWS, query(q="nvda"))
    assert names(shown.rows) == ["up_NVDA"]
    assert shown.counts.all == 1
    up = table(ROWS, query(rule="up"))
    assert (up.counts.all, up.counts.ranked, up.counts.not_ranked) == (4, 3, 1)
    assert (up.counts.gated, up.counts.needs_attention) == (1, 1)
    assert up.rules == ["api", "down", "up"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("gated", ["up_MSFT"]),
        ("needs_attention", ["up_TSLA"]),
        ("not_ranked", ["up_TSLA"]),
        ("ranked", ["adhoc_ranked", "down_AAPL", "down_MSFT", "up_AAPL", "up_MSFT", "up_NVDA"]),
    ],
)
def test_a_state_filter_shows_only_that_state_and_keeps_every_count(state: str, expected: list[str]) -> None:
    shown = table(ROWS, query(state=state))
    assert names(shown.rows) == expected
    assert shown.total == len(expected)
    assert shown.counts.all == len(ROWS)  # the header's counts do not depend on the state filter


@pytest.mark.parametrize(
    ("sort", "order", "expected"),
    [
        # the best first in each rule's direction (lower rmse is better), the unranked last
        ("value", None, ["adhoc_ranked", "up_MSFT", "up_AAPL", "up_NVDA", "down_AAPL", "down_MSFT"]),
        ("value", "asc", ["down_MSFT", "down_AAPL", "up_NVDA", "up_AAPL", "up_MSFT", "adhoc_ranked"]),
        ("pbo", None, ["up_AAPL", "up_NVDA", "up_MSFT"]),  # the lowest PBO first
        ("dsr", None, ["up_AAPL", "up_NVDA"]),
        ("dsr", "asc", ["up_NVDA", "up_AAPL"]),  # nulls stay last either way
        ("tied", "desc", ["up_MSFT", "up_AAPL", "up_NVDA"]),
        ("ranked_at", None, ["up_AAPL", "up_MSFT"]),
    ],
)
def test_sorting_puts_nulls_last_whatever_the_order(
    sort: str, order: str | None, expected: list[str]
) -> None:
    got = names(table(ROWS, query(sort=sort, order=order)).rows)
    assert got[: len(expected)] == expected
    assert got[-1] == "up_TSLA"  # no leader, no statistics


def test_pages_cut_the_sorted_rows_and_a_page_past_the_end_is_refused_naming_page() -> None:
    first = table(ROWS, query(page_size=4))
    second = table(ROWS, query(page_size=4, page=2))
    assert (first.pages, first.total) == (2, 7)
    assert names(first.rows) + names(second.rows) == sorted(names(ROWS), key=str.casefold)
    with pytest.raises(BadParameter, match=r"^page: 3 is past the last page \(2"):
        table(ROWS, query(page_size=4, page=3))
    assert table(ROWS, query(q="no such symbol")).rows == []  # an empty first page is no error


def test_without_page_or_page_size_the_table_is_every_row_sorted_as_asked_in_one_page() -> None:
    whole = table(ROWS, query(page=None, page_size=None))
    assert names(whole.rows) == sorted(names(ROWS), key=str.casefold)
    assert (whole.pages, whole.total) == (1, len(ROWS))
    by_value = table(ROWS, query(page=None, page_size=None, sort="value"))
    assert names(by_value.rows) == names(table(ROWS, query(page_size=MAX_PAGE_SIZE, sort="value")).rows)
    assert table(ROWS, query(page=None, page_size=None, q="no such symbol")).pages == 1
    with pytest.raises(BadParameter, match=r"^page: 2 is past the last page \(1"):
        table(ROWS, query(page=2, page_size=None))  # page alone: pages of the default size
    assert query(page=2, page_size=None).page_size == DEFAULT_PAGE_SIZE
    assert (query(page=None, page_size=3).page, query(page=None, page_size=None).page_size) == (1, None)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"sort": "volume"}, "sort"),
        ({"order": "sideways"}, "order"),
        ({"state": "sleepy"}, "state"),
        ({"rule": "nope"}, "rule"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"page": 0}, "page"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(BadParameter) as caught:
        query(**kw)
    assert caught.value.name == name
    assert str(caught.value).startswith(f"{name}: ")


def test_the_views_carry_the_selection_statistics_the_gate_and_the_leaders_scores() -> None:
    by = {o.name: o for o in ROWS}
    view = experiment_view(by["up_AAPL"], LeaderInfo("trial_7"), "http://ui")
    assert (view.pbo, view.dsr, view.tied_with_leader, view.gate) == (0.2, 0.97, 4, "passed")
    assert view.leader is not None
    assert (view.leader.run_name, view.leader.value) == ("trial_7", 0.30)
    assert view.leader.url == f"http://ui/#/experiments/{by['up_AAPL'].experiment_id}/runs/up_AAPL-lead"
    row = universe_row(by["up_AAPL"], LeaderInfo("trial_7", {"avg_test_ic": 0.04, "oos_sharpe": 1.3}), None)
    assert (row.avg_test_ic, row.oos_sharpe, row.dsr, row.value) == (0.04, 1.3, 0.97, 0.30)
    waiting = universe_row(by["up_TSLA"], None, None)
    assert (waiting.leader_run_id, waiting.value, waiting.gate) == (None, None, "none")


def test_the_csv_has_one_line_per_row_empty_cells_for_null_and_no_formulas() -> None:
    by = {o.name: o for o in ROWS}
    evil = universe_row(by["up_NVDA"], LeaderInfo("=HYPERLINK(1)"), None)
    rows = [universe_row(by["up_AAPL"], LeaderInfo("trial_7", {"oos_sharpe": 1.3}), None), evil]
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert [r["experiment_name"] for r in parsed] == ["up_AAPL", "up_NVDA"]
    assert float(parsed[0]["value"]) == 0.30
    assert (parsed[0]["oos_sharpe"], parsed[0]["avg_test_ic"]) == ("1.3", "")
    assert parsed[1]["leader_run_name"] == "'=HYPERLINK(1)"


@pytest.mark.parametrize("name", ["\t=1+1", "\r=1+1", "+1", "-1", "@SUM(A1)"])
def test_a_csv_cell_that_a_spreadsheet_would_run_is_quoted(name: str) -> None:
    by = {o.name: o for o in ROWS}
    row = universe_row(by["up_NVDA"], LeaderInfo(name, {"oos_sharpe": -1.5}), None)
    (parsed,) = list(csv.DictReader(io.StringIO(csv_text([row]))))
    assert parsed["leader_run_name"] == "'" + name
    assert parsed["oos_sharpe"] == "-1.5"  # a negative number stays a number
