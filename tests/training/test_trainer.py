"""The compiled step: accumulation, objectives, compilation count, shardings, donation, dropout.

Tiny models keep transformers' default dropout rates (0.1) unless a test says otherwise, so training steps drop
out: row i of the global batch at step s draws its masks from fold_in(fold_in(key(seed), s), i).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from helpers import tiny_model, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.training import optim
from prompt_tuning_jax.training.trainer import Trainer
from prompt_tuning_jax.variables import Trainable

# Sizes for tiny_model(): a vocabulary of 61 (which does not split over 2 model shards).
GPT2 = dict(vocab_size=61, n_positions=48, n_embd=32)
T5 = dict(vocab_size=61, relative_attention_num_buckets=32, relative_attention_max_distance=128)


def batch(rng, b=8, t=12, tt=3, vocab=61):
    lengths = rng.integers(3, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.where(mask, rng.integers(1, vocab, (b, t)), 0).astype(np.int32),
            "attention_mask": mask,
            "target_ids": rng.integers(1, vocab, (b, tt)).astype(np.int32),
            "target_mask": np.ones((b, tt), np.int32),
            "label": rng.integers(0, 2, b).astype(np.int32),
            "task_index": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


@pytest.mark.slow
@pytest.mark.parametrize("family,objective", [("gpt2", "lm"), ("gpt2", "classification"), ("t5", "lm")])
def test_gradient_accumulation_equals_one_big_batch(rng, family, objective):
    """With dropout on (rate 0.1): each row keeps its masks in whichever micro-batch it lands."""
    head = dict(head="linear", num_labels=2) if objective == "classification" else {}
    b = batch(rng)
    results = []
    for accum, seed in ((1, 0), (4, 0), (1, None)):  # seed None: the same step without dropout
        model = tiny_model(family, dropout_rate=0.1, **(GPT2 if family == "gpt2" else T5))
        prompted = ptj.with_prompt(model, 3, None, placement="suffix", seed=1, **head)
        trainer = Trainer(prompted, optim.make_optimizer("sgd", 0.5), objective=objective, accum_steps=accum,
                          mesh=partitioning.make_mesh(devices=jax.devices()[:2]), seed=seed)
        metrics = trainer.train_step(b)
        results.append((trainer.prompt, float(metrics["loss_sum"]), float(metrics["denominator"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    assert results[0][2] == results[1][2]
    assert np.abs(results[0][0] - results[2][0]).max() > 1e-4  # dropout did act


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_lm_objective_learns_the_targets(rng, family):
    # Sharp enough to be steered; no dropout: the losses compared are training losses of one fixed batch, and
    # with rate 0.1 each step's masks (on the prompt too) make them too noisy to show 30 steps of learning.
    model = (tiny_model("gpt2", initializer_range=0.3, dropout_rate=0.0, **GPT2) if family == "gpt2"
             else tiny_model("t5", untied=True, dropout_rate=0.0, **T5))
    prompted = ptj.with_prompt(model, 4, None, placement="prefix")
    trainer = Trainer(prompted, optim.make_optimizer("adamw", 0.05, weight_decay=0.0), objective="lm")
    b = batch(rng)
    first = trainer.train_step(b)
    for _ in range(30):
        last = trainer.train_step(b)
    loss = lambda m: float(m["loss_sum"]) / float(m["denominator"])
    assert loss(last) < 0.7 * loss(first)


@pytest.mark.slow
def test_one_compilation_per_shape_and_no_weight_donation(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("adamw", 1e-3), objective="classification")
    frozen_before = jax.tree.leaves(trainer.state.frozen)[0]
    for _ in range(5):
        trainer.train_step(batch(rng))
    assert trainer._step._cache_size() == 1
    trainer.train_step(batch(rng, t=16))  # a second bucket length compiles once more
    trainer.train_step(batch(rng, t=16))
    assert trainer._step._cache_size() == 2
    assert not frozen_before.is_deleted()  # frozen weights are never donated


@pytest.mark.slow
def test_sharded_step_equals_single_device(rng):
    """Frozen weights split over model=2, batch over data=4, dropout on (0.1): the same prompt as on one device."""
    assert jax.device_count() == 8
    b = batch(rng)
    prompts = []
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.make_mesh(data=4, model=2)):
        prompted = ptj.with_prompt(tiny_model("gpt2", dropout_rate=0.1, **GPT2), 3, None, placement="suffix",
                                   head="linear", num_labels=2, seed=2)
        trainer = Trainer(prompted, optim.make_optimizer("adamw", 1e-2), objective="classification", mesh=mesh)
        for _ in range(3):
            trainer.train_step(b)
        prompts.append(trainer.prompt)
        if mesh.shape["model"] == 2:
            wte = trainer.state.frozen["model"]["wte"]["weight"]
            assert wte.sharding.spec[0] is None  # vocab 61 does not split in 2: replicated, not an error
            c_fc = trainer.state.frozen["model"]["h"][0]["mlp"]["c_fc"]["weight"]
            assert tuple(c_fc.sharding.spec) == (None, "model")
    np.testing.assert_allclose(prompts[0], prompts[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_trainable_state(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", dtype=jnp.bfloat16, **GPT2), 3, None, placement="suffix",
                               head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("adafactor", 0.3), objective="classification")
    metrics = trainer.train_step(batch(rng))
    assert np.isfinite(float(metrics["loss_sum"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.trainable))


def test_batch_must_split_over_data_shards(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None, placement="suffix", head="linear", num_labels=2)
    trainer = Trainer(prompted, optim.make_optimizer("sgd", 0.1), objective="classification",
                      mesh=partitioning.make_mesh(data=8))
    with pytest.raises(ValueError, match="global batch size 6"):
        trainer.train_step(batch(rng, b=6))


# --- dropout ------------------------------------------------------------------------------------------

def trained(b, steps=2, seed=0, dropout_rate=0.1, objective="lm", start=None):
    """The prompt, metrics and trainer after `steps` steps on batch `b` (GPT-2, suffix prompt, AdamW)."""
    head = dict(head="linear", num_labels=2) if objective == "classification" else {}
    prompted = ptj.with_prompt(tiny_model("gpt2", dropout_rate=dropout_rate, **GPT2), 3, None, placement="suffix",
                               seed=1, **head)
    trainer = Trainer(prompted, optim.make_optimizer("adamw", 1e-2), objective=objective, seed=seed,
                      mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
    if start is not None:  # resume: state and step of an earlier trainer
        trainer.trainable, trainer.opt_state, trainer.step = jax.tree.map(jnp.copy, start.trainable), \
            jax.tree.map(jnp.copy, start.opt_state), start.step
    for _ in range(steps):
        metrics = trainer.train_step(b)
    return trainer.prompt, jax.tree.map(np.asarray, metrics), trainer


@pytest.mark.slow
def test_dropout_follows_the_seed_and_a_resumed_run_draws_the_same_masks(rng):
    b = batch(rng)
    p0, m0, _ = trained(b, steps=3)
    again, m_again, _ = trained(b, steps=3)
    np.testing.assert_array_equal(again, p0)  # reproducible from the seed
    assert m_again == m0
    other, _, _ = trained(b, steps=3, seed=1)
    assert np.abs(other - p0).max() > 1e-4  # another seed, other masks
    _, _, first_two = trained(b, steps=2)
    resumed, m_resumed, _ = trained(b, steps=1, start=first_two)  # a new trainer at step 2
    np.testing.assert_array_equal(resumed, p0)
    assert m_resumed == m0


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["lm", "classification"])
def test_rate_zero_is_bit_for_bit_the_step_without_dropout(rng, objective):
    """dropout_rate=0 (DROPOUT_RATE=0) with the dropout keys vs no dropout at all (seed=None, rates 0.1)."""
    b = batch(rng)
    off, m_off, trainer = trained(b, seed=None, objective=objective)
    zero, m_zero, _ = trained(b, dropout_rate=0.0, objective=objective)
    np.testing.assert_array_equal(zero, off)
    assert m_zero == m_off
    on, _, _ = trained(b, objective=objective)
    assert np.abs(on - off).max() > 1e-4
    assert trainer._step._cache_size() == 1


@pytest.mark.slow
def test_evaluation_and_prediction_never_drop_out(rng):
    b = batch(rng)
    _, _, trainer = trained(b, dropout_rate=0.5, objective="classification")
    first, second = trainer.predictor.predict(b), trainer.predictor.predict(b)
    np.testing.assert_array_equal(first, second)
    live = trainer.prompted_model()
    out = [np.asarray(live(b["input_ids"], b["attention_mask"]).prediction) for _ in range(2)]
    np.testing.assert_array_equal(out[0], out[1])
    # The same prompt and head on the same weights with every rate at 0: the same predictions.
    quiet = ptj.with_prompt(tiny_model("gpt2", dropout_rate=0.0, **GPT2), 3, None, placement="suffix", seed=1,
                            head="linear", num_labels=2)
    nnx.update(quiet, nnx.state(live, Trainable))
    np.testing.assert_array_equal(quiet(b["input_ids"], b["attention_mask"]).prediction, out[0])


def peft_grad(base, family, prompt, b):
    """PEFT prompt tuning in eval mode: d(sum of target token NLLs) / d(prompt) / number of target tokens."""
    from peft import PromptTuningConfig, get_peft_model

    pm = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM",
                                                 num_virtual_tokens=prompt.shape[0])).eval()
    weight = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight[: prompt.shape[0]] = torch.tensor(prompt)
    total, count = 0.0, 0
    for i in range(len(b["input_ids"])):
        text = b["input_ids"][i][b["attention_mask"][i] > 0].tolist()
        target = b["target_ids"][i][b["target_mask"][i] > 0].tolist()
        if family == "gpt2":
            ids, labels = torch.tensor([text + target]), torch.tensor([[-100] * len(text) + target])
        else:
            ids, labels = torch.tensor([text]), torch.tensor([target])
        total = total + pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss * len(target)
        count += len(target)
    total.backward()
    return weight.grad[: prompt.shape[0]].numpy() / count


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside PEFT
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_training_with_dropout_rate_zero_equals_peft_in_eval_mode(tmp_path, rng, family):
    """DROPOUT_RATE=0: one SGD step (lr 1) moves the prompt by PEFT's eval-mode gradient of the LM loss.

    The checkpoint keeps transformers' rates (0.1): PyTorch's masks cannot be reproduced, so parity is with
    dropout off on both sides; with the checkpoint's rates our step drops out and differs.
    """
    hf = torch_model(family, tmp_path, **({"initializer_range": 0.1} if family == "gpt2"
                                          else {"untied": True, "decoder_start_token_id": 0}))
    b = batch(rng, vocab=199)
    b["target_mask"] = (np.arange(3)[None] < rng.integers(1, 4, 8)[:, None]).astype(np.int32)
    prompt = rng.normal(size=(4, 48 if family == "gpt2" else 32)).astype(np.float32)
    moves = []
    for rate in (0.0, None):
        prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path, dropout_rate=rate), 4, prompt, placement="prefix")
        trainer = Trainer(prompted, optax.sgd(1.0), objective="lm",
                          mesh=partitioning.make_mesh(devices=jax.devices()[:1]))
        trainer.train_step(b)
        moves.append(prompt - trainer.prompt)
    want = peft_grad(hf, family, prompt, b)
    np.testing.assert_allclose(moves[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(moves[1] - want).max() > 1e-2 * np.abs(want).max()


def test_objective_needs_a_head():
    with pytest.raises(ValueError, match="needs a head"):
        Trainer(ptj.with_prompt(tiny_model("gpt2", **GPT2), 3, None), optim.make_optimizer(),
                objective="classification")
