"""Dense state vectors checkpointed and read back in chunks (the statevector format).

A state of 2^28 amplitudes is 4 GiB: it is never copied whole, never decoded whole to be
verified, and never held twice; an import is sealed as it is written, never held whole.
One pass over the amplitudes, chunk by chunk, in order, on a few threads (numpy, zstd, AES
and SHA-256 release the GIL). Each chunk is

  measured  every value finite, its part of the norm, of the reduced density matrix of the
            lowest qubits (meta.json's entanglement entropy; in single precision, of the
            rounded amplitudes), of the distance between the state and what is stored,
            and, for an import under `auto`, its count of non-zeros (with the spectrum,
            what settles its format: stateformats.dense_reason);
  sealed    stored in the chosen precision as given (not normalised: the norm is known
            only after the last chunk), its bytes shuffled (byte k of every float together,
            as Blosc does: zstd is then ~3x faster), compressed and sealed
            (levels/store/chunked.py), and written in order.

At the end the norm must be 1 (within NORM_TOLERANCE), the index records the scale that
normalises the stored amplitudes, and the fidelity of the decoded state (stored x scale)
is bounded below by its distance from the normalised state (exactly 1 in double
precision, where the decoded state is the normalised state bit for bit). No hash of the
amplitudes is kept: each chunk is authenticated as sealed, and the blob's key is its own
SHA-256 (a second hash was 19% of a complex64 chunk's CPU, measured alone). Decoding is
the same function on both sides (`decode_chunk`); reads decode only the chunks they
touch.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from levels import native
from levels.errors import Corrupt, Invalid
from levels.stateformats import ENTROPY_CUT_MAX, NONZERO
from levels.store.blobs import BlobWriter
from levels.store.chunked import HEAD_BYTES, ChunkedBlob, ChunkSealer

CHUNK_AMPLITUDES = 1 << 18  # 4 MiB of complex128 per chunk
IN_FLIGHT = 2  # chunks queued per thread: bounds memory at a few chunks per thread
NORM_TOLERANCE = 1e-6
NPY_HEADER_MAX = 10_000 + 12  # numpy's own limit on a header, plus magic and length


@runtime_checkable
class Source(Protocol):
    """Amplitudes to checkpoint, readable by chunk."""

    size: int

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Amplitudes [start, stop) as complex128 (a view where possible)."""


class ArraySource:
    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.size = int(array.size)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self._array[start:stop], dtype=np.complex128)


def npy_array(buffer: bytes | bytearray | memoryview) -> np.ndarray:
    """A .npy file held in memory (a written import) as an array over the same bytes:
    np.load of a BytesIO copied the whole state once more."""
    view = memoryview(buffer)
    header = io.BytesIO(view[:NPY_HEADER_MAX])
    try:
        version = np.lib.format.read_magic(header)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(header)
        flat = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=header.tell())
    except ValueError as exc:
        raise Invalid(f"not a .npy array: {exc}") from exc
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def spans(size: int) -> list[tuple[int, int]]:
    return [(start, min(size, start + CHUNK_AMPLITUDES))
            for start in range(0, size, CHUNK_AMPLITUDES)]


_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}  # by thread count


_WRITER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qfs-blob-writer")


def _pool_of(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="qfs-chunk")
    return pool


def _ordered(jobs: Sequence[Callable[[], Any]], threads: int) -> Iterator[Any]:
    """Results of `jobs` in order, at most IN_FLIGHT x threads running or done ahead.
    Stopped early (a job failed, or the caller stopped asking), it returns only once no
    job is running: the caller may then release what the jobs read (a blob writer)."""
    pool = _pool_of(threads)
    pending: list[concurrent.futures.Future] = []
    queued = iter(jobs)
    try:
        for job in queued:
            pending.append(pool.submit(job))
            if len(pending) >= IN_FLIGHT * threads:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)


def shuffle(stored: np.ndarray) -> np.ndarray:
    """Byte k of every float together (planes of the real and imaginary floats)."""
    width = stored.dtype.itemsize // 2
    return np.ascontiguousarray(stored.view(np.uint8).reshape(-1, width).T)


