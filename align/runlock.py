"""One run per output directory: an advisory lock held by the launch's main process for the whole run.

The lock is ``flock`` on the output directory itself (no lock file to go stale: the kernel drops the lock when its
process ends, however it ends, SIGKILL included). A second launch into a directory that a live run holds fails at
start-up, before anything is written, with one line naming the holder (its pid and command line, read from
``/proc/locks`` where the holder runs on this machine). A directory that did not exist is created to be locked
and removed again, if still empty, when a start fails (nothing is left behind). Ranks other than the main
process take no lock: the main process's answer is broadcast, so every rank fails alike.
"""

from __future__ import annotations

import atexit
import fcntl
import os
from pathlib import Path

from accelerate.utils import broadcast_object_list

from align.errors import ConfigError


def check_output_dir(out: Path) -> None:
    """Refuse (ConfigError, one line) an output directory that is a file, lies under a file, or cannot be written."""

    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"train.output_dir={out} is a dangling symlink (to {os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir={out} is a file, not a directory")
    existing = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"train.output_dir={out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir={out}: {existing} is not writable")


def _holder(path: Path) -> str:
    """Who holds the flock on ``path``: 'pid N: command' from /proc/locks, or a plain phrase."""
    try:
        st = os.stat(path)
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                pid = fields[4]
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    cmd = ""
                return f"pid {pid}" + (f": {cmd[:160]}" if cmd else "")
    except (OSError, ValueError):
        pass
    return "a process on another machine, or one this user cannot see"


class OutputLock:
    """``flock`` on the output directory, from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.fd: int | None = None
        self.created: list[Path] = []  # directories made to be locked (deepest first), removed if left empty

    def acquire(self) -> None:
        """Lock the directory (creating it when missing); ConfigError naming the holder when another run has it."""
        missing = []
        p = self.out.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.out.mkdir(parents=True, exist_ok=True)
        self.created = missing
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.remove_if_empty()
            raise ConfigError(
                f"train.output_dir={self.out} is in use by another run ({_holder(self.out)}); wait for it to end "
                f"or choose another train.output_dir"
            ) from None
        self.fd = fd
        atexit.register(self.release)

    def remove_if_empty(self) -> None:
        """Remove the directories :meth:`acquire` made, if nothing was written into them (a failed start)."""
        for p in self.created:
            try:
                p.rmdir()
            except OSError:
                break
        self.created = []

    def keep(self) -> None:
        """The start wrote its files: the directory stays whatever happens next."""
        self.created = []

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None
        self.remove_if_empty()


def lock_output_dir(acc, out: Path) -> OutputLock | None:
    """The main process locks ``out``; every rank raises the same ConfigError when it cannot."""
    check_output_dir(out)  # a file, or not writable: one line, before anything is made
    lock, error = None, None
    if acc.is_main_process:
        lock = OutputLock(out)
        try:
            lock.acquire()
        except ConfigError as e:
            error = str(e)
    if acc.num_processes > 1:
        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error is not None:
        raise ConfigError(error)
    return lock
