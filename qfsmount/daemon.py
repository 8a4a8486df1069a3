"""Run the mounted filesystem: init, trio main loop, signals, close.

SIGTERM/SIGINT/SIGHUP end the loop through pyfuse3.terminate() and unmount cleanly;
`fusermount3 -u` ends it from outside. After an unexpected exception the mountpoint is
left as it is (close(unmount=False)), never unmounted, so that a tool such as rsync --delete
cannot mistake an empty directory for an emptied fabric. A fatal signal (a native crash)
writes every thread's stack to qfs.log before the process dies, and SIGUSR1 does the same
on demand.
"""

import faulthandler
import gc
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from fsops.operations import Operations
from levels.config import Config
from levels.errors import QfsError
from levels.fabric import Fabric
from levels.hosts import paths_of
from levels.oplog import EscapingFormatter
from qfsmount.readahead import set_read_ahead

log = logging.getLogger("qfs")

Ready = Callable[[str | None], None]
YOUNG_OBJECTS = 10_000  # the collector's first threshold (CPython's default: 700)


def setup_logging(data_dir: Path, debug: bool, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(data_dir / "qfs.log")]
    if to_stderr:
        handlers.append(logging.StreamHandler())
    formatter = EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)  # no user-chosen name can forge a line of the log
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=handlers,
                        force=True)
    logging.getLogger("qiskit").setLevel(logging.WARNING)  # its INFO is per transpiler pass


def fuse_options(extra: list[str], debug: bool) -> set[str]:
    options = set(pyfuse3.default_options) | {"fsname=qfs", "subtype=qfs"}
    if os.getuid() == 0:
        options.add("allow_other")  # other users see the fabric; permissions still apply
    if debug:
        options.add("debug")
    options.update(o for o in extra if o)
    return options


async def _serve(fabric: Fabric, operations: Operations, mountpoint: Path) -> None:
    # Blocking calls in flight at once (store reads, searches, waits on worker processes):
    # the rest wait their turn rather than pile threads onto the daemon.
    trio.to_thread.current_default_thread_limiter().total_tokens = (
        fabric.config.performance.max_concurrent_operations)
    async with trio.open_nursery() as nursery:
        # Workflows run as background tasks of this loop, beside the FUSE requests.
        fabric.coordinator.spawn = nursery.start_soon
        fabric.circuit_watchers.append(operations.circuit_changed)
        if fabric.feed is not None:  # other hosts' changes: drop the kernel's caches
            fabric.feed.subscribe(_forgetting(operations))
        nursery.start_soon(fabric.telemetry.run)
        nursery.start_soon(_widen_read_ahead, mountpoint, fabric.config.performance.read_ahead_kb)

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    log.info("signal %s: unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _widen_read_ahead(mountpoint: Path, kib: int) -> None:
    """The read-ahead window (0: the kernel's), once the kernel has had the answer to
    FUSE's INIT: a stat of the mountpoint, answered by this loop, comes after it."""
    if not kib:
        return
    try:
        device = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev
    except OSError as exc:  # unmounted already: nothing to widen, and never the loop's end
        log.info("read-ahead not set: %s", exc)
        return
    log.info("%s", set_read_ahead(device, kib))


def _forgetting(operations: Operations) -> Callable[[tuple[str, bytes] | None], None]:
    """A change feed listener (its own thread) that has trio's thread forget the paths."""
    token = trio.lowlevel.current_trio_token()

    def forget(change: tuple[str, bytes] | None) -> None:
        for path in paths_of(change):
            try:
                trio.from_thread.run_sync(operations.forget_remote, path, trio_token=token)
            except trio.RunFinishedError:  # unmounting: nothing left to forget
                return
    return forget


def _spare_the_collector() -> None:
    """What the daemon holds once mounted (Qiskit's and Aer's modules, the device models:
    millions of objects that live as long as it does) is moved out of the cyclic garbage
    collector's reach, so that a full collection, which a listing of 10,000 circuits can
    set off, scans what requests made since and not all of it (29 -> ~1 ms a collection).
    The young generation holds 10,000 objects, not 700: a listing of 10,000 circuits builds
    a list of 10,000 pairs, and each young collection while it grew walked all of it
    (14 a listing, ~0.6 ms each once a cat of every circuit had filled the caches).
    The cost: what was alive at mount and later becomes garbage in a reference cycle is
    never collected; that is bounded by what the daemon held at mount (a device model
    that its first recalibration replaces), once, as later objects are not frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, older, oldest)


def run(
    mountpoint: Path,
    data_dir: Path,
    config: Config,
    options: list[str],
    debug: bool,
    reindex: bool,
    key_file: Path | None,
    metrics_port: int | None,
    ready: Ready,
) -> int:
    """Mount and serve until unmounted; `ready` hears None once mounted, or the reason not
    (a background daemon's stderr is /dev/null: the reason is all its user sees)."""
    try:
        stack_log = open(data_dir / "qfs.log", "a")  # noqa: SIM115 - lives as the daemon does
        faulthandler.enable(file=stack_log, all_threads=True)
        faulthandler.register(signal.SIGUSR1, file=stack_log, all_threads=True)
        fabric = Fabric(data_dir, config, reindex=reindex, key_file=key_file)
    except QfsError as exc:
        ready(str(exc))
        return 2
    except OSError as exc:  # a data directory or key file it cannot use
        ready(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
        return 2
    except Exception as exc:
        log.exception("the fabric could not be opened")
        ready(f"the fabric could not be opened: {type(exc).__name__}: {exc}")
        return 2
    operations = Operations(fabric)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(metrics_port, addr="127.0.0.1", registry=fabric.metrics.registry)
        except OSError as exc:
            fabric.close()
            ready(f"cannot serve metrics on port {metrics_port}: {exc}")
            return 1
    try:
        pyfuse3.init(operations, str(mountpoint), fuse_options(options, debug))
    except RuntimeError as exc:
        fabric.close()
        ready(f"cannot mount {mountpoint}: {exc}")
        return 1
    log.info("mounted %s (data in %s)", mountpoint, data_dir)
    _spare_the_collector()
    fabric.workers.start_ahead()  # the first cp after a mount then finds its parser ready
    ready(None)
    try:
        trio.run(_serve, fabric, operations, mountpoint)
    except BaseException:
        log.exception("the filesystem loop failed; leaving the mountpoint as it is")
        pyfuse3.close(unmount=False)
        raise
    finally:
        fabric.close()
    pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)
    return 0
