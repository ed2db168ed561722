"""Writing files so that a crash never leaves half of one: the project's one atomic-write helper.

    atomic_write("runs/x/metrics.json", json.dumps(metrics))       # str or bytes
    atomic_write("prompt.npy", lambda f: np.save(f, array))        # or a function writing to a binary file

Paths go through `etils.epath` (which orbax already brings), so the same call
takes a local path or a bucket (`gs://...`). Locally the content goes to a
temporary file beside the target, is flushed to disk and renamed over it:
readers see the old file or the new one. Object stores commit an upload only
when it completes, which gives the same guarantee without a rename.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Callable, Union

from etils import epath

Content = Union[bytes, str, Callable[[BinaryIO], None]]


def is_local(path: str | os.PathLike) -> bool:
    """True for a path on this machine's file system, False for a URL such as gs://bucket/x."""
    return "://" not in os.fspath(path)


def atomic_write(path: str | os.PathLike, content: Content) -> None:
    """Writes `content` to `path` (missing folders are created) all at once or not at all.

    On any error the temporary file is removed and an existing `path` is left untouched.
    """
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write = content if callable(content) else _writer(content)
    if not is_local(path):
        with target.open("wb") as f:
            write(f)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=os.fspath(target.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _writer(content: bytes | str) -> Callable[[BinaryIO], None]:
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    return lambda f: f.write(data)
