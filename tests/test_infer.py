"""infer(): generation with a trained prompt over a task split or a text file, end to end through the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cli_env, save_tiny_gpt2

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, infer

ROWS = [("the movie was great .", "positive"), ("the plot was dull .", "negative"),
        ("what a lovely film !", "positive"), ("the acting was awful and the story felt flat .", "negative"),
        ("the cast was charming .", "positive"), ("the ending was boring .", "negative")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny GPT-2 with the demo's word-level tokenizer, a [4, 32] prompt and a 6-row local SST-2 split."""
    root = tmp_path_factory.mktemp("infer")
    save_tiny_gpt2(root / "model", initializer_range=0.3)
    prompt = 0.3 * np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    np.save(root / "prompt.npy", prompt)
    (root / "data").mkdir()
    (root / "data" / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{int(l == 'positive')}\n"
                                                                         for s, l in ROWS))
    return root


def reference_texts(root, inputs, placement="suffix", **kw):
    """The same generation done by hand, one example at a time (no batching, no padding)."""
    tok = ptj.load_tokenizer(root / "model")
    prompted = ptj.with_prompt(ptj.from_pretrained(root / "model"), 4, np.load(root / "prompt.npy"),
                               placement=placement)
    texts = []
    for text in inputs:
        ids = np.array([tok(text)["input_ids"]], np.int32)
        out = np.asarray(decoding.generate(prompted, ids, None, eos_id=tok.eos_token_id, **kw))[0].tolist()
        out = out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
        texts.append(tok.decode(out, skip_special_tokens=True))
    return texts


@pytest.mark.slow
def test_cli_writes_one_prediction_per_example_and_metrics(setup, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prompt_tuning_jax.infer",
           "--gin_file=models/gpt2.gin", "--gin_file=prompts/random.gin",
           "--gin_file=models/decoding/greedy.gin", "--gin_file=runs/prompt_infer.gin",
           f"--gin.INITIAL_CHECKPOINT_PATH='{setup / 'model'}'", "--gin.PROMPT_LENGTH=4",
           f"--gin.CHECKPOINT_PATH='{setup / 'prompt.npy'}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
           "--gin.MIXTURE_OR_TASK_NAME='sst2'", "--gin.BATCH_SIZE=4", "--gin.MAX_DECODE_LENGTH=3",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
           f"--gin.TASK_OVERRIDES={{'data_dir': '{setup / 'data'}', 'files': {{'validation': 'dev.tsv'}}}}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(2), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 6 predictions" in proc.stdout
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))  # 2 batches of 4, the last padded: order kept
    assert [r["target"] for r in rows] == [label for _, label in ROWS]
    assert all(r["input"].endswith(s) for r, (s, _) in zip(rows, ROWS))
    # Same texts as generating each example alone (the gpt2 configs put the prompt after the text).
    assert [r["prediction"] for r in rows] == reference_texts(setup, [r["input"] for r in rows],
                                                                max_new_tokens=3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 6 and 0.0 <= metrics["accuracy"] <= 100.0
    assert not list(out.glob("*.tmp*"))


@pytest.mark.slow
def test_python_api_on_a_text_file_with_beam_search_over_a_mesh(setup, tmp_path):
    inputs = [s for s, _ in ROWS] + ["the story was moving ."]
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n\n")
    spec = decoding.DecodeSpec(method="beam", num_beams=3, max_new_tokens=4)
    summary = infer(ModelSpec(str(setup / "model"), padding_side="left"),
                    PromptSpec(length=4, init="random_uniform", placement="prefix"),
                    DataSpec(feature_lengths={"inputs": 16, "targets": 4}, batch_size=8),
                    str(setup / "prompt.npy"), str(tmp_path / "out"), inputs_file=str(tmp_path / "inputs.txt"),
                    decoding=spec)
    assert summary["examples"] == 7 and summary["metrics"] is None  # 8 devices: one row per data shard
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == inputs and all("target" not in r for r in rows)
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert [r["prediction"] for r in rows] == reference_texts(setup, inputs, placement="prefix", method="beam",
                                                                num_beams=3, max_new_tokens=4)


def test_bad_arguments(setup, tmp_path):
    model, prompt = ModelSpec(str(setup / "model")), PromptSpec(length=4, init="random_uniform")
    with pytest.raises(ValueError, match="exactly one of"):
        infer(model, prompt, DataSpec(), None, str(tmp_path))
    with pytest.raises(ValueError, match="cannot generate"):
        infer(model, PromptSpec(length=4, head="linear", num_labels=2), DataSpec("sst2"), None, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CHECKPOINT_PATH"):
        infer(model, prompt, DataSpec("sst2"), str(tmp_path / "missing.npy"), str(tmp_path))


@pytest.mark.parametrize("name,want", [
    ("greedy", dict(method="greedy", max_new_tokens=None)),
    ("beam", dict(method="beam", num_beams=4, length_penalty=1.0, early_stopping=False)),
    ("sampling", dict(method="sample", temperature=1.0, top_k=0, top_p=0.9, seed=0)),
])
def test_decoding_gin_files_build_a_decode_spec(name, want):
    import gin

    from prompt_tuning_jax import cli

    cli.parse_gin([f"models/decoding/{name}.gin"], [])
    try:
        spec = gin.get_configurable("ptj.DecodeSpec")()
    finally:
        gin.clear_config()
    assert isinstance(spec, decoding.DecodeSpec)
    assert {k: getattr(spec, k) for k in want} == want
