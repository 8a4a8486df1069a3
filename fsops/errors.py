"""The one errno table, and the guard every handler runs under.

Under trio any exception other than FUSEError ends pyfuse3.main and with it the mount
(libfuse/pyfuse3#93). So each handler maps domain errors to their errno and turns anything
unexpected into EIO with the traceback in the log: the daemon keeps serving.
"""

import errno
import logging
from collections.abc import Callable
from types import TracebackType

import pyfuse3

from levels import errors

log = logging.getLogger("qfs.fsops")

ERRNO: dict[type[errors.QfsError], int] = {
    errors.NotFound: errno.ENOENT,
    errors.Exists: errno.EEXIST,
    errors.NotEmpty: errno.ENOTEMPTY,
    errors.Invalid: errno.EINVAL,
    errors.ReadOnly: errno.EACCES,
    errors.NameTooLong: errno.ENAMETOOLONG,
    errors.NoSpace: errno.ENOSPC,
    errors.Busy: errno.EBUSY,
    errors.PermissionDenied: errno.EACCES,
    errors.Corrupt: errno.EIO,
    errors.TooBig: errno.EFBIG,
    errors.WorkerDied: errno.EIO,
    errors.Disabled: errno.EOPNOTSUPP,
    errors.NoAttribute: pyfuse3.ENOATTR,
    errors.NotSupported: errno.ENOTSUP,
    errors.NotPermitted: errno.EPERM,
}

# Refusals that are routine lookups, not worth a line in /.qfs/log (tools probe xattrs);
# a command's are never routine (fsops._control).
QUIET = (errors.NotFound, errors.NoAttribute, errors.NotSupported)


def errno_of(exc: errors.QfsError) -> int:
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO


class Guard:
    """Run one handler: domain error -> its errno (reason logged), bug -> EIO (traceback).

    A class, not a generator: it wraps every request, and where a refusal is reported
    (`op /path`, and the circuit it belongs to) is worked out only for a refusal."""

    __slots__ = ("_op", "_oplog", "_path", "_quiet", "_subject", "_subject_of")

    def __init__(self, op: str, oplog, path: tuple[str, ...] = (), subject: str | None = None,
                 subject_of: Callable[[tuple[str, ...]], str | None] = lambda _path: None,
                 quiet: tuple[type[errors.QfsError], ...] = QUIET) -> None:
        self._op, self._oplog, self._path = op, oplog, path
        self._subject, self._subject_of, self._quiet = subject, subject_of, quiet

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, pyfuse3.FUSEError) or not isinstance(exc, Exception):
            return  # nothing to map: the exception, if any, goes on as it is
        path = self._path
        where = f"{self._op} /{'/'.join(path)}" if path else self._op
        if isinstance(exc, errors.QfsError):
            if not isinstance(exc, self._quiet):
                self._report(where, str(exc))
            raise pyfuse3.FUSEError(errno_of(exc)) from exc
        if isinstance(exc, OSError):
            self._report(where, f"{exc}")
            code = exc.errno if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
            raise pyfuse3.FUSEError(code) from exc
        log.error("unexpected error in %s", where, exc_info=(type(exc), exc, tb))
        self._report(where, f"internal error: {type(exc).__name__}: {exc}")
        raise pyfuse3.FUSEError(errno.EIO) from exc

    def _report(self, where: str, reason: str) -> None:
        """The refusal's line in /.qfs/log. Whatever goes wrong there is a bug, and it is
        logged: escaping this guard, it would end the mount."""
        try:
            self._oplog.refuse(where, reason, self._subject or self._subject_of(self._path))
        except Exception:
            log.exception("could not report the refusal of %s: %s", where, reason)
