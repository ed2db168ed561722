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

import dataclasses
import json
import logging
import os
import struct
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
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
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
            "(GPT-2, T5 / T5 v1.1 / Flan-T5 / mT5, Llama, Mistral, Qwen 2 / 3 and Gemma 3 text checkpoints)")
    return config


# --- reading tensors -------------------------------------------------------------

class SafetensorsFile:
    """Lazy, memory-mapped reader of one .safetensors file (bfloat16 included)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self.header, self.offset = header, 8 + n
        self._mmap = None

    def keys(self):
        return self.header.keys()

    def shape(self, key):
        return tuple(self.header[key]["shape"])

    def get(self, key) -> np.ndarray:
        info = self.header[key]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        raw = self._mmap[self.offset + start:self.offset + end]
        return raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])


class TorchFile:
    """A pytorch_model.bin, read with torch (a test-only dependency) when it is installed."""

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

        t = self.tensors[key]
        if t.dtype == torch.bfloat16:
            return t.float().numpy().astype(ml_dtypes.bfloat16)
        return t.numpy()


class Checkpoint:
    """All tensors of a folder by name, whatever the file layout; `keys`, `shape`, `get`, `describe`."""

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

    def get(self, key) -> np.ndarray:
        return self.files[key].get(key)

    def describe(self, key) -> str:
        return os.path.basename(self.files[key].path) if key in self.files else os.path.basename(self.folder)


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
                                                rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    prefix = getattr(model_cls, "CHECKPOINT_PREFIX", "")
    rules = rules or partitioning.DEFAULT_RULES
    device = jax.devices()[0] if mesh is None else None
    implied_by = "the T5X checkpoint's config" if isinstance(ckpt, t5x.T5XCheckpoint) else "config.json"

    def load(path, variable):
        key = abstract.checkpoint_key(path)
        found = _lookup(ckpt, key, prefix)
        if found is None:
            raise CheckpointError(f"{folder}: checkpoint has no tensor {key!r} (expected shape {variable.shape}); "
                                  f"is {implied_by} from the same model as the weights?")
        shape = ckpt.shape(found)
        if shape != tuple(variable.shape):
            raise CheckpointError(f"{folder}/{ckpt.describe(found)}: tensor {found!r} has shape {shape}, "
                                  f"but {implied_by} implies {tuple(variable.shape)}")
        array = ckpt.get(found)  # memory-mapped or lazy: each host reads only the slices it places
        if mesh is None:
            return jax.device_put(np.asarray(array, dtype=variable.dtype), device)
        sharding = jax.sharding.NamedSharding(mesh, partitioning.variable_spec(variable, mesh, rules))
        return jax.make_array_from_callback(variable.shape, sharding,
                                            lambda idx: np.asarray(array[idx], dtype=variable.dtype))

    for path, variable in nnx.to_flat_state(state):
        variable.set_value(load(path, variable))
    return nnx.merge(graphdef, state)


def init_random(config, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0, remat: bool = False,
                dropout_rate: float | None = None, attention: str | None = None):
    """A randomly initialised model for `config` (a GPT2Config, a T5Config or a registered family's).

    dropout_rate: replaces all of the config's dropout rates (None keeps them); attention: the
    attention implementation (None keeps the config's).
    """
    config = with_attention(with_dropout_rate(config, dropout_rate), attention)
    _, model_cls = base.family(config.model_type)
    return model_cls(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=nnx.Rngs(seed))


# --- writing a checkpoint --------------------------------------------------------

def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes `tensors` as a .safetensors file, atomically."""
    atomic_write(path, lambda f: _write_safetensors(f, tensors))


def _write_safetensors(f: BinaryIO, tensors: dict[str, np.ndarray]):
    header, offset, blobs = {}, 0, []
    for key, array in tensors.items():
        array = np.ascontiguousarray(array)
        data = array.tobytes()
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
