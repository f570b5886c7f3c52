"""Retrain jobs of the training dashboard: one at a time, from a bounded queue.

A job runs ``python -m trainer retrain --run-id=R --exclude=a,b`` (or ``--drop-below=X``) as a
child process of the daemon, with the daemon's tracking URI in its environment: the watcher
never imports the trainer. The child's output is kept line by line (bounded per job) so the
page can show its tail while it runs and after it ended. The trainer prints
``new_run_id=<id>`` as soon as it created the new run; that is how a job learns its run.

A watcher installed without the trainer (the sidecar image, ``pip install
'mlflow-podium[watcher]'``) refuses jobs up front with :class:`TrainerMissing` (HTTP 501) rather
than starting a child that would fail on its first import.

Stopping the runner (the daemon got SIGTERM) sends SIGTERM to a running child, which ends its
run KILLED, and waits for it; jobs still queued end ``failed`` without starting.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

log = structlog.get_logger("watcher")

JobStatus = Literal["queued", "running", "finished", "failed"]

# Jobs waiting behind the running one; one more is refused (HTTP 429).
MAX_QUEUED = 4
# Ended jobs kept for GET /api/jobs (oldest forgotten first).
KEEP_JOBS = 50
# Lines of child output kept per job; the page shows the last TAIL_LINES.
KEEP_LINES = 5_000
TAIL_LINES = 40
# How long a stopping runner waits for a child to end its run after SIGTERM before killing it.
STOP_GRACE_S = 30.0

NEW_RUN_LINE = re.compile(r"^new_run_id=([0-9A-Za-z_-]+)\s*$")
# The trainer's closing line, for a trainer that does not print NEW_RUN_LINE.
RETRAINED_LINE = re.compile(r" as run ([0-9a-f]{32}) ")


# What ``python -m trainer retrain`` needs beyond the watcher's own dependencies: the trainer
# package and the heavy part of the `trainer` extra. Looked up, never imported.
TRAINER_MODULES = ("trainer", "xgboost", "matplotlib", "sklearn")
FULL_IMAGE = "the full Podium image (podium, `--target full`)"


class QueueFull(Exception):
    """The queue holds MAX_QUEUED jobs already."""


class TrainerMissing(Exception):
    """This install has no trainer, so it cannot retrain: that needs the full image."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"retraining runs the trainer, which this watcher does not have (no {', '.join(self.missing)}): "
            f"run it from {FULL_IMAGE}, or pip install 'mlflow-podium[trainer]'"
        )


def missing_trainer_modules() -> list[str]:
    """The modules of TRAINER_MODULES this interpreter cannot import; empty when it can retrain."""
    return [name for name in TRAINER_MODULES if importlib.util.find_spec(name) is None]


def trainer_available() -> bool:
    """True when this interpreter can run ``python -m trainer retrain``."""
    return not missing_trainer_modules()


@dataclass
class Job:
    job_id: str
    run_id: str
    exclude: tuple[str, ...] | None
    drop_below: float | None
    created_at: float
    experiment_id: str | None = None  # the source run's, for links to the new run
    status: JobStatus = "queued"
    new_run_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=KEEP_LINES))

    def command(self, python: str) -> list[str]:
        # One argv item per option ("--exclude=a,b"): a value starting with "-" (a threshold of
        # -5e-05, a feature named "-delta") would otherwise be read by argparse as an option.
        cmd = [python, "-m", "trainer", "retrain", f"--run-id={self.run_id}"]
        if self.exclude is not None:
            cmd.append(f"--exclude={','.join(self.exclude)}")
        if self.drop_below is not None:
            cmd.append(f"--drop-below={self.drop_below!r}")
        return cmd

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(list(self.lines)[-lines:])


