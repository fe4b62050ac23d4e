"""Files a run writes: atomic replacement, temporary names, the sweep of leftovers, and the run lock.

Every file is written under a temporary name beside its final one and renamed into place, so a reader (or
a resumed run) never sees a half-written file. Temporary names are hidden and carry ``.tmp-<pid>``; a run
that holds its directory's lock removes whatever an earlier, killed process left behind.
"""
import contextlib
import errno
import fcntl
import os
import re
import socket
import time
from typing import Iterator, List, Optional

__all__ = ["temporary_path", "atomic_write", "sweep_temporary_files", "RunLock", "RunDirectoryBusy",
           "is_storage_error"]

# ".results.csv.tmp-123", ".x.ckpt.tmp-123.ckpt", MindSpore's own ".x.ckpt.tmp-123.tmp", and the names of
# earlier versions ("results.csv.tmp-123").
_TEMPORARY = re.compile(r"^\.?.+\.tmp-\d+(\.[A-Za-z]+)?$")
LOCK_NAME = ".lock"

# errno values that mean "this storage cannot take the file", not a bug in the program.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def temporary_path(path: str, suffix: str = "") -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator:
    """``with atomic_write(path) as stream:`` writes a temporary file and renames it onto ``path`` on success.

    On any failure (a full disk included) the temporary file is removed and ``path`` keeps its old content.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def sweep_temporary_files(directory: str) -> List[str]:
    """Remove the temporary files of earlier processes in ``directory``; returns their names.

    Call only while holding the directory's :class:`RunLock`: a live run's temporary files look the same.
    """
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _TEMPORARY.match(name) and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(name)
    return removed


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS


class RunDirectoryBusy(ValueError):
    pass


class RunLock:
    """An exclusive OS lock (``flock``) on ``directory/.lock``, held for the life of the process.

    The kernel releases it when the process dies, however it dies, so a killed run never blocks its resume.
    The file records the holder (PID, host, start time) for the message another run gets.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, create: bool = True) -> bool:
        """Take the lock; with ``create=False`` only if the lock file exists (nothing is written otherwise).

        Raises :class:`RunDirectoryBusy`, naming the holder, if another process holds it.
        """
        if self._fd is not None:
            return True
        if not create and not os.path.isfile(self.path):
            return False
        if create:
            os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusy(f"ckpt_save_dir {self.directory!r} is in use by a running training ({holder}); "
                                   f"wait for it to finish, or choose another --ckpt_save_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
