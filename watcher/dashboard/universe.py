"""The experiments table at the scale of a trading universe (pure): one overview per experiment
from its kept tags, then filters, counts per state, sorting and paging, and the universe view's
rows (one rule's leaders) with their CSV.

Everything here is computed from experiment records (id, name, tags) the caller already holds:
the daemon's kept listing, or one listing made for the request. Leaders' run names and trading
scores come in as a mapping by run id (the query object reads the missing ones in one search).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from watcher.dashboard.board import KeptBoard, kept_board, ranking_of, run_url
from watcher.dashboard.models import STATES, ExperimentView, Gate, Leader, State, StateCounts, UniverseRow
from watcher.model import ON_DEMAND_RULE, ExperimentRecord, iso_time_ms
from watcher.selection import SELECTION_TAG, stored
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, ExperimentState

Order = Literal["asc", "desc"]
# Sort keys and the order each takes unless told: the best first where there is a best.
DEFAULT_ORDER: dict[str, Order] = {
    "name": "asc",
    "value": "desc",  # the leader's value in its rule's direction: desc puts the best first
    "pbo": "asc",
    "dsr": "desc",
    "tied": "asc",
    "ranked_at": "desc",
}
# The trading scores the universe view shows from each leader's metrics (null when absent).
TRADING_SCORES = ("avg_test_ic", "oos_sharpe")
UNIVERSE_ORDER: dict[str, Order] = {**DEFAULT_ORDER, "avg_test_ic": "desc", "oos_sharpe": "desc"}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# What a CSV cell must not start with (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class BadParameter(ValueError):
    """A request parameter the table cannot take; the message starts with its name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


@dataclass(frozen=True)
class LeaderInfo:
    """What the table shows of a leader run beyond the kept board: its name and trading scores."""

    run_name: str | None
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Overview:
    """One experiment as the table shows it, from its kept tags alone."""

    experiment_id: str
    name: str
    owner: RuleConfig | None  # the rule that watches it now (None: ranked on demand only)
    board: KeptBoard | None
    metric: str | None
    ascending: bool | None
    selection: Mapping[str, Any] | None
    gate: Gate
    attention: tuple[str, ...]

    @property
    def rule(self) -> str | None:
        return self.board.rule if self.board else self.owner.name if self.owner else None

    @property
    def rules(self) -> set[str]:
        """The rules the rule filter finds it under: its owner's and its board's."""
        return {
            r for r in (self.owner.name if self.owner else None, self.board.rule if self.board else None) if r
        }

    @property
    def leader(self) -> tuple[str, float] | None:
        return self.board.entries[0] if self.board and self.board.entries else None

    def has(self, state: State) -> bool:
        if state == "ranked":
            return self.leader is not None
        if state == "not_ranked":
            return self.leader is None
        if state == "gated":
            return self.gate == "held"
        if state == "needs_attention":
            return bool(self.attention)
        return True

    def score(self, key: str) -> float | None:
        """A selection statistic by its sort key (null when absent or not a number)."""
        name = {"tied": "tied_with_leader"}.get(key, key)
        value = (self.selection or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)

    def goodness(self) -> float | None:
        """The leader's value, signed so that larger is better in the rule's direction."""
        if self.leader is None:
            return None
        return -self.leader[1] if self.ascending else self.leader[1]


@functools.lru_cache(maxsize=4096)
def _selection(text: str) -> Mapping[str, Any] | None:
    return stored(text)


def overview(record: ExperimentRecord, settings: WatcherSettings) -> Overview | None:
    """The experiment's overview; None for a board a rule left behind (renamed out of it)."""
    owner = settings.rule_for(record.name)
    board = kept_board(record.tags)
    if owner is None and (board is None or board.rule != ON_DEMAND_RULE):
        return None
    ranking = ranking_of(board, settings, None, record.name) if board else None
    metric, ascending = ranking if ranking else (owner.metric, owner.ascending) if owner else (None, None)
    text = record.tags.get(SELECTION_TAG)
    state = ExperimentState.from_tag(record.tags.get(STATE_TAG))
    # Failed runs leave no trace in the kept tags once announced (and an on-demand ranking sets
    # the alert cursor with no failed run behind it): what the tags say is a stalled run.
    attention = []
    if board is None or not board.entries:
        attention.append("not ranked yet")
    if state is not None and state.alerted:
        attention.append(f"{len(state.alerted)} stalled run{'s' if len(state.alerted) > 1 else ''}")
    return Overview(
        experiment_id=record.experiment_id,
        name=record.name,
        owner=owner,
        board=board,
        metric=metric,
        ascending=ascending,
        selection=_selection(text) if text else None,
        gate=_gate(owner, board, state),
        attention=tuple(attention),
    )


