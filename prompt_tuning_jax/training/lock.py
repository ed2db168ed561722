"""One run per MODEL_DIR: `MODEL_DIR/run.lock` names the host and process training there, and holds a lease.

    with RunLock(model_dir):
        fit(...)

A second run on the same folder refuses to start, naming the holder. The holder renews its lease every
`renew_s` seconds (a daemon thread rewrites the lock); a lock whose lease has not been renewed for `lease_s`
seconds (LEASE_S, 5 minutes, unless the lock says otherwise) belongs to a dead or stuck run, whatever host it
came from, and the next run takes it over and says so. A lock from a process that no longer runs on this host
(kill -9, a crash) is taken over at once.

The lock is created atomically, so of several runs started at once exactly one wins:
- in a bucket (gs://), by a conditional upload (`ifGenerationMatch=0`: the object must not exist), and taken
  over or renewed only by an upload conditional on the generation that was read, so two runs that both see
  an expired lease cannot both take it (the second's upload fails, and it re-reads a live lease); this goes
  through google-cloud-storage, which `pip install "prompt_tuning_jax[gcs]"` brings with gcsfs;
- on a file system, by a hard link of the written lock into place (it fails if the lock exists); takeovers,
  renewals and release run under an exclusive `flock` of the folder, so that a check and the write that
  follows it are one step for the processes of a host (and of hosts sharing a file system whose locks reach
  them, as NFS v4's do).

The lease is measured on the lock's own modification time (the bucket's `updated`, the file's mtime) against
this host's clock: hosts whose clocks disagree by more than a lease are not supported.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid

from prompt_tuning_jax import files

logger = logging.getLogger(__name__)
LOCK_NAME = "run.lock"
LEASE_S = 300.0  # a lease not renewed for this long is expired: its run is presumed dead
RENEW_EVERY = 10  # the holder renews lease_s / RENEW_EVERY seconds apart


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunLock:
    """`acquire` or refuse; while held, the lease is renewed in the background; `release` removes the lock.

    lease_s: how long the lock stays valid without a renewal (written into the lock, so the holder's own lease
    decides when others may take it over). renew_s: how often the holder renews it (default lease_s / 10).
    name: the lock's file name in the folder (`run.lock`; a sweep claims its cells with `sweep.lock`).
    `lost` becomes True if the holder finds the lock taken over (it failed to renew for a whole lease).
    """

    def __init__(self, model_dir: str, lease_s: float = LEASE_S, renew_s: float | None = None,
                 name: str = LOCK_NAME):
        self.path = os.path.join(model_dir, name)
        self.lease_s = float(lease_s)
        self.renew_s = float(renew_s) if renew_s is not None else self.lease_s / RENEW_EVERY
        if not 0 < self.renew_s < self.lease_s:
            raise ValueError(f"renew_s ({self.renew_s}) must be positive and below lease_s ({self.lease_s})")
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
                     "token": uuid.uuid4().hex, "lease_s": self.lease_s}
        self.store = _LocalLock(self.path) if files.is_local(self.path) else _BucketLock(self.path)
        self.held = self.lost = False
        self._version = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(3):  # a takeover lost to another run: read the lock again
            self._version = self.store.create(self._text())
            if self._version is not None:
                return self._hold()
            found = self.store.read()
            if found is None:  # released between our create and read
                continue
            holder, version, age = found
            reason = self._expired(holder, age)
            if reason is None:
                raise RuntimeError(self._refusal(holder, age))
            self._version = self.store.replace(self._text(), version)
            if self._version is not None:
                logger.warning("taking over %s: %s", self.path, reason)
                return self._hold()
        raise RuntimeError(f"MODEL_DIR {os.path.dirname(self.path)}: another run took over {self.path} at the same "
                           "time as this one; try again, or use another MODEL_DIR")

    def _expired(self, holder: dict, age: float) -> str | None:
        """Why the holder's lock may be taken over, or None while it is live."""
        if not holder:
            return "it is empty or unreadable (left by a run killed while writing it)"
        who = f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
        if holder.get("host") == self.mine["host"] and not _alive(int(holder.get("pid", -1))):
            return f"its process {holder.get('pid')} (started {holder.get('started')}) is no longer running"
        lease = float(holder.get("lease_s", LEASE_S))
        if age > lease:
            return f"the lease of {who} was last renewed {age:.0f} s ago, more than its {lease:.0f} s"
        return None

    def _refusal(self, holder: dict, age: float) -> str:
        lease = float(holder.get("lease_s", LEASE_S))
        return (f"MODEL_DIR {os.path.dirname(self.path)} is in use by process {holder.get('pid')} on "
                f"{holder.get('host')} (since {holder.get('started')}; its lease was renewed {age:.0f} s ago and "
                f"lasts {lease:.0f} s): wait for that run, or use another MODEL_DIR; a run that is gone loses the "
                f"lock {max(lease - age, 0):.0f} s from now, or delete {self.path} if you are sure it is gone")

    def _text(self) -> str:
        return json.dumps({**self.mine, "renewed": _now()})

    def _hold(self) -> None:
        self.held, self.lost = True, False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="run.lock lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                version = self.store.renew(self._text(), self._version, self.mine["token"])
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; the lease has room for it
                logger.warning("could not renew the lease of %s (%s); trying again in %.0f s", self.path,
                               " ".join(str(e).split())[:200], self.renew_s)
                continue
            if version is None:
                self.lost = True
                holder = (self.store.read() or ({}, None, 0))[0]
                logger.error("lost %s to process %s on %s: this run did not renew its lease for %.0f s, and that "
                             "run took it over; two runs may now write to %s", self.path, holder.get("pid"),
                             holder.get("host"), self.lease_s, os.path.dirname(self.path))
                return
            self._version = version

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.held and not self.lost:
            self.store.remove(self._version, self.mine["token"])
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:  # empty or half-written by a process killed mid-write
        return {}


