"""The pass's reads: one rule's batch of experiments gathered, decided, and what the decision
asks for read, until the decision is the batch's plans.

Nothing here decides and nothing here writes. :meth:`PassReader.gather` reads, per rule and
batch of experiments, the ended-after-watermark search (no status filter: FAILED runs are
split out in pure code), the holder check (``tags.model_rank LIKE '%'``) and, only when a
rule waits for RUNNING runs or looks for stalled ones, the RUNNING runs.
:func:`watcher.planner.decide_batch` decides from those rows and asks for what else it must
see: for each experiment it ranks, the threshold searches that find the board without a scan
and the orphan-tag searches (``top_{N}``, ``production_candidate`` on runs without
``model_rank``, batched); the paged count's next pages; one search over the first rankings.
:meth:`PassReader.read_more` reads exactly that. What the pass does (whose holders, what it
sweeps, which first rankings) comes in one :class:`~watcher.schedule.Agenda`; what it leaves
for the next pass goes in one :class:`PassScratch`, a local value of the pass. The plans go to
the one writer, through :mod:`watcher.apply`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

import structlog

from watcher.listing import KeptListing
from watcher.memory import FoldValues
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking, glob_to_like
from watcher.model import MODEL_RANK, TIED_WITH_LEADER, ExperimentRecord, Rule, RunRecord, WatchedExperiment
from watcher.outbox import webhook_room
from watcher.planner import (
    MAX_FAILED_WAITING,
    SAMPLE_SIZE,
    Agenda,
    BatchDecision,
    BoardFound,
    BoardSearch,
    CountPage,
    CountRequest,
    Experiment,
    ExperimentPlan,
    ExperimentRead,
    Observed,
    SelectionInput,
    ToRead,
    board_from_search,
    by_experiment,
    decide_batch,
    drops_filter,
    has_news,
    is_tracked,
    moves_state,
    ordered_search_proof,
    orphan_tag_keys,
    redundant_advance,
    running_search_ids,
    sample_cutoffs,
    stalled_unannounced,
    with_rule_filter,
)
from watcher.ranking import order, split_ranked
from watcher.selection import SELECTION_TAG, BoardRun, folds_from_tag
from watcher.settings import WatcherSettings
from watcher.state import MAX_ALERTED, ExperimentState, fingerprint, state_of

log = structlog.get_logger("watcher")

FINISHED_FILTER = "attributes.status = 'FINISHED'"
RUNNING_FILTER = "attributes.status = 'RUNNING'"
# Pages of the paged count (ranked/unranked totals after a first ranking) read per pass: a
# 10,000-run experiment is counted in the two passes after its first ranking (what a pass of
# five pages costs: BENCHMARKS.md, "Figures once kept in comments").
COUNT_PAGES_PER_PASS = 5
# A full scan reads MLflow's default page of 1,000 runs per request, so every request stays well
# inside the client timeout (MLFLOW_HTTP_REQUEST_TIMEOUT, 30 s in the image; what one large page
# costs: BENCHMARKS.md, "Figures once kept in comments"). The paged count, a last-resort board
# scan and the batch searches page: over a universe the latter grow with it (1,000 experiments
# hold 10,000 holder runs; a night of sweeps ends 10,000 runs), and 10,000 trainer runs in one
# answer outlast the timeout, so every pass would fail on it.
SCAN_PAGE = 1_000
# Pages of the ordered search that picks the experiments a pass ranks first when it may not rank
# them all: ten pages of max_rankings_per_pass runs find that many experiments of ten runs each
# (a trading universe's); past them the rest go in name order.
LATEST_PAGES = 10


def and_filters(*parts: str | None) -> str:
    """Join MLflow filter clauses (the grammar has AND but no parentheses)."""
    return " AND ".join(p for p in parts if p)


def metric_ref(metric: str) -> str:
    return f"metrics.`{metric}`"


def number_literal(value: float) -> str:
    """A filter literal that parses back to exactly ``value``; MLflow's grammar rejects
    exponents such as ``1e+20``, so write the shortest round-trip digits out in full."""
    return f"{Decimal(repr(value)):f}"


def threshold(rule: Rule, cutoff: float) -> str:
    """Runs at or before ``cutoff`` in the rule's order (ties at the cutoff included)."""
    op = "<=" if rule.ascending else ">="
    return f"{metric_ref(rule.metric)} {op} {number_literal(cutoff)}"