def _gate(owner: RuleConfig | None, board: KeptBoard | None, state: ExperimentState | None) -> Gate:
    if state is not None and state.held:
        return "held"
    if owner is None or owner.selection is None or board is None or board.rule != owner.name:
        return "none"
    gates = (owner.selection.max_pbo, owner.selection.min_dsr)
    return "passed" if any(g is not None for g in gates) else "none"


def overviews(records: Iterable[ExperimentRecord], settings: WatcherSettings) -> list[Overview]:
    found = (overview(r, settings) for r in records)
    return [o for o in found if o is not None]


# ---- the experiments table: filters, counts, sorting, paging --------------------------------------


@dataclass(frozen=True)
class TableQuery:
    page: int = 1
    page_size: int | None = None  # None: every experiment that passes the filters, one page
    sort: str = "name"
    order: Order = "asc"
    q: str = ""
    rule: str | None = None
    state: State = "all"


def table_query(
    *,
    page: int | None,
    page_size: int | None,
    sort: str,
    order: str | None,
    q: str,
    rule: str | None,
    state: str,
    known_rules: Iterable[str],
    orders: Mapping[str, Order] = DEFAULT_ORDER,
) -> TableQuery:
    """The request's table parameters, checked; :class:`BadParameter` names the first bad one.

    Neither ``page`` nor ``page_size``: every experiment in one page; either of them: one page
    (the first, of :data:`DEFAULT_PAGE_SIZE`, unless told)."""
    if page is not None and page < 1:
        raise BadParameter("page", f"must be a whole number from 1, not {page}")
    if page_size is not None and not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadParameter("page_size", f"must be a whole number from 1 to {MAX_PAGE_SIZE}, not {page_size}")
    if page is not None and page_size is None:
        page_size = DEFAULT_PAGE_SIZE
    if sort not in orders:
        raise BadParameter("sort", f"unknown sort key {sort[:100]!r}; expected one of {', '.join(orders)}")
    if order not in (None, "asc", "desc"):
        raise BadParameter("order", f"must be asc or desc, not {order[:100]!r}")
    if state not in STATES:
        raise BadParameter("state", f"unknown state {state[:100]!r}; expected one of {', '.join(STATES)}")
    known = sorted({*known_rules, ON_DEMAND_RULE})
    if rule is not None and rule not in known:
        raise BadParameter("rule", f"no rule named {rule[:100]!r}; the rules are {', '.join(known)}")
    chosen = cast(Order, order or orders[sort])
    return TableQuery(page or 1, page_size, sort, chosen, q.strip(), rule, state)


def sort_key(key: str) -> Callable[[Overview], float | str | None]:
    if key == "name":
        return lambda o: o.name.casefold()
    if key == "value":
        return Overview.goodness
    if key == "ranked_at":
        return lambda o: o.board.seen_ms if o.board and o.board.entries else None
    return lambda o: o.score(key)


def sorted_by(rows: Sequence[Any], key: Callable[[Any], Any], order: Order) -> list[Any]:
    """Rows by ``key`` in ``order``, nulls last either way, ties by name (stable sorts)."""
    by_name = sorted(rows, key=lambda r: r.name if isinstance(r, Overview) else r.experiment_name)
    keyed = [(key(r), r) for r in by_name]
    present = [kv for kv in keyed if kv[0] is not None]
    present.sort(key=lambda kv: kv[0], reverse=order == "desc")
    return [r for _, r in present] + [r for k, r in keyed if k is None]


@dataclass(frozen=True)
class Table:
    rows: list[Overview]  # the page
    total: int
    pages: int
    counts: StateCounts
    rules: list[str]


