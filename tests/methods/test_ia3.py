"""METHOD 'ia3' (PEFT's IA3Config; the original's extended/train/ia3.py): one SGD step from the same adapter and
batch as PEFT's (GPT-2 and T5: the loss and every updated vector), the exported adapter in PEFT, merged against
unmerged logits (float32 and bfloat16), a run that resumes exactly and evaluates from its MODEL_DIR, and a
(4, 2) mesh against one device."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, padded_batch, torch_model, trained_on_both_meshes

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.models.ia3 import add_ia3, merge_ia3, target_layers
from prompt_tuning_jax.prompts.io import export_peft_ia3
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

LR = 0.5


def _randomize(model, rng):
    for _, layer, _ in target_layers(model):
        layer.ia3.ia3_l[...] = jnp.asarray(rng.uniform(0.5, 1.5, layer.ia3.ia3_l.shape), jnp.float32)


def _batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


def _torch_loss(family, model, ids, targets):
    """Mean cross-entropy of the targets teacher-forced after the inputs (GPT-2) or decoded (T5)."""
    import torch

    b, t = ids.shape
    if family == "gpt2":
        logits = model(input_ids=torch.tensor(np.concatenate([ids, targets[:, :-1]], 1)).long()).logits[:, t - 1:]
    else:
        shifted = np.concatenate([np.zeros((b, 1), np.int64), targets[:, :-1]], 1)
        logits = model(input_ids=torch.tensor(ids).long(), decoder_input_ids=torch.tensor(shifted)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.tensor(targets).reshape(-1).long())


def _peft_step(family, hf, folder, ids, targets):
    """(loss, {module: updated ia3_l}, logits before the step) of PEFT's IA3 adapter in `folder`, one SGD step."""
    import torch
    from peft import PeftModel

    peft = PeftModel.from_pretrained(hf, folder, is_trainable=True)
    params = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    assert params and all("ia3_l" in n for n in params)
    loss = _torch_loss(family, peft, ids, targets)
    loss.backward()
    with torch.no_grad():
        updated = {n.replace("base_model.model.", "").replace(".ia3_l.default", ""): (p - LR * p.grad).numpy().ravel()
                   for n, p in params.items()}
    return float(loss), updated


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_one_sgd_step_equals_peft(tmp_path, rng, family):
    """From the same random adapter (ours exported, PEFT loading it) and batch: the same loss, every vector
    updated alike, and PEFT's logits equal ours before the step."""
    hf = torch_model(family, tmp_path / "base", untied=family == "t5")
    spec = PromptSpec(method="ia3")
    prompted = spec.build(ptj.from_pretrained(tmp_path / "base"), None)
    _randomize(prompted.model, rng)
    export_peft_ia3(tmp_path / "adapter", prompted.model, str(tmp_path / "base"))
    ids = rng.integers(2, 50, (3, 5)).astype(np.int32)
    targets = rng.integers(2, 50, (3, 3)).astype(np.int32)
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    trainer = Trainer(MeshState(prompted, one, trainable=spec.trainable(prompted)), optax.sgd(LR), objective="lm",
                      seed=None)
    metrics = trainer.train_step(_batch(ids, targets))
    loss, updated = _peft_step(family, hf, str(tmp_path / "adapter"), ids, targets)
    assert float(metrics["loss_sum"]) / float(metrics["denominator"]) == pytest.approx(loss, rel=1e-5)
    model = trainer.state.merge(trainer.trainable).model
    ours = {model.checkpoint_key((*path, "weight"))[:-len(".weight")]: np.asarray(layer.ia3.ia3_l[...])
            for path, layer, _ in target_layers(model)}
    assert set(ours) == set(updated) and len(ours) == (2 * 2 if family == "gpt2" else 2 * 3 + 2 * 5)  # per block: GPT-2 c_attn, mlp.c_proj; T5 k, v, wo (+ cross k, v)
    for name, value in ours.items():
        np.testing.assert_allclose(value, updated[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_merged_vectors_give_the_same_logits(tmp_path, rng, family, dtype):
    torch_model(family, tmp_path, untied=family == "t5")
    model = add_ia3(ptj.from_pretrained(tmp_path, dtype=dtype))
    _randomize(model, rng)
    ids, mask = padded_batch(rng, 50, [5, 3, 6], 6)
    kw = {} if family == "gpt2" else {"decoder_input_ids": jnp.zeros((3, 2), jnp.int32)}
    unmerged = np.asarray(model(ids, mask, **kw), np.float32)
    merge_ia3(model)
    assert all(layer.ia3 is None for _, layer, _ in target_layers(model))
    tol = 1e-5 if dtype == jnp.float32 else 0.1  # bfloat16: the product rounds once instead of twice
    np.testing.assert_allclose(np.asarray(model(ids, mask, **kw), np.float32), unmerged, rtol=tol, atol=tol)


def test_the_trainable_vectors_and_a_bfloat16_step(tiny_gpt2_dir, rng):
    spec = PromptSpec(method="ia3")
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir, dtype=jnp.bfloat16), None)
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    h, layers = 32, 2  # c_attn's output [3H] and mlp.c_proj's input [4H] in each block
    assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == layers * (3 * h + 4 * h)
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    trainer = Trainer(state, optax.adam(0.05), objective="lm", seed=None)
    metrics = trainer.train_step(_batch(ids, ids[:, :2], mask))
    assert np.isfinite(float(metrics["loss_sum"]))
    assert {x.dtype for x in jax.tree.leaves(trainer.trainable)} == {jnp.dtype(jnp.float32)}


def _run(folder, tmp_path, name, steps):
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), PromptSpec(method="ia3"), data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_run_resumes_exactly_writes_its_adapter_and_evaluates_from_its_model_dir(tiny_gpt2_dir, tmp_path):
    whole = _run(tiny_gpt2_dir, tmp_path, "whole", 4)
    assert whole["method"] == "ia3" and whole["trainable_params"] == 2 * 7 * 32
    assert (tmp_path / "whole" / "ia3_adapter" / "adapter_config.json").exists()
    _run(tiny_gpt2_dir, tmp_path, "halves", 2)
    resumed = _run(tiny_gpt2_dir, tmp_path, "halves", 4)
    for a, b in zip(*(jax.tree.leaves(_adapter_vectors(tmp_path / run)) for run in ("whole", "halves"))):
        np.testing.assert_array_equal(a, b)
    assert resumed["eval"] == whole["eval"]
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    again = evaluate(ModelSpec(tiny_gpt2_dir), PromptSpec(method="ia3"), data,
                     checkpoint_path=str(tmp_path / "whole"), scoring="rank")
    assert again["rank_accuracy"] == whole["eval"]["rank_accuracy"]


def _adapter_vectors(model_dir):
    """The IA3 vectors a run's adapter holds, by tensor name."""
    from prompt_tuning_jax.prompts.io import _read_peft_tensors

    return dict(sorted(_read_peft_tensors(str(model_dir / "ia3_adapter")).items()))


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = _batch(ids, ids[:, :2], mask)
    assert_trees_close(*trained_on_both_meshes(tiny_gpt2_dir, PromptSpec(method="ia3"), batch), atol=1e-6)
