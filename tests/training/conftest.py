import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def write_tiny_gpt2(folder, seed=0):
    """A random 2-layer GPT-2 with the demo's word-level tokenizer, as a Hugging Face folder."""
    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.demo import build_tokenizer

    tok = build_tokenizer()
    cfg = ptj.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                         bos_token_id=0, eos_token_id=0)
    ptj.save_pretrained(ptj.init_random(cfg, seed=seed), folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


def cli_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_cmd(model_dir, model_path, *extra):
    """The training command line on the tiny model and the demo task (small, fast)."""
    return [sys.executable, "-m", "prompt_tuning_jax.train",
            "--gin_file=models/gpt2.gin", "--gin_file=prompts/from_sampled_vocab.gin",
            "--gin_file=prompts/linear_head.gin", "--gin_file=runs/prompt_finetune.gin",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{model_path}'",
            "--gin.MIXTURE_OR_TASK_NAME='demo_sentiment'", "--gin.PROMPT_LENGTH=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.BATCH_SIZE=8",
            "--gin.EVAL_PERIOD=0", "--gin.ptj.train.progress=False", "--gin.ptj.train.log_every=5",
            *extra]