def listing_filters(settings: WatcherSettings) -> Sequence[str | None]:
    """The experiment searches that list every experiment a rule may match (None: all)."""
    likes = [glob_to_like(p) for p in sorted({p for rule in settings.rules for p in rule.experiments})]
    if any(like is None for like in likes):
        return [None]
    return sorted({f"name LIKE '{like}'" for like in likes if like is not None})


def watched_from(settings: WatcherSettings, records: Iterable[ExperimentRecord]) -> list[WatchedExperiment]:
    """The active experiments that a rule matches (first matching rule in file order), by name."""
    watched = []
    for exp in sorted(records, key=lambda e: e.name):
        rule = settings.rule_for(exp.name)
        if rule is not None and not exp.deleted:
            watched.append(WatchedExperiment(exp.experiment_id, exp.name, dict(exp.tags), rule))
    return watched


def list_experiments(settings: WatcherSettings, tracking: MlflowTracking) -> list[ExperimentRecord]:
    """Every active experiment the listing filters take in (a superset of the watched ones)."""
    found: dict[str, ExperimentRecord] = {}
    for filter_string in listing_filters(settings):
        for exp in tracking.search_experiments(filter_string):
            found[exp.experiment_id] = exp
    return list(found.values())


# Experiments with news a pass reads afresh one by one (one call each) when their tags came from
# the kept listing; more are read in one full listing.
REREAD_LIMIT = 20


@dataclass
class ListingReader:
    """Reads the watched experiments into the kept listing for one pass (a local value of the
    pass: ``listed_all`` and ``afresh`` are what this pass read).

    ``clock`` is the watcher's clock (when a full listing is due); ``monotonic`` real elapsed
    time, for how long a server's late commits may take (see :mod:`watcher.listing`)."""

    settings: WatcherSettings
    tracking: MlflowTracking
    listing: KeptListing
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    reread_limit: int = REREAD_LIMIT
    listed_all: bool = False
    # Records read afresh this pass (None: gone or deleted), by id.
    afresh: dict[str, ExperimentRecord | None] = field(default_factory=dict)

    def update(self, now: float, *, full: bool = False) -> bool:
        """Bring the kept listing up to date: every watched experiment when a full listing is
        due (or ``full``), else the experiments created, renamed, deleted or restored since the
        last answer. True when it listed them all."""
        listing = self.listing
        full = full or listing.full_due(now, self.settings.experiment_list_seconds)
        started = self.monotonic()
        mark = listing.start()
        try:
            if full:
                found = list_experiments(self.settings, self.tracking)
            else:
                found = self.tracking.search_experiments(
                    f"last_update_time >= {listing.since()}", deleted_too=True
                )
        except BaseException:
            listing.abandon(mark)
            raise
        if full:
            listing.listed(mark, found, now, self.monotonic())
            self.listed_all = True
        else:
            listing.changed(mark, found, started, self.monotonic())
        return full

    def read_afresh(self, ids: Sequence[str]) -> dict[str, ExperimentRecord | None]:
        """The experiments ``ids`` as they are now (one call each; more than ``reread_limit``:
        one full listing; none when this pass listed them all already), kept in the listing
        too."""
        if len(ids) > self.reread_limit or self.listed_all:
            if not self.listed_all:  # another batch of this pass may have listed them all
                self.update(self.clock(), full=True)
            records = {r.experiment_id: r for r in self.listing.records()}
            found = {i: records.get(i) for i in ids}
        else:
            mark = self.listing.start()
            try:
                found = {i: self.tracking.get_experiment(i) for i in ids}
            except BaseException:
                self.listing.abandon(mark)
                raise
            self.listing.reread(mark, found)
        self.afresh.update(found)
        return found

    def forget(self, experiment_id: str) -> None:
        """An experiment found gone while its plan was written: out of the kept listing (a
        hard-deleted one, ``mlflow gc``, is never seen by the search for changes)."""
        self.listing.reread(self.listing.start(), {experiment_id: None})


@dataclass
class PassScratch:
    """What one pass's reads leave for the schedule (a local value of the pass): by
    experiment, the end time up to which the batch search returned its runs, and the
    per-fold values read (``known``: those the daemon read before)."""

    known: FoldValues = field(default_factory=dict)
    searched: dict[str, int] = field(default_factory=dict)
    fold_values: dict[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)


