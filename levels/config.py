"""Typed configuration with embedded defaults, read from the reference's qfs.yaml shape.

Precedence, lowest first: embedded defaults, a profile, the YAML file, QFS_* environment
variables. The layers are merged as plain mappings, remembering where each value came
from, and then validated once by pydantic models that forbid unknown keys: a typo in a
config file must not silently fall back to a default, and the message names the key.
"""

import os
import re
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
    # Each key's docstring is its description, shown beside its value in /.qfs/config.
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)


class CircuitFsConfig(_Section):
    storage_backend: Literal["lmdb", "s3"] = "lmdb"
    """s3 keeps the fabric's blobs in S3 (as state_store's s3 does); circuit programs stay
    in the metadata store, in their version's transaction."""
    s3_endpoint: str = ""
    """The S3 server of storage_backend s3."""
    s3_bucket: str = ""
    """The S3 bucket of storage_backend s3."""
    indexing_enabled: bool = True
    """Keep the search index; off, /search refuses (EOPNOTSUPP)."""
    index_types: list[Literal["text", "semantic", "metadata"]] = ["text", "semantic",
                                                                  "metadata"]
    """Searches offered: text (Whoosh words), metadata (structured fields), semantic
    (similar/ directories)."""
    versioning_enabled: bool = True
    """Keep earlier versions; off, a circuit keeps its latest version only."""
    max_versions_per_artifact: int = Field(default=10, ge=1)
    """Unpinned versions kept per circuit; older ones are dropped."""
    retention_policy: Retention = "forever"
    """Unpinned versions older than this are dropped when a newer one is written."""
    search_result_limit: int = 10000
    """Most names one search lists."""
    similar_result_limit: int = Field(default=10, ge=0)
    """Most links in a circuit's similar/ directory."""
    index_commit_interval_ms: int = 1000
    """How long index updates gather before a commit (a search commits what it must see)."""
    lmdb_map_size_mb: int = 65536
    """Largest size the embedded metadata store may grow to."""
    max_program_bytes: int = Field(default=4 << 20, ge=64)
    """Largest program accepted (EFBIG beyond)."""
    max_program_qubits: int = Field(default=1024, ge=1)
    """Most qubits a program may declare (EFBIG beyond)."""
    max_program_operations: int = Field(default=100_000, ge=1)
    """Most operations a program may hold (EFBIG beyond)."""
    max_program_nesting: int = Field(default=64, ge=1)
    """Deepest bracket and block nesting a program may use (EFBIG beyond)."""


class StateStoreConfig(_Section):
    storage_backend: Literal["local_ssd", "s3"] = "local_ssd"
    """Where checkpoint blobs are kept: local_ssd (a directory) or s3."""
    storage_path: str = ""
    """The blob directory of local_ssd (empty: <data dir>/blobs)."""
    s3_endpoint: str = ""
    """The S3 server of storage_backend s3 (empty: circuit_fs's)."""
    s3_bucket: str = ""
    """The S3 bucket of storage_backend s3 (empty: circuit_fs's)."""
    default_serialization_format: str = "auto"
    """Format of a checkpoint that names none: auto or one of the seven."""
    compression_enabled: bool = True
    """Compress checkpoint blobs with zstd."""
    compression_level: str | int = "balanced"
    """zstd level: fast (1), balanced (3), max (19) or a number."""
    encryption_enabled: bool = True
    """Seal checkpoint blobs with AES-256-GCM."""
    encryption_algorithm: Literal["AES-256-GCM"] = "AES-256-GCM"
    """The sealing cipher (the only one offered)."""
    checkpoint_retention: Duration = "24h"
    """How long an unpinned checkpoint lives unless its request says otherwise."""
    max_checkpoint_size_mb: int = 1024
    """Largest checkpoint or imported state (EFBIG beyond)."""
    amplitude_precision: str = "complex128"
    """Stored amplitude precision; complex64 halves state vectors."""
    mps_max_bond: int = 64
    """Largest bond dimension of an MPS checkpoint."""
    sparse_threshold: float = 0.0
    """Amplitudes whose probability |a|^2 is at or below this are dropped from sparse
    checkpoints."""
    low_rank_k: int = 4
    """Rank kept by low-rank density-matrix checkpoints."""
    shadow_snapshots: int = 2000
    """Snapshots taken by classical-shadow checkpoints."""


Topology = Literal["heavy_hex", "grid", "linear", "ring", "all_to_all"]


class DeviceConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+@=-]{0,63}$")
    """The device's name (/devices/<name>): letters, digits and _ . + @ = -."""
    qubits: int = Field(ge=1)
    """Its number of qubits."""
    topology: Topology
    """Its coupling graph: heavy_hex, grid, linear, ring or all_to_all."""
    seed: int = 7
    """Seed of its generated calibration."""