class _LocalLock:
    """run.lock on a file system. Versions are the file's (inode, mtime_ns)."""

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def _folder_locked(self):
        import fcntl

        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _version(self):
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns

    def create(self, text: str):
        """The lock written whole beside it, then hard-linked into place: the link fails if the lock exists, and
        no reader ever sees it empty."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", dir=folder)
        except OSError as e:  # read-only file system, no permission
            raise OSError(e.errno, f"MODEL_DIR {folder} is not writable ({e.strerror}); choose a folder this "
                                   "process can write") from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return self._version()

    def read(self):
        try:
            version = self._version()
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return _parse(text), version, time.time() - version[1] / 1e9

    def replace(self, text: str, version):
        with self._folder_locked():
            try:
                if self._version() != version:
                    return None
            except FileNotFoundError:
                return None
            files.atomic_write(self.path, text)
            return self._version()

    def renew(self, text: str, version, token: str):
        with self._folder_locked():
            found = self.read()
            if found is None or found[0].get("token") != token:
                return None
            files.atomic_write(self.path, text)
            return self._version()

    def remove(self, version, token: str) -> None:
        with self._folder_locked():
            found = self.read()
            if found is not None and found[0].get("token") == token:
                os.remove(self.path)


class _BucketLock:
    """run.lock in a bucket, through google-cloud-storage's generation preconditions. Versions are generations."""

    def __init__(self, path: str):
        try:
            from google.api_core import exceptions
            from google.cloud import storage
        except ImportError as e:
            raise ImportError(f"a MODEL_DIR in a bucket ({path}) needs google-cloud-storage: "
                              'pip install "prompt_tuning_jax[gcs]"') from e
        bucket, _, name = path[len("gs://"):].partition("/")
        if not path.startswith("gs://") or not name:
            raise ValueError(f"{path}: a bucket lock needs a gs://bucket/folder path")
        self.path, self.name, self.exceptions = path, name, exceptions
        self.bucket = storage.Client().bucket(bucket)

    def create(self, text: str):
        blob = self.bucket.blob(self.name)
        try:
            blob.upload_from_string(text, content_type="application/json", if_generation_match=0)
        except self.exceptions.PreconditionFailed:
            return None
        return blob.generation

    def read(self):
        blob = self.bucket.get_blob(self.name)
        if blob is None:
            return None
        try:
            text = blob.download_as_text(if_generation_match=blob.generation)
        except (self.exceptions.NotFound, self.exceptions.PreconditionFailed):
            return self.read()  # replaced or removed since: read the new one
        age = (datetime.datetime.now(datetime.timezone.utc) - blob.updated).total_seconds()
        return _parse(text), blob.generation, age

    def replace(self, text: str, version):
        blob = self.bucket.blob(self.name)
        try:
            blob.upload_from_string(text, content_type="application/json", if_generation_match=version)
        except self.exceptions.PreconditionFailed:
            return None
        return blob.generation

    def renew(self, text: str, version, token: str):
        return self.replace(text, version)  # conditional on our generation: fails once another run took over

    def remove(self, version, token: str) -> None:
        with contextlib.suppress(self.exceptions.NotFound, self.exceptions.PreconditionFailed):
            self.bucket.blob(self.name).delete(if_generation_match=version)
