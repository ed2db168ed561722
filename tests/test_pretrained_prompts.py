"""Released prompts: shipped with checksums, each with a gin file for the paper's protocol, and that protocol
reproduced against transformers on a random T5 with the real T5 vocabulary."""
import hashlib
import json
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
from helpers import REPO, cli_env, shared_path

from prompt_tuning_jax import cli, pretrained_prompts
from prompt_tuning_jax.prompts.io import load_prompt

NAMES = sorted(pretrained_prompts.RELEASED)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_prompts_have_their_checksums(name):
    path = pretrained_prompts.released_prompt(name)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == pretrained_prompts.RELEASED[name]
    assert load_prompt(path, expected_shape=(100, 768)).dtype == np.float32
    original = REPO.parent / "shared" / "data" / "released_prompts" / name
    if original.exists():
        assert original.read_bytes() == open(path, "rb").read()


def test_a_damaged_released_prompt_is_refused(tmp_path, monkeypatch):
    name = "t5_1_1_lm100k_base/sst2.npy"
    (tmp_path / "t5_1_1_lm100k_base").mkdir()
    damaged = tmp_path / name
    data = bytearray(open(pretrained_prompts.released_prompt(name), "rb").read())
    data[-1] ^= 1  # one bit of the last float
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained_prompts, "FOLDER", str(tmp_path))
    with pytest.raises(ValueError, match="is damaged: sha256"):
        load_prompt(damaged)
    with pytest.raises(ValueError, match="unknown released prompt 'nope.npy'"):
        pretrained_prompts.released_prompt("nope.npy")


@gin.configurable("capture_released")
def _capture(model=None, data=None, decoding=None, checkpoint_path=None, scoring=None, prompt=None):
    return model, data, decoding, checkpoint_path, scoring, prompt


@pytest.mark.parametrize("task", ["sst2", "rte", "mrpc"])
def test_each_gin_file_sets_the_papers_protocol(task):
    cli.parse_gin([f"pretrained_prompts/t5_1_1_lm100k_base/{task}.gin"], ["EVAL_OUTPUT_DIR='/tmp/e'"])
    gin.parse_config(["capture_released.model = %MODEL", "capture_released.data = @ptj.DataSpec()",
                      "capture_released.decoding = @ptj.DecodeSpec()", "capture_released.prompt = %PROMPT",
                      "capture_released.checkpoint_path = %CHECKPOINT_PATH",
                      "capture_released.scoring = %EVAL_SCORING"])
    try:
        model, data, decoding, checkpoint, scoring, prompt = _capture()
    finally:
        gin.clear_config()
    assert model.path == "google/t5-base-lm-adapt" and prompt.length == 100 and prompt.placement == "prefix"
    assert checkpoint == pretrained_prompts.released_prompt(f"t5_1_1_lm100k_base/{task}.npy")
    assert data.task == f"taskless_glue_{task}_v200_examples" and data.eval_split == "validation"
    assert data.feature_lengths == {"inputs": 512, "targets": 8}
    assert (decoding.method, decoding.max_new_tokens, scoring) == ("greedy", 8, "generate")


def _random_t5(folder, tokenizer):
    cmd = [sys.executable, "scripts/make_random_checkpoint.py", "google/t5-base-lm-adapt", str(folder),
           "--tokenizer", str(tokenizer), "--override", "num_layers=1", "--override", "num_decoder_layers=1",
           "--override", "d_ff=128"]
    subprocess.run(cmd, check=True, cwd=REPO, env=cli_env(), capture_output=True, timeout=300)
    return folder


def _eval(gin_file, out, checkpoint, *extra):
    cmd = [sys.executable, "-m", "prompt_tuning_jax.eval", f"--gin_file={gin_file}",
           f"--gin.EVAL_OUTPUT_DIR='{out}'", f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint}'", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "metrics.json").read_text())


