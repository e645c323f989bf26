"""One run per output folder: a lock taken on the folder a run writes, before it writes anything.

Two trainings started into one ``bundle_root`` overwrite each other's ``model.pt``, ``model.json`` and resume
checkpoints, and one of them ends on a missing file. :class:`RunLock` makes the second one stop at once, naming the
folder and the process that holds it. The lock is an operating-system lock (``fcntl.flock``) on
``<folder>/.nvum-run.lock``: it is released when the holding process ends, however it ends (``kill -9`` included), so a
lock left by a dead process is never in the way; the next run takes it over and says whose it was.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: the lock file's name inside the locked folder.
LOCK_NAME = ".nvum-run.lock"


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's run lock; the message names the folder and that process."""


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


#: the locks this process holds, by resolved folder: a process that runs again into its own folder keeps its lock.
_HELD: dict[str, object] = {}


class RunLock:
    """The run lock of an output folder, held from construction until :meth:`release` or the process's end.

    train.json builds it in its ``initialize`` list (before training starts and before any file is written) and
    releases it in ``finalize``. Under several processes (``torchrun``) only the main process (``RANK`` 0) takes it.

    Args:
        folder: the folder the run writes (train.json: ``bundle_root``); created if needed.
        what: how the folder is named in messages.
    """

    def __init__(self, folder, what: str = "output folder (bundle_root)"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._file = None
        if int(os.environ.get("RANK", "0") or 0) == 0:
            self.acquire()

    def acquire(self) -> None:
        import fcntl

        from ..files import check_writable

        check_writable(self.folder, self.what)
        key = str(self.path.resolve())
        if key in _HELD:  # this process holds it already (a second run in one process, e.g. a notebook)
            self._file = _HELD[key]
            return
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(handle)
            handle.close()
            raise FolderInUseError(
                f"another run is writing to the {self.what} {self.folder.resolve()}: {_describe(holder)}. Two runs "
                "into one folder would overwrite each other's model.pt, model.json and checkpoints: wait for it to "
                "end, or give this run another folder (--bundle_root)") from None
        previous = _read(handle)
        if previous.get("pid") not in (None, os.getpid()):
            logger.warning("taking over the run lock of %s: %s is no longer running", self.folder.resolve(),
                           _describe(previous))
            print(f"taking over the run lock of {self.folder.resolve()}: {_describe(previous)} is no longer running",
                  flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)[:500]}) + "\n")
        handle.flush()
        self._file = _HELD[key] = handle
        import atexit

        atexit.register(self.release)  # a process that ends (even on an error) gives it back; a killed one leaves it

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self, *_) -> None:
        """Give the lock back, emptied: a holder's record left in the lock file means that its process died holding
        it, which the next run says when it takes it over."""
        if self._file is not None:
            import fcntl

            _HELD.pop(str(self.path.resolve()), None)
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _read(handle) -> dict:
    handle.seek(0)
    try:
        content = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}
