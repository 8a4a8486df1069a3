"""An imported statevector.npy sealed as its writer writes it.

A 30-qubit state is 16 GiB: held until close, an import needed that much of the daemon's
memory and sealed only after the last byte, so `cp` waited for the whole seal after its
copy. Here the bytes after the .npy header fill chunks of CHUNK_AMPLITUDES amplitudes,
each sealed on the pool's threads while the next one is written (levels/densestate.py);
the daemon holds a few chunks, and close() waits only for the last ones. The norm is
known only at the end: a state that is not normalised, or holds NaN, is refused at
close and its sealed chunks are dropped. Under the `auto` format the chunks' evidence
settles a dense entangled state as a state vector at close; any other state is read back
from its chunks and chosen for whole (StateStore.choose_whole), holding the importer's
write budget meanwhile, as a state held until close would have.

The writes must come in order, start to end, as cp, dd, tar and np.save write; a write
that skips ahead, or a truncate that lengthens the file (`cp --sparse=always`, `dd seek=`),
leaves a hole, which reads as zeros as in any file. A write before the next byte due (into
bytes already sealed), a truncate that shortens the file, or a write past the size the
header gives is refused (EINVAL), and nothing commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import trio

from levels import densestate, native
from levels.errors import Invalid
from levels.states import ChunkedCheckpoint, Prepared

_ZEROS = memoryview(bytes(1 << 20))


class ImportStream:
    """The writes of one statevector.npy after its header (levels.vfs.entry.WriteStream)."""

    def __init__(self, checkpoint: ChunkedCheckpoint, head: bytearray, header_bytes: int,
                 dtype: np.dtype, amplitudes: int,
                 choose_whole: Callable[[Prepared], Awaitable[Prepared]],
                 commit: Callable[[Prepared], Awaitable[None]]) -> None:
        self._checkpoint = checkpoint
        self._choose_whole = choose_whole
        self._sealing = checkpoint.sealing
        self._dtype = dtype
        self._chunk_bytes = densestate.CHUNK_AMPLITUDES * dtype.itemsize
        self._end = header_bytes + amplitudes * dtype.itemsize  # the whole file
        self._commit = commit
        self._chunk = bytearray()  # the chunk being filled
        self.size = header_bytes
        self._within_header_size(len(head))
        self._take(memoryview(head)[header_bytes:])

    def _take(self, data: memoryview) -> None:
        """Fill chunks with `data`, each full one handed to the sealing."""
        while data:
            piece = data[: self._chunk_bytes - len(self._chunk)]
            self._chunk += piece
            self.size += len(piece)
            data = data[len(piece) :]
            if len(self._chunk) == self._chunk_bytes:
                self._submit()

    def _submit(self) -> None:
        chunk, self._chunk = self._chunk, bytearray()
        dtype = self._dtype
        self._sealing.submit(
            lambda: np.frombuffer(chunk, dtype=dtype).astype(np.complex128, copy=False))

    async def write(self, offset: int, data: bytes) -> None:
        if offset < self.size:
            raise Invalid(f"an import is taken as it is written, start to end: this write is "
                          f"at byte {offset}, before {self.size}, which are sealed")
        self._within_header_size(offset + len(data))
        await self._zeros_up_to(offset)
        self._take(memoryview(data))
        await self._room()

    async def truncate(self, size: int) -> None:
        if size < self.size:
            raise Invalid(f"an import is taken as it is written: its {self.size} bytes "
                          f"cannot be cut to {size}")
        self._within_header_size(size)
        await self._zeros_up_to(size)

    def _within_header_size(self, size: int) -> None:
        if size > self._end:
            raise Invalid(f"the .npy header gives {self._end} bytes in all; this would make "
                          f"{size}")

    async def _zeros_up_to(self, offset: int) -> None:
        """A hole up to `offset` (cp --sparse, dd seek=): zeros, as a file's hole reads."""
        while self.size < offset:
            self._take(_ZEROS[: min(len(_ZEROS), offset - self.size)])
            await self._room()

    async def _room(self) -> None:
        while (wait := self._sealing.room()) is not None:
            await native.wait_for(wait)

    async def close(self) -> None:
        if self.size < self._end:
            await trio.to_thread.run_sync(self.abort)  # waits for the chunks in flight
            raise Invalid(f"the file is cut short: its .npy header gives {self._end} bytes, "
                          f"{self.size} were written")
        if self._chunk:
            self._submit()  # the last, shorter chunk
        prepared = await native.run_sync(self._checkpoint.complete)
        if prepared.unsettled:
            prepared = await self._choose_whole(prepared)
        await self._commit(prepared)

    def abort(self) -> None:
        self._checkpoint.abort()
