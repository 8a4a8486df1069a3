"""`qfsmount MOUNTPOINT`: check what can be checked, then mount in the background.

Like sshfs, the command returns once the filesystem is mounted (or says why it could not
be), with the daemon left running; `-f` keeps it in the foreground.
"""

import argparse
import os
import sys
from pathlib import Path

from levels.config import default_data_dir, load_config
from levels.errors import Invalid, QfsError
from levels.store.backends import holds_data
from qfsmount.mallocsettings import apply_malloc_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="qfsmount", description="Mount the quantum data fabric as a filesystem."
    )
    parser.add_argument("mountpoint", type=Path, nargs="?",
                        help="an existing, empty directory (not with --check)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"data directory (default {default_data_dir()})")
    parser.add_argument("--config", type=Path, default=None, help="qfs.yaml configuration file")
    parser.add_argument("--profile", default=None,
                        help="workload profile: simulation, nisq, fault_tolerant or hybrid")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="also serve /.qfs/metrics over HTTP on this port for Prometheus")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground and log to stderr")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="comma-separated FUSE mount options")
    parser.add_argument("--debug", action="store_true", help="debug logging (and FUSE debug)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="AES-256 key for state checkpoints (default DATA/state.key, "
                             "created 0600 on first mount)")
    parser.add_argument("--reindex", action="store_true",
                        help="rebuild the search index from the stored circuits")
    parser.add_argument("--check", action="store_true",
                        help="check the data directory offline (like fsck) and exit")
    parser.add_argument("--repair", action="store_true",
                        help="with --check: repair what is safe to repair")
    args = parser.parse_args(argv)
    if not args.check and args.mountpoint is None:
        parser.error("MOUNTPOINT is required (or --check --data DIR)")
    if args.repair and not args.check:
        parser.error("--repair goes with --check")
    return args


def preflight(mountpoint: Path) -> str | None:
    """The reason the mount cannot work, in words, before any daemon starts."""
    if not mountpoint.exists():
        return f"mountpoint {mountpoint} does not exist (create it with mkdir)"
    if not mountpoint.is_dir():
        return f"mountpoint {mountpoint} is not a directory"
    if os.path.ismount(mountpoint):
        return f"mountpoint {mountpoint} is busy: something is already mounted there"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: load the fuse module or install fuse3"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user (check its permissions)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return _check(args)
    mountpoint = args.mountpoint.resolve()
    problem = preflight(mountpoint)
    if problem:
        print(f"qfsmount: {problem}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, profile=args.profile)
    except Invalid as exc:
        print(f"qfsmount: {exc}", file=sys.stderr)
        return 2
    data_dir = (args.data or default_data_dir()).resolve()
    try:  # before the fork: a background daemon could say why only through its log, here
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        print(f"qfsmount: data directory {data_dir}: {why}", file=sys.stderr)
        return 2
    options = [o for group in args.options for o in group.split(",")]
    if args.foreground:
        return _run(args, mountpoint, data_dir, config, options, lambda reason: _say(reason))
    return _daemonize(args, mountpoint, data_dir, config, options)


def _check(args: argparse.Namespace) -> int:
    """Offline consistency check: one line per finding; exit 1 if any remains unrepaired."""
    import json
    import logging

    from levels.check import check
    from levels.fabric import Fabric

    data_dir = (args.data or default_data_dir()).resolve()
    try:
        config = load_config(args.config, profile=args.profile)
    except Invalid as exc:
        print(f"qfsmount: {exc}", file=sys.stderr)
        return 2
    if not holds_data(data_dir, config):
        print(f"qfsmount: {data_dir} holds no qfs data", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        fabric = Fabric(data_dir, config, key_file=args.key_file)
    except (QfsError, OSError) as exc:
        print(f"qfsmount: {exc}", file=sys.stderr)
        return 2
    try:
        findings = check(fabric, repair=args.repair)
    finally:
        fabric.close()
    for finding in findings:
        print(json.dumps(finding.as_dict()))
    unrepaired = [f for f in findings if not f.repaired]
    print(f"{len(findings)} problem(s), {len(findings) - len(unrepaired)} repaired",
          file=sys.stderr)
    return 1 if unrepaired else 0


def _say(reason: str | None) -> None:
    if reason:
        print(f"qfsmount: {reason}", file=sys.stderr)


def _run(args, mountpoint, data_dir, config, options, ready) -> int:
    from qfsmount import daemon  # imported after fork: it starts threads

    daemon.setup_logging(data_dir, args.debug, to_stderr=args.foreground)
    return daemon.run(mountpoint, data_dir, config, options, args.debug, args.reindex,
                      args.key_file, args.metrics_port, ready)


def _daemonize(args, mountpoint, data_dir, config, options) -> int:
    """Fork; the parent waits until the child reports the mount ready or failed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode()
        if message == "ok":
            return 0
        print(f"qfsmount: {message or 'the daemon exited before mounting (see qfs.log)'}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready(reason: str | None) -> None:
        os.write(write_end, b"ok" if reason is None else reason.encode())
        os.close(write_end)

    try:
        code = _run(args, mountpoint, data_dir, config, options, ready)
    except BaseException:
        code = 1
    os._exit(code)


if __name__ == "__main__":  # python -m qfsmount.cli, as the tests run it
    apply_malloc_settings()
    sys.exit(main())
