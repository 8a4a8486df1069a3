"""Dense state vectors checkpointed and read back in chunks (the statevector format).

A state of 2^28 amplitudes is 4 GiB: it is never copied whole, never decoded whole to be
verified, and never held twice. Two passes over the amplitudes, chunk by chunk, on a few
threads (numpy, zstd, AES and SHA-256 release the GIL):

  scan   every value finite, the norm, the reduced density matrix of the lowest qubits
         (meta.json's entanglement entropy; in single precision, of the rounded
         amplitudes) and, for single precision, the norm of the rounded amplitudes;
  seal   each chunk stored in the chosen precision, its bytes shuffled (byte k of every
         float together, as Blosc does: zstd is then ~3x faster), compressed and sealed
         (levels/store/chunked.py); the stored amplitudes are hashed in order and the
         decoded chunk (the normalised amplitudes, or in single precision the stored ones
         x the scale that normalises them) compared with the state: the fidelity is
         bounded below by the distance |psi - decoded|^2 accumulated over the chunks
         (exactly 1 in double precision, where the normalised amplitudes are stored).

In double precision the stored amplitudes are the decoded state, so their hash is the
hash of what a read returns (decoded_sha256); in single precision it is the hash of the
rounded amplitudes (stored_sha256), which decode to themselves x the index's scale.
Decoding is the same function on both sides (`decode_chunk`); reads decode only the
chunks they touch.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from levels.errors import Corrupt, Invalid
from levels.store.blobs import BlobWriter
from levels.store.chunked import HEAD_BYTES, ChunkedBlob, ChunkSealer

CHUNK_AMPLITUDES = 1 << 18  # 4 MiB of complex128 per chunk
ENTROPY_CUT_MAX = 6  # as stateformats.schmidt_spectrum: qubits 0..k-1, k = min(n // 2, 6)
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


def one_blas_thread():
    """BLAS single-threaded while chunks run on our own threads: OpenBLAS's threads,
    spinning beside them on two cores, made a 24-qubit scan 9 s instead of a fraction."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


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
    """Results of `jobs` in order, at most IN_FLIGHT x threads running or done ahead."""
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


@dataclasses.dataclass
class Scan:
    norm2: float
    scale: float  # multiplies single-precision amplitudes into the normalised state
    cut: int
    reduced: np.ndarray  # reduced density matrix of qubits 0..cut-1 of the normalised state

    @property
    def spectrum(self) -> tuple[int, np.ndarray]:
        return self.cut, np.clip(np.linalg.eigvalsh(self.reduced), 0, None)


