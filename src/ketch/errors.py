"""The one exception tree of Ketch.

Every error the user can see is a leaf of ``KetchError``: it carries a one-line message
that names the path or digest involved, and the exit code the CLI returns for it.

    KetchError                      exit 1
    ├── UsageError                  exit 2   bad arguments, bad image reference
    ├── NotFoundError               exit 3   image, tag, blob or path missing
    ├── IntegrityError              exit 4   a digest, magic, size or offset does not match
    ├── BadLayerError               exit 5   a hostile or broken source layer (tar, gzip)
    ├── UnsupportedError            exit 6   a valid input Ketch does not handle (yet)
    ├── StorageError                exit 7   reading or writing a backend failed
    └── LocalFileError              exit 8   a local path cannot be created, read or written

Three leaves are also the ``OSError`` a file API raises (``errno`` and ``filename`` set),
so that code written for files (fsspec, pandas, ``io``) handles them as it handles a
local file's: ``PathNotFoundError`` (a ``NotFoundError`` and ``FileNotFoundError``,
ENOENT, ELOOP or ENOTDIR), ``PathIsADirectoryError`` (a ``UsageError`` and
``IsADirectoryError``, EISDIR) and ``ChunkReadError`` (an ``IntegrityError`` and an
``OSError`` EIO: a chunk of the file failed verification; no byte of it is served).

An ``OSError`` from a local path becomes a ``LocalFileError`` through ``local_file_error``,
which names the path and the reason (the CLI does this for any it is handed).
"""

from __future__ import annotations

import errno


class KetchError(Exception):
    """Base of every error Ketch reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints it as is.
        super().__init__(" ".join(message.split("\n")))

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(KetchError):
    """The command line or an image reference is malformed."""

    exit_code = 2


class NotFoundError(KetchError):
    """An image, tag, blob or path does not exist."""

    exit_code = 3


class IntegrityError(KetchError):
    """Data does not match its digest, magic, size or bounds."""

    exit_code = 4


class BadLayerError(KetchError):
    """A source layer is hostile or broken: bad paths, links escaping the root, bad tar."""

    exit_code = 5


class UnsupportedError(KetchError):
    """The input is valid but uses something Ketch does not handle."""

    exit_code = 6


class StorageError(KetchError):
    """A backend could not read or write."""

    exit_code = 7


class LocalFileError(KetchError):
    """A local path (destination, cache or layout directory) cannot be created, read or
    written: no such directory, not a directory, permission denied, disk full."""

    exit_code = 8


class _FileAPIError(KetchError, OSError):
    """A KetchError that is also an ``OSError`` with ``errno`` and ``filename`` (a path
    inside an image); ``str()`` is the one-line message, as for every KetchError."""

    default_errno = errno.EIO

    def __init__(self, message: str, path: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = self.default_errno if code is None else code
        self.strerror = self.message
        self.filename = path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.filename, self.errno))


class PathNotFoundError(_FileAPIError, NotFoundError, FileNotFoundError):
    """No such path in an image (ENOENT), a symlink loop (ELOOP), or a path through a
    file (ENOTDIR)."""

    default_errno = errno.ENOENT


class PathIsADirectoryError(_FileAPIError, UsageError, IsADirectoryError):
    """A directory of an image opened or read as a file (EISDIR)."""

    default_errno = errno.EISDIR


class ChunkReadError(_FileAPIError, IntegrityError):
    """A chunk of a file in an image failed verification (EIO): no byte of it is served."""

    default_errno = errno.EIO


def local_file_error(exc: OSError, path: object = None, doing: str = "") -> LocalFileError:
    """``exc`` as one line naming ``path`` (else the path the error names) and the reason."""
    named = path if path is not None else exc.filename
    reason = exc.strerror or type(exc).__name__
    if path is not None and exc.filename is not None and str(exc.filename) != str(path):
        reason = f"{reason} ({exc.filename})"
    prefix = f"{named}: " if named is not None else ""
    return LocalFileError(f"{prefix}{doing + ': ' if doing else ''}{reason}")


def integrity(what: str, expected: object, found: object) -> IntegrityError:
    """An integrity error naming what was checked, what was expected and what was found."""
    return IntegrityError(f"{what}: expected {expected}, found {found}")
