"""The fabric: every level opened over one data directory, in the order they depend on.

Programs and tests use this without FUSE; the mount wraps it.
"""

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

from levels import native, workers
from levels.budget import WriteBudget
from levels.circuits import MAX_META_BYTES, CircuitStore
from levels.config import Config
from levels.coordinator import Coordinator
from levels.dask_runs import DaskRunner
from levels.durations import parse_interval
from levels.errors import Unavailable
from levels.hosts import Follower
from levels.metrics import Metrics
from levels.oplog import OpLog
from levels.qubits import LiveQubitManager
from levels.scratch import ScratchFiles
from levels.search import Document, SearchIndex
from levels.states import StateStore
from levels.store.backends import open_blobs, open_meta
from levels.store.canary import KeyCanary
from levels.store.feed import ChangeFeed
from levels.store.pg import PostgresMetaStore
from levels.store.sealed import SealedBlobStore, Sealer, load_or_create_key
from levels.telemetry import Telemetry
from levels.workflowdef import MAX_DEFINITION_BYTES

log = logging.getLogger("qfs")
SYNC_INTERVAL = 1.0  # seconds between background flushes of committed metadata


class Fabric:
    def __init__(self, data_dir: Path, config: Config, reindex: bool = False,
                 key_file: Path | None = None) -> None:
        self.data_dir = data_dir
        self.config = config
        data_dir.mkdir(parents=True, exist_ok=True)
        self.scratch = ScratchFiles()
        self.budget = WriteBudget(config.performance.max_buffered_mb_per_user << 20, {
            "circuits": (config.circuit_fs.max_program_bytes, "circuit_fs.max_program_bytes"),
            "states": ((config.state_store.max_checkpoint_size_mb + 1) << 20,  # + .npy header
                       "state_store.max_checkpoint_size_mb"),
            "workflows": (MAX_DEFINITION_BYTES, "the workflow size limit"),
            "meta.json": (MAX_META_BYTES, "the meta.json size limit"),
        })
        self.meta = open_meta(data_dir, config)
        try:  # before any thread or process starts: an unreachable S3 ends here
            inner_blobs = open_blobs(data_dir, config)
        except BaseException:
            self.meta.close()
            raise
        self.oplog = OpLog(self.meta)
        cfs = config.circuit_fs
        # circuit_fs.index_types: text is the Whoosh index, metadata the facets index that
        # answers structured queries, semantic the similar/ directories.
        self.index_types = set(cfs.index_types) if cfs.indexing_enabled else set()
        self.search = SearchIndex(
            data_dir / "index", cfs.search_result_limit, cfs.index_commit_interval_ms / 1000,
            facets=self.meta if "metadata" in self.index_types else None,
            text="text" in self.index_types,
            off_key=("circuit_fs.index_types" if cfs.indexing_enabled
                     else "circuit_fs.indexing_enabled"),
        )
        # cross_level.cache_size_mb: half for circuit views, half for decoded states. With
        # cache_enabled off a byte budget of 1 leaves each cache only the entry in use.
        cross = config.cross_level
        cache_bytes = (cross.cache_size_mb << 20) // 2 if cross.cache_enabled else 1
        perf = config.performance
        native.configure(perf.io_threads)
        limits = workers.Limits(memory_mb=perf.worker_memory_mb,
                                cpu_seconds=perf.worker_cpu_seconds,
                                wall_seconds=perf.worker_cpu_seconds * 2)
        # Two pools: a run may simulate for minutes, and parses and views must not queue
        # behind it (two 30 s noisy runs would otherwise hold every cp for 30 s).
        self.workers = workers.WorkerPool(perf.worker_processes, limits)
        executor = config.live_qubit_mgr.executor
        # Runs on a Dask cluster take the pool's place (the same run and shutdown).
        self.run_workers = cast(workers.WorkerPool, DaskRunner(executor)) \
            if executor.startswith("dask://") else \
            workers.WorkerPool(perf.worker_processes, limits,
                               preload=(*workers.QISKIT, "qiskit_aer"))
        # Called with a circuit's name after each change committed on this host (the FUSE
        # layer drops the kernel's cached attributes of what the change shows in).
        self.circuit_watchers: list[Callable[[str], None]] = []
        self.circuits = CircuitStore(self.meta, cfs, self.workers, on_change=self._circuit_changed,
                                     cache_bytes=cache_bytes, notice=self.oplog.note)
        self.metrics = Metrics(config.live_qubit_mgr.feedforward_latency_target_ms / 1000)
        self.metrics.caches += self.circuits.caches()
        sst = config.state_store
        sealer = Sealer(load_or_create_key(key_file or data_dir / "state.key"),
                        perf.compression_threads)
        blobs = SealedBlobStore(inner_blobs, sealer)
        self.states = StateStore(self.meta, blobs, sst,
                                 config.cross_level.migration_fidelity_threshold,
                                 cache_bytes=cache_bytes)
        self.key_canary = KeyCanary(self.meta, sealer)
        self.metrics.caches.append(self.states.decoded_npy)
        self.qubits = LiveQubitManager(self.meta, self.circuits, self.states,
                                       config.live_qubit_mgr, self.metrics, self.run_workers)
        self.telemetry = Telemetry(
            self.qubits, self.metrics,
            parse_interval(config.live_qubit_mgr.telemetry_collection_interval),
            config.performance.telemetry_buffer_size)
        self.coordinator = Coordinator(self.meta, self.qubits, self.states, self.circuits,
                                       self.metrics,
                                       config.cross_level.migration_fidelity_threshold,
                                       notice=self.oplog.note,
                                       migration_enabled=config.cross_level.migration_enabled)
        self.search.start(
            lambda: (c.search_document() for c in self.circuits.all_circuits()),
            expected=self.circuits.count(),
            force=reindex,
        )
        # On a shared metadata store, what other hosts change (levels/hosts.py); the
        # mount subscribes too. None on the embedded store: no other host writes it.
        self.feed: ChangeFeed | None = None
        if isinstance(self.meta, PostgresMetaStore):
            self.feed = ChangeFeed(self.meta)
            self.feed.subscribe(Follower(self.meta, self.circuits, self.search, self.qubits))
            self.feed.start()

        self._closing = threading.Event()
        self._syncer = threading.Thread(target=self._sync_periodically, name="qfs-sync",
                                        daemon=True)
        self._syncer.start()

    def _circuit_changed(self, name: str, document: Document | None) -> None:
        self.search.submit(name, document)
        for watcher in self.circuit_watchers:
            watcher(name)

    def make_durable(self) -> None:
        """What fsync() promises: every change committed so far is on disk (blobs are
        synced when written; the metadata store's commits are flushed here, or within
        SYNC_INTERVAL by the background syncer)."""
        self.meta.sync()

    def _sync_periodically(self) -> None:
        while not self._closing.wait(SYNC_INTERVAL):
            for what, chore in (("syncing the metadata store", self.meta.sync),
                                # here, not in listings: a readdir deletes nothing
                                ("expiring checkpoints", self.states.expire)):
                try:
                    chore()
                except Unavailable as exc:  # a shared store that is down: said, retried
                    log.warning("%s: %s; retrying", what, exc)
                except Exception:
                    log.exception("%s failed", what)

    def close(self) -> None:
        self._closing.set()
        self._syncer.join(timeout=10)
        if self.feed is not None:
            self.feed.close()
        self.search.close()
        self.meta.close()
        self.workers.shutdown()
        self.run_workers.shutdown()
