"""Supervised worker processes for native library work on untrusted input.

Qiskit's Rust importer, Aer's C++ simulator and matplotlib run native code that a hostile
or merely unusual program can crash (10,000 nested parentheses overflow the importer's
stack) or make exhaust memory. In the daemon such a crash ends the mount; here it costs
one request. Each job runs in a worker process under limits on address space and CPU time;
a worker that dies or overruns is replaced, its request fails with WorkerDied (the caller
decides the errno: EINVAL for a program the parser could not survive, EIO otherwise), and
every other request goes on. Nothing is ever retried in the daemon.

Workers are fresh interpreters (`python -m levels.workers`), never forks of the daemon
(forking a process that runs threads is unsafe), talking over a socket pair (length-prefixed
pickles, `_Channel`: blocking from a thread, or awaited on trio's own thread without a
thread hop when a worker is idle, `WorkerPool.run_async`); plain
subprocesses, not multiprocessing's spawn, which would also start a resource-tracker
process that outlives a killed daemon. They are started from one long-lived thread:
PR_SET_PDEATHSIG fires when the *thread* that started a child exits, so starting workers
from trio's recycled threads would kill them at random. They die with the daemon (the
death signal, and a watchdog on the parent's pid), so a kill -9 leaves no process behind.
"""

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import importlib
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from levels.errors import QfsError, WorkerDied

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
# `python -m` looks in its working directory first: a worker starts in the directory that
# holds the daemon's own `levels`, so that it runs the daemon's code wherever the daemon
# was started (a `levels` in the daemon's working directory is never imported instead).
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QISKIT = ("qiskit.qasm2", "qiskit.qasm3")
IN_WORKER = False  # True inside a worker process: jobs may then take over its stderr


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one worker may use: address space for its whole life, CPU time per job, and
    wall-clock time per job (a job blocked on nothing CPU-bound is still bounded). A
    positive `niceness` lowers the worker's CPU priority below the daemon's, for work no
    request waits on (the search index writer), so that it yields the CPU to requests."""

    memory_mb: int = 4096
    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    niceness: int = 0


class _Channel:
    """Pickled messages over a stream socket, each after its length. The socket stays
    blocking: the awaited side asks for each send and receive not to wait (MSG_DONTWAIT)
    and waits for the socket on trio instead, so one socket serves both kinds of caller."""

    _LENGTH = struct.Struct("!Q")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: object) -> None:
        self.sock.sendall(self._framed(message))

    def poll(self, timeout: float) -> bool:
        """Whether a message starts arriving within `timeout` seconds (poll(2), not
        select(2), which cannot watch a descriptor numbered 1024 or more)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def recv(self) -> Any:
        length, = self._LENGTH.unpack(self._recv_exactly(self._LENGTH.size))
        return pickle.loads(self._recv_exactly(length))

    async def send_async(self, message: object) -> None:
        data = memoryview(self._framed(message))
        while data:
            try:
                data = data[self.sock.send(data, socket.MSG_DONTWAIT):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def recv_async(self) -> Any:
        length, = self._LENGTH.unpack(await self._recv_exactly_async(self._LENGTH.size))
        return pickle.loads(await self._recv_exactly_async(length))

    def close(self) -> None:
        self.sock.close()

    def _framed(self, message: object) -> bytes:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        return self._LENGTH.pack(len(data)) + data

    def _recv_exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise EOFError
            got += n
        return buffer

    async def _recv_exactly_async(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if n == 0:
                raise EOFError
            got += n
        return buffer


Reply = tuple[str, Any]  # ("ok", result), ("refused", QfsError) or ("bug", traceback text)


class _Worker:
    """One worker process and the daemon's end of its socket."""

    def __init__(self, process: subprocess.Popen, channel: _Channel) -> None:
        self.process = process
        self.channel = channel

    def exchange(self, function: Callable[..., Any], args: tuple, limits: Limits) -> Reply:
        try:
            self.channel.send((function, args, limits.cpu_seconds))
            if not self.channel.poll(limits.wall_seconds):
                self.kill()
                raise WorkerDied(_too_long(limits))
            reply: Reply = self.channel.recv()
        except (EOFError, OSError):
            raise WorkerDied(self._death()) from None
        return reply

    async def exchange_async(self, function: Callable[..., Any], args: tuple,
                             limits: Limits) -> Reply:
        try:
            with trio.move_on_after(limits.wall_seconds):
                await self.channel.send_async((function, args, limits.cpu_seconds))
                reply: Reply = await self.channel.recv_async()
                return reply
        except (EOFError, OSError):
            raise WorkerDied(await trio.to_thread.run_sync(self._death)) from None
        self.kill()
        raise WorkerDied(_too_long(limits))

    def _death(self) -> str:
        """Why the worker is gone, in words: a signal name or an exit status."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "worker stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            if name == "SIGXCPU":
                return "used more CPU time than allowed and was stopped"
            return f"worker crashed ({name})"
        if code == _OUT_OF_MEMORY:
            return "ran out of the memory a worker may use"
        return f"worker exited with status {code}"

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.channel.close()

    def alive(self) -> bool:
        return self.process.poll() is None


def _too_long(limits: Limits) -> str:
    return f"took longer than {limits.wall_seconds:g} s and was stopped"


def _outcome(reply: Reply) -> Any:
    status, value = reply
    if status == "ok":
        return value
    if status == "refused":
        raise value
    raise RuntimeError(value)  # a bug in the job: the caller's guard logs it as such


_OUT_OF_MEMORY = 75


class WorkerPool:
    """At most `size` workers, started on first use, each serving one job at a time."""

    def __init__(self, size: int, limits: Limits, preload: tuple[str, ...] = QISKIT) -> None:
        self.limits = limits
        self._preload = preload
        self._size = max(1, size)
        self._idle: list[_Worker] = []
        self._started = 0
        self._cond = threading.Condition()
        self._closed = False
        self._spawner = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qfs-spawner")

    def run(self, function: Callable[..., T], *args: object, limits: Limits | None = None) -> T:
        """`function(*args)` in a worker (blocking: call it from a thread). `function` must
        be importable by name; QfsError refusals it raises reach the caller unchanged."""
        worker = self._checkout()
        try:
            reply = worker.exchange(function, args, limits or self.limits)
        except BaseException:
            self._lose(worker)
            raise
        self._checkin(worker)
        return _outcome(reply)

    async def run_async(self, function: Callable[..., T], *args: object,
                        limits: Limits | None = None) -> T:
        """`run` from trio's thread: on an idle worker without a thread hop (~90 us of a
        small parse's ~270), else from a thread as `run`. A request cancelled mid-job
        costs its worker, whose socket is then mid-message."""
        worker = self._idle_worker()
        if worker is None:
            return await trio.to_thread.run_sync(
                functools.partial(self.run, function, *args, limits=limits))
        try:
            reply = await worker.exchange_async(function, args, limits or self.limits)
        except BaseException:
            self._lose(worker)
            raise
        self._checkin(worker)
        return _outcome(reply)

    def _idle_worker(self) -> _Worker | None:
        with self._cond:
            while self._idle and not self._closed:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
                self._started -= 1
            return None

    def _lose(self, worker: _Worker) -> None:
        worker.kill()
        self._forget()

    def start_ahead(self) -> None:
        """Start a worker now, in the background, so that the first job does not wait the
        ~0.5 s a fresh interpreter takes to import what its jobs use (the first `cp` after
        a mount). A worker that fails to start is started again by the first job."""
        with self._cond:
            if self._closed or self._started >= self._size:
                return
            self._started += 1

        def started(future: concurrent.futures.Future[_Worker]) -> None:
            if future.exception() is None:
                self._checkin(future.result())
            else:
                self._forget()

        self._spawner.submit(self._start).add_done_callback(started)

    def _checkout(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerDied("the filesystem is shutting down")
                worker = self._idle_worker()
                if worker is not None:
                    return worker
                if self._started < self._size:
                    self._started += 1
                    break
                self._cond.wait()
        try:
            return self._spawner.submit(self._start).result()
        except BaseException:
            self._forget()
            raise

    def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "levels.workers", str(theirs.fileno()),
                 str(self.limits.memory_mb), str(os.getpid()), *self._preload],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
                cwd=_CODE_ROOT)
        if self.limits.niceness:
            with contextlib.suppress(OSError):  # gone already: its first job will say so
                os.setpriority(os.PRIO_PROCESS, process.pid,
                               os.getpriority(os.PRIO_PROCESS, 0) + self.limits.niceness)
        return _Worker(process, _Channel(ours))

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
            self._cond.notify()

    def _forget(self) -> None:
        with self._cond:
            self._started -= 1
            self._cond.notify()

    def shutdown(self) -> None:
        """Stop every idle worker now; busy ones are stopped as their jobs come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            worker.kill()
        self._spawner.shutdown(wait=False)


# -- the worker's side -----------------------------------------------------------------------


def _serve(conn: _Channel, memory_mb: int, parent_pid: int, preload: list[str]) -> None:
    """A worker's life: die with the parent, take the limits, import what its jobs use
    (once, not inside the first request), then answer jobs until the pipe closes."""
    global IN_WORKER
    IN_WORKER = True
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of a foreground daemon is its own
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for module in preload:
        importlib.import_module(module)
    while True:
        try:
            function, args, cpu_seconds = conn.recv()
        except (EOFError, OSError):
            return
        _allow_cpu(cpu_seconds)
        try:
            reply: tuple[str, Any] = ("ok", function(*args))
        except QfsError as exc:
            reply = ("refused", exc)
        except MemoryError:
            os._exit(_OUT_OF_MEMORY)
        except Exception as exc:
            reply = ("bug", f"{type(exc).__name__}: {exc} (in a worker)\n"
                            f"{traceback.format_exc()}")
        try:
            conn.send(reply)
        except MemoryError:
            os._exit(_OUT_OF_MEMORY)
        except Exception as exc:  # an unpicklable result is a bug in the job
            conn.send(("bug", f"cannot send the result back: {type(exc).__name__}: {exc}"))


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(0)

    def watch() -> None:  # second line: a job in native code that holds the GIL is
        while os.getppid() == parent_pid:  # still ended by the death signal
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _allow_cpu(seconds: int) -> None:
    """The CPU-time limit is per process; move it to what is used now plus this job's share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + seconds + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


if __name__ == "__main__":
    # Serve from the importable module, not __main__, so that jobs see its IN_WORKER.
    from levels import workers

    workers._serve(workers._Channel(socket.socket(fileno=int(sys.argv[1]))), int(sys.argv[2]),
                   int(sys.argv[3]),
                   sys.argv[4:])
