"""Tokenizers: what AutoTokenizer loads, with GPT-2's missing pad token handled.

A local folder that transformers 5 saved with a tokenizers backend is read straight from its tokenizer.json with
the `tokenizers` library (`FastTokenizer`): the same ids and texts as transformers' class, without importing
transformers, which costs about 1.3 s and 100 MB on every run. Other folders and hub ids go through
AutoTokenizer."""
from __future__ import annotations

import json
import os
import shutil

from prompt_tuning_jax import files

# transformers' tokenizer classes whose loading rebuilds exactly the backend they saved to tokenizer.json
# ("PreTrainedTokenizer" is PreTrainedTokenizerFast without its suffix). The first ones default the
# `_SAVED_SPECIALS` when the config is silent (the plain classes do not), so a folder of theirs is read here
# only when it names them (transformers 5 writes them, null or not).
_DEFAULTING = ("T5Tokenizer", "GPT2Tokenizer")
_FAST = _DEFAULTING + ("TokenizersBackend", "PreTrainedTokenizer")
_SAVED_SPECIALS = ("eos_token", "unk_token", "pad_token")
_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")
# Settings under which transformers changes what the saved backend does (its post-processor, its decoding).
_CHANGES_BACKEND = ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "split_special_tokens",
                    "auto_map")
_MAX_VOCAB = 100_000  # above it transformers may patch a Mistral pre-tokenizer's regex on load


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _declared(folder: str) -> tuple[str, dict] | None:
    """(the tokenizer class without "Fast", tokenizer_config.json), or None without a readable config."""
    try:
        declared = _read_json(os.path.join(folder, "tokenizer_config.json"))
        return str(declared.get("tokenizer_class") or "").removesuffix("Fast"), declared
    except (OSError, ValueError, AttributeError):
        return None


def _rebuilds_saved_backend(name: str, config: dict) -> bool:
    """Whether transformers' class `name`, under tokenizer_config.json `config`, loads exactly the backend saved
    in tokenizer.json: a class of `_FAST`, a tokenizers backend, no setting that changes it, and the special
    tokens named where the class would otherwise default them."""
    return (name in _FAST and config.get("backend") == "tokenizers"
            and not any(config.get(key) for key in _CHANGES_BACKEND)
            and not (name in _DEFAULTING and any(key not in config for key in _SAVED_SPECIALS)))


class FastTokenizer:
    """A tokenizer folder's tokenizer.json, used as transformers uses it: `tok(texts)["input_ids"]`, `encode`,
    `decode`, `batch_decode`, `convert_ids_to_tokens`, `len(tok)`, the special tokens and their ids.

    `from_folder` returns None where transformers would do more than run the saved backend (see `_FAST` and
    `_CHANGES_BACKEND`), so such folders keep transformers' class."""

    def __init__(self, backend, special_tokens: dict, name_or_path: str, tokenizer_class: str, config: dict):
        self.backend_tokenizer = backend
        self.name_or_path = name_or_path
        self.tokenizer_class = tokenizer_class
        self.padding_side = config.get("padding_side", "right")
        self.init_config = config
        for key in _SPECIALS:
            setattr(self, key, special_tokens.get(key))

    @classmethod
    def from_folder(cls, folder: str) -> "FastTokenizer | None":
        found = _declared(folder)
        path = os.path.join(folder, "tokenizer.json")
        if found is None or not os.path.isfile(path):
            return None
        name, config = found
        if not _rebuilds_saved_backend(name, config):
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(path)
        special = {}
        for key in _SPECIALS:
            value = config.get(key)
            special[key] = value.get("content") if isinstance(value, dict) else value
        extra = [t.get("content") if isinstance(t, dict) else t for t in config.get("extra_special_tokens") or []]
        named = [t for t in special.values() if t is not None] + extra
        if (backend.post_processor is None or backend.get_vocab_size() > _MAX_VOCAB
                or any(backend.token_to_id(str(t)) is None for t in named)):
            return None  # transformers would add tokens or rebuild the post-processor
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, special, folder, name, config)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))

    @property
    def vocab_size(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict:
        """{"input_ids", "attention_mask"}: lists for one text, lists of lists for a list of texts."""
        many = not isinstance(text, str)
        encodings = self.backend_tokenizer.encode_batch(list(text) if many else [text],
                                                        add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encodings]
        masks = [e.attention_mask for e in encodings]
        return {"input_ids": ids if many else ids[0], "attention_mask": masks if many else masks[0]}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids] if hasattr(ids, "__iter__") else [int(ids)]  # a list, an array or one id
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids):
        if not hasattr(ids, "__iter__"):
            return self.backend_tokenizer.id_to_token(int(ids))
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """The folder's tokenizer.json and tokenizer_config.json (with the special tokens now set), which
        transformers and `load_tokenizer` read back."""
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(os.path.join(self.name_or_path, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
        config = dict(self.init_config, **{key: getattr(self, key) for key in _SPECIALS})
        config.update(tokenizer_class=self.tokenizer_class, padding_side=self.padding_side, backend="tokenizers")
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"FastTokenizer({self.tokenizer_class} from {self.name_or_path!r}, {len(self)} tokens)"


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "right", revision: str | None = None):
    """`AutoTokenizer.from_pretrained` (local folder or hub id), except that a local folder `FastTokenizer` can
    read gives a `FastTokenizer`. GPT-2 gets its EOS as pad token.

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
            tok = FastTokenizer.from_folder(path) or _auto().from_pretrained(path)
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
