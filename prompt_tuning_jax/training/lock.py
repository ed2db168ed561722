"""One run per MODEL_DIR: `MODEL_DIR/run.lock` holds the host and pid of the process training there.

    with RunLock(model_dir):
        fit(...)

A second run on the same folder refuses to start, naming the holder. A lock left by a
process that no longer runs on this host (kill -9, a crash, a preempted VM that
restarted) is stale: it is taken over, and the run says so. A lock from another host
cannot be checked from here: the run refuses and says how to remove it. Local folders get
an atomic O_EXCL create; in a bucket (gs://) the check and the write are separate
requests, so two runs started in the same second could both pass.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket

from prompt_tuning_jax import files

logger = logging.getLogger(__name__)
LOCK_NAME = "run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, LOCK_NAME)
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(),
                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.held = False

    def acquire(self) -> None:
        if self._create():
            self.held = True
            return
        holder = self._read()
        if holder.get("host") == self.mine["host"] and not _alive(int(holder.get("pid", -1))):
            logger.warning("taking over %s: its process %s (started %s) is no longer running",
                           self.path, holder.get("pid"), holder.get("started"))
            files.atomic_write(self.path, json.dumps(self.mine))
            self.held = True
            return
        raise RuntimeError(f"MODEL_DIR {os.path.dirname(self.path)} is in use by process {holder.get('pid')} on "
                           f"{holder.get('host')} (since {holder.get('started')}): wait for that run, or use another "
                           f"MODEL_DIR; if that run is gone, delete {self.path}")

    def _create(self) -> bool:
        text = json.dumps(self.mine)
        if not files.is_local(self.path):
            if files.exists(self.path):
                return False
            files.atomic_write(self.path, text)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:  # read-only file system, no permission
            raise OSError(e.errno, f"MODEL_DIR {os.path.dirname(self.path)} is not writable ({e.strerror}); "
                                   "choose a folder this process can write") from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def _read(self) -> dict:
        try:
            return json.loads(files.read_text(self.path))
        except (OSError, ValueError):  # empty or half-written by a process killed mid-write: stale
            return {"host": self.mine["host"], "pid": -1, "started": "?"}

    def release(self) -> None:
        if self.held and self._read().get("pid") == self.mine["pid"]:
            files.remove(self.path)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
