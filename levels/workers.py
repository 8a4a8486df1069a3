"""A process pool for CPU-heavy pure-Python work (the reference OpenQASM 3 importer).

A worker thread is not enough for such work: it holds the GIL, and every FUSE request of
the daemon then waits for it (a 4 s parse made `ls` take 0.3 s). Small jobs stay in
threads, where a process round trip would cost more than it saves. The pool starts on first
use with the `spawn` method, because forking a daemon that runs threads is unsafe.
"""

import atexit
import concurrent.futures
import multiprocessing
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: concurrent.futures.ProcessPoolExecutor | None = None


def _get_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=2, mp_context=multiprocessing.get_context("spawn")
            )
            atexit.register(shutdown)
        return _pool


def run_in_process(function: Callable[..., T], *args: object) -> T:
    """Run `function(*args)` in a pool process and wait (blocking: call it from a thread).

    Where no process can be spawned (a program read from stdin has no main module for the
    child to import) it runs here instead, in the calling thread."""
    global _pool
    try:
        return _get_pool().submit(function, *args).result()
    except concurrent.futures.process.BrokenProcessPool:
        with _lock:
            _pool = None
        return function(*args)


def shutdown() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
