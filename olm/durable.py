"""Files that survive crashes: atomic writes, quarantine of broken files, orphan clean-up, the run lock.

- `atomic_write` writes a temporary file *in the target's own directory* (never on another
  filesystem, where a rename would be a copy), fsyncs it, renames it over the target and fsyncs
  the directory: after a crash or a full disk the target is the old file or the new one, whole.
- Temporary names carry `TEMP_MARK` and the writer's pid (``last.ckpt.olm-tmp-1234``); a directory
  being replaced is set aside with `OLD_MARK` (``adapter.olm-old-1234``). `remove_orphans` clears
  what a killed process left: temporary files and directories are removed, a set-aside directory
  whose replacement never arrived is put back.
- `quarantine` renames a broken file to ``<name>.corrupt-<time>`` so that nothing rotates it over a
  good one and a person can still look at it.
- `RunLock` is an exclusive ``flock`` on ``<dir>/.olm.lock``: a second run on the same directory is
  refused with a clear message. The kernel drops the lock when its process ends in any way
  (``kill -9`` included), so a stale lock file never blocks.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from olm.errors import RunLocked

try:
    import fcntl
except ImportError:  # not POSIX: no lock (olm reads stdin with select, POSIX too)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TEMP_MARK = ".olm-tmp"
"""In the name of a file or directory being written: ``<name>.olm-tmp-<pid>``."""
OLD_MARK = ".olm-old"
"""In the name of a directory set aside while its replacement is renamed in: ``<name>.olm-old-<pid>``."""
LOCK_NAME = ".olm.lock"


def temp_path(path: str | Path, mark: str = TEMP_MARK) -> Path:
    """``<path>.olm-tmp-<pid>`` (or another `mark`), beside `path`."""
    path = Path(path)
    return path.with_name(f"{path.name}{mark}-{os.getpid()}")


def fsync_dir(directory: str | Path) -> None:
    """Make the renames and new names in `directory` durable (a no-op where directories cannot be opened)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file below `root`, then every directory (the tree a rename is about to publish)."""
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(folder)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` through `write(file)` so that it is never seen half-written.

    The temporary file is in `path`'s directory; on any error (a full disk) it is removed and the
    error raised, leaving `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def replace(src: str | Path, dst: str | Path) -> None:
    """``os.replace`` made durable (the directory is fsynced)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def quarantine(path: str | Path) -> Path:
    """Rename a broken file to ``<name>.corrupt-<YYYYmmdd-HHMMSS>`` beside it; returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    replace(path, target)
    return target


def _writer_alive(name: str, mark: str) -> bool:
    """Whether the pid in ``<name><mark>-<pid>`` is another live process (its file is not an orphan)."""
    pid = name.rpartition(f"{mark}-")[2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, a symlink (not what it points to: a temporary ``latest`` link) or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_orphans(root: str | Path, depth: int = 4) -> list[str]:
    """Clear what killed writers left below `root` (`depth` levels: 1 is `root`'s own entries);
    returns what was done.

    Temporary files and directories (`TEMP_MARK`) are removed; a directory set aside (`OLD_MARK`)
    is put back when its replacement is missing, else removed. Names of live writers are kept.
    """
    root, done = Path(root), []
    if not root.is_dir():
        return done
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        names = [*dirs, *files]
        if len(here.parts) - base >= depth - 1:  # the entries of `depth` levels of folders are examined
            dirs[:] = []
        for name in names:
            path = here / name
            if TEMP_MARK in name and not _writer_alive(name, TEMP_MARK):
                _remove(path)
                done.append(f"removed {path}")
            elif OLD_MARK in name and not _writer_alive(name, OLD_MARK):
                final = here / name.partition(OLD_MARK)[0]
                if final.exists():
                    _remove(path)
                    done.append(f"removed {path}")
                else:
                    replace(path, final)
                    done.append(f"restored {final} from {path}")
        dirs[:] = [d for d in dirs if TEMP_MARK not in d and OLD_MARK not in d]
    for line in done:
        log.warning("left by an interrupted save: %s", line)
    return done


class RunLock:
    """An exclusive lock on a directory for this process: ``<directory>/.olm.lock``.

    Use as a context manager, or `acquire` / `release`. The lock file holds the owner's pid, for
    the message another process gets.

    Raises:
        RunLocked: (from `acquire`) another process holds it.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None or self.fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunLocked(
                f"another olm run{who} is using {self.directory}: wait for it to end, or give this run "
                "another --trainer.default_root_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
