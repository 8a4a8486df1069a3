"""Level 2, StateStore: quantum-state checkpoints, encoded, compressed, encrypted.

A checkpoint is a blob (the sealed payload, content-addressed in the blob store) and one
metadata record in the `checkpoints` table, written in that order: a crash in between
leaves an unreferenced blob (found by the checker), never a visible partial checkpoint.
Two unencrypted checkpoints of one state share a blob, so a blob is deleted only when the
write transaction that deletes a record finds no other record naming it; `_blob_lock`
keeps a commit from reusing a blob file between that decision and the unlink.
The associated data of the encryption names the checkpoint, its format, qubit count,
creation time, parent and decoded-state hash, so a blob moved under another name or with
edited metadata fails to open.
A checkpoint belongs to a uid (the owner of its task, or whoever made the directory of an
import): its decoded state is readable by that uid only, and it may name only that uid's
checkpoints as parent, since a child keeps its parent from being deleted or expiring.

Work is split as elsewhere, and neither half runs on trio's thread: `prepare` (encode,
measure fidelity, compress, encrypt) is CPU-heavy; `commit` hashes and syncs the blob, then
writes one short transaction.
"""

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import math
import os
import threading
import time
from typing import Any

import numpy as np

from levels import densestate, stateformats
from levels.circuits import validate_name
from levels.config import StateStoreConfig
from levels.durations import parse_duration
from levels.errors import (
    Corrupt,
    Exists,
    Invalid,
    NoSpace,
    NotEmpty,
    NotFound,
    PermissionDenied,
    TooBig,
)
from levels.lru import LRU
from levels.store.blobs import BlobWriter, is_key
from levels.store.chunked import ChunkSealer
from levels.store.meta import MetaStore
from levels.store.sealed import Binding, SealedBlobStore
from levels.timestamps import iso_utc

LEVELS = {"fast": 1, "balanced": 3, "max": 19}


def compression_level(setting: str | int) -> int:
    if setting in LEVELS:
        return LEVELS[setting]
    try:
        return int(setting)
    except ValueError:
        raise Invalid(f"compression_level {setting!r}: fast, balanced, max or a number") from None


@dataclasses.dataclass(frozen=True)
class Request:
    """What to checkpoint and how; None fields take the configured defaults."""

    name: str
    task: str | None = None
    stage: str | None = None
    format: str | None = None
    encrypt: bool | None = None
    retention: str | None = None
    parent: str | None = None
    owner: int = 0  # the importer's uid; a task's checkpoint belongs to the task's owner
    # What produced the state (task, device, physical qubits, circuits applied, seed);
    # None for a state imported into /states.
    provenance: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Pending:
    """A directory made in /states for an import not yet written: who made it, and when
    (its mtime, steady while tar or rsync read it)."""

    owner: int
    made_ns: int


@dataclasses.dataclass
class Prepared:
    meta: dict[str, Any]
    blob: bytes | BlobWriter  # a chunked blob is already written: commit names it

    @property
    def unsettled(self) -> bool:
        """An `auto` seal whose format its chunks' evidence left open (an import, or a
        state held in memory that looked dense): not to be committed; an import goes to
        StateStore.choose_whole."""
        return self.meta["format_reason"] is None

    def abort(self) -> None:
        """Drop a written blob that will not be committed."""
        if not isinstance(self.blob, bytes):
            self.blob.abort()


@dataclasses.dataclass
class ChunkedCheckpoint:
    """A state vector being sealed chunk by chunk (StateStore.begin_import, or a state
    held in memory): its record so far, and the blob it is written into."""

    meta: dict[str, Any]
    sealer: ChunkSealer
    writer: BlobWriter
    sealing: densestate.Sealing
    started: float  # perf_counter when it began (an import: its header's write)
    limit: int  # max_checkpoint_size_mb in bytes
    options: stateformats.FormatOptions

    def complete(self) -> Prepared:
        """Wait for the last chunks, then close the blob with its index (blocking). An
        import under `auto` (its format_reason still None) gets its reason from the
        evidence its chunks gave, or keeps None when they leave the format open (the
        Prepared is then `unsettled`: StateStore.choose_whole probes the state)."""
        meta, writer = self.meta, self.writer
        try:
            sealed = self.sealing.finish()
            meta["fidelity"] = sealed.fidelity
            meta.update(stateformats.entanglement(sealed.spectrum))
            if sealed.nonzero is not None:  # counted for `auto`, whose reason is still None
                meta["format_reason"] = stateformats.dense_reason(
                    meta["qubit_count"], sealed.spectrum, sealed.nonzero, self.options,
                    sealed.spectrum_error)
            index, meta["index_sha256"] = self.sealer.index(sealed.chunks, sealed.info,
                                                            _aad(meta))
            writer.write(index)
            meta["stored_bytes"] = writer.size
            meta["compression_ratio"] = writer.size / meta["raw_bytes"]
            meta["serialization_seconds"] = time.perf_counter() - self.started
            if writer.size > self.limit and meta["format_reason"] is not None:
                raise TooBig(f"checkpoint is {writer.size >> 20} MiB stored, over the limit")
            meta_json(meta)
        except BaseException:
            writer.abort()
            raise
        return Prepared(meta, writer)

    def abort(self) -> None:
        """Give up (the import's writer went away or was refused): nothing stays."""
        self.sealing.abort()
        self.writer.abort()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The header np.save writes before a complex128 array of this shape."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.dtype(np.complex128).str, "fortran_order": False, "shape": shape})
    return header.getvalue()


