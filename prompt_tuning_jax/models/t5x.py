"""T5X checkpoints (what the original prompt-tuning library trains and releases), read without T5X.

A T5X checkpoint is a step directory, local or in a bucket (`gs://.../checkpoint_1100000`):

    checkpoint                                  msgpack: {'version': 3, 'optimizer': {'target': parameters,
                                                'state': optimizer state}}; version 0 has no 'optimizer' level
    target.encoder.layers_0.mlp.wi_0.kernel/    one zarr array (.zarray and chunks) per large parameter
    ...

In the msgpack a small array is stored inline; a large one is a tensorstore spec,
`{'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'target.encoder....'}, 'metadata': ...}`,
whose path is relative to the directory. T5X maps `gfile` to `file` locally and to
`gcs` in a bucket; so do we. Only `target` (the parameters) is read, never the
optimizer state. Variables are named by `/`-joined paths, as the original's
`extract_variable` takes them: `target/token_embedder/embedding` [V, d],
`target/encoder/prompt/prompt/prompt` [P, d] (a prompt-tuned checkpoint).

T5X's T5 against Hugging Face's (and ours, which mirrors its names), checked
numerically in tests/models/test_t5x.py:
- kernels are [in, out], Hugging Face weights [out, in]: every kernel is transposed
  (attention `query`/`key`/`value` [d, N*D], `out` [N*D, d]; `logits_dense` [d, V]);
- the relative position table `relpos_bias/rel_embedding` is [heads, buckets], HF's [buckets, heads];
- neither scales q by 1/sqrt(D) when it runs (T5X folds it into the query's initialisation only);
- T5 1.1 has `mlp/wi_0`, `mlp/wi_1` (gated GELU, tanh approximation: HF's gelu_new) and its own
  `decoder/logits_dense`; T5 1.0 has `mlp/wi` (ReLU) and reads logits through the embedding
  divided by sqrt(d_model), as HF's tied head does.
The arrays do not tell the relative attention max distance (128 in every released
size, the default): it comes from `config_overrides` or from a config.json (Hugging
Face field names) inside or beside the directory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from prompt_tuning_jax import files
from prompt_tuning_jax.models.base import HUB_IDS, CheckpointError
from prompt_tuning_jax.models.t5 import T5Config

logger = logging.getLogger(__name__)

MSGPACK = "checkpoint"  # the msgpack file's name in a step directory


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
    """True for a directory (local or gs://) that holds a msgpack `checkpoint` file."""
    path = os.fspath(path)
    if files.is_local(path):
        return os.path.isfile(os.path.join(os.path.expanduser(path), MSGPACK))
    return files.is_file(f"{path.rstrip('/')}/{MSGPACK}")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step a T5X checkpoint was saved at: `state/step` in its msgpack (beside `target`), else the N of
    its `checkpoint_N` directory name; None when neither tells."""
    path = files.absolute(path).rstrip("/")
    contents = _read_msgpack(f"{path}/{MSGPACK}")
    state = contents.get("optimizer", contents) if isinstance(contents, dict) else {}
    state = state.get("state") if isinstance(state, dict) else None
    step = state.get("step") if isinstance(state, dict) else None
    if step is not None and not isinstance(step, dict) and np.ndim(step) == 0:
        return int(step)
    m = re.fullmatch(r"checkpoint_(\d+)", os.path.basename(path))
    return int(m[1]) if m else None


def variable_name(name: str) -> str:
    """`encoder/prompt/prompt/prompt`, `/target/encoder/...` -> `target/encoder/...` (the original's leniency)."""
    name = name.strip("/")
    return name if name.startswith("target/") else f"target/{name}"


PROMPT_VARIABLE = "target/encoder/prompt/prompt/prompt"  # where the original's encoder prompt lives [P, d]
EMBEDDING_VARIABLE = "target/token_embedder/embedding"  # [V, d]

# The T5X checkpoints the original library's README names, gs://t5-data/pretrained_models/t5x/<name>/checkpoint_N
# (t5_1_1_lm100k_base, mt5_xl, ...): the same weights as these Hugging Face releases.
_RELEASED = re.compile(r"gs://t5-data/pretrained_models/t5x/(t5_1_1_lm100k|t5_1_1|mt5|flan_t5|t5)_"
                       r"(small|base|large|xl|xxl|3b|11b)/checkpoint_\d+/?")
# T5's SentencePiece vocabularies by embedding rows (padded to a multiple of 128).
_TOKENIZERS = {32128: "google/t5-v1_1-base", 250112: "google/mt5-base"}


def released_hub_id(path: str | os.PathLike) -> str | None:
    """The Hugging Face id of a released T5X checkpoint by its gs:// name, else None:
    gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000 -> 'google/t5-base-lm-adapt'."""
    m = _RELEASED.fullmatch(os.fspath(path))
    return HUB_IDS.get(m[1], {}).get(m[2]) if m else None


def default_tokenizer(path: str | os.PathLike, vocab_size: int) -> tuple[str | None, str]:
    """The tokenizer of a T5X checkpoint, which holds none -> (folder or hub id, why); (None, why) if unknown.

    A tokenizer folder inside or beside the directory (tokenizer.json / spiece.model) comes first; then
    T5's or mT5's SentencePiece vocabulary, which an embedding of 32,128 or 250,112 rows implies (every T5,
    T5 1.1, lm-adapt and Flan-T5 checkpoint shares the first; every mT5 the second).
    """
    path = files.absolute(path).rstrip("/")
    for folder in (path, os.path.dirname(path)):
        if any(files.is_file(f"{folder}/{name}") for name in ("tokenizer.json", "spiece.model")):
            return folder, f"the tokenizer beside the T5X checkpoint, in {folder}"
    if vocab_size in _TOKENIZERS:
        return _TOKENIZERS[vocab_size], f"the vocabulary its {vocab_size}-row embedding implies"
    return None, f"its {vocab_size}-row embedding matches no T5 vocabulary"


def read_variable(path: str | os.PathLike, name: str) -> np.ndarray:
    """One `target` variable of a T5X checkpoint directory, as stored: the original's `t5x_load`."""
    name = variable_name(name)
    return read_variables(path, [name])[name]


def has_variable(path: str | os.PathLike, name: str) -> bool:
    return variable_name(name) in T5XCheckpoint(path).variables


# --- T5X names -> Hugging Face (and our) names ------------------------------------

_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
_MLP = {"wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
# (stack, module of a T5X layer) -> (module of a HF block, T5X -> HF projection names; None for a norm's scale)
_SUBLAYERS = {
    ("encoder", "attention"): ("layer.0.SelfAttention", _ATTENTION),
    ("encoder", "pre_attention_layer_norm"): ("layer.0.layer_norm", None),
    ("encoder", "mlp"): ("layer.1.DenseReluDense", _MLP),
    ("encoder", "pre_mlp_layer_norm"): ("layer.1.layer_norm", None),
    ("decoder", "self_attention"): ("layer.0.SelfAttention", _ATTENTION),
    ("decoder", "pre_self_attention_layer_norm"): ("layer.0.layer_norm", None),
    ("decoder", "encoder_decoder_attention"): ("layer.1.EncDecAttention", _ATTENTION),
    ("decoder", "pre_cross_attention_layer_norm"): ("layer.1.layer_norm", None),
    ("decoder", "mlp"): ("layer.2.DenseReluDense", _MLP),
    ("decoder", "pre_mlp_layer_norm"): ("layer.2.layer_norm", None),
}
_RELPOS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # shared by the stack, in block 0
_OUTSIDE_LAYERS = {
    "token_embedder/embedding": ("shared.weight", False),
    "encoder/relpos_bias/rel_embedding": (f"encoder.{_RELPOS}", True),
    "decoder/relpos_bias/rel_embedding": (f"decoder.{_RELPOS}", True),
    "encoder/encoder_norm/scale": ("encoder.final_layer_norm.weight", False),
    "decoder/decoder_norm/scale": ("decoder.final_layer_norm.weight", False),
    "decoder/logits_dense/kernel": ("lm_head.weight", True),
}
_LAYER = re.compile(r"(encoder|decoder)/layers_(\d+)/(\w+)/(?:(\w+)/kernel|scale)")


def hf_name(name: str) -> tuple[str, bool] | None:
    """A T5X parameter name (after `target/`) -> (its Hugging Face name, transposed?); None if T5 has none.

    `encoder/layers_3/attention/query/kernel` [d, N*D] -> ('encoder.block.3.layer.0.SelfAttention.q.weight', True).
    """
    if name in _OUTSIDE_LAYERS:
        return _OUTSIDE_LAYERS[name]
    m = _LAYER.fullmatch(name)
    if m is None or (m[1], m[3]) not in _SUBLAYERS:
        return None
    stack, layer, module, projection = m.groups()
    hf_module, projections = _SUBLAYERS[stack, module]
    if projections is None:  # a layer norm: `scale` [d]
        return None if projection else (f"{stack}.block.{layer}.{hf_module}.weight", False)
    if projection not in projections:
        return None
    return f"{stack}.block.{layer}.{hf_module}.{projections[projection]}.weight", True


def _is_prompt(name: str) -> bool:
    """A prompt variable (`target/encoder/prompt/prompt/prompt`): not a model weight, left to extract_variable."""
    return "prompt" in name.split("/")


# --- reading ---------------------------------------------------------------------

class T5XCheckpoint:
    """The `target` variables of a T5X checkpoint directory by T5X name; zarr arrays are read lazily.

    `keys`, `shape`, `get` and `describe` answer by Hugging Face name, as `hf.Checkpoint` does, so
    `hf.from_pretrained` loads it like a Hugging Face folder (each host reading only its shards).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = files.absolute(path).rstrip("/")
        self.file = f"{self.path}/{MSGPACK}"
        self.variables: dict[str, Any] = _flatten(_target(_read_msgpack(self.file), self.file), "target")
        self._hf: dict[str, tuple[str, bool]] | None = None

    def shape_of(self, name: str) -> tuple[int, ...]:
        value = self.variables[name]
        if isinstance(value, dict):
            shape = value.get("metadata", {}).get("shape")
            return tuple(shape) if shape is not None else tuple(self.read(name).shape)
        return np.shape(value)

    def read(self, name: str):
        """Variable `name` (`target/...`): a numpy array, or a zarr array as an opened, unread TensorStore
        (index it, then `np.asarray` reads only that slice)."""
        value = self.variables[name]
        if not isinstance(value, dict):
            return np.asarray(value)
        import tensorstore as ts

        relative = _relative_path(value)
        if not isinstance(relative, str):
            raise CheckpointError(f"{self.file}: the zarr spec of {name} has no path ({value})")
        try:
            store = ts.open({"driver": value.get("driver", "zarr"), "kvstore": self._kvstore(relative)},
                            open=True, read=True).result()
        except ValueError as e:  # tensorstore: NOT_FOUND, bad metadata...
            reason = str(e).split(" [tensorstore_spec")[0]
            raise CheckpointError(f"{self.path}/{relative}: cannot open the zarr array of {name} ({reason}); "
                                  "the checkpoint is incomplete or damaged") from None
        expected = value.get("metadata", {}).get("shape")
        if expected is not None and tuple(store.shape) != tuple(expected):
            raise CheckpointError(f"{self.path}/{relative}: zarr array of shape {tuple(store.shape)}, but "
                                  f"{self.file} says {tuple(expected)}")
        return store

    def _kvstore(self, relative: str) -> dict:
        if not (files.is_local(self.path) or self.path.startswith("gs://")):
            raise CheckpointError(f"{self.path}: T5X checkpoints are read from local folders or gs:// only")
        return _kvstore(self.path, relative)

    def where(self, name: str) -> str:
        """The file that holds variable `name`, relative to the directory: its zarr folder or `checkpoint`."""
        value = self.variables[name]
        return (_relative_path(value) or MSGPACK) if isinstance(value, dict) else MSGPACK

    # --- by Hugging Face name (hf.Checkpoint's interface) ---
    def hf_names(self) -> dict[str, tuple[str, bool]]:
        """Hugging Face name -> (T5X name, transposed?) of every T5 parameter; prompts are left out.

        A variable that is neither raises: this is not a T5X checkpoint of T5."""
        if self._hf is None:
            mapped = {name: hf_name(name[len("target/"):]) for name in self.variables}
            unknown = [name for name, hf in mapped.items() if hf is None and not _is_prompt(name)]
            if unknown or "target/token_embedder/embedding" not in mapped:
                what = f"unexpected variables {unknown[:4]} ({len(unknown)} in all)" if unknown else \
                    "no target/token_embedder/embedding"
                raise CheckpointError(f"{self.file}: not a T5X checkpoint of T5 (encoder-decoder with relative "
                                      f"position biases): {what}; python -m prompt_tuning_jax.extract_variable "
                                      "still reads any of its variables")
            self._hf = {hf[0]: (name, hf[1]) for name, hf in mapped.items() if hf is not None}
        return self._hf

    def keys(self):
        return self.hf_names().keys()

    def __contains__(self, key):
        return key in self.hf_names()

    def shape(self, key) -> tuple[int, ...]:
        name, transposed = self.hf_names()[key]
        shape = self.shape_of(name)
        return shape[::-1] if transposed else shape

    def get(self, key):
        name, transposed = self.hf_names()[key]
        array = self.read(name)
        return array.T if transposed else array

    def describe(self, key) -> str:
        return self.where(self.hf_names()[key][0]) if key in self.hf_names() else MSGPACK


def _kvstore(directory: str, relative: str) -> dict:
    """The tensorstore kvstore of `relative` in a local or gs:// directory: T5X's `gfile`, resolved."""
    if files.is_local(directory):
        return {"driver": "file", "path": os.path.join(directory, relative)}
    bucket, _, prefix = directory[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": f"{prefix}/{relative}" if prefix else relative}


def _relative_path(spec: dict) -> str | None:
    """A zarr spec's folder, relative to the directory (in `kvstore`; at the top before tensorstore 0.1.14)."""
    return spec.get("kvstore", {}).get("path", spec.get("path"))


def _read_msgpack(file: str) -> Any:
    import msgpack
    from flax import serialization

    try:
        raw = files.read_bytes(file)
    except OSError as e:
        raise CheckpointError(f"cannot read {file} ({e})") from None
    try:
        return serialization.msgpack_restore(raw)  # as T5X reads it: inline arrays restored, specs as dicts
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise CheckpointError(f"{file} is not a readable T5X checkpoint ({type(e).__name__}: {e}); the file "
                              "is damaged or was not written by T5X") from None


def _target(contents: Any, file: str) -> dict:
    """The parameters: contents['optimizer']['target'] (version >= 1) or contents['target'] (version 0)."""
    state = contents.get("optimizer", contents) if isinstance(contents, dict) else None
    target = state.get("target") if isinstance(state, dict) else None
    if not isinstance(target, dict):
        found = sorted(map(str, contents)) if isinstance(contents, dict) else type(contents).__name__
        raise CheckpointError(f"{file} holds no T5X parameters: expected optimizer/target (or target), found "
                              f"{found}")
    return target


def _flatten(tree: dict, prefix: str) -> dict[str, Any]:
    """{'encoder': {'layers_0': {...}}} -> {'target/encoder/layers_0/...': array or zarr spec}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict) and not {"driver", "kvstore"} <= value.keys():
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def read_variables(path: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """The `target` variables of a T5X checkpoint by name, as stored (float32 or bfloat16).

    `names`: only these are read (`target/` may be left out, as the original allows); None reads all.
    {'target/token_embedder/embedding': [V, d], 'target/encoder/layers_0/attention/query/kernel': [d, N*D], ...}
    """
    ckpt = T5XCheckpoint(path)
    wanted = list(ckpt.variables) if names is None else [variable_name(n) for n in names]
    for name in wanted:
        if name not in ckpt.variables:
            scope = name.split("/")[1] if name.count("/") > 1 else ""
            near = [n for n in ckpt.variables if n.startswith(f"target/{scope}/")] or list(ckpt.variables)
            raise CheckpointError(f"{ckpt.file} has no variable {name!r}; it has e.g. {sorted(near)[:6]} "
                                  f"({len(ckpt.variables)} in all)")
    return {name: np.asarray(ckpt.read(name)) for name in wanted}


# --- the model's config ----------------------------------------------------------

_FROM_ARRAYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                "relative_attention_num_buckets")
# The arrays settle the head (a logits_dense or not); `attention` is from_pretrained's own argument.
_NOT_SETTABLE = ("tie_word_embeddings", "scale_decoder_outputs", "attention")


def config_from_checkpoint(path, config_overrides: dict | None = None) -> T5Config:
    """The T5Config of a T5X checkpoint (a path or a `T5XCheckpoint`): its shapes, then the fields they
    cannot tell from a config.json inside or beside the directory, then `config_overrides` (which win).

    config.json and config_overrides use Hugging Face field names
    ({'relative_attention_max_distance': 8}); a value that contradicts the arrays is an error.
    """
    ckpt = path if isinstance(path, T5XCheckpoint) else T5XCheckpoint(path)
    fields = _fields_from_shapes(ckpt)
    json_file, from_json = _config_json(ckpt.path)
    for source, given in ((json_file, from_json), ("config_overrides", config_overrides or {})):
        given = _settable(given, source, strict=source == "config_overrides")
        _check_agrees(fields, given, source, ckpt.path)
        fields.update(given)
    if "relative_attention_max_distance" not in {**from_json, **(config_overrides or {})}:
        logger.info("%s: relative_attention_max_distance is not in its arrays; using %d, as every released "
                    "T5 size (pass config_overrides to change it)", ckpt.path,
                    T5Config.relative_attention_max_distance)
    try:
        return T5Config(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None


def _fields_from_shapes(ckpt: T5XCheckpoint) -> dict[str, Any]:
    ckpt.hf_names()  # an unknown layout fails here, naming its variables

    def shape(name):
        if f"target/{name}" not in ckpt.variables:
            raise CheckpointError(f"{ckpt.file} has no target/{name}: not a T5X checkpoint of T5")
        return ckpt.shape_of(f"target/{name}")

    vocab, d_model = shape("token_embedder/embedding")
    heads, buckets = shape("encoder/relpos_bias/rel_embedding")  # [N, buckets]
    inner = shape("encoder/layers_0/attention/query/kernel")[1]  # [d, N*D]
    if inner % heads:
        raise CheckpointError(f"{ckpt.file}: query kernels have {inner} columns, not a multiple of the {heads} "
                              "heads of the relative position table")
    tied = "target/decoder/logits_dense/kernel" not in ckpt.variables
    gated = "target/encoder/layers_0/mlp/wi_0/kernel" in ckpt.variables

    def layers(stack):
        return len({n.split("/")[2] for n in ckpt.variables if n.startswith(f"target/{stack}/layers_")})

    return dict(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=shape("encoder/layers_0/mlp/wo/kernel")[0],
                num_layers=layers("encoder"), num_decoder_layers=layers("decoder"), num_heads=heads,
                relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings=tied, scale_decoder_outputs=tied)


def _config_json(folder: str) -> tuple[str, dict]:
    """(path, contents) of the first config.json inside `folder` or beside it; ('', {}) when there is none."""
    for candidate in (f"{folder}/config.json", f"{os.path.dirname(folder)}/config.json"):
        if files.is_file(candidate):
            try:
                values = json.loads(files.read_text(candidate))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{candidate} is not valid JSON ({e})") from None
            if not isinstance(values, dict):
                raise CheckpointError(f"{candidate} must hold a JSON object of T5 config fields")
            return candidate, values
    return "", {}


def _settable(values: dict, source: str, strict: bool) -> dict:
    """The T5Config fields of `values`; `strict` (config_overrides): anything else is an error."""
    settable = {f.name for f in dataclasses.fields(T5Config)} - set(_NOT_SETTABLE)
    if not isinstance(values, dict):
        raise CheckpointError(f"{source} must be a dict of T5 config fields, got {type(values).__name__}")
    unknown = sorted(set(values) - settable)
    if strict and unknown:
        raise CheckpointError(f"{source}: {unknown} cannot be set; the settable fields are {sorted(settable)}")
    return {k: v for k, v in values.items() if k in settable and v is not None}


def _check_agrees(fields: dict, given: dict, source: str, path: str) -> None:
    for key in _FROM_ARRAYS:
        if key in given and given[key] != fields[key]:
            raise CheckpointError(f"{source} says {key}={given[key]!r}, but the arrays of {path} have "
                                  f"{key}={fields[key]!r}")
    proj = given.get("feed_forward_proj")
    if isinstance(proj, str) and proj.startswith("gated-") != fields["feed_forward_proj"].startswith("gated-"):
        raise CheckpointError(f"{source} says feed_forward_proj={proj!r}, but {path} has "
                              f"{'wi_0/wi_1 (gated)' if 'gated' in fields['feed_forward_proj'] else 'wi (not gated)'}")


# --- writing ---------------------------------------------------------------------

VERSION = 3  # T5X's msgpack format version: bfloat16 zarr arrays are stored as bfloat16
ZARR_CHUNK_BYTES = 64 * 2**20  # T5X's target size of one zarr chunk
_IN_FLIGHT_BYTES = 2**30  # zarr writes queued at once: about this much memory beyond the caller's arrays

_T5X_OUTSIDE = {hf: (name, transposed) for name, (hf, transposed) in _OUTSIDE_LAYERS.items()}
_T5X_SUBLAYERS = {(stack, hf_module): (module, projections)
                  for (stack, module), (hf_module, projections) in _SUBLAYERS.items()}
_HF_LAYER = re.compile(r"(encoder|decoder)\.block\.(\d+)\.(layer\.\d+\.\w+)\.(?:(\w+)\.)?weight")


def t5x_name(key: str) -> tuple[str, bool]:
    """A Hugging Face (and our) T5 tensor name -> (its T5X variable name, transposed?): `hf_name` inverted.

    'encoder.block.3.layer.0.SelfAttention.q.weight' -> ('target/encoder/layers_3/attention/query/kernel', True).
    Raises ValueError for a name T5X's T5 has no variable for.
    """
    if key in _T5X_OUTSIDE:
        name, transposed = _T5X_OUTSIDE[key]
        return f"target/{name}", transposed
    m = _HF_LAYER.fullmatch(key)
    if m is None or (m[1], m[3]) not in _T5X_SUBLAYERS:
        raise ValueError(f"{key!r} is not a parameter of T5X's T5")
    stack, layer, hf_module, projection = m.groups()
    module, projections = _T5X_SUBLAYERS[stack, hf_module]
    if projections is None:  # a layer norm's weight [d]
        if projection:
            raise ValueError(f"{key!r} is not a parameter of T5X's T5")
        return f"target/{stack}/layers_{layer}/{module}/scale", False
    renamed = {hf: t5x for t5x, hf in projections.items()}
    if projection not in renamed:
        raise ValueError(f"{key!r} is not a parameter of T5X's T5")
    return f"target/{stack}/layers_{layer}/{module}/{renamed[projection]}/kernel", True


def _t5x_params(model):
    """(T5X name, transposed?, nnx variable) of each parameter of our T5 `model` (concrete or abstract)."""
    from flax import nnx

    from prompt_tuning_jax.models.t5 import T5

    if not isinstance(model, T5):
        raise TypeError(f"T5X checkpoints hold T5 models only, not {type(model).__name__}")
    config = model.config
    if config.tie_word_embeddings != config.scale_decoder_outputs:
        raise ValueError("T5X's T5 ties the LM head to the embedding exactly when it rescales the decoder output "
                         f"(v1.0) and unties it without rescaling (v1.1); this model has tie_word_embeddings="
                         f"{config.tie_word_embeddings}, scale_decoder_outputs={config.scale_decoder_outputs}")
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, transposed = t5x_name(model.checkpoint_key(path))
        yield name, transposed, variable


def variables_from_model(model) -> dict[str, np.ndarray]:
    """Our T5 `model` (`ptj.T5`, e.g. from `init_random` or `from_pretrained`) as T5X variables, ready for
    `write_checkpoint`: {'target/token_embedder/embedding': [V, d],
    'target/encoder/layers_0/attention/query/kernel': [d, N*D] (Hugging Face's weight transposed),
    'target/encoder/relpos_bias/rel_embedding': [heads, buckets], ...}, in the model's param dtype.

    The names are the model's Hugging Face names (`model.checkpoint_key`, as `save_pretrained` writes them)
    mapped by `t5x_name`. T5X keeps no config: `relative_attention_max_distance` and the dropout rate
    are not in the arrays (pass them as `config_overrides` when loading if they are not the defaults).
    """
    import jax

    out = {}
    for name, transposed, variable in _t5x_params(model):
        array = np.asarray(jax.device_get(variable[...]))
        out[name] = array.T if transposed else array
    return out


def variable_shapes(model) -> dict[str, tuple[int, ...]]:
    """{T5X name: shape} of our T5 `model`; an abstract one (`nnx.eval_shape`) will do, nothing is read."""
    return {name: tuple(v.shape[::-1] if transposed else v.shape) for name, transposed, v in _t5x_params(model)}


def write_checkpoint(path: str | os.PathLike, variables: Mapping[str, np.ndarray], step: int,
                     inline_below: int = 16) -> None:
    """Writes `variables` as a T5X checkpoint directory `path` (local or gs://), in T5X's layout.

    `variables`: {'target/encoder/prompt/prompt/prompt': [P, d], ...} by `/`-joined name (`target/` may be
    left out), e.g. `variables_from_model(model)`; any Mapping, read one value at a time in order, so a
    lazy one keeps memory to about a variable plus the writes in flight. An array of `inline_below` or
    more elements becomes a zarr array `target.encoder....` (gzip, T5X's chunking: `chunk_shape`), a
    smaller one is stored inline, as in the checkpoints T5X wrote (tests/models/fixtures/t5x_tiny: [4]
    norm scales and the [2, 4] position table inline, [4, 4] kernels as zarr). The msgpack `checkpoint`
    ({'version': 3, 'optimizer': {'target': ..., 'state': {'step': step, 'param_states': {}}}}) is
    written last, atomically, and an existing one is deleted first: a directory is never readable as
    complete before every array is. No optimizer state is written (T5X's own reader takes a params-only
    restore); the directory's name is the caller's (T5X's are `checkpoint_<step>`).
    """
    import collections

    from flax import serialization

    directory = files.absolute(path).rstrip("/")
    if not (files.is_local(directory) or directory.startswith("gs://")):
        raise ValueError(f"{directory}: T5X checkpoints are written to local folders or gs:// only")
    if files.is_local(directory):
        os.makedirs(directory, exist_ok=True)
    files.remove(f"{directory}/{MSGPACK}")  # a checkpoint already here stops being complete now
    target: dict = {}
    pending, in_flight = collections.deque(), 0
    for key, value in variables.items():
        name = variable_name(key)
        array = np.asarray(value)
        if array.size >= inline_below:
            spec, written = _write_zarr(directory, name, array)
            pending.append((written, array.nbytes))
            in_flight += array.nbytes
            while in_flight > _IN_FLIGHT_BYTES and len(pending) > 1:
                done, nbytes = pending.popleft()
                done.result()
                in_flight -= nbytes
            array = spec
        _insert(target, name, array)
    for written, _ in pending:
        written.result()
    contents = {"version": VERSION, "optimizer": {
        "target": target, "state": {"step": np.asarray(step, np.int32), "param_states": {}}}}
    files.atomic_write(f"{directory}/{MSGPACK}", serialization.msgpack_serialize(contents))


def _insert(target: dict, name: str, value) -> None:
    """target['encoder']['layers_0']... = value for name 'target/encoder/layers_0/...'; clashes are errors."""
    *scopes, leaf = name.split("/")[1:]
    node = target
    for scope in scopes:
        node = node.setdefault(scope, {})
        if not isinstance(node, dict) or {"driver", "kvstore"} <= node.keys():  # an array or a zarr spec
            raise ValueError(f"variable {name}: {scope} is itself a variable")
    if leaf in node:
        raise ValueError(f"variable {name} is given twice, or is a scope of other variables")
    node[leaf] = value


def chunk_shape(shape, itemsize: int, target_bytes: int = ZARR_CHUNK_BYTES) -> list[int]:
    """T5X's zarr chunks for an array of `shape` written whole: the largest chunk of at most `target_bytes`
    whose every dimension divides the array's, found by shrinking the largest dimension to its next
    smaller divisor until it fits. [32128, 768] float32 -> [16064, 768]; [768, 3072] -> [768, 3072]."""
    chunks = [max(size, 1) for size in shape]
    limit = max(target_bytes // itemsize, 1)
    while int(np.prod(chunks)) > limit:
        i = int(np.argmax(chunks))  # the first of the largest
        chunks[i] = max(d for d in range(1, chunks[i]) if shape[i] % d == 0)
    return chunks


def _write_zarr(directory: str, name: str, array: np.ndarray):
    """Starts writing `array` as the zarr array `target.encoder....` of `directory`.

    -> (its spec for the msgpack, with a path relative to the directory as T5X writes it, and the
    tensorstore write, to `.result()`)."""
    import tensorstore as ts

    relative = name.replace("/", ".")
    dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.str  # zarr: '<f4', 'bfloat16'
    metadata = {"chunks": chunk_shape(array.shape, array.dtype.itemsize), "compressor": {"id": "gzip", "level": 1},
                "dtype": dtype, "shape": list(array.shape)}
    store = ts.open({"driver": "zarr", "kvstore": _kvstore(directory, relative), "metadata": metadata}, create=True,
                    delete_existing=True).result()
    spec = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": relative}, "metadata": metadata}
    return spec, store.write(array)