class JobRunner:
    """Runs retrain jobs one at a time in a worker thread; thread-safe."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        python: str = sys.executable,
        max_queued: int = MAX_QUEUED,
        keep: int = KEEP_JOBS,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
        missing: Sequence[str] | None = None,
    ) -> None:
        """``missing``: the trainer's modules absent from ``python``; None looks them up in this
        interpreter (the daemon's jobs run ``sys.executable``)."""
        self.tracking_uri = tracking_uri
        self.missing = tuple(missing_trainer_modules() if missing is None else missing)
        self.python = python
        self.max_queued = max_queued
        self.keep = keep
        self.clock = clock
        self._environ = dict(environ)
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the API's side ----------------------------------------------------------------------

    def submit(
        self,
        run_id: str,
        *,
        exclude: Sequence[str] | None = None,
        drop_below: float | None = None,
        experiment_id: str | None = None,
    ) -> Job:
        """Queue a job; raises TrainerMissing without the trainer, QueueFull when MAX_QUEUED jobs
        wait already."""
        if self.missing:
            raise TrainerMissing(self.missing)
        with self._lock:
            if self._stopping.is_set():
                raise QueueFull("the watcher is shutting down")
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= self.max_queued:
                raise QueueFull(f"{waiting} retrain jobs are waiting already; try again when one has started")
            job = Job(
                job_id=uuid.uuid4().hex[:12],
                run_id=run_id,
                exclude=tuple(exclude) if exclude is not None else None,
                drop_below=drop_below,
                created_at=self.clock(),
                experiment_id=experiment_id,
            )
            self._jobs[job.job_id] = job
            self._forget_old()
        self._queue.put(job)
        log.info("retrain_job_queued", job_id=job.job_id, run_id=run_id)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        """Every kept job, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def _forget_old(self) -> None:
        ended = [j for j in self._jobs.values() if j.status in ("finished", "failed")]
        for job in ended[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job.job_id]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> JobRunner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="podium-jobs", daemon=True)
            self._thread.start()
        return self

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End the running child (SIGTERM, then SIGKILL after ``grace``); fail queued jobs."""
        self._stopping.set()
        self._queue.put(None)
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            log.info("retrain_job_stopping", pid=proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(grace + 5)
        with self._lock:
            for job in self._jobs.values():
                if job.status == "queued":
                    self._end(job, "failed", error="the watcher stopped before the job started")

    # -- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                return
            try:
                self._run(job)
            except Exception as e:  # the worker must outlive any one job
                log.error("retrain_job_crashed", job_id=job.job_id, error=str(e), exc_info=True)
                with self._lock:
                    self._end(job, "failed", error=f"{type(e).__name__}: {e}")

    def _run(self, job: Job) -> None:
        env = {**self._environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "PYTHONUNBUFFERED": "1"}
        with self._lock:
            if self._stopping.is_set():
                return
            job.status = "running"
            job.started_at = self.clock()
            # Its own session: a Ctrl-C on the daemon's terminal reaches the daemon, which then
            # ends the child itself (stop()).
            proc = subprocess.Popen(
                job.command(self.python),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=env,
                start_new_session=True,
            )
            self._proc = proc
        log.info("retrain_job_started", job_id=job.job_id, run_id=job.run_id, pid=proc.pid)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                job.lines.append(line)
                if job.new_run_id is None and (m := NEW_RUN_LINE.match(line) or RETRAINED_LINE.search(line)):
                    job.new_run_id = m.group(1)
        code = proc.wait()
        with self._lock:
            self._proc = None
            job.exit_code = code
            if code == 0 and job.new_run_id is not None:
                self._end(job, "finished")
            elif code == 0:
                self._end(job, "failed", error="the trainer ended without naming the new run")
            elif self._stopping.is_set():
                self._end(job, "failed", error=f"stopped: the watcher shut down (exit code {code})")
            else:
                self._end(job, "failed", error=f"the trainer exited with code {code}")
        log.info("retrain_job_ended", job_id=job.job_id, status=job.status, exit_code=code)

    def _end(self, job: Job, status: JobStatus, *, error: str | None = None) -> None:
        job.status = status
        job.error = error
        job.ended_at = self.clock()
        if error:
            job.lines.append(f"[podium] {error}")
