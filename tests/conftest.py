"""Shared test fixtures: random-weight Hugging Face checkpoints built with transformers (PyTorch).

Eight fake CPU devices are configured before JAX starts so mesh tests can run anywhere.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("PTJ_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts) -> pathlib.Path:
    """A path in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (set PTJ_SHARED_DATA to the shared data folder)")
    return path


def make_gpt2(folder, seed=0, **overrides):
    """Writes a random GPT-2 checkpoint with transformers' save_pretrained; returns the torch model."""
    import torch
    import transformers

    kw = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()
    _randomize_layernorms(model, seed)
    model.save_pretrained(folder)
    return model


def make_t5(folder, seed=0, untied=False, **overrides):
    """Writes a random T5 checkpoint (v1.0 tied + rescaled, or v1.1 untied with its own lm_head)."""
    import torch
    import transformers

    kw = dict(vocab_size=199, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=20)
    if untied:
        kw.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
    if untied:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    _randomize_layernorms(model, seed)
    model.save_pretrained(folder)
    return model


def _randomize_layernorms(model, seed):
    """Norm weights default to ones; randomise them so a wrong norm cannot pass parity."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def padded_batch(rng, vocab, lengths, total, side="right", pad_id=0):
    """input_ids and attention_mask [B, total] with the given real lengths, padded on `side`."""
    ids = rng.integers(1, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, total - n:] = 1
    ids = np.where(mask > 0, ids, pad_id).astype(np.int32)
    return ids, mask


def assert_logits_close(ours, theirs, mask=None):
    """max |Δ| <= 1e-4 * max(1, max |logit|), over real positions when `mask` [B, T] is given."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if mask is not None:
        keep = np.asarray(mask) > 0
        ours, theirs = ours[keep], theirs[keep]
    tol = 1e-4 * max(1.0, np.abs(theirs).max())
    err = np.abs(ours - theirs).max()
    assert err <= tol, f"max |Δ| {err:.3g} > {tol:.3g}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- tiny runs for the command-line tests -------------------------------------------------


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
