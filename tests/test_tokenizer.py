"""load_tokenizer: AutoTokenizer's ids and texts; folders transformers 5 saved are read without importing it."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, shared_path
from transformers import AutoTokenizer

from prompt_tuning_jax.tokenizer import FastTokenizer, load_tokenizer

TEXTS = ["sentence: it 's a charming and often affecting journey . ", "Hello <extra_id_0> wörld</s>  x", "",
         "  two  spaces\tand a tab\nand a line", "émoji 😀 ünïcode", "<|endoftext|>a<pad> <unk>"]


def _sentences(n=300):
    folder = shared_path("sst2")
    with open(folder / "dev.tsv", encoding="utf-8") as f:
        return [line.split("\t")[0] for line in f][:n]


def _theirs(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _same(ours, theirs, texts):
    for specials in (True, False):
        ids = ours(texts, add_special_tokens=specials)["input_ids"]
        assert ids == theirs(texts, add_special_tokens=specials)["input_ids"]
        assert ours(texts[0], add_special_tokens=specials)["input_ids"] == ids[0]
        assert ours.encode(texts[0], add_special_tokens=specials) == theirs.encode(texts[0], add_special_tokens=specials)
        for skip in (True, False):
            assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
    for name in ("eos_token", "pad_token", "unk_token", "bos_token", "eos_token_id", "pad_token_id", "unk_token_id",
                 "bos_token_id", "vocab_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    some = list(range(0, len(ours), 97))
    assert ours.convert_ids_to_tokens(some) == theirs.convert_ids_to_tokens(some)
    assert ours.convert_ids_to_tokens(5) == theirs.convert_ids_to_tokens(5)
    row = np.asarray(ids[0])  # numpy ids, as the eval's outputs are
    assert ours.decode(row) == theirs.decode(row.tolist()) and ours.decode(row[0]) == theirs.decode(int(row[0]))


@pytest.mark.parametrize("name", ["t5_tokenizer", "gpt2_tokenizer"])
def test_a_t5_or_gpt2_folder_gives_transformers_ids_and_texts(name):
    folder = shared_path(name)
    ours = load_tokenizer(folder)
    assert isinstance(ours, FastTokenizer)
    _same(ours, _theirs(folder), TEXTS + _sentences())


def _plain_folder(path):
    """A word-level tokenizer saved by transformers' plain class (the demo model's kind), no shared data needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|endoftext|>"] + "a an the movie is good bad , . ! great not".split()
    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    raw.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(path)
    return path


def test_a_plain_tokenizers_folder_and_its_saved_copy_read_as_transformers_reads_them(tmp_path):
    folder = _plain_folder(tmp_path / "plain")
    texts = ["the movie is good !", "not great , bad .", "", "unknown words here <|endoftext|>"]
    ours = load_tokenizer(folder)
    assert isinstance(ours, FastTokenizer) and ours.pad_token == "<|endoftext|>"  # EOS as pad, as for GPT-2
    _same(ours, _theirs(folder), texts)
    ours.save_pretrained(tmp_path / "copy")  # the pad token now set travels with it
    again, theirs = load_tokenizer(tmp_path / "copy"), AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert isinstance(again, FastTokenizer) and theirs.pad_token == "<|endoftext|>"
    _same(again, theirs, texts)


@pytest.mark.parametrize("change", [{"add_eos_token": True}, {"clean_up_tokenization_spaces": True},
                                    {"backend": "sentencepiece"}])
def test_a_folder_whose_settings_change_the_backend_keeps_the_transformers_class(tmp_path, change):
    folder = tmp_path / "tok"
    shutil.copytree(shared_path("t5_tokenizer"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, **change)))
    ours = load_tokenizer(folder)
    assert type(ours).__name__ == "T5Tokenizer"
    assert ours(TEXTS)["input_ids"] == AutoTokenizer.from_pretrained(folder)(TEXTS)["input_ids"]


def test_a_folder_beside_another_family_s_config_reads_as_autotokenizer_reads_it(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(shared_path("t5_tokenizer"), folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "umt5"}))  # AutoTokenizer: its plain backend class
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert isinstance(ours, FastTokenizer)
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert ours.batch_decode(ours(TEXTS)["input_ids"]) == theirs.batch_decode(theirs(TEXTS)["input_ids"])


def test_a_folder_without_its_special_tokens_saved_goes_through_autotokenizer(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(shared_path("t5_tokenizer"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["pad_token"]  # transformers' T5Tokenizer would default it; only transformers knows each default
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert type(ours) is type(theirs)
    assert ours.pad_token_id == theirs.pad_token_id
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]


def test_loading_a_t5_tokenizer_imports_neither_transformers_nor_torch():
    folder = shared_path("t5_tokenizer")
    code = (f"import sys; from prompt_tuning_jax.tokenizer import load_tokenizer; load_tokenizer({str(folder)!r}); "
            "print('transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False", out.stderr
