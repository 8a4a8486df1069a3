"""The worker pool awaited from trio's thread (WorkerPool.run_async): a job past its wall
time, a crash or a cancelled request costs its worker only; messages larger than the
socket's buffer travel whole both ways."""

import os
import resource
import time

import pytest
import trio

from levels.errors import WorkerDied
from levels.workers import Limits, WorkerPool

BIG = os.urandom(8 << 20)  # far beyond a socket pair's buffer: partial sends and reads


@pytest.fixture
def pool():
    pool = WorkerPool(1, Limits(wall_seconds=1.0), preload=())
    yield pool
    pool.shutdown()


async def _warm(pool: WorkerPool) -> None:
    """The first job starts the worker from a thread; later ones find it idle and are
    awaited on trio's thread."""
    assert await pool.run_async(bytes, b"warm") == b"warm"


def test_a_job_past_its_wall_time_is_stopped_and_the_next_one_runs(pool):
    async def main():
        await _warm(pool)
        started = time.monotonic()
        with pytest.raises(WorkerDied, match="took longer than 1 s"):
            await pool.run_async(time.sleep, 30)
        assert time.monotonic() - started < 10
        assert await pool.run_async(bytes, b"next") == b"next"
    trio.run(main)


def test_a_crashed_worker_is_named_and_replaced(pool):
    async def main():
        await _warm(pool)
        first = await pool.run_async(os.getpid)
        with pytest.raises(WorkerDied, match="SIGABRT"):
            await pool.run_async(os.abort)
        assert await pool.run_async(os.getpid) != first
    trio.run(main)


def test_a_cancelled_request_costs_its_worker_and_messages_travel_whole(pool):
    async def main():
        await _warm(pool)
        with trio.move_on_after(0.2):
            await pool.run_async(time.sleep, 30)
        assert await pool.run_async(bytes, BIG) == BIG  # a new worker, from a thread
        assert await pool.run_async(bytes, BIG) == BIG  # awaited on trio's thread
    trio.run(main)


def test_an_error_in_the_job_reaches_the_caller_and_keeps_the_worker(pool):
    async def main():
        await _warm(pool)
        first = await pool.run_async(os.getpid)
        with pytest.raises(RuntimeError, match="ValueError"):
            await pool.run_async(int, "not a number")
        assert await pool.run_async(os.getpid) == first
    trio.run(main)


def test_a_worker_whose_socket_is_numbered_past_1024_still_answers(pool):
    """A daemon may hold many descriptors: waiting for a reply must not use select(2)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert pool.run(bytes, b"blocking") == b"blocking"  # its socket opened after `held`
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_runs_the_daemons_code_whatever_its_working_directory(pool, tmp_path,
                                                                      monkeypatch):
    """`python -m` imports from the working directory first: another `levels` there (an
    older checkout a user mounts from) must not become the worker's code."""
    decoy = tmp_path / "levels"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "workers.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    assert pool.run(bytes, b"own code") == b"own code"
