"""Typed configuration with embedded defaults, read from the reference's qfs.yaml shape.

Precedence, lowest first: embedded defaults, a profile, the YAML file, QFS_* environment
variables. The layers are merged as plain mappings, remembering where each value came
from, and then validated once by pydantic models that forbid unknown keys: a typo in a
config file must not silently fall back to a default, and the message names the key.
"""

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from levels.durations import parse_duration, parse_interval, parse_retention
from levels.errors import Invalid


def _checked(parse: Callable[[str], object]) -> AfterValidator:
    """A pydantic check that `parse` accepts the value, with parse's own message."""
    def check(value: str) -> str:
        try:
            parse(value)
        except Invalid as exc:
            raise ValueError(str(exc)) from None
        return value
    return AfterValidator(check)


Duration = Annotated[str, _checked(parse_duration)]
Retention = Annotated[str, _checked(parse_retention)]  # a duration or `forever`
Interval = Annotated[str, _checked(parse_interval)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CircuitFsConfig(_Section):
    storage_backend: str = "lmdb"
    s3_endpoint: str = ""  # with storage_backend s3 (README "Scale-out")
    s3_bucket: str = ""
    indexing_enabled: bool = True  # false: no search index is kept and /search refuses
    index_types: list[Literal["text", "semantic", "metadata"]] = ["text", "semantic",
                                                                  "metadata"]
    versioning_enabled: bool = True  # false: a circuit keeps its latest version only
    max_versions_per_artifact: int = Field(default=10, ge=1)
    # Unpinned versions older than this are dropped when a newer one is written.
    retention_policy: Retention = "forever"
    search_result_limit: int = 10000
    similar_result_limit: int = 10
    index_commit_interval_ms: int = 1000
    lmdb_map_size_mb: int = 65536
    # What one program may ask for (levels/qasm.py ProgramLimits): over a limit is EFBIG.
    max_program_bytes: int = Field(default=4 << 20, ge=64)
    max_program_qubits: int = Field(default=1024, ge=1)
    max_program_operations: int = Field(default=100_000, ge=1)
    max_program_nesting: int = Field(default=64, ge=1)


class StateStoreConfig(_Section):
    storage_backend: str = "local_ssd"
    storage_path: str = ""  # empty: <data dir>/blobs
    # With storage_backend s3: the S3 server and bucket (empty: circuit_fs's).
    s3_endpoint: str = ""
    s3_bucket: str = ""
    default_serialization_format: str = "auto"  # or one of the seven; tensor_network = mps
    compression_enabled: bool = True
    compression_level: str | int = "balanced"  # fast (zstd 1), balanced (3), max (19), or N
    encryption_enabled: bool = True
    encryption_algorithm: Literal["AES-256-GCM"] = "AES-256-GCM"
    checkpoint_retention: Duration = "24h"
    max_checkpoint_size_mb: int = 1024
    amplitude_precision: str = "complex128"  # complex64 halves state vectors (fidelity kept)
    mps_max_bond: int = 64
    sparse_threshold: float = 0.0
    low_rank_k: int = 4
    shadow_snapshots: int = 2000

class DeviceConfig(_Section):
    name: str
    qubits: int = Field(ge=1)
    topology: str
    seed: int = 7


class LiveQubitConfig(_Section):
    allocation_strategy: Literal["topology_noise_aware", "noise_aware",
                                 "topology_aware"] = "topology_noise_aware"
    feedforward_enabled: bool = True
    feedforward_latency_target_ms: int = 10
    isolation_level: str = "none"  # the default isolate= of alloc commands
    calibration_interval: Interval = "1h"  # devices are calibrated anew this often
    telemetry_collection_interval: Interval = "1s"  # one /qubits/telemetry sample per period
    temporal_cooldown_ms: int = 1000
    # Where runs simulate: local worker processes, or a Dask cluster's scheduler
    # as dask://host:port (levels/dask_runs.py).
    executor: str = Field(default="local", pattern=r"^(local|dask://[^/\s]+:\d+)$")
    # The first device is /qubits; the others appear under /devices/<name>/.
    devices: list[DeviceConfig] = Field(
        default=[DeviceConfig(name="eagle", qubits=127, topology="heavy_hex", seed=7)],
        min_length=1)


class CrossLevelConfig(_Section):
    # Every change is one serializable transaction and every acknowledged write is visible
    # to the next read: nothing weaker is offered.
    consistency_level: Literal["strong"] = "strong"
    cache_enabled: bool = True
    cache_size_mb: int = 512
    migration_enabled: bool = True
    migration_fidelity_threshold: float = 0.95
    # lmdb (embedded, one host) or postgresql at metadata_dsn (many hosts).
    metadata_backend: str = Field(default="lmdb", pattern="^(lmdb|postgresql)$")
    metadata_dsn: str = ""


class PerformanceConfig(_Section):
    # Heavy operations (worker-process jobs and in-daemon Qiskit calls) running at once;
    # more wait their turn.
    max_concurrent_operations: int = Field(default=100, ge=1)
    io_threads: int = Field(default=4, ge=1, le=64)  # threads for in-daemon Qiskit calls
    compression_threads: int = Field(default=2, ge=1, le=64)  # zstd threads per checkpoint
    telemetry_buffer_size: int = Field(default=1000, ge=1, le=1_000_000)  # samples kept
    # Worker processes for Qiskit/Aer work on programs (levels/workers.py) and their limits.
    worker_processes: int = Field(default=2, ge=1, le=64)
    worker_memory_mb: int = Field(default=4096, ge=512)
    worker_cpu_seconds: int = Field(default=120, ge=1)
    # Memory one user's files being written may hold in the daemon (levels/budget.py).
    max_buffered_mb_per_user: int = Field(default=2048, ge=16)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    circuit_fs: CircuitFsConfig = CircuitFsConfig()
    live_qubit_mgr: LiveQubitConfig = LiveQubitConfig()
    state_store: StateStoreConfig = StateStoreConfig()
    cross_level: CrossLevelConfig = CrossLevelConfig()
    performance: PerformanceConfig = PerformanceConfig()
    # "section.key" -> where its value came from: a profile, a file path or QFS_*.
    provenance: dict[str, str] = {}

    def effective(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every setting with its value and origin, as /.qfs/config shows it."""
        shown: dict[str, dict[str, dict[str, Any]]] = {}
        for section, values in self.model_dump(exclude={"provenance"}).items():
            shown[section] = {
                key: {"value": value, "from": self.provenance.get(f"{section}.{key}", "default")}
                for key, value in values.items()
            }
        return shown


# The reference's four workload profiles, in this project's keys (applied over the defaults,
# under the file and the environment).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "simulation": {
        "cross_level": {"cache_size_mb": 1024},
        "state_store": {"default_serialization_format": "statevector",
                        "compression_enabled": False},
        "live_qubit_mgr": {"feedforward_enabled": False},
    },
    "nisq": {
        "cross_level": {"cache_size_mb": 512},
        "state_store": {"default_serialization_format": "shadow", "compression_enabled": True,
                        "compression_level": "max"},
        "live_qubit_mgr": {"feedforward_enabled": True, "feedforward_latency_target_ms": 5,
                           "calibration_interval": "30m"},
    },
    "fault_tolerant": {
        "circuit_fs": {"versioning_enabled": True, "max_versions_per_artifact": 100},
        "state_store": {"default_serialization_format": "stabilizer",
                        "encryption_enabled": True},
        "live_qubit_mgr": {"isolation_level": "strict", "telemetry_collection_interval": "100ms"},
    },
    "hybrid": {
        "state_store": {"default_serialization_format": "mps", "checkpoint_retention": "7d"},
        "live_qubit_mgr": {"allocation_strategy": "noise_aware", "feedforward_enabled": True},
    },
}

# QFS_* variables the reference names, mapped onto (section, key).
ENVIRONMENT = {
    "QFS_CIRCUIT_STORAGE_BACKEND": ("circuit_fs", "storage_backend"),
    "QFS_S3_ENDPOINT": ("circuit_fs", "s3_endpoint"),
    "QFS_S3_BUCKET": ("circuit_fs", "s3_bucket"),
    "QFS_STATE_STORAGE_BACKEND": ("state_store", "storage_backend"),
    "QFS_METADATA_BACKEND": ("cross_level", "metadata_backend"),
    "QFS_METADATA_DSN": ("cross_level", "metadata_dsn"),
    "QFS_INDEXING_ENABLED": ("circuit_fs", "indexing_enabled"),
    "QFS_MAX_VERSIONS": ("circuit_fs", "max_versions_per_artifact"),
    "QFS_STATE_STORAGE_PATH": ("state_store", "storage_path"),
    "QFS_STATE_COMPRESSION": ("state_store", "compression_enabled"),
    "QFS_STATE_ENCRYPTION": ("state_store", "encryption_enabled"),
    "QFS_ALLOCATION_STRATEGY": ("live_qubit_mgr", "allocation_strategy"),
    "QFS_FEEDFORWARD_ENABLED": ("live_qubit_mgr", "feedforward_enabled"),
    "QFS_CONSISTENCY_LEVEL": ("cross_level", "consistency_level"),
    "QFS_CACHE_ENABLED": ("cross_level", "cache_enabled"),
}
SECTIONS = set(Config.model_fields) - {"provenance"}


def _layer(merged: dict, provenance: dict[str, str], values: Any, origin: str) -> None:
    """Lay one source's mapping over the merged one, section by section."""
    if not isinstance(values, dict):
        raise Invalid(f"config from {origin}: expected a mapping of sections")
    for section, entries in values.items():
        if section not in SECTIONS:
            raise Invalid(f"config key {section}: unknown section (known: "
                          f"{', '.join(sorted(SECTIONS))}) in {origin}")
        if not isinstance(entries, dict):
            raise Invalid(f"config key {section}: expected a mapping in {origin}")
        merged.setdefault(section, {}).update(entries)
        for key in entries:
            provenance[f"{section}.{key}"] = origin


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None,
                profile: str | None = None) -> Config:
    """Build the effective configuration: defaults, a profile (--profile or QFS_PROFILE), an
    optional YAML file, then QFS_* variables."""
    env = os.environ if environ is None else environ
    merged: dict[str, dict[str, Any]] = {}
    provenance: dict[str, str] = {}
    profile = profile or env.get("QFS_PROFILE")
    if profile is not None:
        if profile not in PROFILES:
            raise Invalid(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
        _layer(merged, provenance, PROFILES[profile], f"profile {profile}")
    if path is not None:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise Invalid(f"config file {path}: {exc}") from exc
        if isinstance(document, dict) and "quantum_data_fabric" in document:
            document = document["quantum_data_fabric"]
        _layer(merged, provenance, document, str(path))
    for variable, (section, key) in ENVIRONMENT.items():
        if variable in env:
            _layer(merged, provenance, {section: {key: env[variable]}}, variable)
    try:
        return Config.model_validate({**merged, "provenance": provenance})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        where = provenance.get(".".join(str(p) for p in error["loc"][:2]), "")
        raise Invalid(f"config key {key}: {error['msg']}"
                      + (f" (from {where})" if where else "")) from None


def default_data_dir() -> Path:
    """Per-user data directory, as XDG asks: $XDG_DATA_HOME/qfs or ~/.local/share/qfs."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "qfs"
