"""Trials on Ray, behind the same executor seam as the local processes (``--backend ray``).

Why an actor pool: the seam promises "the initializer runs once per worker, then the worker
takes many tasks", because a worker's set-up (folds, each fold's ``QuantileDMatrix``) costs
more than a short trial. A Ray actor is exactly such a worker: a process of its own whose
constructor runs the initializer once and whose state lives as long as the pool. Plain Ray
tasks with a per-process cache would get the same reuse only by accident (Ray picks the worker
process of each task, and may start fresh ones), could not be counted to ``--jobs`` without a
second mechanism, and would hide set-up time inside the first trials. So: ``jobs`` actors of
one CPU each, one trial at a time per actor, at most ``jobs`` trials in flight.

- The initializer's arguments (the prepared dataset inside them) go to the object store once
  (``ray.put``); every actor receives the same object, read zero-copy on its node.
- Each actor's ``setup`` sets ``env`` in its process before the initializer runs: the driver's
  tracking URI, experiment and sweep id and its MLflow client settings, since workers on a
  cluster do not inherit the driver's environment. (Not Ray's ``runtime_env``: that makes Ray
  start a fresh worker process through its runtime-env agent instead of one it keeps ready,
  and the variables are only known once the experiment exists, after the actors started.)
- ``RayFactory.prestart`` starts Ray and the actors (with the trial code's imports) while the
  driver still loads and checks the data.
- A worker that dies (process killed, node lost) fails the trial it was running with
  ``WorkerDied`` (the sweep marks that run FAILED with the reason) and is replaced by a fresh
  actor, so the sweep carries on at the same width; replacements are bounded.
- ``shutdown(cancel=True)`` (the driver was interrupted) kills the actors at once and waits,
  bounded, until every trial's future has settled, so the sweep knows which runs the workers
  ended and marks the rest KILLED.
- Without an address a local Ray with ``jobs`` CPUs is started and stopped with the pool; with
  one the driver connects (after a bounded reachability check) and disconnects, leaving the
  cluster running.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from functools import partial
from typing import Any, TypeVar

from trainer.errors import InputError, TrainingError

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "pip install 'mlflow-podium[ray]'"
# Seconds to wait for a cluster's port to answer before giving up (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 10.0
# How long the sweep waits for a cluster that accepted the TCP connect to answer as Ray
# (``PODIUM_RAY_WAIT_SECONDS`` overrides it, e.g. for a head that is still starting).
CLUSTER_WAIT_S = 60.0
WAIT_ENV = "PODIUM_RAY_WAIT_SECONDS"
# Seconds ``shutdown(cancel=True)`` waits for killed trials to report back.
CANCEL_WAIT_S = 30.0
# Default ports: the GCS of ``ray start --head`` and the Ray Client server.
GCS_PORT, CLIENT_PORT = 6379, 10001
# Driver environment variables the workers get: MLflow's client settings (not its credentials,
# which belong in the cluster's own environment, e.g. a Kubernetes secret).
_FORWARDED_PREFIXES = ("MLFLOW_",)
_SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY")


def cluster_wait_seconds() -> float:
    """The bound on reaching a cluster: ``PODIUM_RAY_WAIT_SECONDS``, else 60 s."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return CLUSTER_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= threading.TIMEOUT_MAX:  # Thread.join takes no longer wait
        raise InputError(
            f"{WAIT_ENV}={raw!r}: expected a number of seconds above 0 (at most {threading.TIMEOUT_MAX:.3g})"
        )
    return value


class WorkerDied(TrainingError):
    """The Ray worker running a trial died before the trial ended (killed, OOM, node lost)."""


def import_ray() -> Any:
    """The ``ray`` module, or an InputError (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """InputError naming ``address`` unless its host answers on its port within ``timeout``.

    ``ray.init`` retries an unreachable cluster for minutes; a TCP connect is bounded.
    ``auto`` (Ray's own discovery) and ``local`` are left to Ray.
    """
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://").split("/", 1)[0]
    host, sep, port_text = hostport.rpartition(":")
    if not sep:
        host, port_text = hostport, str(CLIENT_PORT if client else GCS_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"--ray-address {address!r}: {port_text!r} is not a port number") from None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as e:
        raise InputError(
            f"cannot reach the Ray cluster at {address} within {timeout:.0f} s: {e.strerror or e}"
        ) from e


def worker_env(extra: Mapping[str, str]) -> dict[str, str]:
    """``extra`` plus the driver's MLflow client settings (credentials apart)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_FORWARDED_PREFIXES) and not any(m in k for m in _SECRET_MARKERS)
    }
    env.update(extra)
    return env


