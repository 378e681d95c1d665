"""One writer per directory: an exclusive lock held while a command writes a run, zoo or store.

:func:`writer_lock` takes ``fcntl.flock`` on ``DIR/.sane-writer.lock`` and writes its pid and
host there for the message a second writer gets. The kernel drops the lock with the process
that holds it, however it ends (``kill -9`` included), so a lock left by a killed writer never
blocks the next; the file stays (removing it would let two writers lock two different files).
Worker processes and ``torchrun``'s other ranks write under their driver's lock. POSIX only:
``fcntl``; on network filesystems as reliable as their ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sane.errors import BusyError, ConfigError

LOCK_FILE = ".sane-writer.lock"


@contextlib.contextmanager
def writer_lock(directory: str | Path) -> Iterator[None]:
    """Hold the writer lock of ``directory`` (created when missing) for the duration;
    :class:`BusyError` naming the directory and the holder's pid when another process (or
    another call in this one) holds it. When the work fails before writing anything into a
    directory this call created, the directory is removed again: a refused command leaves
    nothing behind."""
    directory = Path(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"{directory}: cannot write there ({error}); choose another --out"
                          ) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise BusyError(f"{directory}: another process is writing it (pid {holder}); wait "
                            "for it to finish, or stop it and run the command again to resume"
                            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        except BaseException:
            if created and [p.name for p in directory.iterdir()] == [LOCK_FILE]:
                (directory / LOCK_FILE).unlink()  # while we hold it: no writer can
                directory.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is a writer lock (a directory holding only it is as good as empty)."""
    return path.name == LOCK_FILE
