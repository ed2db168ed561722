"""Hugging Face checkpoints <-> our models.

Our parameter paths mirror the checkpoint's tensor names, so a model's
`checkpoint_key(path)` is the whole mapping (GPT-2 adds the `transformer.`
prefix). Reads `config.json` plus `model.safetensors`, sharded safetensors with
their `*.index.json`, or `pytorch_model.bin` (when torch is installed), from a
local folder or from the hub. Writes a folder transformers loads back. A T5X
checkpoint directory (`models/t5x.py`) loads through the same path: its names are
mapped to Hugging Face's.

T5 configs come in two styles (see `T5Config.from_hf`): hub configs mark v1.1
with `"tie_word_embeddings": false`; transformers 5 writes
`tie_word_embeddings: true` with `scale_decoder_outputs`, and the head is untied
exactly when the checkpoint holds `lm_head.weight`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import mmap
import os
import struct
import threading
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from prompt_tuning_jax import partitioning
from prompt_tuning_jax import files
from prompt_tuning_jax.files import atomic_write
from prompt_tuning_jax.models import base, t5x
from prompt_tuning_jax.models.base import CheckpointError

logger = logging.getLogger(__name__)


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
    "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


# --- locating a checkpoint -------------------------------------------------------

def _looks_local(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


META_FILES = ("*.json", "*.model", "*.txt")  # config, generation config, tokenizer


def resolve_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """A local folder; a bucket folder (gs://) or a hub id, copied to a local cache; clear error otherwise.

    A hub id is fetched at `revision` (a branch, tag or commit; default main) with the token
    huggingface_hub finds (`HF_TOKEN`, or `huggingface-cli login`) for gated repositories. With
    `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, it is read from the Hugging Face cache
    (`HF_HOME`, `HF_HUB_CACHE`) as transformers does.
    """
    name = os.fspath(name_or_path)
    if not files.is_local(name):
        if not files.is_dir(name):
            raise CheckpointError(f"checkpoint folder {name} does not exist")
        return files.local_folder(name, _one_weight_format(files.listdir(name)))
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{name} is a file; pass the checkpoint folder that holds config.json")
    if _looks_local(name):
        raise CheckpointError(f"checkpoint folder {name} does not exist")
    try:
        return _hub_snapshot(name, revision)
    except Exception as e:  # not cached offline, unknown id, gated repo...
        raise CheckpointError(
            f"{name!r} is not a local folder and could not be fetched from the Hugging Face hub nor found in "
            f"its cache ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass a local "
            "checkpoint folder, or download it once where the hub is reachable"
        ) from None


def _hub_snapshot(name: str, revision: str | None) -> str:
    """The local snapshot folder of hub repo `name` at `revision`: downloaded, or from the cache offline."""
    from huggingface_hub import constants, list_repo_files, snapshot_download

    if not constants.is_offline_mode():
        try:
            names = list_repo_files(name, revision=revision)
        except Exception as e:  # no network, or the hub is down: the cache may still hold it
            logger.info("cannot list %s on the hub (%s); trying the local cache", name, type(e).__name__)
        else:
            return snapshot_download(name, revision=revision, allow_patterns=_one_weight_format(names))
    return snapshot_download(name, revision=revision, local_files_only=True)


def _one_weight_format(names: list[str]) -> tuple[str, ...]:
    """The files to fetch: configs, tokenizer files and one weight format (safetensors when there are any)."""
    weights = [n for n in names if n.endswith(".safetensors")] or [n for n in names if n.endswith(".bin")]
    return (*META_FILES, *weights)


def read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: a Hugging Face checkpoint folder needs its config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    model_type = config.get("model_type")
    if model_type not in base.FAMILIES:
        raise CheckpointError(
            f"{path} has model_type {model_type!r}; prompt_tuning_jax supports {sorted(base.FAMILIES)} "
            "(GPT-2, T5 / T5 v1.1 / Flan-T5 / mT5, Llama, Mistral, Qwen 2 / 3 and Gemma 3 checkpoints, the multimodal "
            "Gemma 3 as its text model)")
    return config


# --- reading tensors -------------------------------------------------------------
#
# Loading holds each weight once. A tensor (or the slice of it one device holds) is read with positioned
# reads into a fresh array of the target dtype, converted a chunk at a time, and handed to JAX; no file
# is memory-mapped (the pages of a file map count in the process's RSS while the map lives, which held
# every weight twice: once as file pages, once in the model). The arrays are page-aligned, so the CPU
# backend takes them without a copy; an accelerator copies them over and they are freed.

READ_CHUNK_BYTES = 8 * 2**20  # file bytes read at a time (and converted or sliced at a time)
_ALIGNMENT = 64  # what XLA:CPU needs to use a host array in place
_ANONYMOUS_FROM = 2**22  # arrays of this many bytes or more get their own anonymous memory map


def _aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), at least 64-byte aligned (a CPU device then holds it without copying).

    A large one is its own private anonymous mapping (page-aligned; unmapped when the array goes): numpy
    asks the kernel for transparent huge pages for large arrays, and where the kernel compacts memory to
    find them on first touch (THP `defrag` = madvise, a common default) that made loading 2x slower.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= _ANONYMOUS_FROM and hasattr(mmap, "MAP_ANONYMOUS"):
        try:
            memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError:  # out of mappings (vm.max_map_count): numpy's memory will do
            pass
        else:
            return np.frombuffer(memory, dtype=dtype).reshape(shape)
    raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _bounds(index, shape) -> list[tuple[int, int]]:
    """(start, stop) per dimension of `index` (None, or a tuple of step-1 slices, as
    `jax.make_array_from_callback` passes; missing trailing dimensions are whole)."""
    index = () if index is None else (index if isinstance(index, tuple) else (index,))
    if len(index) > len(shape):
        raise IndexError(f"index {index} has more dimensions than shape {shape}")
    out = []
    for i, n in enumerate(shape):
        s = index[i] if i < len(index) else slice(None)
        if isinstance(s, slice):
            start, stop, step = s.indices(n)
            if step != 1:
                raise IndexError(f"only contiguous slices are read from a checkpoint, got {s}")
            out.append((start, max(start, stop)))
        else:
            raise IndexError(f"only slices are read from a checkpoint, got {s!r}")
    return out


def _readinto(f, buffer: memoryview, offset: int, path: str, lock=None) -> None:
    """Fills `buffer` with the bytes of file `f` from `offset` (reads may return less than asked).

    Positioned reads (`os.preadv`), so threads may read one file at once; without them, under `lock`."""
    done = 0
    while done < len(buffer):
        if hasattr(os, "preadv"):
            n = os.preadv(f.fileno(), [buffer[done:]], offset + done)
        else:
            with lock or contextlib.nullcontext():
                f.seek(offset + done)
                n = f.readinto(buffer[done:])
        if not n:
            raise CheckpointError(f"{path} ends before the tensor data its header describes (truncated?)")
        done += n


READ_THREADS = 4  # threads that read (and convert) the chunks of one tensor; the kernel's page faults and
# copies run in them (4 beat 2 even on 2 cores)
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _in_parallel(work, parts: int) -> None:
    """work(0), ..., work(parts - 1), on up to READ_THREADS threads (the calling one when there is one part)."""
    global _pool
    if parts <= 1 or READ_THREADS <= 1:
        for part in range(parts):
            work(part)
        return
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ptj-read")
    for future in [_pool.submit(work, part) for part in range(parts)]:
        future.result()


class SafetensorsFile:
    """One .safetensors file (bfloat16 included), read tensor by tensor: `read(key, index, dtype)`.

    Only the header is read when opened; the file is opened for reading on the first tensor and
    released by `close()` (or when the object goes away).
    """

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            size = os.path.getsize(path)
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self.header, self.offset = header, 8 + n
        for key, info in header.items():
            try:
                start, end = (int(x) for x in info["data_offsets"])
                elements = int(np.prod(info["shape"], dtype=np.int64))
                dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: the header entry of tensor {key!r} is malformed ({info!r}: "
                                      f"{type(e).__name__} {e})") from None
            # A dtype we cannot read fails when that tensor is read, not here: a loader may never need it.
            if (dtype is not None and end - start != elements * np.dtype(dtype).itemsize) or self.offset + end > size:
                raise CheckpointError(f"{path}: tensor {key!r} ({info['dtype']} {info['shape']}) does not fit its "
                                      f"bytes {start}..{end} of the file ({size} bytes); is the file complete?")
        self._file, self._lock = None, threading.Lock()

    def keys(self):
        return self.header.keys()

    def shape(self, key):
        return tuple(self.header[key]["shape"])

    def dtype(self, key) -> np.dtype:
        name = self.header[key]["dtype"]
        if name not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has dtype {name!r}, which prompt_tuning_jax does "
                                  f"not read ({', '.join(_SAFETENSORS_DTYPES)})")
        return np.dtype(_SAFETENSORS_DTYPES[name])

    def read(self, key, index=None, dtype=None) -> np.ndarray:
        """Tensor `key`, or its `index` (a tuple of contiguous slices), as a new array of `dtype` (default:
        as stored). Only the rows the slice spans are read, in chunks that `READ_THREADS` threads read at
        once: straight into the result, or, when the array is converted or sliced within rows, through
        buffers of `READ_CHUNK_BYTES` in all."""
        info = self.header[key]
        shape, source = tuple(info["shape"]), self.dtype(key)
        dtype = source if dtype is None else np.dtype(dtype)
        bounds = _bounds(index, shape)
        out = _aligned_empty(tuple(b - a for a, b in bounds), dtype)
        if out.size == 0:
            return out
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        begin = self.offset + info["data_offsets"][0]
        if not shape:  # a scalar
            raw = np.empty((), source)
            _readinto(self._file, memoryview(raw.reshape(1).view(np.uint8)), begin, self.path, self._lock)
            out[...] = raw
            return out
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * source.itemsize  # one index of the first dimension
        (first, last), inner = bounds[0], bounds[1:]
        whole_rows = all(a == 0 and b == n for (a, b), n in zip(inner, shape[1:]))
        if whole_rows and dtype == source:  # straight into the result, READ_CHUNK_BYTES a read (not one huge read)
            flat, start = memoryview(out.reshape(-1).view(np.uint8)), begin + first * row_bytes
            # Chunks of at most READ_CHUNK_BYTES, as many as the threads at least (from 1 MiB up), whole pages.
            step = min(READ_CHUNK_BYTES, max(2**20, -(-len(flat) // READ_THREADS)))
            step = -(-step // 4096) * 4096
            chunks = range(0, len(flat), step)
            workers = min(READ_THREADS, len(chunks))

            def read_straight(worker):
                for i in chunks[worker::workers]:
                    _readinto(self._file, flat[i:i + step], start + i, self.path, self._lock)

            _in_parallel(read_straight, workers)
            return out
        # Blocks of rows, each read into a thread's buffer, then sliced and converted: READ_CHUNK_BYTES in all.
        rows = max(1, READ_CHUNK_BYTES // READ_THREADS // row_bytes)
        blocks = range(first, last, rows)
        workers = min(READ_THREADS, len(blocks))
        within = (slice(None), *(slice(a, b) for a, b in inner))

        def read_blocks(worker):
            chunk = _aligned_empty((min(rows, last - first) * row_bytes,), np.uint8)  # this thread's buffer
            for row in blocks[worker::workers]:
                n = min(rows, last - row)
                _readinto(self._file, memoryview(chunk[:n * row_bytes]), begin + row * row_bytes, self.path, self._lock)
                out[row - first:row - first + n] = chunk[:n * row_bytes].view(source).reshape(n, *shape[1:])[within]

        _in_parallel(read_blocks, workers)
        return out

    def get(self, key) -> np.ndarray:
        """Tensor `key` as stored, in a new array."""
        return self.read(key)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TorchFile:
    """A pytorch_model.bin, read with torch (a test-only dependency) when it is installed.

    torch reads the whole pickle; `read` then hands out each tensor (bfloat16 without a float32
    detour) and `close()` lets the tensors go."""

    def __init__(self, path: str):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{path} is a PyTorch pickle and torch is not installed; "
                                  "install torch or convert the checkpoint to safetensors") from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        self.path = path
        self.tensors = {k: v for k, v in sd.items()}

    def keys(self):
        return self.tensors.keys()

    def shape(self, key):
        return tuple(self.tensors[key].shape)

    def get(self, key) -> np.ndarray:
        import torch

        t = self.tensors[key].detach()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bits, as ml_dtypes' bfloat16
            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def read(self, key, index=None, dtype=None) -> np.ndarray:
        whole = self.get(key)
        array = whole[tuple(slice(a, b) for a, b in _bounds(index, whole.shape))]
        dtype = array.dtype if dtype is None else np.dtype(dtype)
        if array.shape == whole.shape and dtype == array.dtype and array.flags.c_contiguous and \
                array.ctypes.data % _ALIGNMENT == 0:
            return array  # torch's own memory (64-byte aligned): a CPU device shares it instead of a copy
        out = _aligned_empty(array.shape, dtype)
        out[...] = array
        return out

    def close(self) -> None:
        self.tensors = {}


class Checkpoint:
    """All tensors of a folder by name, whatever the file layout; `keys`, `shape`, `read`, `get`, `describe`.

    `close()` (or `with Checkpoint(folder) as ckpt:`) releases the files."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: dict[str, Any] = {}
        for index_name, opener in (("model.safetensors.index.json", SafetensorsFile),
                                   ("pytorch_model.bin.index.json", TorchFile)):
            index_path = os.path.join(folder, index_name)
            if os.path.isfile(index_path):
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                opened = {}
                for key, file in weight_map.items():
                    path = os.path.join(folder, file)
                    if file not in opened:
                        if not os.path.isfile(path):
                            raise CheckpointError(f"{index_path} lists shard {file}, which is missing from {folder}")
                        opened[file] = opener(path)
                    self.files[key] = opened[file]
                return
        for name, opener in (("model.safetensors", SafetensorsFile), ("pytorch_model.bin", TorchFile)):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                reader = opener(path)
                self.files = {k: reader for k in reader.keys()}
                return
        raise CheckpointError(f"no weights in {folder}: expected model.safetensors, "
                              "model.safetensors.index.json with shards, or pytorch_model.bin")

    def __contains__(self, key):
        return key in self.files

    def keys(self):
        return self.files.keys()

    def shape(self, key):
        return self.files[key].shape(key)

    def read(self, key, index=None, dtype=None) -> np.ndarray:
        """Tensor `key`, or the slice `index` of it, as a new array of `dtype` (default: as stored)."""
        return self.files[key].read(key, index, dtype)

    def get(self, key) -> np.ndarray:
        return self.files[key].get(key)

    def describe(self, key) -> str:
        return os.path.basename(self.files[key].path) if key in self.files else os.path.basename(self.folder)

    def close(self) -> None:
        for reader in {id(r): r for r in self.files.values()}.values():
            reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- building the model ----------------------------------------------------------

def _lookup(ckpt: Checkpoint, key: str, prefix: str) -> str | None:
    """The checkpoint's name for `key`; GPT-2 checkpoints exist with and without `transformer.`."""
    if key in ckpt:
        return key
    if prefix and key.startswith(prefix) and key[len(prefix):] in ckpt:
        return key[len(prefix):]
    return None


def config_from_folder(folder: str, ckpt: Checkpoint | None = None):
    raw = read_config(folder)
    config_cls, _ = base.family(raw["model_type"])
    try:
        return config_cls.from_hf(raw, tensor_names=None if ckpt is None else set(ckpt.keys()))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(folder, 'config.json')}: {e}") from None


def pretrained_config(name_or_path: str | os.PathLike, revision: str | None = None,
                      config_overrides: dict | None = None):
    """A checkpoint's config without its weights (for building the model abstractly, `nnx.eval_shape`).

    A local or gs:// folder: its config.json. A T5X checkpoint directory: its shapes
    (`t5x.config_from_checkpoint`), or for the released ones by their gs:// names
    (gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000) the known config. A hub id of a released size (`models.preset`:
    gpt2 to gpt2-xl, T5, T5 1.1, lm-adapt and Flan-T5 small to xxl): the shipped config, with
    no network. Any other hub id: its config.json from the hub or the Hugging Face cache.
    `config_overrides`: config fields that replace the checkpoint's ({'dropout_rate': 0.0}).
    """
    name = os.fspath(name_or_path)
    if released := t5x.released_hub_id(name):  # a released T5X checkpoint by its gs:// name: its known config
        return with_overrides(base.preset(released), config_overrides)
    if t5x.is_t5x_checkpoint(name):
        return t5x.config_from_checkpoint(name, config_overrides)
    if files.is_local(name) and not _looks_local(name) and not os.path.exists(os.path.expanduser(name)):
        try:
            return with_overrides(base.preset(name), config_overrides)
        except ValueError:
            pass
    if not files.is_local(name):
        if not files.is_file(os.path.join(name, "config.json")):
            raise CheckpointError(f"{name}/config.json not found: a Hugging Face checkpoint folder needs its "
                                  "config.json")
        return with_overrides(config_from_folder(files.local_folder(name, ("config.json",))), config_overrides)
    return with_overrides(config_from_folder(resolve_folder(name, revision)), config_overrides)


def with_overrides(config, config_overrides: dict | None):
    """`config` with the fields in `config_overrides` replaced; unchanged when it is None or empty."""
    if not config_overrides:
        return config
    try:
        return dataclasses.replace(config, **config_overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config_overrides {config_overrides}: {e}") from None


def with_dropout_rate(config, dropout_rate: float | None):
    """`config` with every dropout rate replaced by `dropout_rate`; unchanged when it is None."""
    if dropout_rate is None:
        return config
    if not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1] (or None for the checkpoint's rates), got {dropout_rate!r}")
    if not hasattr(config, "with_dropout"):
        raise ValueError(f"{config.model_type} models have no dropout rates to override (dropout_rate="
                         f"{dropout_rate}); leave DROPOUT_RATE unset")
    return config.with_dropout(float(dropout_rate))


def with_attention(config, attention: str | None):
    """`config` with its `attention` implementation replaced ('auto' | 'einsum' | 'xla' | 'cudnn'); None keeps it."""
    if attention is None or attention == getattr(config, "attention", "auto"):
        return config
    if not hasattr(config, "attention"):
        raise ValueError(f"{config.model_type} models have no attention implementations to choose from "
                         f"(attention={attention!r}); leave it 'auto'")
    return dataclasses.replace(config, attention=attention)


def open_checkpoint(name_or_path, revision: str | None = None, config_overrides: dict | None = None):
    """(where, config, tensors by Hugging Face name) of a Hugging Face folder or hub id, or of a T5X
    checkpoint directory (`models.t5x`, whose names are mapped to Hugging Face's)."""
    if t5x.is_t5x_checkpoint(name_or_path):
        ckpt = t5x.T5XCheckpoint(name_or_path)
        return ckpt.path, t5x.config_from_checkpoint(ckpt, config_overrides), ckpt
    folder = resolve_folder(name_or_path, revision)
    read_config(folder)  # fail on a wrong model type before opening weights
    ckpt = Checkpoint(folder)
    return folder, with_overrides(config_from_folder(folder, ckpt), config_overrides), ckpt


def from_pretrained(name_or_path, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None, rules=None,
                    remat: bool = False, dropout_rate: float | None = None, attention: str | None = None,
                    revision: str | None = None, config_overrides: dict | None = None):
    """Loads a GPT-2 or T5 Hugging Face checkpoint (local folder or hub id), or a T5X checkpoint
    directory of T5 (`models.t5x`), into our NNX model.

    `dtype` is the compute dtype, `param_dtype` the storage dtype of the frozen
    weights. With a `mesh`, each weight is placed by its logical axes
    (`partitioning.DEFAULT_RULES` unless `rules` is given); each process
    reads only the slices its devices hold. `dropout_rate` (T5X's DROPOUT_RATE)
    replaces all of the checkpoint's dropout rates; None keeps config.json's.
    Dropout only ever acts in a training step that passes a `dropout_rng`.
    `attention` picks how attention runs (`common.pick_attention`); None: 'auto'.
    `revision`: the hub revision of a hub id (see `resolve_folder`; offline it comes from the cache).
    `config_overrides`: config fields that replace the checkpoint's; for a T5X checkpoint, the ones its
    arrays cannot tell, e.g. {'relative_attention_max_distance': 8} (default 128, as every released size).
    """
    folder, config, ckpt = open_checkpoint(name_or_path, revision, config_overrides)
    config = with_attention(with_dropout_rate(config, dropout_rate), attention)
    _, model_cls = base.family(config.model_type)
    abstract = nnx.eval_shape(lambda: model_cls(config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                                rngs=None))  # placeholders: no random draws to trace
    graphdef, state = nnx.split(abstract)
    prefix = getattr(model_cls, "CHECKPOINT_PREFIX", "")
    rules = rules or partitioning.DEFAULT_RULES
    device = jax.devices()[0] if mesh is None else None
    implied_by = "the T5X checkpoint's config" if isinstance(ckpt, t5x.T5XCheckpoint) else "config.json"

    def load(path, variable):
        # The name to read: a family's `load_key` where it reads names other than the ones it writes (Gemma 3's
        # multimodal checkpoints), else the one `save_pretrained` writes.
        key = getattr(abstract, "load_key", abstract.checkpoint_key)(path)
        found = _lookup(ckpt, key, prefix)
        if found is None:
            raise CheckpointError(f"{folder}: checkpoint has no tensor {key!r} (expected shape {variable.shape}); "
                                  f"is {implied_by} from the same model as the weights?")
        shape = ckpt.shape(found)
        if shape != tuple(variable.shape):
            raise CheckpointError(f"{folder}/{ckpt.describe(found)}: tensor {found!r} has shape {shape}, "
                                  f"but {implied_by} implies {tuple(variable.shape)}")
        dtype = np.dtype(variable.dtype)
        if mesh is None:
            return jax.device_put(_read(ckpt, found, None, dtype), device)
        sharding = jax.sharding.NamedSharding(mesh, partitioning.variable_spec(variable, mesh, rules))
        return jax.make_array_from_callback(variable.shape, sharding, _shard_reader(ckpt, found, dtype))

    try:
        for path, variable in nnx.to_flat_state(state):
            variable.set_value(load(path, variable))
    finally:
        if hasattr(ckpt, "close"):
            ckpt.close()  # the files are let go now, not when the collector gets to them
    return nnx.merge(graphdef, state)


def _read(ckpt, key: str, index, dtype: np.dtype) -> np.ndarray:
    """Tensor `key` (or its slice `index`) of `ckpt` as a new array of `dtype`, read tensor by tensor."""
    if isinstance(ckpt, Checkpoint):
        return ckpt.read(key, index, dtype)
    return _owned(ckpt.get(key), index, dtype)


def _owned(lazy, index, dtype: np.dtype) -> np.ndarray:
    """`lazy[index]` (an array, or a T5X zarr array as an unread TensorStore: only that slice is read) as a
    new, aligned array of `dtype`."""
    part = np.asarray(lazy if index is None else lazy[tuple(slice(a, b) for a, b in _bounds(index, lazy.shape))])
    out = _aligned_empty(part.shape, dtype)
    out[...] = part
    return out


def _shard_reader(ckpt, key: str, dtype: np.dtype):
    """The `make_array_from_callback` callback of tensor `key`: each slice this process's devices hold, read
    once (devices that hold the same slice share it)."""
    lazy = None if isinstance(ckpt, Checkpoint) else ckpt.get(key)  # T5X: open the zarr array once
    cache: dict = {}

    def read(index):
        slices = _bounds(index, ckpt.shape(key))
        if tuple(slices) not in cache:
            cache[tuple(slices)] = ckpt.read(key, index, dtype) if lazy is None else _owned(lazy, index, dtype)
        return cache[tuple(slices)]

    return read


def init_random(config, dtype=jnp.float32, param_dtype=jnp.float32, seed: int | None = 0, remat: bool = False,
                dropout_rate: float | None = None, attention: str | None = None):
    """A randomly initialised model for `config` (a GPT2Config, a T5Config or a registered family's).

    seed None: zeros instead of random draws, for `nnx.eval_shape` (shapes alone, traced in linear time).

    dropout_rate: replaces all of the config's dropout rates (None keeps them); attention: the
    attention implementation (None keeps the config's).
    """
    config = with_attention(with_dropout_rate(config, dropout_rate), attention)
    _, model_cls = base.family(config.model_type)
    return model_cls(config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                     rngs=None if seed is None else nnx.Rngs(seed))


# --- writing a checkpoint --------------------------------------------------------

def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes `tensors` as a .safetensors file, atomically."""
    atomic_write(path, lambda f: _write_safetensors(f, tensors))


def _write_safetensors(f: BinaryIO, tensors: dict[str, np.ndarray]):
    header, offset, blobs = {}, 0, []
    for key, array in tensors.items():
        array = np.asarray(array)
        data = array.tobytes(order="C")  # (ascontiguousarray would make a scalar 1-D)
        header[key] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for blob in blobs:
        f.write(blob)


def save_pretrained(model, folder: str | os.PathLike):
    """Writes `config.json` + `model.safetensors` that transformers (and `from_pretrained`) load back.

    Files are written under temporary names and renamed, so an interrupted save
    never leaves a half-written checkpoint under the real names.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        array = np.asarray(jax.device_get(variable[...]))
        tensors[model.checkpoint_key(path)] = array
    config = model.config.to_hf()  # tied copies (lm_head, embed_tokens) are left to transformers
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    atomic_write(os.path.join(folder, "config.json"), json.dumps(config, indent=2, sort_keys=True))
