"""Runs on a Dask cluster: `live_qubit_mgr.executor: dask://host:port` sends each run's job
(levels/execution.py: plain data in, counts out) to the cluster's workers instead of this
host's worker processes. The job carries its seed, so a run gives the counts a local run
gives. The workers need qfs importable (the same package version) and Qiskit Aer.

The client connects on the first run, not at mount (a mount that never runs imports no
Dask). A scheduler that cannot be reached fails that run with Unavailable naming it. The
worker processes' memory and CPU limits (performance.worker_*) are Dask's to set there.
"""

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from levels.errors import Unavailable

T = TypeVar("T")
CONNECT_SECONDS = 10


class DaskRunner:
    """The run pool's interface (levels/workers.py WorkerPool.run, shutdown) over Dask."""

    def __init__(self, address: str) -> None:
        self.address = address.removeprefix("dask://")
        self._client: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        with self._lock:
            if self._client is None:
                from distributed import Client

                try:
                    self._client = Client(f"tcp://{self.address}", timeout=CONNECT_SECONDS,
                                          set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise Unavailable(f"Dask scheduler unreachable at {self.address}: "
                                      f"{exc}") from exc
            return self._client

    def run(self, function: Callable[..., T], *args: object, limits: object = None) -> T:
        """`function(*args)` on a Dask worker (blocking: call it from a thread)."""
        future = self._connected().submit(function, *args, pure=False)
        return future.result()

    def shutdown(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
