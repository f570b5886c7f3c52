"""The run searches a pass makes beyond its batch searches, and the filters they use: the
board from threshold searches, the paged count, the latest end times of first rankings, the
selection statistics' runs and per-fold values. I/O only: what to search is decided by the
planner (:mod:`watcher.planner`) and the schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import structlog

from watcher.memory import FoldValues
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking
from watcher.model import MODEL_RANK, Rule, RunRecord
from watcher.planner import (
    SAMPLE_SIZE,
    BoardFound,
    BoardSearch,
    CountPage,
    CountRequest,
    ExperimentRead,
    board_from_search,
    by_experiment,
    ordered_search_proof,
    orphan_tag_keys,
    sample_cutoffs,
)
from watcher.ranking import order, split_ranked
from watcher.selection import BoardRun, folds_from_tag
from watcher.sharpe import sharpe_run
from watcher.state import ExperimentState

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


@dataclass
class PassScratch:
    """What one pass's reads leave for the schedule (a local value of the pass): by
    experiment, the end time up to which the batch search returned its runs, and the
    per-fold values read (``known``: those the daemon read before)."""

    known: FoldValues = field(default_factory=dict)
    searched: dict[str, int] = field(default_factory=dict)
    fold_values: dict[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)


@dataclass
class Searches:
    """The searches of one tracking server (the reader's, :class:`watcher.reader.PassReader`)."""

    tracking: MlflowTracking
    # Runs in the unordered page a first ranking estimates its cutoffs from.
    sample_size: int = SAMPLE_SIZE
    # Runs per request of a search over a batch of experiments.
    batch_page: int = SCAN_PAGE
    # Called after each page of a batch search and each board found: a pass that reads for
    # minutes before its first write (a catch-up over a universe) makes progress all the same.
    progressed: Callable[[], None] = lambda: None

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
        sharpe_metric = rule.selection.sharpe_metric
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
            run = by_id[run_id]
            sharpe = sharpe_run(run.metrics, run.params, sharpe_metric) if sharpe_metric else None
            board.append(BoardRun(run_id, folds, sharpe))
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
