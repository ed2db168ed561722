"""Prompt files: `.npy` (this project and Lester's released prompts) and PEFT adapters.

    save_prompt("sst2.npy", prompt)                   # [P, H] float32, written atomically
    prompt = load_prompt("sst2.npy", expected_shape=(100, 768))
    export_peft("adapter/", prompt, "gpt2", "CAUSAL_LM")
    prompt, config = import_peft("adapter/")           # PEFT's own saved adapters too
    export_peft_lora("lora_adapter/", model, "gpt2")    # a model's LoRA factors (models/lora.py)

A loaded prompt is never renormalised: Lester's released prompts have row
norms around 1000 and that is what the model was tuned with.

PEFT prompt tuning and encoder-decoder models (read from peft 0.21 source and
checked by tests/prompts/test_io.py): for task_type SEQ_2_SEQ_LM PEFT sets
`num_transformer_submodules = 2` and builds a prompt table of 2P rows
(`PromptEmbedding(num_virtual_tokens * num_transformer_submodules, token_dim)`),
saved whole as `prompt_embeddings` [2P, H]. For PROMPT_TUNING (and P_TUNING),
`PeftModelForSeq2SeqLM.forward` and `.generate` prepend only rows [0, P) to the
*encoder* input; rows [P, 2P) are never read (only multitask prompt tuning
feeds them to the decoder), so they get no gradient and stay at their
initial values. Hence `import_peft` takes rows [0, P), and `export_peft`
writes the prompt twice ([prompt; prompt], 2P rows) because PEFT loads the
table strictly by shape.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import warnings

import numpy as np

from prompt_tuning_jax import files, pretrained_prompts
from prompt_tuning_jax.files import atomic_write
from prompt_tuning_jax.models import t5x

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN_NAME = "adapter_model.bin"
PEFT_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
PEFT_INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


# --- .npy --------------------------------------------------------------------------

def check_prompt_shape(actual: tuple, expected: tuple, source: str | None = None) -> None:
    """ValueError naming both shapes, and what a hidden-size or length mismatch means, unless they are equal."""
    actual, expected = tuple(int(d) for d in actual), tuple(int(d) for d in expected)
    if actual == expected:
        return
    message = f"{source or 'the prompt'} has shape {actual} but the model needs {expected}"
    reasons = []
    if len(actual) == len(expected) >= 2:
        if actual[-1] != expected[-1]:
            reasons.append(f"it was trained for a model with hidden size {actual[-1]}")
        if actual[-2] != expected[-2]:
            reasons.append(f"it has {actual[-2]} prompt tokens (set the prompt length to {actual[-2]})")
    raise ValueError(message + (": " + "; ".join(reasons) if reasons else ""))


def save_prompt(path: str | os.PathLike, prompt) -> None:
    """Writes `prompt` ([P, H], or [K, P, H] task prompts) to `path` as float32 `.npy`, atomically.

    The path is used as given (no `.npy` is appended); missing folders are created.
    """
    array = np.asarray(prompt, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ValueError(f"a prompt is [P, H] (or [K, P, H] task prompts), got shape {array.shape}")
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def load_prompt(path: str | os.PathLike, expected_shape: tuple | None = None, dtype=None,
                variable: str | None = None, layers: bool = False) -> np.ndarray:
    """Reads a `.npy` prompt: [P, H] (or [K, P, H] when `expected_shape` has 3 dims; [L, P, H] layer prompts
    too with `layers`), values untouched.

    `path` may also be a T5X checkpoint directory (a prompt the original library trained): its
    `variable`, by default `target/encoder/prompt/prompt/prompt`.

    expected_shape: the shape the model needs; a mismatch is a ValueError naming
    both shapes (and the hidden size the prompt was trained for).
    dtype: cast to this dtype; by default the file's dtype is kept (the small
    released test prompt is float64).
    A prompt released with the package is checked against its sha256 first.
    """
    path = os.fspath(path)
    if t5x.is_t5x_checkpoint(path):
        array = t5x.read_variable(path, variable or t5x.PROMPT_VARIABLE)
        path = f"{path} {t5x.variable_name(variable or t5x.PROMPT_VARIABLE)}"
    else:
        array = _read_npy(path)
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ValueError(f"prompt file {path} is an .npz archive; save a single [P, H] array with save_prompt")
    ndims = (len(expected_shape),) if expected_shape is not None else (2, 3) if layers else (2,)
    if array.ndim not in ndims:
        want = "[P, H] (or [L, P, H] layer prompts)" if len(ndims) == 2 else "[P, H]" if ndims == (2,) else f"{ndims[0]}-D"
        raise ValueError(f"prompt file {path} holds an array of shape {array.shape}; expected a {want} prompt")
    if expected_shape is not None:
        check_prompt_shape(array.shape, tuple(expected_shape), f"prompt file {path}")
    if array.dtype.kind in "biuOUSMm":  # bool, int, object, text, dates: not a prompt
        raise ValueError(f"prompt file {path} holds {array.dtype} values; a prompt is a float array")
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"prompt file {path} holds {bad} NaN or Inf values (a diverged run?); use an earlier "
                         "prompt_<step>.npy or retrain")
    return array.astype(dtype) if dtype is not None else array


def _read_npy(path: str) -> np.ndarray:
    if not files.is_file(path):
        raise FileNotFoundError(f"prompt file {path} does not exist")
    data = files.read_bytes(path)  # one read, local or gs://
    pretrained_prompts.verify(path, data)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"prompt file {path} is not a readable .npy array: {e}") from None


# --- PEFT ----------------------------------------------------------------------------

def _model_dims(model_config) -> dict[str, int | None]:
    """num_layers / num_attention_heads / token_dim from a config (dict, object or config.json), as PEFT reads them."""
    if model_config is None:
        return {}
    if isinstance(model_config, (str, os.PathLike)):
        path = os.fspath(model_config)
        path = os.path.join(path, "config.json") if files.is_dir(path) else path
        model_config = json.loads(files.read_text(path))
    get = model_config.get if isinstance(model_config, dict) else lambda k: getattr(model_config, k, None)

    def first(*keys):
        return next((get(k) for k in keys if get(k) is not None), None)

    return {"num_layers": first("num_hidden_layers", "num_layers", "n_layer"),
            "token_dim": first("hidden_size", "n_embd", "d_model"),
            "num_attention_heads": first("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")}


def export_peft(folder: str | os.PathLike, prompt, base_model_name_or_path: str | None, task_type: str, *,
                tokenizer_name_or_path: str | None = None, prompt_tuning_init: str = "RANDOM",
                prompt_tuning_init_text: str | None = None, model_config=None, num_layers: int | None = None,
                num_attention_heads: int | None = None, num_transformer_submodules: int | None = None,
                extra_tensors: dict | None = None) -> str:
    """Writes `prompt` [P, H] as a PEFT prompt-tuning adapter that `PeftModel.from_pretrained` loads.

    Files: `adapter_config.json` (the keys PEFT 0.21 writes, `peft_type`
    "PROMPT_TUNING", `inference_mode` true) and `adapter_model.safetensors` with
    `prompt_embeddings` float32 [P * num_transformer_submodules, H].
    task_type: "CAUSAL_LM" (GPT-2), "SEQ_2_SEQ_LM" (T5), "SEQ_CLS", ...
    num_transformer_submodules: PEFT's default, 2 for SEQ_2_SEQ_LM (the prompt is
    written twice; PEFT only reads the first P rows, see the module docstring) else 1.
    model_config: where num_layers / num_attention_heads come from when not given:
    a dict, a config object (ours or HF), or a checkpoint folder / config.json;
    by default `base_model_name_or_path` when it is a local folder. Left unset,
    PEFT fills them from the base model when it loads the adapter.
    extra_tensors: more tensors for the safetensors file, named as PEFT names
    them (e.g. a SEQ_CLS head: {"base_model.score.weight": [C, H]}).
    Returns the folder.
    """
    prompt = np.asarray(prompt, dtype=np.float32)
    if num_transformer_submodules is None:
        num_transformer_submodules = 2 if task_type == "SEQ_2_SEQ_LM" else 1
    _check_peft_args(prompt, task_type, prompt_tuning_init, prompt_tuning_init_text, tokenizer_name_or_path,
                     num_transformer_submodules)
    if model_config is None and base_model_name_or_path and os.path.isfile(
            os.path.join(os.path.expanduser(base_model_name_or_path), "config.json")):
        model_config = os.path.expanduser(base_model_name_or_path)
    dims = _model_dims(model_config)
    if dims.get("token_dim") not in (None, prompt.shape[1]):
        raise ValueError(f"the prompt has hidden size {prompt.shape[1]} but the base model's is {dims['token_dim']}")
    config = {
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": num_attention_heads if num_attention_heads is not None
        else dims.get("num_attention_heads"),
        "num_layers": num_layers if num_layers is not None else dims.get("num_layers"),
        "num_transformer_submodules": num_transformer_submodules,
        "num_virtual_tokens": int(prompt.shape[0]),
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": prompt_tuning_init,
        "prompt_tuning_init_text": prompt_tuning_init_text,
        "revision": None,
        "task_type": task_type,
        "token_dim": int(prompt.shape[1]),
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": tokenizer_name_or_path,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")  # as PEFT writes it; omitted without peft
    tensors = {"prompt_embeddings": np.concatenate([prompt] * num_transformer_submodules, axis=0)}
    for name, value in (extra_tensors or {}).items():
        if name in tensors:
            raise ValueError(f"extra_tensors may not replace {name!r}")
        tensors[name] = np.ascontiguousarray(value)
    return _write_peft(os.fspath(folder), config, tensors)


def export_peft_lora(folder: str | os.PathLike, model, base_model_name_or_path: str | None = None) -> str:
    """Writes `model`'s LoRA factors (`models.lora.add_lora`) as a PEFT LoRA adapter that
    `PeftModel.from_pretrained(base, folder)` loads: `adapter_model.safetensors` with
    `base_model.model.<module>.lora_A.weight` [r, in] and `lora_B.weight` [out, r] (PyTorch's
    Linear layout), and `adapter_config.json` (task_type: the family's `peft_task_type`). Returns the folder.
    """
    from prompt_tuning_jax.models.lora import projections

    adapted = [(path, layer) for path, layer in projections(model) if layer.lora is not None]
    if not adapted:
        raise ValueError("this model has no LoRA factors to export (models.lora.add_lora first)")
    tensors = {}
    for path, layer in adapted:
        module = model.checkpoint_key((*path, "weight"))[:-len(".weight")]
        for name in ("lora_A", "lora_B"):
            value = np.asarray(getattr(layer.lora, name)[...], np.float32)
            tensors[f"base_model.model.{module}.{name}.weight"] = np.ascontiguousarray(value.T)
    first = adapted[0][1]
    rank = first.lora.lora_A.shape[1]
    config = {"peft_type": "LORA", "task_type": model.peft_task_type, "base_model_name_or_path": base_model_name_or_path,
              "r": rank, "lora_alpha": first.lora.scaling * rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted({str(path[-1]) for path, _ in adapted}),
              "fan_in_fan_out": bool(getattr(first, "FAN_IN_FAN_OUT", False)), "init_lora_weights": True,
              "inference_mode": True, "modules_to_save": None, "revision": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")
    return _write_peft(os.fspath(folder), config, tensors)


def export_peft_ia3(folder: str | os.PathLike, model, base_model_name_or_path: str | None = None) -> str:
    """Writes `model`'s IA3 vectors (`models.ia3.add_ia3`) as a PEFT IA3 adapter that
    `PeftModel.from_pretrained(base, folder)` loads: `base_model.model.<module>.ia3_l` [out, 1] (an output
    rescaled) or [1, in] (a feed-forward input), and `adapter_config.json`. Returns the folder."""
    from prompt_tuning_jax.models.ia3 import target_layers

    adapted = [(path, layer, name) for path, layer, name in target_layers(model) if layer.ia3 is not None]
    if not adapted:
        raise ValueError("this model has no IA3 vectors to export (models.ia3.add_ia3 first)")
    tensors = {}
    for path, layer, _ in adapted:
        module = model.checkpoint_key((*path, "weight"))[:-len(".weight")]
        value = np.asarray(layer.ia3.ia3_l[...], np.float32)
        tensors[f"base_model.model.{module}.ia3_l"] = value[None, :] if layer.ia3.feedforward else value[:, None]
    names = {name: layer.ia3.feedforward for _, layer, name in adapted}
    config = {"peft_type": "IA3", "task_type": model.peft_task_type, "base_model_name_or_path": base_model_name_or_path,
              "target_modules": sorted(names), "feedforward_modules": sorted(n for n, ff in names.items() if ff),
              "fan_in_fan_out": bool(getattr(adapted[0][1], "FAN_IN_FAN_OUT", False)), "init_ia3_weights": True,
              "inference_mode": True, "modules_to_save": None, "revision": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")
    return _write_peft(os.fspath(folder), config, tensors)


def export_peft_prefix(folder: str | os.PathLike, model, base_model_name_or_path: str | None = None) -> str:
    """Writes `model`'s prefix (`models.prefix.add_prefix`) as a PEFT prefix-tuning adapter that
    `PeftModel.from_pretrained(base, folder)` loads: `prompt_embeddings` [P, L * 2 * N * D], the keys and values
    as PEFT saves them (a projection folded to its output, so `prefix_projection` is false), and
    `adapter_config.json` (token_dim N * D, which T5 needs where d_model != N * d_kv). Returns the folder."""
    from prompt_tuning_jax.models.prefix import to_flat

    prefix = getattr(model, "prefix", None)
    if prefix is None:
        raise ValueError("this model has no prefix to export (models.prefix.add_prefix first)")
    layers, _, length, heads, head_dim = prefix.shape
    config = {"peft_type": "PREFIX_TUNING", "task_type": model.peft_task_type,
              "base_model_name_or_path": base_model_name_or_path, "num_virtual_tokens": length,
              "token_dim": heads * head_dim, "num_attention_heads": heads, "num_layers": layers,
              "num_transformer_submodules": 2 if model.peft_task_type == "SEQ_2_SEQ_LM" else 1,
              "encoder_hidden_size": heads * head_dim, "prefix_projection": False, "init_weights": None,
              "inference_mode": True, "modules_to_save": None, "revision": None, "auto_mapping": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")
    return _write_peft(os.fspath(folder), config, {"prompt_embeddings": to_flat(prefix())})


def import_peft_prefix(model, folder: str | os.PathLike) -> None:
    """Sets `model`'s prefix (`models.prefix.add_prefix`, without a projection) from a PEFT prefix-tuning
    adapter: its `prompt_embeddings` [P, L * 2 * N * D] (PEFT saves a projected prefix this way too)."""
    from prompt_tuning_jax.models.prefix import from_flat

    folder = os.fspath(folder)
    config, tensors = read_peft_adapter(folder, "PREFIX_TUNING")
    prefix = getattr(model, "prefix", None)
    if prefix is None:
        raise ValueError(f"this model has no prefix to set from {folder} (METHOD 'prefix:P')")
    if prefix.table is None:
        raise ValueError(f"PEFT adapter {folder} holds the prefix's keys and values, not the projection that made "
                         "them: start from it with PREFIX_PROJECTION = None")
    layers, _, length, heads, head_dim = prefix.shape
    if config.get("num_virtual_tokens") != length:
        raise ValueError(f"PEFT adapter {folder} has {config.get('num_virtual_tokens')} virtual tokens; this run's "
                         f"prefix has {length}: set METHOD 'prefix:{config.get('num_virtual_tokens')}'")
    _set_from_adapter(folder, tensors, {"prompt_embeddings": (prefix.table, lambda flat: from_flat(
        flat, prefix.shape) if flat.shape == (length, layers * 2 * heads * head_dim) else flat)})


def _check_peft_args(prompt, task_type, prompt_tuning_init, prompt_tuning_init_text, tokenizer_name_or_path,
                     num_transformer_submodules) -> None:
    if prompt.ndim != 2:
        raise ValueError(f"export_peft takes one [P, H] prompt, got shape {prompt.shape}")
    if task_type not in PEFT_TASK_TYPES:
        raise ValueError(f"unknown PEFT task_type {task_type!r}; use one of {PEFT_TASK_TYPES}")
    if prompt_tuning_init not in PEFT_INITS:
        raise ValueError(f"unknown prompt_tuning_init {prompt_tuning_init!r}; use one of {PEFT_INITS}")
    if prompt_tuning_init == "TEXT" and not (tokenizer_name_or_path and prompt_tuning_init_text is not None):
        raise ValueError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path and prompt_tuning_init_text "
                         "(PEFT refuses the config otherwise)")
    if num_transformer_submodules not in (1, 2):
        raise ValueError(f"num_transformer_submodules must be 1 or 2, got {num_transformer_submodules}")


def _write_peft(folder: str, config: dict, tensors: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save as safetensors_bytes

    atomic_write(os.path.join(folder, PEFT_WEIGHTS_NAME), safetensors_bytes(tensors, metadata={"format": "pt"}))
    atomic_write(os.path.join(folder, PEFT_CONFIG_NAME), json.dumps(config, indent=2, sort_keys=True))
    return folder


def _read_peft_tensors(folder: str) -> dict[str, np.ndarray]:
    """The adapter's tensors as NumPy (bfloat16 via ml_dtypes), from safetensors or, with torch, a `.bin`."""
    path = os.path.join(folder, PEFT_WEIGHTS_NAME)
    if files.is_file(path):
        from safetensors.flax import load  # the numpy loader cannot read bfloat16

        return {k: np.asarray(v) for k, v in load(files.read_bytes(path)).items()}
    path = os.path.join(folder, PEFT_WEIGHTS_BIN_NAME)
    if files.is_file(path):
        path = os.path.join(files.local_folder(folder, (PEFT_WEIGHTS_BIN_NAME,)), PEFT_WEIGHTS_BIN_NAME)
        try:
            import torch
        except ImportError:
            raise ImportError(f"{path} is a PyTorch pickle; install torch to read it, or save the adapter "
                              "with safetensors") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{folder} has {PEFT_CONFIG_NAME} but neither {PEFT_WEIGHTS_NAME} "
                            f"nor {PEFT_WEIGHTS_BIN_NAME}")


