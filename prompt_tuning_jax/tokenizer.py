"""Tokenizers: transformers' AutoTokenizer, with GPT-2's missing pad token handled."""
from __future__ import annotations

import os


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "right"):
    """`AutoTokenizer.from_pretrained` (local folder or hub id); GPT-2 gets its EOS as pad token.

    The pad id is only a filler: lengths always come from the attention mask.
    """
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    path = os.path.expanduser(name)
    if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {name} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(path if os.path.isdir(path) else name)
    except OSError as e:
        raise OSError(f"could not load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
