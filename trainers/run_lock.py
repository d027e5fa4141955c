"""
One process at a time per run folder.

`RunLock(run_dir)` holds an exclusive `flock` on `run_dir/.mera.lock` for as long as the run works in the folder,
and writes its holder (pid, host, command, start time) into the file. A second process on the same folder is
refused with a message naming the holder. The operating system releases the lock when the holder exits in any
way (normal exit, exception, SIGKILL, crash), so a lock is never stale: the file that remains after a crash is
taken over by the next run.
"""

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

__all__ = ["LOCK_FILE", "RunLockedError", "RunLock"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".mera.lock"


class RunLockedError(UserError):
    """Another process works in this run folder."""


class RunLock:
    """An exclusive lock on a run folder; use as a context manager (or `acquire` / `release`)."""

    def __init__(self, run_dir: str | os.PathLike, wait: bool = False):
        """`wait`: block until the holder releases the folder, instead of refusing."""
        self.run_dir = Path(run_dir)
        self.wait = wait
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the lock file says about its holder (empty if unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.wait:
                logger.warning(f"{self.run_dir} is in use by {self._describe(self.holder())}; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._hold(fd)
            os.close(fd)
            who = self._describe(self.holder())
            raise RunLockedError(
                f"{self.run_dir} is in use by {who}; wait for it to finish or stop it, or use another output_dir "
                f"(the lock is {self.path}, released when that process exits)"
            ) from None
        return self._hold(fd)

    @staticmethod
    def _describe(holder: dict) -> str:
        if not holder:
            return "another process"
        return (
            f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})"
        )

    def _hold(self, fd: int) -> "RunLock":
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (removing it would race with a process opening it)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