class TrialActor:
    """One Ray worker (made remote at run time): its imports at start, the initializer once
    (``setup``), then one task at a time.

    The imports need nothing from the driver, so an actor created early pays them while the
    driver still prepares the data; ``setup`` then gets the sweep's environment and arguments.
    """

    def __init__(self, imports: Sequence[str] = ()) -> None:
        # Ray forwards a worker's output to the driver: report only problems, as a local pool
        # worker does (with one job the sweep leaves logging to the process it runs in)
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        for module in imports:
            importlib.import_module(module)
        self._setup_error: str | None = None

    def setup(
        self, env: Mapping[str, str], initializer: Callable[..., None], initargs: tuple[Any, ...]
    ) -> None:
        os.environ.update(env)  # workers on a cluster do not inherit the driver's environment
        try:
            initializer(*initargs)
        except Exception as e:
            self._setup_error = f"{type(e).__name__}: {e}"
            raise

    def run(self, fn: Callable[[Any], Any], task: Any) -> Any:
        if self._setup_error is not None:
            raise TrainingError(f"the Ray worker's set-up failed: {self._setup_error}")
        return fn(task)


class _NoSigtermNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class _Started:
    """Actors created before the sweep's arguments exist (``RayFactory.prestart``)."""

    def __init__(self, jobs: int, address: str | None, imports: Sequence[str]) -> None:
        self.jobs = jobs
        self.address = address
        self.imports = tuple(imports)
        self.actors: list[Any] = []
        self.owns_connection = False
        self.error: BaseException | None = None
        if address is None:
            # A local Ray starts on this (the main) thread: Ray starts its gcs_server and raylet
            # with PR_SET_PDEATHSIG, which Linux sends when the *thread* that forked them ends,
            # so a local Ray started from a short-lived thread dies with it.
            ray = import_ray()
            if not ray.is_initialized():
                _connect(ray, jobs, None)
                self.owns_connection = True
        # connecting to a cluster and creating the actors run beside the driver's work
        self._thread = threading.Thread(target=self._start, name="ray-prestart", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        # ray.init warns that it sets no SIGTERM handler from a thread; the driver keeps its own
        logging.getLogger("ray._private.worker").addFilter(_NoSigtermNote())
        try:
            ray = import_ray()
            if not ray.is_initialized():
                _connect(ray, self.jobs, self.address)
                self.owns_connection = True
            cls = _actor_class(ray)
            self.actors = [cls.remote(self.imports) for _ in range(self.jobs)]
        except BaseException as e:  # raised in the driver's thread by result()
            self.error = e

    def result(self) -> _Started:
        # An open port that is not a Ray cluster passes the TCP check, and ray.init then retries
        # for ever: bound the wait.
        wait = cluster_wait_seconds()
        self._thread.join(wait)
        if self._thread.is_alive():
            raise InputError(
                f"no Ray cluster answered at {self.address} within {wait:g} s "
                f"(the port is open: is it a Ray head's GCS port? {WAIT_ENV} sets the wait)"
            )
        if self.error is not None:
            raise self.error
        return self

    def discard(self) -> None:
        """No executor followed (bad input, interrupted): free what was started."""
        self._thread.join(cluster_wait_seconds())
        if self._thread.is_alive():
            return  # still trying to reach a cluster that never answered: nothing to free
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.owns_connection:
            ray.shutdown()


class RayExecutor:
    """``jobs`` Ray actors, each initialized once; a future per task."""

    def __init__(
        self,
        jobs: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
        *,
        address: str | None = None,
        env: Mapping[str, str] | None = None,
        started: _Started | None = None,
    ) -> None:
        ray = self._ray = import_ray()
        self.slots = jobs
        self.address = address
        self._owns_connection = False
        actors: list[Any] = []
        if started is not None:
            started.result()
            self._owns_connection = started.owns_connection
            actors = started.actors[:jobs]
            for extra in started.actors[jobs:]:
                ray.kill(extra, no_restart=True)
        elif not ray.is_initialized():
            _connect(ray, jobs, address)
            self._owns_connection = True
        self._lock = threading.Lock()
        self._closing = False
        self._idle: list[Any] = []
        self._pending: dict[Future[Any], Any] = {}  # our future -> the actor running it
        self._alive = 0
        self._replacements_left = 2 * jobs + 2
        try:
            self._initargs = ray.put(initargs)  # once: every actor reads the same object
            self._actor_class = _actor_class(ray)
            self._imports = started.imports if started is not None else ()
            self._initializer = initializer
            self._env = dict(env or {})
            for actor in actors:
                self._idle.append(self._set_up(actor))
            while len(self._idle) < jobs:
                self._idle.append(self._new_actor())
        except BaseException:
            self._disconnect()
            raise

    def _new_actor(self) -> Any:
        return self._set_up(self._actor_class.remote(self._imports))

    def _set_up(self, actor: Any) -> Any:
        # queued before the actor's first trial; a sync actor runs its calls in order
        actor.setup.remote(self._env, self._initializer, self._initargs)
        self._alive += 1
        return actor

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]:
        with self._lock:
            if not self._idle and self._alive < self.slots and self._replacements_left > 0:
                self._replacements_left -= 1
                self._idle.append(self._new_actor())
            if not self._idle:
                if self._alive == 0:
                    raise TrainingError("every Ray worker of the sweep died and no replacement is left")
                raise TrainingError(f"more than {self.slots} trials submitted at once")
            actor = self._idle.pop()
            future: Future[R] = Future()
            future.set_running_or_notify_cancel()
            self._pending[future] = actor
        ref = actor.run.remote(fn, task)
        ref.future().add_done_callback(partial(self._settle, actor, future))
        return future

    def _settle(self, actor: Any, future: Future[Any], raw: Future[Any]) -> None:
        """Runs on Ray's thread: free (or retire) the actor first, then wake the sweep."""
        error = raw.exception()
        died = isinstance(error, self._ray.exceptions.RayActorError)
        with self._lock:
            self._pending.pop(future, None)
            if died:
                self._alive -= 1
                if getattr(error, "actor_init_failed", False):
                    self._replacements_left = 0  # set-up itself fails: a new actor would too
            elif not self._closing:
                self._idle.append(actor)
        if error is None:
            future.set_result(raw.result())
        elif died:
            future.set_exception(WorkerDied(f"the Ray worker running this trial died: {_summary(error)}"))
        else:
            future.set_exception(TrainingError(f"Ray failed the trial: {_summary(error)}"))

    def shutdown(self, *, cancel: bool = False) -> None:
        ray = self._ray
        with self._lock:
            self._closing = True
            pending = list(self._pending)
            actors = [*self._idle, *self._pending.values()]
            self._idle.clear()
        try:
            if cancel:
                for actor in actors:
                    ray.kill(actor, no_restart=True)
                # settled futures tell the sweep which runs a worker ended and which to mark KILLED
                wait_futures(pending, timeout=CANCEL_WAIT_S)
            else:
                wait_futures(pending)
                for actor in actors:
                    ray.kill(actor, no_restart=True)  # free the cluster's CPUs now
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._owns_connection:
            self._owns_connection = False
            self._ray.shutdown()  # stops a local Ray; only disconnects from a cluster