def scan(source: Source, precision: np.dtype, threads: int) -> Scan:
    """Pass one: Invalid unless every amplitude is finite and the norm is 1 (within
    NORM_TOLERANCE); the norms and the reduced density matrix of the lowest qubits."""
    n = source.size.bit_length() - 1
    cut = min(n // 2, ENTROPY_CUT_MAX)

    def measure(start: int, stop: int) -> tuple[bool, float, float, np.ndarray]:
        amplitudes = source.chunk(start, stop)
        norm2 = float(np.vdot(amplitudes, amplitudes).real)
        # NaN and infinities make the norm so; only then is each value looked at (a
        # finite norm too large to hold is refused as not normalised).
        finite = math.isfinite(norm2) or bool(np.isfinite(amplitudes.view(np.float64)).all())
        # M^H M of M = amplitudes as rows of 2^cut, in real arithmetic (one BLAS product;
        # the complex one is twice as slow with this machine's BLAS kernel).
        if precision == np.complex128:
            real = amplitudes.view(np.float64).reshape(-1, 2 ** (cut + 1))
            return finite, norm2, norm2, real.T @ real
        single = amplitudes.astype(precision)
        widened = single.astype(np.complex128)
        stored2 = float(np.vdot(widened, widened).real)  # summed in double: the scale
        # The entropy of what is stored, from its own single-precision floats: half the
        # time of the double product (entropies agree to ~1e-7).
        real32 = single.view(np.float32).reshape(-1, 2 ** (cut + 1))
        return finite, norm2, stored2, (real32.T @ real32).astype(np.float64)

    finite, norm2, stored2 = True, 0.0, 0.0
    gram = np.zeros((2 ** (cut + 1),) * 2)
    for ok, a, b, g in _ordered([functools.partial(measure, *s) for s in spans(source.size)],
                                threads):
        finite, norm2, stored2 = finite and ok, norm2 + a, stored2 + b
        gram += g
    if not finite:
        raise Invalid("the state holds NaN or infinite values")
    if abs(norm2 - 1) > NORM_TOLERANCE:
        raise Invalid(f"the state vector is not normalised (norm² = {norm2:.9g})")
    reduced = (gram[0::2, 0::2] + gram[1::2, 1::2]) + 1j * (gram[0::2, 1::2] - gram[1::2, 0::2])
    return Scan(norm2, 1 / math.sqrt(stored2), cut, reduced / norm2)


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
    decoded = stored.astype(np.complex128, copy=False)
    return decoded if scale == 1.0 else decoded * scale


@dataclasses.dataclass
class Sealed:
    chunks: list[tuple[int, int, str]]
    # SHA-256 of the stored amplitudes in order: in double precision the decoded state
    # itself; in single precision the rounded amplitudes, which decode to themselves x
    # info["scale"] (hashing those, not the twice as many bytes decoded, was 15% of a
    # complex64 checkpoint's time).
    stored_sha256: str
    fidelity: float
    info: dict[str, Any]


def seal(source: Source, measured: Scan, precision: np.dtype, sealer: ChunkSealer,
         writer: BlobWriter, threads: int) -> Sealed:
    """Pass two: every chunk sealed and written in order (writer gets sealer.head first)."""
    dtype = np.dtype(precision)

    exact = 1 / math.sqrt(measured.norm2)

    def one(index: int, start: int, stop: int) -> tuple[bytes, str, np.ndarray, float]:
        """(sealed chunk, its tag, the stored amplitudes, |psi - decoded|^2 of the chunk)."""
        amplitudes = source.chunk(start, stop)
        if dtype == np.complex128:  # stored normalised: decoded is psi, bit for bit
            normalised = amplitudes * exact
            sealed, tag = sealer.seal(index, shuffle(normalised).data)
            return sealed, tag, normalised, 0.0
        stored = amplitudes.astype(dtype)
        sealed, tag = sealer.seal(index, shuffle(stored).data)
        # |psi x exact - stored x scale|^2 = exact^2 |psi - stored x (scale / exact)|^2, in
        # one widened copy: the four temporaries of the direct form were 3/4 of this pass.
        difference = np.multiply(stored, measured.scale / exact, dtype=np.complex128)
        np.subtract(amplitudes, difference, out=difference)
        return sealed, tag, stored, exact**2 * float(np.vdot(difference, difference).real)

    writer.write(sealer.head)
    offset = HEAD_BYTES
    chunks: list[tuple[int, int, str]] = []
    digest = hashlib.sha256()
    distance2 = 0.0
    jobs = [functools.partial(one, i, *s) for i, s in enumerate(spans(source.size))]
    # Two ordered, sequential hashes: the stored amplitudes' here, the stored blob's (the
    # writer's content key) with the write on a thread of its own, so they overlap.
    written: list[concurrent.futures.Future] = []
    try:
        for sealed, tag, stored, part in _ordered(jobs, threads):
            written.append(_WRITER.submit(writer.write, sealed))
            digest.update(stored)
            chunks.append((offset, len(sealed), tag))
            offset += len(sealed)
            distance2 += part
            if len(written) > IN_FLIGHT:
                written.pop(0).result()
    finally:  # no write left running when the caller aborts the blob
        concurrent.futures.wait(written)
    for future in written:
        future.result()
    # |<psi|d>| >= Re<psi|d> = 1 - |psi - d|^2 / 2 for unit vectors: a bound from the
    # differences themselves, where |<psi|d>|^2 summed over 2^n terms would carry ~1e-14
    # of rounding (more than single precision loses: ~1e-15 at 20 qubits).
    fidelity = max(0.0, 1 - distance2 / 2) ** 2
    scale = 1.0 if dtype == np.complex128 else measured.scale
    info = {"dtype": dtype.str, "scale": scale, "amplitudes": source.size,
            "chunk_amplitudes": CHUNK_AMPLITUDES, "shuffle": "float-bytes"}
    return Sealed(chunks, digest.hexdigest(), fidelity, info)


def _wake(token: Any, event: Any, _future: concurrent.futures.Future) -> None:
    """A pool future's callback: set a trio event from the pool's thread."""
    token.run_sync_soon(event.set)


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
        import trio

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
                if not future.done():
                    token = trio.lowlevel.current_trio_token()
                    done = trio.Event()
                    future.add_done_callback(functools.partial(_wake, token, done))
                    await done.wait()
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
