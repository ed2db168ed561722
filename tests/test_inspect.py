"""`python -m prompt_tuning_jax.inspect`: nearest tokens, label similarity and the heatmap, released prompts too."""
import re

import numpy as np
import pytest

from prompt_tuning_jax import inspect as inspect_cli
from prompt_tuning_jax.prompts.interpret import label_similarity, nearest_tokens
from tests.helpers import shared_path, torch_model


def test_nearest_tokens_of_embedding_rows_are_those_rows():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32)
    prompt = 3.0 * table[[7, 21, 7]] + 0.01 * rng.normal(size=(3, 16))  # cosine ignores the scale
    ids, sims = nearest_tokens(prompt, table, k=4)
    assert ids.shape == sims.shape == (3, 4) and list(ids[:, 0]) == [7, 21, 7]
    assert np.all(sims[:, 0] > 0.999) and np.all(np.diff(sims, axis=1) <= 0)  # most similar first
    full = (prompt / np.linalg.norm(prompt, axis=1, keepdims=True)) @ (table / np.linalg.norm(table, axis=1, keepdims=True)).T
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :4], rtol=1e-5)
    labels = label_similarity(table[[3, 4]], table, [[3], [4, 4]])
    np.testing.assert_allclose(np.diag(labels), [1.0, 1.0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[P, H\] prompt and a \[V, H\] embedding table"):
        nearest_tokens(np.zeros((2, 8)), table)


def test_inspect_the_released_sst2_prompt_with_the_t5_vocabulary(tmp_path, capsys):
    tokenizer = shared_path("t5_tokenizer")
    folder = tmp_path / "t5"
    # T5 1.1 base's width (the released prompt is [100, 768]), one layer, random weights.
    torch_model("t5", folder, d_model=768, d_kv=64, num_heads=12, d_ff=64, num_layers=1, num_decoder_layers=1,
                vocab_size=32128)
    png = tmp_path / "sst2.png"
    code = inspect_cli.main(["t5_1_1_lm100k_base/sst2.npy", "--model", str(folder), "--tokenizer", str(tokenizer),
                             "--labels", "negative,positive", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if re.match(r"^ +\d+  '", line)]
    assert len(rows) == 100  # one line per prompt position
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(tokenizer)).get_vocab()
    first = rows[0].split()[1].strip("'")
    assert first in vocab  # a real T5 sentencepiece token
    assert "'negative': mean" in out and "'positive': mean" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_prompt_file_is_one_error_line(tmp_path, capsys):
    assert inspect_cli.main([str(tmp_path / "nope.npy"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: prompt file") and "nope.npy" in err[0]
