"""Prompt tuning on Llama against PEFT's PromptTuning: a trajectory of Adam steps, not just one gradient.

Both sides start from the same random-weight Llama checkpoint (saved by transformers) and the same [P, H] prompt,
and take STEPS Adam steps on the same batches (a new one each step): ours through `PromptSpec` (a prefix prompt
read from a .npy) and `Trainer(objective="lm")`, PEFT through `get_peft_model(LlamaForCausalLM,
PromptTuningConfig(task_type="CAUSAL_LM"))` and `torch.optim.Adam` with the same hyperparameters. The checkpoint
has grouped-query attention (4 query heads sharing 2 KV heads), random norms and biases (a wrong norm cannot pass),
an untied head and Llama 3's RoPE scaling with a short original_max_position_embeddings, so that it acts on the
positions the prompt shifts. Rows are right-padded with their own input and target lengths.

Every step's loss agrees to float32 rounding, and so does the prompt after the last step: a step that differed
anywhere (the positions after the prompt, the scored tokens, the mean, Adam's bias correction) would drift apart.
"""
import jax
import numpy as np
import optax
import pytest
import torch
import transformers

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import PromptSpec
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

VOCAB, HIDDEN, P, STEPS, LR = 97, 32, 4, 5, 0.05
CONFIG = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1,
              attention_bias=True, bos_token_id=1, eos_token_id=2,
              rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # get_peft_model's, not ours


def reference(folder, seed=0):
    """transformers' LlamaForCausalLM with random norms and biases, written with save_pretrained."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return model


def batches(rng, n, b=4, t=7, tt=3):
    """n batches of right-padded inputs (2..t real tokens) and targets (1..tt real tokens)."""
    out = []
    for _ in range(n):
        mask = (np.arange(t)[None] < rng.integers(2, t + 1, b)[:, None]).astype(np.int32)
        target_mask = (np.arange(tt)[None] < rng.integers(1, tt + 1, b)[:, None]).astype(np.int32)
        out.append({"input_ids": np.where(mask, rng.integers(3, VOCAB, (b, t)), 0).astype(np.int32),
                    "attention_mask": mask,
                    "target_ids": np.where(target_mask, rng.integers(3, VOCAB, (b, tt)), 0).astype(np.int32),
                    "target_mask": target_mask, "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)})
    return out


def ours_trajectory(folder, prompt_file, steps):
    """(per-step losses, final prompt) of our prefix prompt tuning with Adam."""
    spec = PromptSpec(length=P, init="file", file=str(prompt_file), placement="prefix")
    prompted = spec.build(ptj.from_pretrained(folder), None)
    state = MeshState(prompted, partitioning.make_mesh(devices=jax.devices()[:1]), trainable=spec.trainable(prompted))
    trainer = Trainer(state, optax.adam(LR), objective="lm", seed=None)
    losses = []
    for b in steps:
        metrics = trainer.train_step(b)
        losses.append(float(metrics["loss_sum"] / metrics["denominator"]))
    return losses, np.asarray(trainer.prompt)


def peft_trajectory(hf, prompt, steps):
    """(per-step losses, final prompt) of PEFT's PromptTuning with torch.optim.Adam: each row is its real input
    then its real target, right-padded, the input labelled -100 (PEFT labels the P virtual tokens -100 too)."""
    from peft import PromptTuningConfig, get_peft_model

    pm = get_peft_model(hf, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).train()
    weight = pm.prompt_encoder["default"].embedding.weight
    assert tuple(weight.shape) == prompt.shape
    with torch.no_grad():
        weight.copy_(torch.tensor(prompt))
    assert [p for p in pm.parameters() if p.requires_grad] == [weight]  # only the prompt trains
    opt = torch.optim.Adam([weight], lr=LR, betas=(0.9, 0.999), eps=1e-8)  # optax.adam's defaults
    losses = []
    for b in steps:
        rows, labels = [], []
        for ids, m, tgt, tm in zip(b["input_ids"], b["attention_mask"], b["target_ids"], b["target_mask"]):
            text, target = ids[m > 0].tolist(), tgt[tm > 0].tolist()
            rows.append(text + target)
            labels.append([-100] * len(text) + target)
        width = max(map(len, rows))
        pad = lambda xs, v: torch.tensor([x + [v] * (width - len(x)) for x in xs])
        loss = pm(input_ids=pad(rows, 0), attention_mask=pad([[1] * len(r) for r in rows], 0),
                  labels=pad(labels, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, weight.detach().numpy().copy()


def trajectories(tmp_path, rng, steps=STEPS):
    """Both sides from one checkpoint, prompt and list of batches -> (ours, PEFT, initial prompt)."""
    hf = reference(tmp_path / "ckpt")
    prompt = (0.5 * rng.standard_normal((P, HIDDEN))).astype(np.float32)
    np.save(tmp_path / "prompt.npy", prompt)
    data = batches(rng, steps)
    return ours_trajectory(tmp_path / "ckpt", tmp_path / "prompt.npy", data), peft_trajectory(hf, prompt, data), prompt


@pytest.mark.slow
@pytest.mark.filterwarnings(PEFT_WARNING)
def test_adam_prompt_tuning_trajectory_equals_peft(tmp_path, rng):
    (ours_losses, ours_prompt), (peft_losses, peft_prompt), initial = trajectories(tmp_path, rng)
    assert ours_prompt.shape == peft_prompt.shape == (P, HIDDEN)
    np.testing.assert_allclose(ours_losses, peft_losses, rtol=1e-5)
    np.testing.assert_allclose(ours_prompt, peft_prompt, rtol=1e-5, atol=1e-5)
    assert np.abs(ours_prompt - initial).max() > LR  # it trained: far beyond the tolerance (Adam moves ~LR a step)
