"""Tokenizers: transformers' AutoTokenizer, with GPT-2's missing pad token handled."""
from __future__ import annotations

import os

from prompt_tuning_jax import files


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "right", revision: str | None = None):
    """`AutoTokenizer.from_pretrained` (local folder or hub id); GPT-2 gets its EOS as pad token.

    The pad id is only a filler: lengths always come from the attention mask.
    """
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    if not files.is_local(name):  # a bucket folder: its tokenizer files, copied to a local cache
        if not files.is_dir(name):
            raise FileNotFoundError(f"tokenizer folder {name} does not exist")
        name = files.local_folder(name, ("*.json", "*.model", "*.txt"))
    path = os.path.expanduser(name)
    if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {name} does not exist")
    try:
        tok = (AutoTokenizer.from_pretrained(path) if os.path.isdir(path)
               else AutoTokenizer.from_pretrained(name, revision=revision))  # a hub id, or its cache offline
    except OSError as e:
        raise OSError(f"could not load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