def _distinct_devices(devices: list[DeviceConfig]) -> list[DeviceConfig]:
    names = [device.name for device in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"device names must be distinct: {names}")
    return devices


class LiveQubitConfig(_Section):
    allocation_strategy: Literal["topology_noise_aware", "noise_aware",
                                 "topology_aware"] = "topology_noise_aware"
    """What allocation weighs: shape and calibration, calibration of qubits only, or shape
    only (lowest-numbered fit)."""
    feedforward_enabled: bool = True
    """Accept feed-forward triggers; off, `on ...` is refused (EOPNOTSUPP)."""
    feedforward_latency_target_ms: int = 10
    """Mean dispatch time above which /.qfs/tuning reports a bottleneck."""
    isolation_level: str = "none"
    """The isolate= of alloc commands that give none."""
    calibration_interval: Interval = "1h"
    """How often devices are calibrated anew."""
    telemetry_collection_interval: Interval = "1s"
    """Period of the /qubits/telemetry samples."""
    temporal_cooldown_ms: int = 1000
    """How long a released qubit cools before temporal isolation lets another task in."""
    executor: str = Field(default="local", pattern=r"^(local|dask://[^/\s]+:\d+)$")
    """Where runs simulate: local worker processes or a Dask scheduler (dask://host:port)."""
    devices: Annotated[list[DeviceConfig], AfterValidator(_distinct_devices)] = Field(
        default=[DeviceConfig(name="eagle", qubits=127, topology="heavy_hex", seed=7)],
        min_length=1)
    """The devices; the first is /qubits, the others /devices/<name> (distinct names)."""


class CrossLevelConfig(_Section):
    consistency_level: Literal["strong"] = "strong"
    """Every change is one serializable transaction and every acknowledged write is visible
    to the next read (nothing weaker is offered)."""
    cache_enabled: bool = True
    """Cache decoded states, sources and views in memory."""
    cache_size_mb: int = 512
    """Memory for those caches (half views and sources, half decoded states)."""
    migration_enabled: bool = True
    """Accept migrate commands; off, they are refused (EOPNOTSUPP)."""
    migration_fidelity_threshold: float = 0.95
    """Lowest fidelity a migration or format choice may keep."""
    metadata_backend: str = Field(default="lmdb", pattern="^(lmdb|postgresql)$")
    """Metadata store: lmdb (embedded, one host) or postgresql (many hosts)."""
    metadata_dsn: str = ""
    """The PostgreSQL connection string of metadata_backend postgresql."""


class PerformanceConfig(_Section):
    max_concurrent_operations: int = Field(default=100, ge=1)
    """Blocking operations in flight at once; more wait their turn."""
    io_threads: int = Field(default=4, ge=1, le=64)
    """Threads for the Qiskit calls the daemon makes itself."""
    compression_threads: int = Field(default=2, ge=1, le=64)
    """zstd threads per checkpoint."""
    telemetry_buffer_size: int = Field(default=1000, ge=1, le=1_000_000)
    """Telemetry samples kept."""
    worker_processes: int = Field(default=2, ge=1, le=64)
    """Worker processes for parses, views and runs (each pool)."""
    worker_memory_mb: int = Field(default=4096, ge=512)
    """Address-space limit of a worker process."""
    worker_cpu_seconds: int = Field(default=120, ge=1)
    """CPU time one worker job may use."""
    max_buffered_mb_per_user: int = Field(default=2048, ge=16)
    """Memory one user's files being written may hold in the daemon."""
    extended_attributes: bool = True
    """false: no xattrs (user.qfs.* metadata and pins only through meta.json), and the
    kernel stops asking: each write() otherwise asks for security.capability (~5% of a cp
    of small files)."""
    read_ahead_kb: int = Field(default=1024, ge=0, le=65536)
    """The kernel's read-ahead window for the mount (set by root only; 0: the kernel's)."""


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
            fields = type(getattr(self, section)).model_fields
            shown[section] = {
                key: {"value": _shown(key, value),
                      "from": self.provenance.get(f"{section}.{key}", "default"),
                      "controls": " ".join((fields[key].description or "").split())}
                for key, value in values.items()
            }
        return shown



_DSN_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s]*(@)|(password\s*=\s*)(?:'[^']*'|\S+)", re.I)


def _shown(key: str, value: Any) -> Any:
    """A connection string's password is never shown: every user may read /.qfs/config."""
    if key != "metadata_dsn" or not isinstance(value, str):
        return value
    return _DSN_PASSWORD.sub(
        lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", value)


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