# Re-reads experiments whose tags a pass took from the kept listing: each id's record as it is
# now, None when it is gone or deleted.
Reread = Callable[[Sequence[str]], Mapping[str, ExperimentRecord | None]]


def tracked_states(fp: str, exps: Sequence[WatchedExperiment]) -> dict[str, ExperimentState]:
    """The states of the experiments ranked by the rule's current definition, by id."""
    states = ((e.experiment_id, state_of(e.tags)) for e in exps)
    return {i: s for i, s in states if s is not None and is_tracked(s, fp)}


def afresh(
    exps: Sequence[WatchedExperiment], found: Mapping[str, ExperimentRecord | None]
) -> list[WatchedExperiment]:
    """The experiments with the records read afresh in place of the kept ones; those gone or
    deleted are left out."""
    out = []
    for exp in exps:
        if exp.experiment_id not in found:
            out.append(exp)
            continue
        record = found[exp.experiment_id]
        if record is None or record.deleted:
            continue
        out.append(WatchedExperiment(record.experiment_id, record.name, dict(record.tags), exp.rule))
    return out


@dataclass
class PassReader:
    """Gathers what MLflow holds for a batch, has :func:`decide_batch` plan it; never writes."""

    tracking: MlflowTracking
    # Runs in the unordered page a first ranking estimates its cutoffs from.
    sample_size: int = SAMPLE_SIZE
    # Runs per request of a search over a batch of experiments.
    batch_page: int = SCAN_PAGE
    # Called after each page of a batch search and each board found: a pass that reads for
    # minutes before its first write (a catch-up over a universe) makes progress all the same.
    progressed: Callable[[], None] = lambda: None

    def plan_pass(
        self,
        settings: WatcherSettings,
        watched: Sequence[WatchedExperiment],
        agenda: Agenda,
        scratch: PassScratch | None = None,
        reread: Reread | None = None,
    ) -> list[ExperimentPlan]:
        """Every rule's batches, as the ``agenda`` says; the agenda's ``reranks`` bound the
        re-ranks of the whole pass. ``reread`` (None: the tags were listed this pass) see
        :meth:`gather`; ``scratch`` gets what the reads leave for the schedule."""
        scratch = scratch if scratch is not None else PassScratch()
        by_rule: dict[str, list[WatchedExperiment]] = defaultdict(list)
        for exp in watched:
            assert exp.rule is not None
            by_rule[exp.rule.name].append(exp)
        plans: list[ExperimentPlan] = []
        for rule in settings.rules:
            exps = by_rule.get(rule.name, [])
            for start in range(0, len(exps), EXPERIMENT_BATCH):
                batch_plans = self.plan_batch(
                    rule, exps[start : start + EXPERIMENT_BATCH], agenda, scratch, reread
                )
                plans.extend(batch_plans)
                if agenda.reranks is not None:
                    left = max(0, agenda.reranks - sum(p.action == "rerank" for p in batch_plans))
                    agenda = replace(agenda, reranks=left)
        return plans

    def latest_ends(self, rule: Rule, ids: Sequence[str], rows: int) -> dict[str, int]:
        """The latest end time of the ``rows`` experiments of each batch of ``ids`` whose runs
        ended last: the ones to rank first when a pass may not rank them all. An ordered search
        per batch, paged on until ``rows`` experiments are found (an experiment's many runs
        would otherwise fill the page), at most ``LATEST_PAGES`` pages; experiments not found
        have none."""
        latest: dict[str, int] = {}
        for start in range(0, len(ids), EXPERIMENT_BATCH):
            found: dict[str, int] = {}
            token: str | None = None
            for _ in range(LATEST_PAGES):
                runs, token = self.tracking.search_page(
                    ids[start : start + EXPERIMENT_BATCH],
                    and_filters(FINISHED_FILTER, rule.filter),
                    rows,
                    token,
                    order_by=["attributes.end_time DESC"],
                )
                for run in runs:
                    found.setdefault(run.experiment_id, run.end_time or 0)
                if len(found) >= rows or token is None:
                    break
            latest.update(found)
        return latest

    def plan_batch(
        self,
        rule: Rule,
        exps: Sequence[WatchedExperiment],
        agenda: Agenda,
        scratch: PassScratch | None = None,
        reread: Reread | None = None,
    ) -> list[ExperimentPlan]:
        """Plans for one rule's batch, as the ``agenda`` says (see :func:`decide_batch`): its
        sweep searches the ``top_{N}``/``production_candidate`` holders of the experiments it
        takes in, not only of those re-ranked, and re-ranks each idle one from its kept cutoff
        (one threshold search each); its holder checks say whose holders the batch search
        reads (the experiments ranked and not among them have theirs read first)."""
        scratch = scratch if scratch is not None else PassScratch()
        reads = self.gather(rule, exps, agenda, scratch, reread)
        decision = decide_batch(rule, reads, agenda)
        while decision.to_read is not None:
            reads = self.read_more(rule, reads, decision.to_read, scratch)
            decision = decide_batch(rule, reads, agenda)
        log_decision(rule, reads, decision)
        return list(decision.plans)

    def gather(
        self,
        rule: Rule,
        exps: Sequence[WatchedExperiment],
        agenda: Agenda,
        scratch: PassScratch,
        reread: Reread | None = None,
    ) -> list[ExperimentRead]:
        """The batch searches: what MLflow holds for every experiment of the batch (the
        holders of those the agenda's holder checks take in).

        ``reread`` is given when the experiments' tags come from the listing kept between
        passes: those whose state the pass may write (runs ended after their watermark,
        finished or failed; a stalled run not announced) are read afresh and decided from
        their tags as they are now (another replica's state, a state deleted by hand); one
        gone or deleted is left out of the batch."""
        searched = scratch.searched if agenda.floors is not None else None
        floors = agenda.floors or {}
        stall_check = rule.name in agenda.stall_checks
        now_ms = agenda.now_ms
        fp = fingerprint(rule.metric, rule.ascending, rule.filter)
        ended, low = self._ended(rule, fp, exps, floors, searched)
        read_afresh: set[str] = set()

        def afresh_read(ids: Sequence[str]) -> list[WatchedExperiment]:
            assert reread is not None
            found = reread(ids)
            for i in ids:
                if (record := found.get(i)) is None or record.deleted:
                    log.info("experiment_gone", experiment_id=i)
            read_afresh.update(ids)
            return afresh(exps, found)

        if reread is not None and low is not None:
            listed = tracked_states(fp, exps)
            news = sorted({r.experiment_id for r in ended if moves_state(listed[r.experiment_id], [r])})
            if news:
                exps = afresh_read(news)
                fresh = tracked_states(fp, exps)
                if min(self._starts(fresh, floors, searched).values(), default=low) < low:
                    # a state read afresh reaches further back
                    ended, low = self._ended(rule, fp, exps, floors, searched)
                else:
                    ended = [r for r in ended if r.experiment_id in fresh]
        states = {e.experiment_id: state_of(e.tags) for e in exps}
        ids = [e.experiment_id for e in exps]
        kept = tracked_states(fp, exps)
        tracked = list(kept)
        drop_filter = drops_filter(rule)
        filtered_out: dict[str, int] = {}
        if tracked:
            news = sorted({r.experiment_id for r in ended if has_news(kept[r.experiment_id], [r])})
            if drop_filter and news:
                news_low = min(kept[i].seen for i in news)
                matching = self._search(
                    news, and_filters(FINISHED_FILTER, f"attributes.end_time > {news_low}", rule.filter)
                )
                ended, filtered_out = with_rule_filter(ended, matching)
        checked = {i for i in ids if i in agenda.holder_checks}
        holders = self._holders([i for i in ids if i in checked]) if checked else {}
        ended_by = by_experiment(ended)
        running_ids = running_search_ids(rule, fp, states, ended_by, stall_check)
        running = by_experiment(self._search(running_ids, RUNNING_FILTER)) if running_ids else {}
        searched_running = set(running_ids)
        if reread is not None:
            # A stalled run to announce: the kept state may not say another replica did.
            stale = sorted(
                i
                for i, runs in running.items()
                if i not in read_afresh and stalled_unannounced(rule, states.get(i), runs, now_ms)
            )
            if stale:
                exps = afresh_read(stale)
                states = {e.experiment_id: state_of(e.tags) for e in exps}
        to_sweep = [i for i in tracked if i in agenda.sweep]
        swept = self._orphans(rule, to_sweep, states) if to_sweep else {}
        advance_to = redundant_advance(ended, states)
        return [
            ExperimentRead(
                Experiment(exp.experiment_id, exp.name),
                states[exp.experiment_id],
                Observed(
                    ended=ended_by.get(exp.experiment_id, ()),
                    holders=holders.get(exp.experiment_id, ()) if exp.experiment_id in checked else None,
                    running=running.get(exp.experiment_id, ())
                    if exp.experiment_id in searched_running
                    else None,
                    advance_to=advance_to,
                    filtered_out=filtered_out.get(exp.experiment_id, 0),
                    orphans=swept.get(exp.experiment_id, ()) if exp.experiment_id in to_sweep else None,
                    alert_room=(
                        webhook_room(exp.experiment_id, exp.tags, rule.notify)
                        if rule.alerts and rule.notify
                        else None
                    ),
                ),
                selection_tag=exp.tags.get(SELECTION_TAG) if rule.selection is not None else None,
            )
            for exp in exps
        ]

    def _ended(
        self,
        rule: Rule,
        fp: str,
        exps: Sequence[WatchedExperiment],
        floors: Mapping[str, int],
        searched: dict[str, int] | None = None,
    ) -> tuple[list[RunRecord], int | None]:
        """The runs ended after the watermarks of the experiments the rule ranks already, and
        the end time searched after. The search reaches back to the alert cursor of an
        experiment with failed runs still to announce; FINISHED runs at or before a watermark
        are left out by the triage. With ``searched`` (a daemon pass) it starts from each
        experiment's kept floor where that is later than its watermark, and records how far it
        read: the latest end time it returned (or where it started, when it returned none)."""
        kept = tracked_states(fp, exps)
        if not kept:
            return [], None
        low = min(self._starts(kept, floors, searched).values())
        drop_filter = drops_filter(rule)
        ended = self._search(
            list(kept), and_filters(f"attributes.end_time > {low}", None if drop_filter else rule.filter)
        )
        if searched is not None:
            read_to = max((r.end_time or 0 for r in ended), default=low)
            searched.update(dict.fromkeys(kept, max(low, read_to)))
        return ended, low

    def _starts(
        self,
        states: Mapping[str, ExperimentState],
        floors: Mapping[str, int],
        searched: dict[str, int] | None,
    ) -> dict[str, int]:
        """Where the batch search starts for each experiment: after its watermark (or alert
        cursor), or, in a daemon pass (``searched``), after its kept floor where that is later."""
        return {
            i: (
                max(s.search_after, floors.get(i, s.search_after))
                if searched is not None and s.alert_cursor is None
                else s.search_after
            )
            for i, s in states.items()
        }

    def read_more(
        self, rule: Rule, reads: Sequence[ExperimentRead], need: ToRead, scratch: PassScratch
    ) -> list[ExperimentRead]:
        """Read what the decision asked for; the reads come back with the answers filled in."""
        by_id = {r.experiment_id: r for r in reads}
        if need.holders:
            # The experiments ranked whose holders the batch search did not read.
            held = self._holders(need.holders)
            for i in need.holders:
                by_id[i] = replace(by_id[i], observed=replace(by_id[i].observed, holders=held.get(i, ())))
        if need.orphans:
            found = self._orphans(rule, need.orphans, {i: by_id[i].state for i in need.orphans})
            for i in need.orphans:
                by_id[i] = replace(by_id[i], orphans=found.get(i, ()))
        for board in need.boards:
            with structlog.contextvars.bound_contextvars(experiment_id=board.experiment_id):
                by_id[board.experiment_id] = replace(
                    by_id[board.experiment_id],
                    board=self.find_board(board.experiment_id, rule, board.cutoff, board.keep),
                )
            self.progressed()
        for count in need.counts:
            by_id[count.experiment_id] = replace(
                by_id[count.experiment_id], count_pages=self.count_pages(rule, count)
            )
        if need.selections:
            tied = by_experiment(self._search(list(need.selections), f"tags.`{TIED_WITH_LEADER}` LIKE '%'"))
            for i in need.selections:
                with structlog.contextvars.bound_contextvars(experiment_id=i):
                    runs = self.selection_board(rule, by_id[i], scratch)
                by_id[i] = replace(by_id[i], selection_input=SelectionInput(runs, tied.get(i, ())))
        if need.firsts:
            rows = by_experiment(
                self._search(
                    list(need.firsts),
                    and_filters(
                        f"attributes.end_time > {need.since}", None if drops_filter(rule) else rule.filter
                    ),
                )
            )
            for i in need.firsts:
                by_id[i] = replace(by_id[i], since_ranking=rows.get(i, ()))
        return [by_id[r.experiment_id] for r in reads]

    def selection_board(self, rule: Rule, read: ExperimentRead, scratch: PassScratch) -> tuple[BoardRun, ...]:
        """Every ranked run of the experiment in board order, with its per-fold values.

        The runs come from the ranking's searches when those held every run (a small
        experiment), else from one paged read (one call per 1,000 runs). The values come from
        each run's ``podium.folds`` tag, else from the history of the rule's ``fold_metric``:
        one call per run not read before; finished runs do not change, so what was read is
        kept for the daemon's life.
        """
        assert rule.selection is not None
        assert read.board is not None
        fold_metric = rule.selection.fold_metric
        if read.board.search.everything:
            rows: Sequence[RunRecord] = read.board.search.runs
        else:
            finished = and_filters(FINISHED_FILTER, rule.filter)
            rows = list(self.tracking.iter_runs([read.experiment_id], finished, page_size=SCAN_PAGE))
        ranked, _ = split_ranked(rows, rule.metric)
        by_id = {r.run_id: r for r in rows}
        histories = 0
        board = []
        for candidate in order(ranked, rule.ascending):
            run_id = candidate.run_id
            folds = folds_from_tag(by_id[run_id].tags, fold_metric)
            if folds is None:
                key = (run_id, fold_metric)
                known = scratch.known.get(key, scratch.fold_values.get(key))
                if known is None:
                    known = scratch.fold_values[key] = tuple(self.tracking.fold_history(run_id, fold_metric))
                    histories += 1
                folds = list(known)
            board.append(BoardRun(run_id, folds))
        log.info("selection_read", ranked_runs=len(board), histories_read=histories)
        return tuple(board)

    def _search(self, ids: Sequence[str], filter_string: str) -> list[RunRecord]:
        """A search over a batch of experiments, in pages of ``batch_page`` runs."""
        rows: list[RunRecord] = []
        for run in self.tracking.iter_runs(ids, filter_string, page_size=self.batch_page):
            rows.append(run)
            if len(rows) % self.batch_page == 0:
                self.progressed()
        self.progressed()
        return rows

    def _holders(self, ids: Sequence[str]) -> dict[str, tuple[RunRecord, ...]]:
        """The runs of the experiments ``ids`` that carry ``model_rank`` now (one search)."""
        return by_experiment(self._search(ids, f"tags.{MODEL_RANK} LIKE '%'"))

    def _orphans(
        self, rule: Rule, ids: Sequence[str], states: Mapping[str, ExperimentState | None]
    ) -> dict[str, tuple[RunRecord, ...]]:
        """Runs of the experiments ``ids`` that carry a ``top_{N}`` or ``production_candidate``
        tag (with or without ``model_rank``): one search per key."""
        if not ids:
            return {}
        rows: list[RunRecord] = []
        for key in orphan_tag_keys(rule, (states.get(i) for i in ids)):
            rows.extend(self._search(ids, f"tags.`{key}` LIKE '%'"))
        return by_experiment(rows)

    def find_board(self, exp_id: str, rule: Rule, cutoff: float | None, keep: int) -> BoardFound:
        """The board by threshold searches: from the kept cutoff if there is one, else from
        cutoffs estimated on a sample of the runs that ended last (ordered searches cut at
        ``keep + 1``); a scan only when every estimate fails."""
        finished = and_filters(FINISHED_FILTER, rule.filter)
        if cutoff is not None:
            found = BoardSearch(
                tuple(self.tracking.search_runs([exp_id], and_filters(finished, threshold(rule, cutoff)))),
                cutoff,
                False,
            )
            board = board_from_search(found, rule, keep)
            if board is not None:
                return BoardFound(found, tuple(board[0]), board[1])
            log.info("board_refill_needed", known=len(found.runs))
        # The runs that ended last: the search's latest end time is the experiment's, so the
        # watermark search after a first ranking finds only what ended during the pass.
        sample, token = self.tracking.search_page(
            [exp_id], finished, self.sample_size, order_by=["attributes.end_time DESC"]
        )
        if token is None:
            found = BoardSearch(tuple(sample), None, True)
            board = board_from_search(found, rule, keep)
            assert board is not None
            return BoardFound(found, tuple(board[0]), board[1])
        direction = "ASC" if rule.ascending else "DESC"
        for value in sample_cutoffs(sample, rule.metric, rule.ascending, keep):
            # Ordered on the server and cut at keep + 1 rows: cheap on both backends (a
            # threshold keeps the sort small), and it answers with the board, not every run
            # above the cutoff.
            search = and_filters(finished, threshold(rule, value))
            rows = self.tracking.search_runs(
                [exp_id], search, order_by=[f"{metric_ref(rule.metric)} {direction}"], limit=keep + 1
            )
            proof = ordered_search_proof(rows, rule, value, keep + 1)
            board = board_from_search(proof, rule, keep) if proof is not None else None
            if board is None and len(rows) > keep:
                # The limit cut through ties or unrankable values: every run above the cutoff.
                proof = BoardSearch(tuple(self.tracking.search_runs([exp_id], search)), value, False)
                board = board_from_search(proof, rule, keep)
            if board is not None:
                assert proof is not None
                # The sample's runs count as seen too: they hold the latest end time.
                return BoardFound(
                    BoardSearch((*sample, *proof.runs), proof.cutoff, False), tuple(board[0]), board[1]
                )
        log.warning("board_scan_fallback", reason="sample_has_too_few_ranked_runs", sampled=len(sample))
        everything = {r.run_id: r for r in self.tracking.iter_runs([exp_id], finished, page_size=SCAN_PAGE)}
        found = BoardSearch(tuple(everything.values()), None, True)
        board = board_from_search(found, rule, keep)
        assert board is not None
        return BoardFound(found, tuple(board[0]), board[1])

    def count_pages(self, rule: Rule, count: CountRequest) -> tuple[CountPage, ...]:
        """The paged count's next pages of ranked/unranked runs (a bounded number per pass)."""
        filter_string = and_filters(FINISHED_FILTER, f"attributes.end_time <= {count.upto}", rule.filter)
        pages: list[CountPage] = []
        token = count.token
        for _ in range(COUNT_PAGES_PER_PASS):
            page, token = self.tracking.search_page([count.experiment_id], filter_string, SCAN_PAGE, token)
            pages.append(CountPage(tuple(page), token))
            if token is None:
                break
        return tuple(pages)


