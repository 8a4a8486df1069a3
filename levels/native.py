"""Long-lived threads for the Qiskit calls the daemon makes itself.

Qiskit's Rust library allocates with a bundled mimalloc, which keeps a heap per thread and
tears it down when the thread exits. trio's worker threads are recycled and retire after
ten idle seconds, so Qiskit code run there left memory owned by threads that no longer
existed; the daemon's three unexplained segfaults (NULL thread descriptor inside mimalloc)
all happened on such threads. Work on untrusted programs runs in worker processes
(levels/workers.py); what stays in the daemon (decoding and encoding states, applying an
already accepted circuit to a live state) runs here, on threads that live as long as the
daemon, as many as `performance.io_threads`.
"""

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

_threads = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="qfs-native")


def configure(threads: int) -> None:
    """Size the pool (at mount, before any call)."""
    global _threads
    _threads.shutdown(wait=False)
    _threads = concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                                     thread_name_prefix="qfs-native")


async def run_sync(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on a long-lived thread, awaited without blocking the trio loop."""
    future = _threads.submit(function, *args)
    await wait_for(future)
    return future.result()


async def wait_for(future: concurrent.futures.Future) -> None:
    """Await any pool's future from trio's thread without blocking it."""
    if not future.done():
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
