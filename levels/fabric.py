"""The fabric: every level opened over one data directory, in the order they depend on.

Programs and tests use this without FUSE; the mount wraps it.
"""

import logging
from pathlib import Path

from levels import workers
from levels.circuits import CircuitStore
from levels.config import Config
from levels.metrics import Metrics
from levels.oplog import OpLog
from levels.qubits import LiveQubitManager
from levels.scratch import ScratchFiles
from levels.search import SearchIndex
from levels.store.meta import LmdbMetaStore

log = logging.getLogger("qfs")


class Fabric:
    def __init__(self, data_dir: Path, config: Config, reindex: bool = False) -> None:
        self.data_dir = data_dir
        self.config = config
        data_dir.mkdir(parents=True, exist_ok=True)
        self.oplog = OpLog()
        self.scratch = ScratchFiles()
        self.meta = LmdbMetaStore(data_dir / "meta.lmdb", config.circuit_fs.lmdb_map_size_mb)
        cfs = config.circuit_fs
        self.search = SearchIndex(
            data_dir / "index", cfs.search_result_limit, cfs.index_commit_interval_ms / 1000
        )
        self.circuits = CircuitStore(self.meta, cfs, on_change=self.search.submit)
        self.metrics = Metrics()
        self.qubits = LiveQubitManager(self.meta, self.circuits, config.live_qubit_mgr,
                                       self.metrics)
        self.search.start(
            lambda: (c.search_document() for c in self.circuits.all_circuits()),
            expected=self.circuits.count(),
            force=reindex,
        )

    def close(self) -> None:
        self.search.close()
        self.meta.close()
        workers.shutdown()
