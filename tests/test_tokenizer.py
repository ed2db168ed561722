"""load_tokenizer: the class AutoTokenizer picks, without importing torch for T5 and GPT-2 folders."""
import json
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, shared_path
from transformers import AutoTokenizer

from prompt_tuning_jax.tokenizer import load_tokenizer

TEXTS = ["sentence: it 's a charming and often affecting journey . ", "Hello <extra_id_0> wörld</s>  x", ""]


def _same(ours, theirs):
    assert type(ours) is type(theirs)
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert ours.eos_token_id == theirs.eos_token_id


@pytest.mark.parametrize("name", ["t5_tokenizer", "gpt2_tokenizer"])
def test_a_t5_or_gpt2_folder_loads_as_autotokenizer_would(name):
    folder = shared_path(name)
    _same(load_tokenizer(folder), AutoTokenizer.from_pretrained(folder))


def test_a_folder_of_another_family_goes_through_autotokenizer(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(shared_path("t5_tokenizer"), folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "umt5"}))  # not the T5 family: AutoTokenizer's call
    _same(load_tokenizer(folder), AutoTokenizer.from_pretrained(folder))


def test_loading_a_t5_tokenizer_does_not_import_torch():
    folder = shared_path("t5_tokenizer")
    code = (f"import sys; from prompt_tuning_jax.tokenizer import load_tokenizer; load_tokenizer({str(folder)!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