def _hf_greedy(folder, tokenizer, prompt, texts, batch=64):
    """transformers' generate(inputs_embeds=[prompt; embedded input], greedy, 8 new tokens), decoded."""
    import torch
    import transformers

    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    p = torch.tensor(prompt)
    out = []
    for start in range(0, len(texts), batch):
        enc = tok(texts[start:start + batch], return_tensors="pt", padding=True, truncation=True, max_length=512)
        embeds = torch.cat([p.expand(len(enc.input_ids), -1, -1), model.shared(enc.input_ids)], dim=1)
        mask = torch.cat([torch.ones(len(enc.input_ids), p.shape[0], dtype=torch.long), enc.attention_mask], 1)
        with torch.no_grad():
            ids = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                 num_beams=1)
        out += tok.batch_decode(ids, skip_special_tokens=True)
    return out


@pytest.mark.slow
def test_the_sst2_protocol_matches_transformers_generate(tmp_path):
    """All 872 validation sentences in the taskless format, greedy decoding of up to 8 tokens, exact match."""
    tokenizer, sentences = shared_path("t5_tokenizer"), shared_path("sst2", "test.tsv")
    checkpoint = _random_t5(tmp_path / "t5", tokenizer)
    rows, metrics = _eval("pretrained_prompts/t5_1_1_lm100k_base/sst2.gin", tmp_path / "eval", checkpoint)
    lines = [line.split("\t") for line in sentences.read_text().splitlines()[1:]]
    assert len(rows) == 872 == metrics["examples"]
    assert [r["input"] for r in rows] == [f"sentence: {s.strip()}" for s, _ in lines]
    assert [r["target"] for r in rows] == [["negative", "positive"][int(label)] for _, label in lines]
    prompt = np.load(pretrained_prompts.released_prompt("t5_1_1_lm100k_base/sst2.npy"))
    want = _hf_greedy(checkpoint, tokenizer, prompt, [r["input"] for r in rows])
    assert [r["prediction"] for r in rows] == want
    exact = [r["prediction"] == r["target"] for r in rows]
    assert metrics["accuracy"] == pytest.approx(100.0 * np.mean(exact))
    assert metrics["invalid"] == sum(r["prediction"] not in ("negative", "positive") for r in rows)
    assert [r["valid"] for r in rows] == [r["prediction"] in ("negative", "positive") for r in rows]


@pytest.mark.slow
def test_rte_and_mrpc_prompts_run_under_their_gin_files(tmp_path):
    tokenizer = shared_path("t5_tokenizer")
    shared_path("rte", "dev.tsv")
    checkpoint = _random_t5(tmp_path / "t5", tokenizer)
    rows, metrics = _eval("pretrained_prompts/t5_1_1_lm100k_base/rte.gin", tmp_path / "rte", checkpoint,
                          "--gin.ptj.DataSpec.eval_limit=40")
    assert len(rows) == 40 and rows[0]["input"].startswith("sentence1: ") and " sentence2: " in rows[0]["input"]
    assert set(metrics) >= {"accuracy", "invalid", "scoring"} and metrics["scoring"] == "generate"
    fixture = REPO / "tests" / "data" / "fixtures" / "mrpc"
    rows, metrics = _eval("pretrained_prompts/t5_1_1_lm100k_base/mrpc.gin", tmp_path / "mrpc", checkpoint,
                          f"--gin.TASK_OVERRIDES={{'data_dir': '{fixture}', 'files': {{'validation': 'dev.tsv'}}}}")
    assert rows and rows[0]["input"].startswith("sentence1: ") and {"f1", "accuracy"} <= set(metrics)
    # The other scoring mode: rank classification over the label strings, under its own names.
    _, ranked = _eval("pretrained_prompts/t5_1_1_lm100k_base/mrpc.gin", tmp_path / "mrpc_rank", checkpoint,
                      f"--gin.TASK_OVERRIDES={{'data_dir': '{fixture}', 'files': {{'validation': 'dev.tsv'}}}}",
                      "--gin.EVAL_SCORING='rank'")
    assert ranked["scoring"] == "rank" and {"rank_f1", "rank_accuracy"} <= set(ranked) and ranked["invalid"] == 0
    shutil.rmtree(tmp_path / "t5")
