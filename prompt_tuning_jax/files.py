"""The project's one path layer: local paths and buckets (`gs://...`) through the same calls.

    atomic_write("runs/x/metrics.json", json.dumps(metrics))       # str or bytes
    atomic_write("prompt.npy", lambda f: np.save(f, array))        # or a function writing to a binary file
    read_text("gs://bucket/run/best.json"); exists(path); is_dir(path); makedirs(path)
    local_folder("gs://bucket/models/gpt2")                        # a local copy, for readers that need one

Paths go through `etils.epath` (which orbax already brings); gs:// goes through
gcsfs (`pip install "prompt_tuning_jax[gcs]"`, part of the `tpu` extra).
Checkpoints go through orbax and tensorstore, which reach the same buckets.

`atomic_write` never leaves half a file. Locally the content goes to a
temporary file beside the target, is flushed to disk and renamed over it:
readers see the old file or the new one. An object store commits an upload
only when it completes, which gives the same guarantee without a rename, so
a bucket object is always written whole, in one upload.

An emulator: `STORAGE_EMULATOR_HOST=http://127.0.0.1:4443` is all it takes.
`use_storage_emulator()` (run when the package is imported) gives the
libraries that read their own variables what they need: tensorstore's
`TENSORSTORE_GCS_HTTP_URL` and a dummy token (an emulator checks none), and
gcsfs without its hierarchical-namespace probe (an emulator has no control plane).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import shutil
import tempfile
import time
from typing import BinaryIO, Callable, Union

from etils import epath

Content = Union[bytes, str, Callable[[BinaryIO], None]]
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
COPY_CHUNK_BYTES = 16 * 2**20  # what `local_folder` holds of a file at once while copying it
CACHE_DIR = os.path.join(os.path.expanduser(os.environ.get("PTJ_CACHE", "~/.cache/prompt_tuning_jax")), "buckets")


def use_storage_emulator(environ=os.environ) -> None:
    """With STORAGE_EMULATOR_HOST set, points tensorstore and gcsfs at the emulator too (user settings win)."""
    url = environ.get(EMULATOR_VARIABLE)
    if not url:
        return
    url = url if "://" in url else f"http://{url}"
    environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # tensorstore: no credential lookup
    environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # gcsfs: no storage-control probe


def is_local(path: str | os.PathLike) -> bool:
    """True for a path on this machine's file system, False for a URL such as gs://bucket/x."""
    return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """An absolute local path (with ~ expanded), or the URL as given."""
    path = os.fspath(path)
    return os.path.abspath(os.path.expanduser(path)) if is_local(path) else os.fspath(Path(path))


def Path(path: str | os.PathLike) -> epath.Path:  # noqa: N802 - a constructor, like pathlib.Path
    """An `epath.Path` for a local path or a URL; a clear error when gs:// support is not installed."""
    path = os.fspath(path)
    if path.startswith("gs://"):
        _require_gcs(path)
    return epath.Path(os.path.expanduser(path) if is_local(path) else path)


def exists(path) -> bool:
    return Path(path).exists()


def is_dir(path) -> bool:
    return Path(path).is_dir()


def is_file(path) -> bool:
    p = Path(path)
    return p.exists() and not p.is_dir()