def decode_chunk(raw: bytes, dtype: np.dtype, scale: float) -> np.ndarray:
    """A stored chunk's shuffled bytes back to normalised complex128 amplitudes."""
    width = dtype.itemsize // 2
    planes = np.frombuffer(raw, dtype=np.uint8)
    if planes.size % dtype.itemsize:
        raise Corrupt("a chunk holds a partial amplitude")
    rows = planes.reshape(width, -1)
    # One strided column write per byte plane: twice as fast here as numpy's transposed
    # copy of the (width, n) array (12.7 -> 6.7 ms a 4 MiB chunk).
    interleaved = np.empty((rows.shape[1], width), dtype=np.uint8)
    for k in range(width):
        interleaved[:, k] = rows[k]
    stored = interleaved.reshape(-1).view(dtype)
    decoded = stored.astype(np.complex128, copy=False)  # its own memory either way
    if scale != 1.0:
        np.multiply(decoded, scale, out=decoded)
    return decoded


@dataclasses.dataclass
class _Measured:
    """What one chunk adds to the whole state's figures (psi: the amplitudes as given,
    s: the stored ones, widened; in double precision s is psi)."""

    finite: bool
    norm2: float  # |psi|^2
    stored2: float  # |s|^2
    difference2: float  # |psi - s|^2
    cross: float  # Re <psi - s, s>
    gram: np.ndarray  # M^T M of the chunk's floats, M = rows of 2^cut amplitudes
    nonzero: int  # amplitudes over NONZERO x (1 + NORM_TOLERANCE), as given, if counted

    def __iadd__(self, other: "_Measured") -> "_Measured":
        self.finite = self.finite and other.finite
        self.norm2 += other.norm2
        self.stored2 += other.stored2
        self.difference2 += other.difference2
        self.cross += other.cross
        self.gram += other.gram
        self.nonzero += other.nonzero
        return self


@dataclasses.dataclass
class Sealed:
    chunks: list[tuple[int, int, str]]
    fidelity: float
    spectrum: tuple[int, np.ndarray]  # the entropy's cut and the reduced state's spectrum
    # Bounds how far each value of `spectrum` may be from that of the whole state's one
    # product (stateformats.schmidt_spectrum): each sums 2^(n - cut) rows, whose
    # worst-case rounding is that many machine epsilons (7.5e-9 for both at 30 qubits;
    # typically ~1e-13). Used in double precision only.
    spectrum_error: float
    # Amplitudes over NONZERO x (1 + NORM_TOLERANCE) as given: never more than the
    # normalised state has over NONZERO, whatever its norm within the tolerance. None
    # unless asked for (only an import under `auto` needs it).
    nonzero: int | None
    info: dict[str, Any]


