"""The one errno table, and the guard every handler runs under.

Under trio any exception other than FUSEError ends pyfuse3.main and with it the mount
(libfuse/pyfuse3#93). So each handler maps domain errors to their errno and turns anything
unexpected into EIO with the traceback in the log: the daemon keeps serving.
"""

import contextlib
import errno
import logging
from collections.abc import Iterator

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
}

# Refusals that are routine lookups, not worth a line in /.qfs/log (tools probe xattrs).
_QUIET = (errors.NotFound, errors.NoAttribute, errors.NotSupported)


def errno_of(exc: errors.QfsError) -> int:
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO


@contextlib.contextmanager
def guarded(op: str, oplog, subject: str | None = None) -> Iterator[None]:
    """Run one handler: domain error -> its errno (reason logged), bug -> EIO (traceback)."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except errors.QfsError as exc:
        if not isinstance(exc, _QUIET):
            oplog.refuse(op, str(exc), subject)
        raise pyfuse3.FUSEError(errno_of(exc)) from exc
    except OSError as exc:
        oplog.refuse(op, f"{exc}", subject)
        code = exc.errno if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
        raise pyfuse3.FUSEError(code) from exc
    except Exception as exc:
        log.exception("unexpected error in %s", op)
        oplog.refuse(op, f"internal error: {type(exc).__name__}: {exc}", subject)
        raise pyfuse3.FUSEError(errno.EIO) from exc