def makedirs(path) -> None:
    """Creates the folder and its parents; a clear error when `path` is an existing file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{os.fspath(path)} is a file, not a folder")
    p.mkdir(parents=True, exist_ok=True)


def read_bytes(path) -> bytes:
    return Path(path).read_bytes()


def read_text(path) -> str:
    return Path(path).read_text(encoding="utf-8")


def remove(path) -> None:
    """Deletes one file (local or in a bucket); a missing file is not an error."""
    p = Path(path)
    if p.exists():
        p.unlink()


def append(path: str | os.PathLike, content: bytes | str) -> None:
    """Adds `content` at the end of a file, creating it if missing. Locally an append. In a bucket, whose
    objects cannot be appended to, the new bytes go up as an object of their own, which is composed onto the
    file (one server-side request) and removed: the cost is the new bytes, never the whole file, and readers
    see the file before or after, whole."""
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(os.path.expanduser(path))), exist_ok=True)
        with open(os.path.expanduser(path), "ab") as f:
            f.write(data)
        return
    fs, path = _gcs(), os.fspath(path)
    if not fs.exists(path):
        atomic_write(path, data)
        return
    part = f"{path}.part-{os.getpid()}-{time.time_ns()}"
    fs.pipe_file(part, data)
    try:
        fs.merge(path, [path, part])
    finally:
        fs.rm_file(part)
    fs.invalidate_cache(os.path.dirname(path))


def copy_folder(source, target) -> None:
    """Copies every file under `source` to the same place under `target` (in a bucket, server-side)."""
    if is_local(source) and is_local(target):
        shutil.copytree(os.path.expanduser(source), os.path.expanduser(target), dirs_exist_ok=True)
        return
    fs = _gcs()
    fs.invalidate_cache(source)
    fs.copy(os.fspath(source).rstrip("/") + "/", os.fspath(target).rstrip("/") + "/", recursive=True)


def remove_folder(path) -> None:
    """Deletes a folder and everything under it (local or in a bucket); a missing folder is not an error."""
    if is_local(path):
        shutil.rmtree(os.path.expanduser(path), ignore_errors=True)
        return
    fs = _gcs()
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm(os.fspath(path), recursive=True)
    fs.invalidate_cache(os.path.dirname(os.fspath(path).rstrip("/")))


def listdir(path) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir())


def atomic_write(path: str | os.PathLike, content: Content) -> None:
    """Writes `content` to `path` (missing folders are created) all at once or not at all.

    On any error the temporary file is removed and an existing `path` is left untouched.
    """
    target = Path(path)
    write = content if callable(content) else _writer(content)
    if not is_local(path):
        buffer = io.BytesIO()
        write(buffer)  # one upload of the whole object, after the content is complete
        target.write_bytes(buffer.getvalue())
        return
    target.parent.mkdir(parents=True, exist_ok=True)
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


def local_folder(path: str | os.PathLike, patterns: tuple[str, ...] = ("*",)) -> str:
    """`path` itself when local; a bucket folder is copied (its files matching `patterns`) to a local cache.

    For readers that only take local files (transformers' tokenizers, safetensors read by offset).
    A file is copied again when its object's generation differs from the one the cached copy was made
    from (kept in a folder beside the copy, written after the copy), so a file rewritten in the
    bucket is fetched again even at the same size; files are streamed (`COPY_CHUNK_BYTES` at a time),
    never read whole into memory.
    """
    path = os.fspath(path)
    if is_local(path):
        return os.path.expanduser(path)
    source = Path(path)
    if not source.is_dir():
        raise FileNotFoundError(f"{path} is not a folder in the bucket")
    key = hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:16]
    local = os.path.join(CACHE_DIR, f"{source.name}-{key}")
    markers = f"{local}.generations"  # beside the copy, so that readers listing the copy see only its files
    os.makedirs(local, exist_ok=True)
    os.makedirs(markers, exist_ok=True)
    for name, generation in _generations(path).items():
        if not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        copy, marker = os.path.join(local, name), os.path.join(markers, name)
        if not (os.path.exists(copy) and _read_marker(marker) == generation):
            with (source / name).open("rb") as source_file:  # streamed: a large weight file is never whole in memory
                atomic_write(copy, lambda f, src=source_file: shutil.copyfileobj(src, f, COPY_CHUNK_BYTES))
            atomic_write(marker, generation)
    return local


def _gcs():
    """The gcsfs file system of gs:// paths: the instance `epath` (and so orbax) uses, so that a listing
    invalidated here is invalidated for them too."""
    _require_gcs("gs://")
    import fsspec

    return fsspec.filesystem("gcs", finalize_on_close=True)


def _generations(folder: str) -> dict[str, str]:
    """The generation of each file directly in a bucket folder, by name, listed afresh (not from gcsfs' cache)."""
    fs = _gcs()
    fs.invalidate_cache(folder)
    return {os.path.basename(info["name"].rstrip("/")): str(info["generation"])
            for info in fs.ls(folder, detail=True) if info.get("type") == "file"}


def _read_marker(marker: str) -> str | None:
    try:
        with open(marker) as f:
            return f.read().strip()
    except OSError:
        return None


def _require_gcs(path: str) -> None:
    use_storage_emulator()  # STORAGE_EMULATOR_HOST may have been set after the package was imported
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise ImportError(f"{path}: gs:// paths need gcsfs; install it with pip install "
                          "'prompt_tuning_jax[gcs]' (the tpu extra includes it)") from None


def _writer(content: bytes | str) -> Callable[[BinaryIO], None]:
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    return lambda f: f.write(data)