def _connect(ray: Any, jobs: int, address: str | None) -> None:
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            # no dashboard: its port (8265) is the watcher's default, and a sweep does not need it
            ray.init(address="local", num_cpus=jobs, include_dashboard=False, logging_level=logging.WARNING)
    except InputError:
        raise
    except Exception as e:  # ConnectionError, RuntimeError, ...: Ray's errors for a bad cluster
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise InputError(f"cannot start or reach {where}: {str(e).strip().splitlines()[0]}") from e
    finally:
        # ray.init replaces SIGTERM's handler with a bare sys.exit; keep the caller's
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _actor_class(ray: Any) -> Any:
    return ray.remote(TrialActor).options(num_cpus=1, max_restarts=0)


def _summary(error: BaseException) -> str:
    """Ray's multi-line error text on one line, bounded (it goes into a run tag)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text or type(error).__name__)[:500]


class RayFactory:
    """The executor factory of ``--backend ray``.

    ``prestart(jobs, imports)`` connects and creates the actors at once, in the background, so
    Ray's start and the workers' imports overlap the driver's own preparation; the executor made
    next takes those actors over. Without it the executor connects and creates them itself.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._started: _Started | None = None

    def prestart(self, jobs: int, imports: Sequence[str] = ()) -> None:
        self.discard()
        self._started = _Started(jobs, self.address, imports)

    def discard(self) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.discard()

    def __call__(
        self,
        jobs: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
        *,
        env: Mapping[str, str] | None = None,
    ) -> RayExecutor:
        started, self._started = self._started, None
        return RayExecutor(
            jobs, initializer, initargs, address=self.address, env=worker_env(env or {}), started=started
        )


def ray_factory(address: str | None) -> RayFactory:
    """An executor factory for ``--backend ray``; checks Ray and the address now (exit 2 early)."""
    import_ray()
    cluster_wait_seconds()
    if address:
        check_reachable(address)
    return RayFactory(address)
