"""One watcher in a process of its own, driven over stdin/stdout by `bench/bench_universe.py
--before PATH`: the watcher of the checkout on PYTHONPATH (this one, or an older one) runs its
passes here, so two checkouts' watchers run side by side against the same servers.

Run by its file path (`python bench/watcher_child.py`) with PYTHONPATH set to a checkout: the
`watcher` and `bench.bench_watcher` it imports are that checkout's. It reads one JSON object a
line and answers each with one: {"op": "init", "url", "pattern", "rule", "settings"} makes the
watcher (its clock stands still until "advance" moves it); {"op": "pass", "sweep",
"holder_check"} runs one pass and answers what it did and its wall time; {"op": "advance",
"seconds"} moves the clock; {"op": "now"} sets the clock to the wall clock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# The script's own directory would shadow the checkout's modules (bench/common.py as `common`).
sys.path.pop(0)


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # anything printed goes to stderr; stdout carries the answers
    import watcher
    from bench.bench_watcher import CountingTracking
    from watcher.service import Watcher
    from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

    class Clock:
        def __init__(self) -> None:
            self.now = time.time()

        def __call__(self) -> float:
            return self.now

    w: Any = None
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        reply: dict[str, Any] = {}
        if op == "init":
            settings = WatcherSettings(
                tracking_uri=msg["url"],
                http=HttpConfig(enabled=False),
                rules=[RuleConfig(**msg["rule"])],
                **msg.get("settings", {}),
            )
            w = Watcher(settings, CountingTracking(msg["url"]), clock=Clock())
            reply = {
                "watcher_module": os.path.dirname(watcher.__file__),
                "holder_check_runs": w.holder_check_runs,
                "holder_check_seconds": settings.holder_check_seconds,
                "write_concurrency": settings.write_concurrency,
                "max_rankings_per_pass": settings.max_rankings_per_pass,
            }
        elif op == "pass":
            w.tracking.searches = {}
            started = time.perf_counter()
            result = w.run_pass(sweep=msg.get("sweep"), holder_check=msg.get("holder_check"))
            seconds = time.perf_counter() - started
            actions: dict[str, int] = {}
            for outcome in result.outcomes:
                actions[outcome.action] = actions.get(outcome.action, 0) + 1
            reply = {
                "ok": result.ok,
                "error": result.error,
                "seconds": seconds,
                "tag_writes": result.tag_writes,
                "actions": actions,
                "rankings_deferred": result.rankings_deferred,
                "holder_checks_deferred": result.holder_checks_deferred,
                "holder_runs": int(w.tracking.searches.get("holder check", {}).get("runs", 0)),
                "searches": w.tracking.searches,
            }
        elif op == "advance":
            w.clock.now += msg["seconds"]
        elif op == "now":
            w.clock.now = time.time()
        else:
            reply = {"error": f"unknown op {op!r}"}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