def npy_size(shape: tuple[int, ...]) -> int:
    """The exact size of np.save of a complex128 array of this shape, without the array."""
    return len(npy_header(shape)) + 16 * int(np.prod(shape))


class StateStore:
    def __init__(self, meta: MetaStore, blobs: SealedBlobStore, config: StateStoreConfig,
                 fidelity_floor: float,
                 cache_bytes: int = 256 << 20) -> None:
        self._meta = meta
        # cross_level.migration_fidelity_threshold: below it no format is chosen silently.
        self._floor = fidelity_floor
        self._blobs = blobs
        self._config = config
        self.options = stateformats.FormatOptions(
            mps_max_bond=config.mps_max_bond, sparse_threshold=config.sparse_threshold,
            low_rank_k=config.low_rank_k, shadow_snapshots=config.shadow_snapshots,
            complex64=config.amplitude_precision == "complex64")
        self._retention = parse_duration(config.checkpoint_retention)
        self._blob_lock = threading.Lock()
        # No checkpoint expires before this time (0: look): expire() runs every second and
        # must not parse every record each time.
        self._next_expiry_ns = 0
        # Directories made by mkdir that await an imported state, with who made each and
        # when (in memory, like scratch).
        self.pending: dict[str, Pending] = {}
        # Files rm'd from a checkpoint directory, by (checkpoint, created_ns): hidden until
        # it is next listed, as a circuit's are (in memory, like pending).
        self.unlinked: dict[tuple[str, int], set[str]] = {}
        # Held while a name is checked free and taken (a record put, a directory made), so
        # that a mkdir and a checkpoint of one name never both succeed.
        self._names_lock = threading.Lock()
        # (snapshot, valid until ns, names): _shown_now's last answer.
        self._shown_kept: tuple[int | None, int, frozenset[str]] = (None, 0, frozenset())
        # Decoded states as .npy bytes, by (name, created): reads of statevector.npy.
        self.decoded_npy: LRU[bytes] = LRU(max_entries=64, max_bytes=cache_bytes, sizeof=len)
        # Range readers of chunked checkpoints, by (name, created): every open of one
        # statevector.npy shares one, and with it a few decoded chunks.
        self._readers: LRU[densestate.DenseReader] = LRU(max_entries=8)

    # -- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Checkpoints shown (`_shown`: not expired, pinned, or the parent a shown child
        needs); a listing deletes nothing (the fabric's periodic task calls expire)."""
        return sorted(self._shown_now(time.time_ns()))

    def _shown_now(self, now: int) -> frozenset[str]:
        """`_shown` of every record, kept while the store's snapshot stands and no shown
        record expires: an expired parent a pinned child needs is looked up at each
        request on it, and each would decode every record."""
        with self._meta.reading() as txn:
            snapshot = txn.snapshot()
            kept = self._shown_kept
            if snapshot is not None and kept[0] == snapshot and now < kept[1]:
                return kept[2]
            records = {k.decode(): json.loads(v) for k, v in txn.scan("checkpoints")}
        shown = frozenset(_shown(records, now))
        self._shown_kept = (snapshot, _next_expiry(records, now), shown)
        return shown

    def _record(self, name: str) -> dict[str, Any] | None:
        """The checkpoint's record as stored, shown or not (None: there is none)."""
        with self._meta.reading() as txn:
            raw = txn.get("checkpoints", name.encode())
        return None if raw is None else json.loads(raw)

    def _is_shown(self, name: str, meta: dict[str, Any]) -> bool:
        """Whether this record is shown (`_shown`): an expired one no shown child needs is
        gone for every purpose at once, though expire has not yet deleted it."""
        now = time.time_ns()
        return _alive(meta, now) or name in self._shown_now(now)

    def get(self, name: str) -> dict[str, Any]:
        meta = self._record(name)
        if meta is None:
            raise NotFound(f"no checkpoint {name}")
        if not self._is_shown(name, meta):
            raise NotFound(f"checkpoint {name} expired")
        if not is_key(meta.get("blob")):
            raise Corrupt(f"checkpoint {name} names blob {meta.get('blob')!r}, not a SHA-256 "
                          "hex digest: its record was damaged or edited")
        return meta

    def blob(self, name: str, offset: int, size: int) -> bytes:
        """A range of the blob exactly as stored (a file of up to 1 GiB: read in ranges)."""
        return self._blobs.get_range(self.get(name)["blob"], offset, size)

    def payload(self, name: str) -> bytes:
        """The decrypted, decompressed payload (a parent's is the dictionary of its child;
        a chunked checkpoint's is the single-blob payload of its decoded state)."""
        meta = self.get(name)
        reader = self.reader(name)
        if reader is not None:
            return stateformats.statevector_payload(reader.array(), meta["precision"])
        dictionary = self.payload(meta["parent"]) if meta["parent"] else None
        return self._blobs.open(meta["blob"], Binding(_aad(meta), dictionary))

    def reader(self, name: str) -> densestate.DenseReader | None:
        """The decoded state of a chunked checkpoint as its .npy file, read by ranges
        (each chunk authenticated as it is read); None for a single-blob checkpoint."""
        meta = self.get(name)
        if not meta.get("chunked"):
            return None
        blob = self._blobs.open_chunked(meta["blob"], meta["stored_bytes"], _identity(meta),
                                        _aad(meta), meta.get("index_sha256"))
        return densestate.DenseReader(blob, npy_header((2 ** meta["qubit_count"],)),
                                      self._blobs.threads)

    def shared_reader(self, name: str) -> densestate.DenseReader | None:
        """`reader(name)`, one per checkpoint for every open of its statevector.npy (so
        3,000 opens hold a few decoded chunks, not 3,000 times that)."""
        meta = self.get(name)
        if not meta.get("chunked"):
            return None
        key = (name, meta["created_ns"])
        reader = self._readers.get(key)
        if reader is None:
            reader = self.reader(name)
            if reader is not None:
                self._readers.put(key, reader)
        return reader

    def load(self, name: str) -> tuple[dict[str, Any], np.ndarray]:
        """The checkpoint's metadata and decoded state, verified against its recorded hash
        (a chunked one chunk by chunk, as it is read: each chunk is authenticated)."""
        meta = self.get(name)
        reader = self.reader(name)
        if reader is not None:
            return meta, reader.array()
        decoded = stateformats.decode(self.payload(name))
        if hashlib.sha256(decoded.tobytes()).hexdigest() != meta["decoded_sha256"]:
            raise Corrupt(f"checkpoint {name} decodes to a state other than the one recorded")
        return meta, decoded

    def npy(self, name: str) -> bytes:
        """statevector.npy of a checkpoint in one piece (formats other than a chunked state
        vector), decoded once and kept in the decoded-state cache (blocking: Qiskit
        decodes, so call it on a native thread)."""
        key = (name, self.get(name)["created_ns"])
        data = self.decoded_npy.get(key)
        if data is None:
            _meta, decoded = self.load(name)
            data = npy_bytes(decoded)
            self.decoded_npy.put(key, data)
        return data

    def decoded_shape(self, name: str) -> tuple[int, ...]:
        meta = self.get(name)
        dim = 2 ** meta["qubit_count"]
        return (dim,) if meta["decodes_to"] == "statevector" else (dim, dim)

    # -- writing -------------------------------------------------------------------------

    def prepare(self, request: Request,
                state: np.ndarray | densestate.Source) -> Prepared:
        """Encode, measure, compress and encrypt (slow: call from a worker thread). A
        state vector in the statevector format, not incremental, is sealed in chunks
        (densestate.py); `state` may then be a Source read by chunks (an import). Under
        `auto`, a large state vector held in memory that looks dense is sealed so first,
        as an import is: its chunks' evidence settles the format, or the whole-state
        choice follows."""
        validate_name(request.name, "checkpoint name")
        retention = parse_duration(request.retention) if request.retention else self._retention
        owner = self._owner(request)
        parent = self._parent(request.parent, owner) if request.parent else None
        asked = _format_name(request.format or self._config.default_serialization_format)
        vector = isinstance(state, densestate.Source) or np.ndim(state) == 1
        if asked == "statevector" and parent is None and vector:
            source = state if isinstance(state, densestate.Source) \
                else densestate.ArraySource(np.asarray(state))
            reason = "asked for" if request.format else "the configured default"
            return self._prepare_chunked(request, source, owner, retention, reason)
        if asked == "auto" and parent is None and isinstance(state, np.ndarray) \
                and self._seals_first(state):
            try:
                guessed = self._prepare_chunked(request, densestate.ArraySource(state),
                                                owner, retention, None)
            except NoSpace:
                pass  # the guess's blob did not fit: what the whole choice stores may
            else:
                if not guessed.unsettled:
                    return guessed
                guessed.abort()
        return self._prepare_whole(request, state, owner, retention, parent, asked)

    def _seals_first(self, state: np.ndarray) -> bool:
        """Whether `auto` guesses that a state held in memory is a state vector: one it
        would stream as an import (`_streams_under_auto`), within the size limit (else
        the whole path's checks come first, as before), that looks dense."""
        if not (state.ndim == 1 and state.dtype == np.complex128
                and self._streams_under_auto(state.size)
                and state.size * 16 <= self._config.max_checkpoint_size_mb << 20):
            return False
        with densestate.one_blas_thread:
            return stateformats.looks_dense(state, self.options)

    def _prepare_whole(self, request: Request, state: np.ndarray | densestate.Source,
                       owner: int, retention: float, parent: dict[str, Any] | None,
                       asked: str) -> Prepared:
        """A state chosen for from the whole of it, held in memory (a dense one is then
        still sealed in chunks)."""
        if isinstance(state, densestate.Source):
            state = state.chunk(0, state.size)
        state, projected = stateformats.validate_state(state)
        spectrum = stateformats.schmidt_spectrum(state) if state.ndim == 1 else None
        choice = None
        if asked == "auto" and parent is None and spectrum is not None:
            choice = stateformats.choose_format(state, self.options, spectrum)
            if choice[0] == "statevector":
                return self._prepare_chunked(request, densestate.ArraySource(state), owner,
                                             retention, choice[1])
        n = self.screen(state.shape)
        raw_bytes = state.size * 16
        limit = self._config.max_checkpoint_size_mb << 20
        started = time.perf_counter()
        encoded, reason = self._encode(request, state, spectrum, choice)
        fmt = encoded.format
        parent_payload = None
        if parent is not None:
            if parent["qubit_count"] != n:
                raise Invalid(f"parent {request.parent} has {parent['qubit_count']} qubits, "
                              f"this state {n}")
            parent_payload = self.payload(parent["name"])
        created = time.time_ns()
        encrypt = self._config.encryption_enabled if request.encrypt is None else request.encrypt
        meta: dict[str, Any] = {
            **self._lineage(request),
            "name": request.name, "task": request.task, "stage": request.stage,
            "format": fmt, "format_reason": reason,
            "decodes_to": stateformats.DECODES_TO[fmt], "qubit_count": n,
            "fidelity": encoded.fidelity,
            **stateformats.entanglement(spectrum),
            "projection_trace_distance": projected,
            "raw_bytes": raw_bytes, "payload_bytes": len(encoded.payload),
            "encrypted": encrypt, "parent": request.parent, "owner": owner,
            "created_ns": created, "expires_ns": created + int(retention * 1e9),
            "decoded_sha256": hashlib.sha256(encoded.decoded.tobytes()).hexdigest(),
        }
        level = compression_level(self._config.compression_level) \
            if self._config.compression_enabled else None
        blob = self._blobs.seal(encoded.payload, Binding(_aad(meta), parent_payload), encrypt,
                                level)
        meta["stored_bytes"] = len(blob)
        meta["compression_ratio"] = len(blob) / raw_bytes
        meta["serialization_seconds"] = time.perf_counter() - started
        if len(blob) > limit:
            raise TooBig(f"checkpoint is {len(blob) >> 20} MiB stored, over the limit")
        meta_json(meta)  # never store a record its meta.json could not show
        return Prepared(meta, blob)

    def _prepare_chunked(self, request: Request, source: densestate.Source, owner: int,
                         retention: float, reason: str | None) -> Prepared:
        """A state held in memory sealed chunk by chunk straight into the blob store's
        writer: never copied whole, decoded whole to be checked, or hashed twice. With
        no reason yet (a guess under `auto`), the result may be `unsettled`."""
        chunked = self._begin_chunked(request, source.size, owner, retention, reason)
        try:
            densestate.submit_all(source, chunked.sealing)
        except BaseException:
            chunked.abort()
            raise
        return chunked.complete()

    def begin_import(self, request: Request, amplitudes: int) -> "ChunkedCheckpoint":
        """A state vector imported as a state vector, sealed as it is written (the caller
        submits its chunks to `sealing`, then calls complete or abort). Under `auto` that is
        a guess, which the chunks' evidence confirms for a dense entangled state; else the
        completed import is `unsettled`, for choose_whole."""
        validate_name(request.name, "checkpoint name")
        fixed = self._default_format() == "statevector"
        return self._begin_chunked(request, amplitudes, self._owner(request),
                                   self._retention, "the configured default" if fixed else None)

    def imports_stream(self, rank: int, amplitudes: int) -> bool:
        """Whether an import is sealed as it is written: a state vector under the
        statevector default format; under `auto`, one in double precision that its
        evidence may settle as a state vector (dense_reason: over 2^STABILIZER_SUPPORT_MAX
        amplitudes, 32 MiB). A smaller one, any single-precision one (its probes must see
        the amplitudes as given, not rounded) and a density matrix are held until close."""
        if rank != 1:
            return False
        chosen = self._default_format()
        return chosen == "statevector" or (chosen == "auto"
                                           and self._streams_under_auto(amplitudes))

    def _streams_under_auto(self, amplitudes: int) -> bool:
        """A state vector in double precision that its evidence may settle as a state
        vector (dense_reason: over 2^STABILIZER_SUPPORT_MAX amplitudes, 32 MiB)."""
        return not self.options.complex64 and amplitudes > 2**stateformats.STABILIZER_SUPPORT_MAX

    def choose_whole(self, prepared: Prepared) -> Prepared:
        """A streamed import its evidence left open under `auto` (`Prepared.unsettled`: it
        may be sparse, a stabilizer state or an exact MPS), read back from its sealed
        chunks and chosen for whole, as a state held in memory is; its speculative blob is
        dropped (blocking; the whole state is in the daemon's memory meanwhile)."""
        meta, writer = prepared.meta, prepared.blob
        assert not isinstance(writer, bytes), "only a chunked import is left unsettled"
        try:
            blob = self._blobs.open_staged(writer, _identity(meta), _aad(meta),
                                           meta.get("index_sha256"))
            state = densestate.DenseReader(blob, npy_header((2 ** meta["qubit_count"],)),
                                           self._blobs.threads).array()
        finally:
            prepared.abort()
        return self._prepare_whole(Request(meta["name"], owner=meta["owner"]), state,
                                   meta["owner"], self._retention, None,
                                   self._default_format())

    def _default_format(self) -> str:
        return _format_name(self._config.default_serialization_format)

    def _begin_chunked(self, request: Request, size: int, owner: int, retention: float,
                       reason: str | None) -> "ChunkedCheckpoint":
        n = self.screen((size,))
        precision = np.dtype(np.complex64 if self.options.complex64 else np.complex128)
        created = time.time_ns()
        encrypt = self._config.encryption_enabled if request.encrypt is None else request.encrypt
        meta: dict[str, Any] = {
            **self._lineage(request),
            "name": request.name, "task": request.task, "stage": request.stage,
            "format": "statevector", "format_reason": reason, "decodes_to": "statevector",
            "qubit_count": n, "fidelity": None, **stateformats.entanglement(None),
            "projection_trace_distance": 0.0, "raw_bytes": size * 16,
            "payload_bytes": size * precision.itemsize, "encrypted": encrypt,
            "parent": None, "owner": owner, "created_ns": created,
            "expires_ns": created + int(retention * 1e9), "decoded_sha256": None,
            "chunked": True, "precision": precision.name,
        }
        level = compression_level(self._config.compression_level) \
            if self._config.compression_enabled else None
        sealer = self._blobs.chunk_sealer(_identity(meta), len(densestate.spans(size)),
                                          encrypt, level)
        writer = self._blobs.writer()
        try:
            sealing = densestate.Sealing(size, precision, sealer, writer, self._blobs.threads,
                                         count_nonzero=reason is None)
        except BaseException:
            writer.abort()
            raise
        return ChunkedCheckpoint(meta, sealer, writer, sealing, time.perf_counter(),
                                 self._config.max_checkpoint_size_mb << 20, self.options)

    def _lineage(self, request: Request) -> dict[str, Any]:
        """Provenance, the parent chain back to the first full checkpoint, and `pinned`
        (false until set: a pinned checkpoint survives retention)."""
        chain: list[str] = []
        parent = request.parent
        while parent:
            chain.append(parent)
            parent = self.get(parent).get("parent")
        provenance = dict(request.provenance or {"import": "a state written into /states"})
        provenance.update(qiskit=_version("qiskit"), qiskit_aer=_version("qiskit-aer"))
        return {"provenance": provenance, "parent_chain": chain, "pinned": False}

    def lineage(self, name: str) -> bytes:
        """/states/<ckpt>/lineage: this checkpoint, then each parent back to the first full
        checkpoint, one per line (name, format, full or incremental, created)."""
        lines = []
        meta: dict[str, Any] | None = self.get(name)
        while meta is not None:
            kind = "incremental" if meta.get("parent") else "full"
            lines.append(f"{meta['name']}\t{meta['format']}\t{kind}\t{iso_utc(meta['created_ns'])}\n")
            meta = self.get(meta["parent"]) if meta.get("parent") else None
        return "".join(lines).encode()

    def pin(self, name: str, pinned: bool) -> None:
        """Keep a checkpoint (and so its parents) beyond its retention, or no longer."""
        self.get(name)
        with self._meta.writing() as txn:
            raw = txn.get("checkpoints", name.encode())
            if raw is None:
                raise NotFound(f"no checkpoint {name}")
            meta = {**json.loads(raw), "pinned": pinned}
            txn.put("checkpoints", name.encode(), json.dumps(meta).encode())
        self._next_expiry_ns = 0  # an unpinned one may be due now

    def screen(self, shape: tuple[int, ...]) -> int:
        """What the shape alone decides (an import's .npy header, before its data): the
        qubit count, or Invalid / TooBig."""
        n = stateformats.qubits_of_shape(shape)
        raw_bytes = 16 * math.prod(shape)
        if raw_bytes > self._config.max_checkpoint_size_mb << 20:
            raise TooBig(f"a {n}-qubit state is {raw_bytes >> 20} MiB, over "
                         f"max_checkpoint_size_mb={self._config.max_checkpoint_size_mb}")
        return n

    def _owner(self, request: Request) -> int:
        """The owner of the task whose state this is (its record in the tasks table is the
        authority on ownership), else the importer."""
        if request.task is not None:
            with self._meta.reading() as txn:
                raw = txn.get("tasks", request.task.encode())
            if raw is not None:
                return int(json.loads(raw)["owner"])
        return request.owner

    def _parent(self, name: str, owner: int) -> dict[str, Any]:
        parent = self.get(name)
        if owner_of(parent) != owner:
            raise PermissionDenied(
                f"parent {name} belongs to uid {owner_of(parent)}, this checkpoint to uid "
                f"{owner}: a child keeps its parent from being deleted or expiring, so a "
                "parent must have the same owner")
        return parent

    def _encode(self, request: Request, state: np.ndarray,
                spectrum: tuple[int, np.ndarray] | None,
                choice: tuple[str, str] | None) -> tuple[stateformats.Encoded, str]:
        """The state in the format asked for (strict); else in the configured default (a
        profile's preference) where that holds it at the fidelity floor or above; else in
        the automatic choice (`choice` where already made), or the exact dense format
        where the choice falls below the floor. The reason says which, and why a
        preference was passed over."""
        asked = _format_name(request.format) if request.format else None
        if asked not in (None, "auto"):
            return stateformats.encode(state, asked, self.options), "asked for"
        default = "auto" if asked == "auto" else self._default_format()
        passed_over = ""
        if default != "auto":
            try:
                encoded = stateformats.encode(state, default, self.options)
            except Invalid as exc:
                passed_over = f"the default {default} cannot hold this state ({exc})"
            else:
                if encoded.fidelity >= self._floor:
                    return encoded, "the configured default"
                passed_over = (f"the default {default} keeps fidelity {encoded.fidelity:.4g}, "
                               f"below migration_fidelity_threshold {self._floor}")
        chosen, why = choice or stateformats.choose_format(state, self.options, spectrum)
        encoded = stateformats.encode(state, chosen, self.options)
        if encoded.fidelity < self._floor:
            dense = "statevector" if state.ndim == 1 else "density_matrix"
            why = (f"{chosen} ({why}) keeps fidelity {encoded.fidelity:.4g}, below "
                   f"migration_fidelity_threshold {self._floor}, so {dense}")
            encoded = stateformats.encode(state, dense, self.options)
        return encoded, f"{passed_over}; instead the automatic choice: {why}" if passed_over \
            else why

    def commit(self, prepared: Prepared) -> dict[str, Any]:
        """Store the blob, then the record (hashes and syncs: call from a worker thread)."""
        if prepared.unsettled:
            prepared.abort()
            raise Invalid(f"checkpoint {prepared.meta['name']}: its format was never chosen")
        meta = dict(prepared.meta)
        name = meta["name"]
        try:
            self._check_free(name, meta["owner"])
        except BaseException:
            prepared.abort()
            raise
        with self._blob_lock:
            blob = prepared.blob
            meta["blob"] = self._blobs.put(blob) if isinstance(blob, bytes) else blob.commit()
            with self._names_lock:
                try:
                    self._check_free(name, meta["owner"], expire=False)
                    with self._meta.writing() as txn:
                        if txn.get("checkpoints", name.encode()) is not None:
                            raise Exists(f"checkpoint {name} exists")
                        txn.put("checkpoints", name.encode(), json.dumps(meta).encode())
                except Exists:  # taken meanwhile: its blob stays only if another uses it
                    with self._meta.reading() as txn:
                        used = any(json.loads(v).get("blob") == meta["blob"]
                                   for _k, v in txn.scan("checkpoints"))
                    if not used:
                        self._blobs.delete(meta["blob"])
                    raise
                # An empty directory its owner made for it is now this checkpoint.
                self.pending.pop(name, None)
            self._next_expiry_ns = min(self._next_expiry_ns, meta["expires_ns"])
        return meta

    def _check_free(self, name: str, owner: int, expire: bool = True) -> None:
        """Exists when /states/<name> is a checkpoint, or a directory made by a user other
        than `owner` (theirs to import into); an empty directory made by `owner` is the
        place for this checkpoint (a task's, or the import into it). With `expire`, an
        expired record no child needs is deleted first: its name is free, as its lookup
        says (without it, under `_names_lock`, which expire's `_blob_lock` must not
        follow, any record takes the name)."""
        record = self._record(name)
        if record is not None and expire and not self._is_shown(name, record):
            self._next_expiry_ns = 0
            self.expire()
            record = self._record(name)
        if record is not None:
            raise Exists(f"checkpoint {name} exists")
        pending = self.pending.get(name)
        if pending is not None and pending.owner != owner:
            raise Exists(f"/states/{name} is a directory uid {pending.owner} made to import "
                         f"into; this checkpoint belongs to uid {owner}")

    def blob_keys(self) -> list[str]:
        return self._blobs.list()

    def delete_blob(self, key: str) -> None:
        self._blobs.delete(key)

    def forget(self, names: list[str]) -> None:
        """Drop checkpoint records whatever their state (the checker's repair), and the
        blobs that no remaining record names."""
        self._drop(lambda records: [n for n in names if n in records])

    def make_pending(self, name: str, uid: int) -> None:
        """mkdir /states/<name> by `uid`: an empty directory awaiting an imported state
        (or a task's `checkpoint <name>` by the same uid)."""
        validate_name(name, "checkpoint name")
        self._check_free(name, uid)  # deletes an expired record holding the name
        with self._names_lock:
            self._check_free(name, uid, expire=False)
            if name in self.pending:
                raise Exists(f"checkpoint {name} exists")
            self.pending[name] = Pending(uid, time.time_ns())

    def importer_of(self, name: str, uid: int) -> int:
        """Who an import into /states/<name> belongs to: whoever made the directory, else
        the writer `uid`."""
        pending = self.pending.get(name)
        return pending.owner if pending is not None else uid

    def remove_dir(self, name: str) -> None:
        if self.pending.pop(name, None) is None:
            self.delete(name)

    def delete(self, name: str) -> None:
        self.get(name)  # ENOENT, or EIO for a damaged record, before anything changes

        def doomed(records: dict[str, dict[str, Any]]) -> list[str]:
            children = sorted(c for c, m in records.items() if m.get("parent") == name)
            if children:
                raise NotEmpty(f"checkpoint {name} is the parent of {children[0]}; "
                               "delete that first")
            return [name]

        self._drop(doomed)
        self._next_expiry_ns = 0  # an expired parent it kept may go now

    def expire(self) -> list[str]:
        """Delete expired checkpoints, except ancestors of live ones (their dictionaries);
        returns the names deleted. Cheap until the next checkpoint's time comes."""
        now = time.time_ns()
        if now < self._next_expiry_ns:
            return []

        def doomed(records: dict[str, dict[str, Any]]) -> list[str]:
            shown = _shown(records, now)
            # A kept parent goes when its last live child expires or is deleted.
            self._next_expiry_ns = _next_expiry(records, now)
            return [n for n in records if n not in shown]

        return self._drop(doomed)

    def _drop(self, choose) -> list[str]:
        """Delete the records `choose(records)` names in one write transaction, then the
        blobs no remaining record names (never a blob another checkpoint still uses)."""
        with self._blob_lock:
            with self._meta.writing() as txn:
                records = {k.decode(): json.loads(v) for k, v in txn.scan("checkpoints")}
                names = choose(records)
                for name in names:
                    txn.delete("checkpoints", name.encode())
                gone = set(names)
                kept = {m.get("blob") for n, m in records.items() if n not in gone}
                unused = {records[n].get("blob") for n in names} - kept
            for key in sorted(k for k in unused if is_key(k)):
                self._blobs.delete(key)
        return names


FORMAT_ALIASES = {"tensor_network": "mps", "full_state_vector": "statevector",
                  "classical_shadow": "shadow", "stabilizer_tableau": "stabilizer",
                  "full_density_matrix": "density_matrix"}


def _alive(meta: dict[str, Any], now: int) -> bool:
    """Not expired, or pinned (a pinned checkpoint survives retention)."""
    return bool(meta.get("pinned")) or meta["expires_ns"] > now


def _next_expiry(records: dict[str, dict[str, Any]], now: int) -> int:
    """When the next checkpoint expires (far ahead when none will): what `_shown` answers
    holds until then."""
    return min((m["expires_ns"] for m in records.values()
                if _alive(m, now) and not m.get("pinned")), default=1 << 62)


def _shown(records: dict[str, dict[str, Any]], now: int) -> set[str]:
    """The checkpoints that exist for every purpose (listed, read, restored, their names
    taken): the alive ones and each parent an alive one is decoded from, whatever that
    parent's own retention. The rest are expired, invisible at once and deleted by
    expire."""
    shown: set[str] = set()
    for name, meta in records.items():
        if not _alive(meta, now):
            continue
        chain: object = name
        while isinstance(chain, str) and chain in records and chain not in shown:
            shown.add(chain)  # a damaged record's parent (not a name) ends the chain
            chain = records[chain].get("parent")
    return shown


def _version(distribution: str) -> str | None:
    """An installed package's version, without importing it (qiskit-aer loads its C++)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def owner_of(meta: dict[str, Any]) -> int:
    """Records from before checkpoints had owners belong to the daemon's user (root, or
    the one user of a mount that is not root's)."""
    return int(meta.get("owner", os.getuid()))


def _format_name(name: str) -> str:
    name = FORMAT_ALIASES.get(name, name)
    if name != "auto" and name not in stateformats.FORMATS:
        raise Invalid(f"unknown format {name!r} (known: auto, {', '.join(stateformats.FORMATS)})")
    return name


def _identity(meta: dict[str, Any]) -> bytes:
    """What each chunk of a chunked blob is bound to: the checkpoint, before the hash of
    its decoded state is known (the index is bound to that too, by `_aad`)."""
    bound = {k: meta[k] for k in ("name", "format", "qubit_count", "created_ns", "parent")}
    return json.dumps(bound, sort_keys=True).encode()


def _aad(meta: dict[str, Any]) -> bytes:
    bound = {k: meta[k] for k in ("name", "format", "qubit_count", "created_ns", "parent",
                                  "decoded_sha256")}
    if "stored_sha256" in meta:  # chunked checkpoints sealed on 2026-12-06 and 07 keep it
        bound["stored_sha256"] = meta["stored_sha256"]
    return json.dumps(bound, sort_keys=True).encode()


def meta_json(meta: dict[str, Any]) -> bytes:
    """meta.json as users read it: times in ISO 8601, the blob key left out."""
    shown = {k: v for k, v in meta.items() if k not in ("blob", "created_ns", "expires_ns")}
    shown["created"] = iso_utc(meta["created_ns"])
    shown["expires"] = iso_utc(meta["expires_ns"])
    return json.dumps(shown, indent=2, allow_nan=False).encode() + b"\n"
