"""Output files that cannot be torn, destroyed or written twice at once.

- :func:`hold_lock`: one writer per output. An advisory ``fcntl.flock`` on a sibling lock file
  ``.NAME.lock`` (holding the holder's pid), taken without waiting and held for the whole run; a
  second writer gets :class:`Locked` (one line naming the holder's pid). The lock file is
  removed on release; a writer that finds the path re-created under it retries, so two writers
  never both hold "the" lock. Advisory: it binds attnbench processes, not other programs, and
  on network file systems it is only as good as their ``flock``.
- :func:`atomic_dir`: a directory (a report) built in a temporary sibling and renamed into place;
  on failure the temporary is removed and any earlier directory is left as it was.
- :func:`signals_deferred`: SIGINT, SIGTERM and SIGHUP held while a record is written and
  counted, then handled: a signal never lands between a record reaching the disk and the writer
  knowing it (a writer that thought itself empty used to remove a file holding a record).
- :class:`OutputError`: a write that failed (disk full, read-only, permission, I/O error); the
  message says what failed and what was kept. The CLI prints it as one line and exits
  ``EXIT_WRITE`` (4; the regression gate's commands exit 3, their usage/IO code).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from attnbench.core.errors import UsageError

EXIT_WRITE = 4
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the stop signals until the block ends, then handle each one received as its own
    handler would have. Python runs signal handlers in the main thread between bytecodes, so the
    handlers themselves are swapped (a thread's signal mask would not stop them); in another
    thread, where handlers cannot be set, the block runs as it is. Keep the block short: a signal
    waits for it (SIGKILL does not)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in caught:
            handler = old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


class OutputError(OSError):
    """A write that failed; the message (one line) says what failed, what was kept and what next;
    `cause` is the system's reason alone (e.g. 'No space left on device (ENOSPC)')."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = cause or message

    def __str__(self) -> str:  # OSError's own __str__ would prefix "[Errno ...]"
        return self.args[0] if self.args else "write failed"


class Locked(UsageError):
    """Another process holds the output's lock."""


def why(e: OSError) -> str:
    """'No space left on device (ENOSPC)' for an OSError."""
    if isinstance(e, OutputError):
        return e.cause
    name = errno.errorcode.get(e.errno or 0, "")
    text = e.strerror or str(e)
    return f"{text} ({name})" if name else text


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def hold_lock(path: str | Path, what: str = "--out") -> Iterator[None]:
    """Hold the exclusive advisory lock of `path` (its directory must exist) for the block."""
    path = Path(path)
    lp = lock_path(path)
    fd = _acquire(lp, path, what)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lp)
        os.close(fd)  # closing releases the flock


def _acquire(lp: Path, path: Path, what: str) -> int:
    for _ in range(20):
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write {what} '{path}': {why(e)}; nothing was written", why(e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise Locked(f"{what} '{path}' is being written by another attnbench process (pid {holder}); "
                         f"wait for it to finish or choose another {what}") from None
        try:  # the holder before us may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # a full disk may refuse the pid; the lock still holds
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    raise OutputError(f"cannot lock {what} '{path}': its lock file keeps changing; try again")


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return text
    return "unknown"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: str | Path, what: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling of `out` to build a directory in; renamed onto `out` when the
    block succeeds (an earlier `out` is replaced only then), removed when it fails."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write {what} '{out}': {why(e)}; nothing was written", why(e)) from None
    try:
        yield tmp
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    except OSError as e:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise OutputError(f"cannot write {what} '{out}': {why(e)}; "
                          f"{'the earlier one is unchanged' if out.exists() else 'nothing was kept'}", why(e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)
