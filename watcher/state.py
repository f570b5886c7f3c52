"""The watcher's per-experiment state (pure): what a pass keeps between passes, and its tag.

State lives in MLflow as one experiment tag, ``podium.state`` (JSON), so that a restarted
or replaced watcher carries on where the last one stopped and two replicas converge:

- ``seen``: the watermark, the largest ``end_time`` (ms) of the FINISHED runs matching the
  rule that a pass has accounted for; the next pass searches ``attributes.end_time > seen``.
- ``pending``: runs finished after the last ranking but the experiment still had a RUNNING
  run (``trigger: experiment_finished``), so the ranking waits.
- ``fingerprint``: metric, direction and filter of the rule that ranked; a change forces a
  full ranking. ``metric`` and ``ascending`` say the first two in the clear (the dashboard
  shows them); states written before they were recorded have neither (None).
- ``board``: the best runs as ``[run_id, value, end_time]``, ``top_n`` of them tagged plus a
  reserve of runners-up, a prefix of the true order cut at its last entry (``complete``:
  it holds every ranked run). Its holders are the tag holders; its last entry is the cutoff
  for threshold searches that refill the board without scanning the experiment.
- ``ranked_runs`` / ``unranked_runs``: counts of the FINISHED runs matching the rule, plus
  the runs that finished since. A first ranking finds the board without a scan, so its counts
  are completed later by a paged count (``counting``: the page token to go on from, over runs
  that ended at or before ``count_upto``), a bounded number of pages per pass.
- ``first_seen``: when the rule first saw the experiment (ms); only runs that fail or stall
  after it are announced (a state holding only it is written while a first ranking waits;
  fingerprint empty). ``alerted``: the stalled runs announced that are still RUNNING, so
  no run is announced twice, whichever replica sees it.
- ``alert_cursor``: ``[end_time, run_id]`` of the first failed run to announce that did not
  fit the outbox (None: every one is queued). The batch search reaches back to its end time
  while it is set, and the runs at or after it (in ``(end_time, run_id)`` order) that ended
  unsuccessfully are due again; the watermark still moves, so nothing is counted twice.
- ``held``: the rule's selection gate held ``production_candidate`` back at the last ranking.
- ``swept``: when the experiment was last swept (ms): its ``top_{N}``/``production_candidate``
  holders searched and its board re-read from the kept cutoff (a first ranking counts as one).
  Kept in MLflow so that ``--once`` and a restarted daemon sweep on the same schedule.
- ``announced``: a digest of the run ids, in order, of the top N the rule last planned its
  summary from. An API ranking (another ``top_n``) leaves it as it is, so the rule's next
  pass posts ``leaderboard.changed`` only when its own board differs from that one.
- ``announced_changes``: how many changes of its board the rule has announced in this
  experiment. A change is numbered from the state it was decided from, and its delivery ids
  derive from that number: replicas deciding the same change from the same state give it the
  same ids, and a board that later goes through the same change again gets new ones.

Limits, by design of an O(1) idle pass: the holder check (on a schedule) finds runs carrying
``model_rank``; a ``top_{N}`` or ``production_candidate`` tag on a run without ``model_rank``
(set by hand) is found at the experiment's next re-rank or sweep. A run whose ``end_time`` lies before
the watermark when it becomes visible (a client clock far behind) does not trigger a re-rank
by itself, but any later re-rank includes it, since the threshold search does not look at
end times.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.model import MAX_TOP_N
from watcher.ranking import Candidate

STATE_TAG = "podium.state"
STATE_VERSION = 1
# An experiment tag holds up to 20,000 characters; a board entry takes at most ~80. The board
# always holds the whole top N, so top_n is capped at this size (settings and the API check it).
MAX_BOARD = MAX_TOP_N
# Announced run ids kept in the state (32 characters each): only runs that can still alert
# (stalled runs still RUNNING) are kept, so this bounds how many stalled runs wait unannounced at
# once; past it a pass announces no more until some end. Fits the tag's 20,000 characters with
# the largest board.
MAX_ALERTED = 100
# The fingerprint of a state written before the experiment's first ranking (it records when
# the rule first saw the experiment): the next pass still ranks it for the first time.
UNRANKED = ""


def fingerprint(metric: str, ascending: bool, filter_string: str | None) -> str:
    """Identifies what a ranking means; a rule with another fingerprint ranks from scratch."""
    text = json.dumps([metric, bool(ascending), filter_string or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def board_digest(run_ids: Sequence[str]) -> str:
    """A short digest of a leaderboard's run ids in rank order (what a summary announced)."""
    return hashlib.sha256("\n".join(run_ids).encode()).hexdigest()[:16]


def board_size(top_n: int) -> int:
    """How many runs the kept board holds: the top N and as many runners-up (at least 10)."""
    return min(MAX_BOARD, top_n + max(top_n, 10))


