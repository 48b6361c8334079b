"""One writer per gradient store: an advisory ``fcntl.flock`` on ``<store>/writer.lock``.

The writer (a plain ``extract``, or rank 0 on behalf of a whole ``torchrun`` job) holds
an exclusive lock for as long as it writes; a second writer fails at once with a
:class:`~gradsift.errors.StoreError` naming the holder, whose pid, host, start time and
command line are in the lock file. Readers never lock. The kernel drops the lock when
the holder exits, even by SIGKILL, so a crashed job never leaves a stale lock and a
re-run resumes at once. The lock file is never deleted (deleting it would let two
writers lock two different files). Limits: the lock is advisory (code that writes shards
without :class:`WriterLock` is not stopped), needs POSIX ``flock`` (it is a no-op where
``fcntl`` does not exist), and across machines works only on file systems that support
``flock`` (local disks, NFSv4; some FUSE/Lustre mounts need ``-o flock``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from gradsift.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = "writer.lock"


class WriterLock:
    """Exclusive, non-blocking writer lock of the store directory ``directory``.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. ``role`` is written
    into the lock file for the message another writer sees (e.g. ``"torchrun job of 4
    ranks"``). The directory is created if needed.
    """

    def __init__(self, directory: str | Path, role: str = "extraction") -> None:
        self.path = Path(directory) / LOCK
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        if self._fd is not None or fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"another process is writing to the store {self.path.parent}: {holder(self.path)}. "
                "Wait for it to finish (or stop it), then re-run: it resumes where that one stopped."
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self.info()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def info(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "role": self.role,
            "command": " ".join(sys.argv)[:300],
        }

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, from what it wrote there (retried briefly: the
    holder may be writing it just now)."""
    for _ in range(20):
        try:
            data = json.loads(path.read_text())
            return (
                f"pid {data['pid']} on host {data['host']}, started {data['started']} "
                f"({data['role']}: {data['command']})"
            )
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "an unknown process (its lock file is unreadable)"