def is_peft_adapter(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding a PEFT adapter (its adapter_config.json)."""
    path = os.fspath(path)
    return files.is_dir(path) and files.is_file(os.path.join(path, PEFT_CONFIG_NAME))


def read_peft_adapter(folder: str | os.PathLike, peft_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json, tensors) of a PEFT adapter folder, which must be of `peft_type` ('LORA', 'IA3', ...)."""
    folder = os.fspath(folder)
    if not is_peft_adapter(folder):
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder (it has no {PEFT_CONFIG_NAME})")
    config = json.loads(files.read_text(os.path.join(folder, PEFT_CONFIG_NAME)))
    if config.get("peft_type") != peft_type:
        raise ValueError(f"{folder} holds a {config.get('peft_type')} adapter, but this METHOD reads {peft_type} "
                         "adapters: set the METHOD that trained it")
    return config, _read_peft_tensors(folder)


def _set_from_adapter(folder: str, tensors: dict, wanted: dict) -> None:
    """Sets each variable of `wanted` ({adapter tensor name: (nnx variable, transform)}) from `tensors`; a
    missing or extra tensor, or a shape that does not fit, is one ValueError naming it."""
    missing = sorted(set(wanted) - set(tensors))
    extra = sorted(set(tensors) - set(wanted))
    if missing or extra:
        raise ValueError(f"PEFT adapter {folder} does not fit this model: "
                         + (f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}; " if missing else "")
                         + (f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}" if extra else "")
                         + " (was it trained for another model or other target modules?)")
    for name, (variable, transform) in wanted.items():
        value = transform(np.asarray(tensors[name], np.float32))
        if value.shape != variable.shape:
            raise ValueError(f"PEFT adapter {folder}: {name} has shape {tuple(tensors[name].shape)}, which does not "
                             f"fit this model's {tuple(variable.shape)} (another model size or rank?)")
        variable[...] = value.astype(variable.dtype)


def import_peft_lora(model, folder: str | os.PathLike) -> None:
    """Sets `model`'s LoRA factors (`models.lora.add_lora`, the same targets and rank) from a PEFT LoRA adapter."""
    from prompt_tuning_jax.models.lora import projections

    config, tensors = read_peft_adapter(folder, "LORA")
    adapted = [(path, layer) for path, layer in projections(model) if layer.lora is not None]
    wanted = {}
    for path, layer in adapted:
        module = model.checkpoint_key((*path, "weight"))[:-len(".weight")]
        for name in ("lora_A", "lora_B"):
            wanted[f"base_model.model.{module}.{name}.weight"] = (getattr(layer.lora, name), np.transpose)
    if adapted and config.get("lora_alpha") is not None:
        rank = adapted[0][1].lora.lora_A.shape[1]
        if abs(adapted[0][1].lora.scaling * rank - float(config["lora_alpha"])) > 1e-6:
            raise ValueError(f"PEFT adapter {os.fspath(folder)} has lora_alpha {config['lora_alpha']}; this run's "
                             f"LORA_ALPHA is {adapted[0][1].lora.scaling * rank}: set LORA_ALPHA to the adapter's")
    _set_from_adapter(os.fspath(folder), tensors, wanted)


def import_peft_ia3(model, folder: str | os.PathLike) -> None:
    """Sets `model`'s IA3 vectors (`models.ia3.add_ia3`) from a PEFT IA3 adapter."""
    from prompt_tuning_jax.models.ia3 import target_layers

    _, tensors = read_peft_adapter(folder, "IA3")
    wanted = {}
    for path, layer, _ in target_layers(model):
        if layer.ia3 is not None:
            module = model.checkpoint_key((*path, "weight"))[:-len(".weight")]
            wanted[f"base_model.model.{module}.ia3_l"] = (layer.ia3.ia3_l, np.ravel)
    _set_from_adapter(os.fspath(folder), tensors, wanted)


def import_peft(folder: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Reads a PEFT prompt-tuning adapter -> (prompt [P, H] float32, adapter config dict).

    For SEQ_2_SEQ_LM adapters (2P rows) the prompt is rows [0, P), the rows PEFT
    prepends to the encoder input (see the module docstring). Other tensors in
    the file (e.g. a SEQ_CLS head) are not returned; a warning names them.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, PEFT_CONFIG_NAME)
    if not files.is_dir(folder):
        raise FileNotFoundError(f"PEFT adapter folder {folder} does not exist")
    if not files.is_file(config_path):
        raise FileNotFoundError(f"{folder} is not a PEFT adapter: it has no {PEFT_CONFIG_NAME}")
    config = json.loads(files.read_text(config_path))
    peft_type = config.get("peft_type")
    if peft_type not in ("PROMPT_TUNING", "P_TUNING"):  # P-tuning saves its encoder's output, a plain prompt
        raise ValueError(f"{folder} holds a {peft_type} adapter; only prompt-tuning and P-tuning adapters "
                         "(peft_type PROMPT_TUNING, P_TUNING) hold a [P, H] input prompt")
    length = config.get("num_virtual_tokens")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"{config_path} has no valid num_virtual_tokens (got {length!r})")
    submodules = config.get("num_transformer_submodules")
    if submodules is None:  # PEFT's default when the config leaves it unset
        submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
    tensors = _read_peft_tensors(folder)
    if "prompt_embeddings" not in tensors:
        raise ValueError(f"{folder} has no 'prompt_embeddings' tensor (found {sorted(tensors)})")
    table = tensors.pop("prompt_embeddings")
    rows = length * submodules
    if table.ndim != 2 or table.shape[0] != rows:
        raise ValueError(f"{folder}: prompt_embeddings has shape {table.shape} but the config says "
                         f"{length} virtual tokens x {submodules} submodules = {rows} rows")
    token_dim = config.get("token_dim")
    if token_dim is not None and table.shape[1] != token_dim:
        raise ValueError(f"{folder}: prompt_embeddings has hidden size {table.shape[1]} but token_dim is {token_dim}")
    if tensors:
        warnings.warn(f"{folder}: ignoring tensors other than the prompt: {sorted(tensors)}", stacklevel=2)
    return np.asarray(table[:length], dtype=np.float32), config
