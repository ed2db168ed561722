"""Hub ids with HF_HUB_OFFLINE=1 and a warm Hugging Face cache (a TPU VM or cluster node with pre-downloaded weights).

The cache is built here in the hub's layout (models--gpt2/refs/main -> snapshots/<commit>/...), from a
random-weight GPT-2 saved by transformers and the real GPT-2 tokenizer. Everything runs in child processes
with HF_HOME pointing at it, because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported.
"""
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, shared_path, torch_model

MAIN, PINNED = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    tokenizer = shared_path("gpt2_tokenizer")
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--gpt2"
    for commit, seed in ((MAIN, 0), (PINNED, 1)):
        snapshot = repo / "snapshots" / commit
        torch_model("gpt2", snapshot, seed=seed, vocab_size=50257)
        for name in os.listdir(tokenizer):
            shutil.copy(tokenizer / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    return home


def run_offline(hf_home, code, *args, cwd=REPO):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


COMPARE = """
import sys, numpy as np, torch, transformers
import prompt_tuning_jax as ptj
revision = sys.argv[1] if len(sys.argv) > 1 else None
ids = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290]])
ours = np.asarray(ptj.from_pretrained("gpt2", revision=revision)(ids))
ref = transformers.GPT2LMHeadModel.from_pretrained("gpt2", revision=revision).eval()
with torch.no_grad():
    theirs = ref(torch.tensor(ids)).logits.numpy()
print("MAXDIFF", float(np.abs(ours - theirs).max()), float(np.abs(theirs).max()), float(ours[0, 0, 0]))
"""


def _compare(hf_home, *revision):
    proc = run_offline(hf_home, COMPARE, *revision)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("MAXDIFF")][0].split()
    return float(line[1]), float(line[2]), float(line[3])


@pytest.mark.slow
def test_a_hub_id_loads_from_the_cache_offline_and_matches_transformers(hf_home):
    diff, scale, first = _compare(hf_home)
    assert diff < 1e-4 * max(1.0, scale)
    pinned_diff, _, pinned_first = _compare(hf_home, PINNED)  # revision pinning reads the other snapshot
    assert pinned_diff < 1e-4 * max(1.0, scale) and pinned_first != first


@pytest.mark.slow
def test_a_hub_id_missing_from_the_cache_is_one_clear_error(hf_home):
    proc = run_offline(hf_home, "import prompt_tuning_jax as ptj; ptj.from_pretrained('gpt2-medium')")
    assert proc.returncode != 0
    assert "'gpt2-medium' is not a local folder" in proc.stderr and "cache" in proc.stderr


@pytest.mark.slow
def test_a_cli_run_with_a_hub_id_trains_offline(hf_home, tmp_path):
    proc = run_offline(hf_home, None, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
                       "--gin.INITIAL_CHECKPOINT_PATH='gpt2'", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                       "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=2",
                       "--gin.ptj.DataSpec.eval_limit=16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout
