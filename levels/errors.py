"""Domain errors of the fabric.

Each carries a readable reason. The FUSE layer maps each class to exactly one errno
(fsops/errors.py), so levels never think in errno numbers.
"""


class QfsError(Exception):
    """Base of every refusal the fabric gives on purpose."""


class NotFound(QfsError):
    """The named circuit, version, file or query result does not exist."""


class Exists(QfsError):
    """The name is already taken."""


class NotEmpty(QfsError):
    """A directory still holds data that deleting it would lose."""


class Invalid(QfsError):
    """The input is malformed: bad OpenQASM, bad JSON, bad name, bad command."""


class ReadOnly(QfsError):
    """The file is an immutable record (a version, a view, statistics)."""


class NameTooLong(QfsError):
    """A name is longer than the fabric stores."""


class NoSpace(QfsError):
    """The data directory or the LMDB map is full."""


class Unexpressible(Invalid):
    """A format view cannot represent this circuit (e.g. OpenQASM 2 of a dynamic circuit)."""


class NoAttribute(QfsError):
    """The extended attribute is not set on this file."""


class NotSupported(QfsError):
    """The extended attribute cannot be kept here (ACLs, other namespaces)."""


class NotPermitted(QfsError):
    """An operation this filesystem never does (a hard link, a special file): EPERM, as
    link(2) says of a filesystem without hard links."""


class Busy(QfsError):
    """The qubit or task is held by someone else, or in a state that refuses the command."""


class PermissionDenied(QfsError):
    """The task belongs to another user."""


class Corrupt(QfsError):
    """Stored data failed its integrity check (tampered, truncated, wrong key)."""


class TooBig(QfsError):
    """The object exceeds a configured size limit."""


class Disabled(QfsError):
    """The feature is switched off in the configuration (the reason names the key)."""


class WorkerDied(QfsError):
    """A worker process doing native library work crashed, ran out of its limits or was
    stopped; the daemon goes on. Callers parsing a new program refuse it as Invalid."""


class Unavailable(QfsError):
    """A shared backend (the PostgreSQL metadata store, the S3 blob store) cannot be
    reached or fails: the request fails (EIO) and nothing is half-written."""


def first_line(exc: BaseException) -> str:
    """A library's exception as one short line of a refusal's reason (parsers' messages
    span lines and quote the program)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:400]