class _BlasLimit:
    """BLAS on one thread while any sealing runs (chunks run on our own threads: OpenBLAS's
    threads spinning beside them on two cores made a 24-qubit scan 9 s instead of a
    fraction), and around the small LAPACK calls beside a seal. Counted, because
    sealings overlap and an import's lasts as long as its writer: the first sets the
    limit, the last lifts it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._limit: Any = None

    def acquire(self) -> None:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._holders == 0:
                self._limit = threadpool_limits(1, user_api="blas")
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                self._limit.restore_original_limits()
                self._limit = None

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# Also for stateformats.looks_dense: on OpenBLAS's threads even a 64 x 64 problem leaves
# one spinning ~100 ms after it.
one_blas_thread = _BlasLimit()


class Sealing:
    """One pass over a state's amplitudes, chunk by chunk, in order, as they come (a state
    held in memory, or an import as its writer writes it): each chunk is measured and
    sealed on the pool's threads, then written to the blob and added up on the writer's
    thread, in order. The state's norm is known only at
    the end, so what is stored is never normalised: the index's scale does that at decode.

    The caller keeps `room()` between submissions (a bounded number of chunks in flight),
    then calls finish(), or abort() if it gives up."""

    def __init__(self, size: int, precision: np.dtype, sealer: ChunkSealer,
                 writer: BlobWriter, threads: int, count_nonzero: bool = False) -> None:
        self._size = size
        self._count_nonzero = count_nonzero
        self._dtype = np.dtype(precision)
        self._cut = min((size.bit_length() - 1) // 2, ENTROPY_CUT_MAX)
        self._sealer = sealer
        self._writer = writer
        self._pool = _pool_of(threads)
        self._limit = IN_FLIGHT * threads
        # Per chunk: sealing, written.
        self._flight: collections.deque[tuple[concurrent.futures.Future, ...]] = \
            collections.deque()
        self._chunks: list[tuple[int, int, str]] = []
        self._offset = HEAD_BYTES
        width = 2 ** (self._cut + 1)
        self._total = _Measured(True, 0.0, 0.0, 0.0, 0.0, np.zeros((width, width)), 0)
        self._submitted = 0
        writer.write(sealer.head)
        self._open = True
        one_blas_thread.acquire()

    def submit(self, amplitudes: Callable[[], np.ndarray]) -> None:
        """The next chunk (CHUNK_AMPLITUDES amplitudes, fewer at the end), as a function
        that gives them as complex128, run on the pool."""
        sealing = self._pool.submit(self._seal_one, self._submitted, amplitudes)
        self._submitted += 1
        self._flight.append((sealing, _WRITER.submit(self._write, sealing)))

    def room(self) -> concurrent.futures.Future | None:
        """None when another chunk may be submitted; else a future to wait for first.
        Raises what a finished chunk raised."""
        while self._flight:
            pending = next((f for f in self._flight[0] if not f.done()), None)
            if pending is not None:
                return pending if len(self._flight) >= self._limit else None
            for future in self._flight[0]:
                future.result()  # raises, leaving the chunk in flight: finish() raises too
            self._flight.popleft()
        return None

    def _seal_one(self, index: int, amplitudes: Callable[[], np.ndarray]
                  ) -> tuple[bytes, str, _Measured]:
        psi = amplitudes()
        norm2 = float(np.vdot(psi, psi).real)
        # NaN and infinities make the norm so; only then is each value looked at (a finite
        # norm too large to hold is refused as not normalised).
        finite = math.isfinite(norm2) or bool(np.isfinite(psi.view(np.float64)).all())
        nonzero = int(np.count_nonzero(np.abs(psi) > NONZERO * (1 + NORM_TOLERANCE))) \
            if self._count_nonzero else 0
        width = 2 ** (self._cut + 1)
        if self._dtype == np.complex128:
            # M^T M in real arithmetic (one BLAS product; the complex one is twice as slow
            # with this machine's BLAS kernel).
            real = psi.view(np.float64).reshape(-1, width)
            measured = _Measured(finite, norm2, norm2, 0.0, 0.0, real.T @ real, nonzero)
            stored = psi
        else:
            stored = psi.astype(self._dtype)
            difference = np.subtract(psi, stored, dtype=np.complex128)  # s widened in blocks
            # With d = psi - s: |s|^2 = |psi|^2 - 2 Re<d, psi> + |d|^2 and Re<d, s> =
            # Re<d, psi> - |d|^2, so s is never widened whole (a pass and 8 MiB a chunk).
            difference2 = float(np.vdot(difference, difference).real)
            along = float(np.vdot(difference, psi).real)
            # The entropy of what is stored, from its own single-precision floats: half the
            # time of the double product (entropies agree to ~1e-7).
            real32 = stored.view(np.float32).reshape(-1, width)
            measured = _Measured(finite, norm2, norm2 - 2 * along + difference2, difference2,
                                 along - difference2, (real32.T @ real32).astype(np.float64),
                                 nonzero)
        sealed, tag = self._sealer.seal(index, shuffle(stored).data)
        return sealed, tag, measured

    def _write(self, sealing: concurrent.futures.Future) -> None:
        sealed, tag, measured = sealing.result()
        self._writer.write(sealed)
        self._chunks.append((self._offset, len(sealed), tag))
        self._offset += len(sealed)
        self._total += measured

    def finish(self) -> Sealed:
        """Wait for every chunk; Invalid unless every chunk was given, every amplitude
        was finite and the norm is 1 (within NORM_TOLERANCE)."""
        try:
            for future in self._settled():
                future.result()
            if self._submitted != len(spans(self._size)):
                raise Invalid(f"the state has {self._size} amplitudes; only "
                              f"{min(self._size, self._submitted * CHUNK_AMPLITUDES)} "
                              "were given")
            # Still under the BLAS limit: the spectrum's eigvalsh on OpenBLAS's threads
            # would leave one spinning ~100 ms after it (a fifth of a 24-qubit
            # checkpoint's CPU, taken from the next one's chunks).
            return self._sealed()
        finally:
            self._close()

    def abort(self) -> None:
        """Stop: nothing is left running (the caller then drops the blob)."""
        for sealing, *_ in self._flight:
            sealing.cancel()
        try:
            self._settled()
        finally:
            self._close()

    def _settled(self) -> list[concurrent.futures.Future]:
        """Every future in flight, once all are done."""
        futures = [f for chunk in self._flight for f in chunk]
        concurrent.futures.wait(futures)
        return futures

    def _close(self) -> None:
        if self._open:
            self._open = False
            one_blas_thread.release()

    def _sealed(self) -> Sealed:
        total = self._total
        if not total.finite:
            raise Invalid("the state holds NaN or infinite values")
        if abs(total.norm2 - 1) > NORM_TOLERANCE:
            raise Invalid(f"the state vector is not normalised (norm² = {total.norm2:.9g})")
        # Decoded = s x scale with scale = 1/|s|; psi normalised is psi / |psi|. With
        # k = |psi| / |s|, |psi/|psi| - s/|s||^2 = |psi - k s|^2 / |psi|^2, and
        # |psi - k s|^2 = |psi - s|^2 - 2 (k-1) Re<psi - s, s> + (k-1)^2 |s|^2: each term
        # summed on its own, so nothing cancels (k - 1 from |psi|^2 = |s|^2 + 2 Re<psi - s,
        # s> + |psi - s|^2). Exactly 0 in double precision, where s is psi.
        excess = 2 * total.cross + total.difference2
        k = math.sqrt(1 + excess / total.stored2)
        k_minus_1 = excess / (total.stored2 * (k + 1))
        distance2 = (total.difference2 - 2 * k_minus_1 * total.cross
                     + k_minus_1**2 * total.stored2) / total.norm2
        # |<psi|d>| >= Re<psi|d> = 1 - |psi - d|^2 / 2 for unit vectors: a bound from the
        # differences themselves, where |<psi|d>|^2 summed over 2^n terms would carry ~1e-14
        # of rounding (more than single precision loses: ~1e-15 at 20 qubits).
        fidelity = max(0.0, 1 - distance2 / 2) ** 2
        gram = total.gram
        reduced = (gram[0::2, 0::2] + gram[1::2, 1::2]) \
            + 1j * (gram[0::2, 1::2] - gram[1::2, 0::2])
        spectrum = np.clip(np.linalg.eigvalsh(reduced / total.norm2), 0, None)
        info = {"dtype": self._dtype.str, "scale": 1 / math.sqrt(total.stored2),
                "amplitudes": self._size, "chunk_amplitudes": CHUNK_AMPLITUDES,
                "shuffle": "float-bytes"}
        rows = self._size >> self._cut
        return Sealed(self._chunks, fidelity, (self._cut, spectrum),
                      2 * rows * float(np.finfo(np.float64).eps),
                      total.nonzero if self._count_nonzero else None, info)


def submit_all(source: Source, sealing: Sealing) -> None:
    """Every chunk of a state held in memory, as room comes (blocking: a worker thread)."""
    for start, stop in spans(source.size):
        while (wait := sealing.room()) is not None:
            concurrent.futures.wait([wait])
        sealing.submit(functools.partial(source.chunk, start, stop))


class DenseReader:
    """The decoded state of a chunked checkpoint as a .npy file, read by ranges: a read
    decodes only the chunks it touches (a few kept for the next reads), and the next chunks
    are decoded ahead on the pool's threads, as a sequential reader wants them. Reads that
    arrive together (the kernel's read-ahead sends several) wait on one decode per chunk."""

    AHEAD = 2

    def __init__(self, blob: ChunkedBlob, header: bytes, threads: int = 2,
                 keep: int = 4) -> None:
        info = blob.index.info
        self._blob = blob
        self._dtype = np.dtype(info["dtype"])
        self._scale = float(info["scale"])
        self._chunk_bytes = int(info["chunk_amplitudes"]) * 16
        self._amplitudes = int(info["amplitudes"])
        self._spans = spans(self._amplitudes)
        self._header = header
        self._threads = threads
        self._keep = keep
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()  # decoded bytes
        self._decoding: dict[int, concurrent.futures.Future] = {}  # asked for or ahead
        self.size = len(header) + 16 * self._amplitudes
        if len(blob.index.chunks) != len(self._spans):
            raise Corrupt("the blob's chunk index does not cover the state")

    def _amplitudes_of(self, index: int) -> np.ndarray:
        start, stop = self._spans[index]
        width = self._dtype.itemsize
        raw = self._blob.chunk(index, (stop - start) * width)
        if len(raw) != (stop - start) * width:
            raise Corrupt(f"chunk {index} holds {len(raw)} bytes, not {(stop - start) * width}")
        return decode_chunk(raw, self._dtype, self._scale)

    def _decode(self, index: int) -> np.ndarray:
        return self._amplitudes_of(index).view(np.uint8)

    def _keep_decoded(self, index: int, data: np.ndarray) -> None:
        self._decoded[index] = data
        while len(self._decoded) > self._keep:
            self._decoded.popitem(last=False)

    def _chunks(self, offset: int, end: int) -> range:
        first = max(0, offset - len(self._header)) // self._chunk_bytes
        last = max(0, end - 1 - len(self._header)) // self._chunk_bytes
        return range(first, min(last, len(self._spans) - 1) + 1) if end > len(self._header) \
            else range(0)

    def _slice(self, offset: int, end: int, held: dict[int, np.ndarray]) -> bytes | memoryview:
        """Bytes [offset, end) from the header and the decoded chunks `held`; a range
        within one chunk is a view of it (FUSE copies the reply once, and 1 MiB reads made
        one more copy of every byte)."""
        header = len(self._header)
        index, within = divmod(offset - header, self._chunk_bytes)
        if offset >= header and within + end - offset <= self._chunk_bytes:
            return held[index][within : within + end - offset].data
        out = io.BytesIO()
        if offset < header:
            out.write(self._header[offset:end])
            offset = min(end, header)
        while offset < end:
            index, within = divmod(offset - header, self._chunk_bytes)
            piece = held[index][within : within + end - offset]
            out.write(piece.data)
            offset += piece.size
        return out.getvalue()

    def read_sync(self, offset: int, size: int) -> bytes | memoryview:
        end = min(self.size, offset + size)
        held: dict[int, np.ndarray] = {}
        for index in self._chunks(offset, end):
            if index not in self._decoded:
                self._keep_decoded(index, self._decode(index))
            held[index] = self._decoded[index]
        return self._slice(offset, end, held) if offset < end else b""

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Chunks already decoded are served on the caller's thread (no hop per FUSE
        read); a missing one is awaited from the pool, by every read that needs it."""
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        needed = self._chunks(offset, end)
        pool = _pool_of(self._threads)
        held: dict[int, np.ndarray] = {}
        for index in needed:
            data = self._decoded.get(index)
            if data is None:
                future = self._decoding.get(index)
                if future is None:
                    future = self._decoding[index] = pool.submit(self._decode, index)
                await native.wait_for(future)
                if self._decoding.get(index) is future:  # the first of its waiters
                    del self._decoding[index]
                data = future.result()
                self._keep_decoded(index, data)
            else:
                self._decoded.move_to_end(index)
            held[index] = data
        following = needed.stop if needed else 0
        ahead = range(following, min(following + self.AHEAD, len(self._spans)))
        for index in [i for i, f in self._decoding.items() if f.done() and i not in ahead]:
            del self._decoding[index]  # decoded ahead of a reader that went elsewhere
        for index in ahead:
            if index not in self._decoded and index not in self._decoding:
                self._decoding[index] = pool.submit(self._decode, index)
        return self._slice(offset, end, held)

    def array(self) -> np.ndarray:
        """The whole decoded state (a restore onto qubits), chunks decoded on threads."""
        vector = np.empty(self._amplitudes, dtype=np.complex128)

        def one(index: int) -> None:
            start, stop = self._spans[index]
            vector[start:stop] = self._amplitudes_of(index)

        for _ in _ordered([functools.partial(one, i) for i in range(len(self._spans))],
                          self._threads):
            pass
        return vector