def table(all_rows: Sequence[Overview], query: TableQuery) -> Table:
    """Filter by name and rule, count each state, filter by state, sort and cut the page."""
    needle = query.q.casefold()
    rows = [
        o
        for o in all_rows
        if (not needle or needle in o.name.casefold()) and (query.rule is None or query.rule in o.rules)
    ]
    counts = StateCounts(**{s: sum(1 for o in rows if o.has(s)) for s in STATES})
    shown = [o for o in rows if o.has(query.state)]
    size = query.page_size or max(1, len(shown))
    pages = max(1, math.ceil(len(shown) / size))
    if query.page > pages:
        raise BadParameter("page", f"{query.page} is past the last page ({pages}; {len(shown)} experiments)")
    ordered = sorted_by(shown, sort_key(query.sort), query.order)
    start = (query.page - 1) * size
    return Table(
        rows=ordered[start : start + size],
        total=len(shown),
        pages=pages,
        counts=counts,
        rules=sorted({r for o in all_rows for r in o.rules}),
    )


def experiment_view(o: Overview, leader: LeaderInfo | None, ui_base_url: str | None) -> ExperimentView:
    board = o.board
    top = o.leader
    return ExperimentView(
        experiment_id=o.experiment_id,
        experiment_name=o.name,
        rule=o.rule,
        metric=o.metric,
        ascending=o.ascending,
        top_n=board.top_n if board else o.owner.top_n if o.owner else None,
        ranked_runs=board.ranked_runs if board else 0,
        unranked_runs=board.unranked_runs if board else 0,
        leader=Leader(
            run_id=top[0],
            run_name=leader.run_name if leader else None,
            value=top[1],
            url=run_url(ui_base_url, o.experiment_id, top[0]),
        )
        if top
        else None,
        ranked_at=iso_time_ms(board.seen_ms) if board else None,
        pbo=o.score("pbo"),
        dsr=o.score("dsr"),
        tied_with_leader=_whole(o.score("tied")),
        gate=o.gate,
        attention=list(o.attention),
    )


# ---- the universe view: one rule's leaders ----------------------------------------------------------


def universe_row(o: Overview, leader: LeaderInfo | None, ui_base_url: str | None) -> UniverseRow:
    top = o.leader
    scores = leader.scores if leader else {}
    return UniverseRow(
        experiment_id=o.experiment_id,
        experiment_name=o.name,
        leader_run_id=top[0] if top else None,
        leader_run_name=leader.run_name if leader else None,
        metric=o.metric,
        ascending=o.ascending,
        value=top[1] if top else None,
        pbo=o.score("pbo"),
        tied_with_leader=_whole(o.score("tied")),
        gate=o.gate,
        dsr=o.score("dsr"),
        avg_test_ic=scores.get("avg_test_ic"),
        oos_sharpe=scores.get("oos_sharpe"),
        ranked_at=iso_time_ms(o.board.seen_ms) if o.board and top else None,
        url=run_url(ui_base_url, o.experiment_id, top[0]) if top else None,
    )


def universe_sort_key(key: str, rows: Sequence[Overview]) -> Callable[[UniverseRow], Any]:
    """The universe view's sort keys: the table's, plus the trading scores."""
    if key in TRADING_SCORES:
        return lambda r: getattr(r, key)
    by_id = {o.experiment_id: o for o in rows}
    inner = sort_key(key)
    return lambda r: inner(by_id[r.experiment_id])


def csv_text(rows: Sequence[UniverseRow]) -> str:
    """The universe view as CSV: one header line with the row's fields, empty cells for null."""
    out = io.StringIO()
    names = list(UniverseRow.model_fields)
    # CRLF as RFC 4180 has it; a field holding either character is then quoted.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(names)
    for row in rows:
        data = row.model_dump()
        writer.writerow(["" if data[n] is None else _cell(data[n]) for n in names])
    return out.getvalue()


def _cell(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    # A spreadsheet runs a cell that starts with = + - @ as a formula, and one that starts with a
    # tab or carriage return once those are stripped: names come from MLflow.
    return "'" + text if isinstance(value, str) and text[:1] in FORMULA_STARTS else text


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)
