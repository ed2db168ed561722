"""Tokenizers: transformers' classes as AutoTokenizer picks them, with GPT-2's missing pad token handled."""
from __future__ import annotations

import importlib
import json
import os

from prompt_tuning_jax import files

# Tokenizer classes read directly when a local folder's tokenizer_config.json names one and its config.json
# (if any) is of that family: the class AutoTokenizer picks then, without importing AutoTokenizer's module,
# which imports torch where it is installed (1.3 s of every run). Other folders go through AutoTokenizer.
# {class: (config.json model_type, the module that defines it)}.
_DIRECT = {"T5Tokenizer": ("t5", "transformers.models.t5.tokenization_t5"),
           "GPT2Tokenizer": ("gpt2", "transformers.models.gpt2.tokenization_gpt2")}


def _direct_class(folder: str):
    """The transformers class for `folder` by `_DIRECT`, or None (AutoTokenizer decides)."""
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            declared = json.load(f)
        name = str(declared.get("tokenizer_class") or "").removesuffix("Fast")
        if name not in _DIRECT or "auto_map" in declared:
            return None
        config = os.path.join(folder, "config.json")
        if os.path.exists(config):
            with open(config, encoding="utf-8") as f:
                if json.load(f).get("model_type") != _DIRECT[name][0]:
                    return None
    except (OSError, ValueError, AttributeError):
        return None
    return getattr(importlib.import_module(_DIRECT[name][1]), name, None)


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "right", revision: str | None = None):
    """`AutoTokenizer.from_pretrained` (local folder or hub id; a T5 or GPT-2 folder directly with the class
    it declares, the same one); GPT-2 gets its EOS as pad token.

    The pad id is only a filler: lengths always come from the attention mask.
    """
    name = os.fspath(name_or_path)
    if not files.is_local(name):  # a bucket folder: its tokenizer files, copied to a local cache
        if not files.is_dir(name):
            raise FileNotFoundError(f"tokenizer folder {name} does not exist")
        name = files.local_folder(name, ("*.json", "*.model", "*.txt"))
    path = os.path.expanduser(name)
    if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {name} does not exist")
    try:
        if os.path.isdir(path):
            tok = (_direct_class(path) or _auto()).from_pretrained(path)
        else:
            tok = _auto().from_pretrained(name, revision=revision)  # a hub id, or its cache offline
    except OSError as e:
        raise OSError(f"could not load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _auto():
    from transformers import AutoTokenizer

    return AutoTokenizer
