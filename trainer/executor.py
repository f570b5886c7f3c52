"""The one seam through which trials run: local processes now, a distributed backend later.

An executor is set up with a worker initializer (called once per worker with the context that
does not change between trials) and then takes tasks. ``InlineExecutor`` runs them in this
process (``--jobs 1``), ``ProcessExecutor`` in a pool of fresh (spawned) processes,
``trainer.ray_executor.RayExecutor`` in a pool of Ray actors (``--backend ray``). A factory also
gets ``env``, the variables a worker on another machine needs (tracking URI, experiment, sweep
id); local workers inherit this process's environment and ignore it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn(task)`` somewhere; at most ``slots`` tasks make progress at a time."""

    slots: int

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]: ...

    def shutdown(self, *, cancel: bool = False) -> None: ...


class InlineExecutor:
    """Runs each task in this process, at submit time."""

    slots = 1

    def __init__(self, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
        initializer(*initargs)

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(task))
        except Exception as e:  # delivered through the future, as from a process
            future.set_exception(e)
        return future

    def shutdown(self, *, cancel: bool = False) -> None:
        return None


class ProcessExecutor:
    """A pool of ``jobs`` spawned processes, each initialized once."""

    def __init__(self, jobs: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
        self.slots = jobs
        # spawn, not fork: the parent has threads and MLflow/XGBoost state a fork would copy
        self._pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=initializer,
            initargs=initargs,
        )

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]:
        return self._pool.submit(fn, task)

    def shutdown(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


class ExecutorFactory(Protocol):
    def __call__(
        self,
        jobs: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
        *,
        env: Mapping[str, str] | None = None,
    ) -> Executor: ...


def local_executor(
    jobs: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
    *,
    env: Mapping[str, str] | None = None,
) -> Executor:
    """``jobs`` == 1: inline; otherwise a process pool."""
    if jobs <= 1:
        return InlineExecutor(initializer, initargs)
    return ProcessExecutor(jobs, initializer, initargs)


def prestart(factory: ExecutorFactory, jobs: int, imports: Sequence[str]) -> None:
    """Let a factory that can start its workers now (Ray: connect, create the actors and import
    ``imports`` in them) do so, before the initializer's arguments exist; local ones cannot."""
    start = getattr(factory, "prestart", None)
    if start is not None:
        start(jobs, imports)


def discard_prestarted(factory: ExecutorFactory) -> None:
    """Free what ``prestart`` started when no executor follows (bad input, interrupted)."""
    discard = getattr(factory, "discard", None)
    if discard is not None:
        discard()


class ExecutorSession:
    """One executor's life, shared by a sweep and a retrain.

    Entering prestarts the factory's workers (Ray: they start while the caller prepares the
    data); ``start`` makes the executor, which takes those workers over; ``shutdown`` ends it
    (``cancel``: queued tasks are dropped, Ray's running ones killed). Leaving shuts down an
    executor still running, without cancelling, and frees what was prestarted if no executor
    took it (bad input, interrupted).
    """

    def __init__(self, factory: ExecutorFactory, jobs: int, imports: Sequence[str]) -> None:
        self.factory = factory
        self.jobs = jobs
        self.imports = imports
        self._executor: Executor | None = None

    def __enter__(self) -> ExecutorSession:
        prestart(self.factory, self.jobs, self.imports)
        return self

    def start(
        self, initializer: Callable[..., None], initargs: tuple[Any, ...], *, env: Mapping[str, str]
    ) -> Executor:
        self._executor = self.factory(self.jobs, initializer, initargs, env=env)
        return self._executor

    def shutdown(self, *, cancel: bool = False) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(cancel=cancel)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.shutdown()
        finally:
            discard_prestarted(self.factory)  # a no-op once the executor took the workers over


def for_backend(backend: str, ray_address: str | None = None) -> ExecutorFactory:
    """The factory of ``--backend local|ray``; Ray's is checked now (installed, address reachable)."""
    if backend == "ray":
        from trainer.ray_executor import ray_factory

        return ray_factory(ray_address)
    return local_executor