@dataclass(frozen=True)
class ExperimentState:
    rule: str
    fingerprint: str
    top_n: int
    production_candidates: int
    seen: int = 0
    pending: bool = False
    board: tuple[Candidate, ...] = ()
    complete: bool = True
    ranked_runs: int = 0
    unranked_runs: int = 0
    counting: bool = False
    count_token: str | None = None
    count_upto: int = 0
    first_seen: int | None = None
    alerted: tuple[str, ...] = ()
    alert_cursor: tuple[int, str] | None = None
    announced: str | None = None
    announced_changes: int = 0
    metric: str | None = None
    ascending: bool | None = None
    # The selection gate held production_candidate back at the last ranking (PBO above the
    # rule's max_pbo, or none): the holders carry no production_candidate.
    held: bool = False
    swept: int | None = None

    @property
    def search_after(self) -> int:
        """The end time the batch search starts after: the watermark, or just before the
        first failed run still to announce."""
        if self.alert_cursor is None:
            return self.seen
        return min(self.seen, self.alert_cursor[0] - 1)

    def to_tag(self) -> str:
        return json.dumps(
            {
                "v": STATE_VERSION,
                "rule": self.rule,
                "fingerprint": self.fingerprint,
                "top_n": self.top_n,
                "production_candidates": self.production_candidates,
                "seen": self.seen,
                "pending": self.pending,
                "complete": self.complete,
                "ranked_runs": self.ranked_runs,
                "unranked_runs": self.unranked_runs,
                "counting": self.counting,
                "count_token": self.count_token,
                "count_upto": self.count_upto,
                "first_seen": self.first_seen,
                "alerted": list(self.alerted[-MAX_ALERTED:]),
                "alert_cursor": None if self.alert_cursor is None else list(self.alert_cursor),
                "announced": self.announced,
                "announced_changes": self.announced_changes,
                "metric": self.metric,
                "ascending": self.ascending,
                # Only when set: a rule without a selection gate writes the same tag as before.
                **({"held": True} if self.held else {}),
                "swept": self.swept,
                # Run names are left out (searches return them fresh): a board of MAX_BOARD
                # entries then fits an experiment tag whatever the names.
                "board": [[c.run_id, c.value, c.end_time] for c in self.board],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_tag(cls, text: str | None) -> ExperimentState | None:
        """The stored state, or None when absent or unreadable (then the pass ranks in full).

        A pass reads every watched experiment's state several times and an idle one finds the
        same text as the last pass, so parses are kept (states are frozen; what that saves is
        in BENCHMARKS.md, "Figures once kept in comments")."""
        return _parsed_state(text) if text else None

    @classmethod
    def _parse(cls, text: str) -> ExperimentState | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
                return None
            board = tuple(
                Candidate(str(e[0]), str(e[3]) if len(e) > 3 else "", float(e[1]), _opt_int(e[2]))
                for e in data["board"]
            )
            if any(not math.isfinite(c.value) for c in board):
                return None
            return cls(
                rule=str(data["rule"]),
                fingerprint=str(data["fingerprint"]),
                top_n=int(data["top_n"]),
                production_candidates=int(data["production_candidates"]),
                seen=int(data["seen"]),
                pending=bool(data["pending"]),
                board=board,
                complete=bool(data["complete"]),
                ranked_runs=int(data["ranked_runs"]),
                unranked_runs=int(data["unranked_runs"]),
                counting=bool(data.get("counting", False)),
                count_token=_opt_str(data.get("count_token")),
                count_upto=int(data.get("count_upto") or 0),
                first_seen=_opt_int(data.get("first_seen")),
                alerted=tuple(str(r) for r in data.get("alerted") or ()),
                alert_cursor=_opt_cursor(data.get("alert_cursor")),  # absent in older tags
                announced=_opt_str(data.get("announced")),
                announced_changes=int(data.get("announced_changes") or 0),  # absent in older tags
                # Absent in older tags: the dashboard then recovers them from the fingerprint.
                metric=_opt_str(data.get("metric")),
                ascending=None if data.get("ascending") is None else bool(data["ascending"]),
                held=bool(data.get("held", False)),
                swept=_opt_int(data.get("swept")),  # absent in older tags: swept at the next pass
            )
        except (ValueError, TypeError, KeyError, IndexError):
            return None

    def holders(self) -> tuple[Candidate, ...]:
        """The runs this state says carry the watcher's tags (the top ``top_n``)."""
        return self.board[: self.top_n]

    def tags_of_holders(self) -> dict[str, dict[str, str]]:
        """The run tags the last ranking wrote, by run id."""
        from watcher.ranking import desired_tags, leaderboard_entries

        entries = leaderboard_entries(self.board, self.top_n)
        return desired_tags(entries, self.top_n, 0 if self.held else self.production_candidates)


def state_of(tags: Mapping[str, str]) -> ExperimentState | None:
    """The ``podium.state`` an experiment's tags hold (None: none, or unreadable)."""
    return ExperimentState.from_tag(tags.get(STATE_TAG))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_cursor(value: Any) -> tuple[int, str] | None:
    return None if value is None else (int(value[0]), str(value[1]))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# Room for the states of 2,048 experiments (~1 kB each at top_n 10; at most 20 kB).
@functools.lru_cache(maxsize=2048)
def _parsed_state(text: str) -> ExperimentState | None:
    return ExperimentState._parse(text)
