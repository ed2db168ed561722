"""Baselines in the same engine (METHOD): one step of fine-tuning (all weights, or the last block) and of the
linear probe equals the same SGD step in PyTorch on the same checkpoint and batch."""
import jax
import numpy as np
import optax
import pytest
import torch
import transformers
from helpers import torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer
from prompt_tuning_jax.variables import parse_method, trainable_filter

LR = 0.1
SIZES = dict(vocab_size=61, n_positions=48, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
             attn_pdrop=0.0)


def _batch(rng, b=8, t=7, tt=3):
    lengths = rng.integers(2, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.where(mask, rng.integers(1, 61, (b, t)), 0).astype(np.int32), "attention_mask": mask,
            "target_ids": rng.integers(1, 61, (b, tt)).astype(np.int32), "target_mask": np.ones((b, tt), np.int32),
            "label": rng.integers(0, 2, b).astype(np.int32), "weight": np.ones(b, np.float32)}


def _ours(folder, method, head=None):
    prompted = ptj.with_prompt(ptj.from_pretrained(folder), 0, None, placement="suffix",
                               head=head, num_labels=2 if head else None, seed=3)
    state = MeshState(prompted, trainable=trainable_filter(method, prompted))
    return Trainer(state, optax.sgd(LR), objective="classification" if head else "lm", seed=None)


def _torch_lm_step(model, batch, trainable_names):
    """Inputs then targets in one right-padded row each; the loss is the mean NLL of the target tokens."""
    rows, labels = [], []
    for ids, m, tgt in zip(batch["input_ids"], batch["attention_mask"], batch["target_ids"]):
        real = list(ids[m > 0])
        rows.append(real + list(tgt))
        labels.append([-100] * len(real) + list(tgt))
    width = max(map(len, rows))
    pad = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]
    ids = torch.tensor(pad(rows, 0))
    attn = torch.tensor(pad([[1] * len(r) for r in rows], 0))
    params = [p for n, p in model.named_parameters() if n in trainable_names]
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable_names)
    opt = torch.optim.SGD(params, lr=LR)
    loss = model(input_ids=ids, attention_mask=attn, labels=torch.tensor(pad(labels, -100))).loss
    loss.backward()
    opt.step()
    return float(loss)


def _compare_weights(trainer, reference, tmp_path):
    ptj.save_pretrained(trainer.prompted_model().model, tmp_path / "ours")
    ours = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").state_dict()
    for name, value in reference.state_dict().items():
        if name in ours:
            np.testing.assert_allclose(ours[name].numpy(), value.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("method", ["full", "last:1"])
def test_one_fine_tuning_step_equals_torch(tmp_path, rng, method):
    reference = torch_model("gpt2", tmp_path / "ckpt", random_norms=True, **SIZES).train()
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    batch = _batch(rng)
    trainer = _ours(tmp_path / "ckpt", method)
    metrics = trainer.train_step(batch)
    names = {n for n, _ in reference.named_parameters()
             if method == "full" or n.startswith(f"transformer.h.{SIZES['n_layer'] - 1}.")}
    torch_loss = _torch_lm_step(reference, batch, names)
    assert float(metrics["loss_sum"] / metrics["denominator"]) == pytest.approx(torch_loss, rel=1e-5)
    _compare_weights(trainer, reference, tmp_path)
    moved = {n for n, p in reference.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == names - {"lm_head.weight"} or moved == names  # the step really trained what it should


def test_one_linear_probe_step_equals_torch(tmp_path, rng):
    reference = torch_model("gpt2", tmp_path / "ckpt", random_norms=True, **SIZES).eval()
    batch = _batch(rng)
    trainer = _ours(tmp_path / "ckpt", "probe", head="linear")
    head = {k: np.asarray(v) for k, v in trainer.trainable["head"].items()}  # weight [H, C], bias [C]
    metrics = trainer.train_step(batch)
    linear = torch.nn.Linear(SIZES["n_embd"], 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(head["weight"].T))
        linear.bias.copy_(torch.tensor(head["bias"]))
        hidden = reference.transformer(input_ids=torch.tensor(batch["input_ids"]),
                                       attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state
        last = torch.tensor(batch["attention_mask"].sum(1) - 1)
        features = hidden[torch.arange(len(last)), last]  # the frozen model's state at the last real token
    opt = torch.optim.SGD(linear.parameters(), lr=LR)
    loss = torch.nn.functional.cross_entropy(linear(features), torch.tensor(batch["label"]).long())
    loss.backward()
    opt.step()
    assert float(metrics["loss_sum"] / metrics["denominator"]) == pytest.approx(float(loss), rel=1e-5)
    updated = trainer.trainable["head"]
    np.testing.assert_allclose(np.asarray(updated["weight"]), linear.weight.detach().numpy().T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(updated["bias"]), linear.bias.detach().numpy(), rtol=1e-5, atol=1e-6)


def _count(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def test_what_each_method_trains(tmp_path):
    torch_model("gpt2", tmp_path / "ckpt", **SIZES)
    model_params = _count(nnx_state := ptj.from_pretrained(tmp_path / "ckpt"))  # noqa: F841
    block = (4 * 32 + 32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)  # 2 norms, attn, mlp
    counts = {}
    for method in ("prompt", "probe", "full", "first:1", "last:2", "middle:1"):
        prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path / "ckpt"), 5 if method == "prompt" else 0, None,
                                   head="linear", num_labels=2)
        trainer = Trainer(MeshState(prompted, trainable=trainable_filter(method, prompted)), optax.adam(1e-3),
                          objective="classification")
        counts[method] = _count(trainer.trainable)
        assert _count(trainer.opt_state) == 2 * counts[method] + 1  # two moments of what trains, and a count
    head = 32 * 2 + 2
    assert counts == {"prompt": 5 * 32 + head, "probe": head, "full": model_params + head,
                      "first:1": block + head, "last:2": 2 * block + head, "middle:1": block + head}


def test_a_bad_method_is_refused():
    with pytest.raises(ValueError, match=r"METHOD 'lora' is not a training method; use 'prompt', 'probe'"):
        parse_method("lora")
    assert parse_method("middle:3") == ("middle", 3)


def test_fine_tuning_on_a_model_parallel_mesh_equals_one_device(tmp_path, rng):
    """Weights that train keep their logical-axis sharding (here over 'model'), and the step is the same."""
    from prompt_tuning_jax import partitioning

    torch_model("gpt2", tmp_path / "ckpt", **SIZES)
    batch = _batch(rng)
    results = []
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.make_mesh(4, 2)):
        prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path / "ckpt"), 0, None, placement="suffix")
        state = MeshState(prompted, mesh, trainable=trainable_filter("full", prompted))
        trainer = Trainer(state, optax.sgd(LR), objective="lm", seed=None)
        trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
        if mesh.shape["model"] == 2:
            fc = trainer.trainable["model"]["h"][0]["mlp"]["c_fc"]["weight"]
            assert "model" in str(fc.sharding.spec)  # sharded, not replicated
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)
