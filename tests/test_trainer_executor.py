"""The executor seam: inline and process pools run the same tasks with one init per worker."""

from __future__ import annotations

import os

import pytest

from trainer.executor import InlineExecutor, ProcessExecutor, local_executor

_state: dict[str, int] = {}


def _init(offset: int) -> None:
    _state["offset"] = offset
    _state["inits"] = _state.get("inits", 0) + 1


def _task(x: int) -> tuple[int, int, int]:
    return x + _state["offset"], os.getpid(), _state["inits"]


def _fail(x: int) -> int:
    raise ValueError(f"bad task {x}")


def test_local_executor_picks_inline_for_one_job() -> None:
    """--jobs 1 runs trials in this process; more jobs use a process pool."""
    inline = local_executor(1, _init, (0,))
    assert isinstance(inline, InlineExecutor)
    pool = local_executor(2, _init, (0,))
    try:
        assert isinstance(pool, ProcessExecutor)
        assert pool.slots == 2
    finally:
        pool.shutdown()


def test_inline_executor_runs_at_submit_and_delivers_errors_through_the_future() -> None:
    """Inline tasks run in this process; an exception reaches the caller via the future."""
    executor = InlineExecutor(_init, (10,))
    value, pid, _ = executor.submit(_task, 1).result()
    assert (value, pid) == (11, os.getpid())
    with pytest.raises(ValueError, match="bad task 3"):
        executor.submit(_fail, 3).result()


def test_process_executor_initializes_each_worker_once() -> None:
    """Each spawned worker runs the initializer once and then serves many tasks."""
    executor = ProcessExecutor(2, _init, (100,))
    try:
        results = [executor.submit(_task, i).result() for i in range(6)]
    finally:
        executor.shutdown()
    assert [r[0] for r in results] == [100 + i for i in range(6)]
    assert os.getpid() not in {r[1] for r in results}
    assert {r[2] for r in results} == {1}