def log_decision(rule: Rule, reads: Sequence[ExperimentRead], decision: BatchDecision) -> None:
    """One batch's decision in the log, experiment by experiment."""
    plans = {p.experiment_id: p for p in decision.plans}
    for read in reads:
        t = decision.triaged[read.experiment_id]
        plan = plans[read.experiment_id]
        if plan.action == "idle" and not (
            t.stalled or t.old_alerts_skipped or t.alerts_lost or t.alerts_held
        ):
            continue  # nothing to say, and most of a thousand experiments are idle
        name = read.experiment.name
        with structlog.contextvars.bound_contextvars(experiment_id=read.experiment_id):
            for run_id in t.stalled:
                log.warning("run_stalled", experiment_name=name, run_id=run_id, rule=rule.name)
            if t.old_alerts_skipped:
                log.info(
                    "alerts_not_announced",
                    experiment_name=name,
                    runs=t.old_alerts_skipped,
                    reason="before_first_seen",
                )
            if t.alerts_lost:
                log.warning(
                    "alerts_not_announced",
                    experiment_name=name,
                    runs=t.alerts_lost,
                    reason="outbox_full",
                    waiting_limit=MAX_FAILED_WAITING,
                )
            if t.alerts_held:
                log.warning(
                    "alerts_held",
                    experiment_name=name,
                    runs=t.alerts_held,
                    queued=len(t.alerts),
                    alerted=len(t.alerted),
                    alerted_limit=MAX_ALERTED,
                )
            counts = decision.counts.get(read.experiment_id)
            if counts is not None:
                board = read.board.board if read.board is not None else ()
                log.info(
                    "experiment_planned",
                    experiment_name=name,
                    rule=rule.name,
                    action=plan.action,
                    reason=t.reason,
                    tag_changes=len(plan.changes),
                    ranked_runs=counts.ranked,
                    unranked_runs=counts.unranked,
                    counting=counts.counting,
                    leader=board[0].run_id if board else None,
                )
            elif plan.action == "count" and plan.state is not None and not plan.state.counting:
                log.info(
                    "experiment_counted",
                    experiment_name=name,
                    ranked_runs=plan.state.ranked_runs,
                    unranked_runs=plan.state.unranked_runs,
                )
            elif plan.action == "pending" and t.reason != "deferred":
                # A deferred ranking is counted once, in pass_finished's rankings_deferred.
                log.info("experiment_pending", experiment_name=name, reason="run_still_running")
