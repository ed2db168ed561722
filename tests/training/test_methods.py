"""Baselines in the same engine (METHOD): one step of fine-tuning (all weights, or the last block) and of the
linear probe equals the same SGD step in PyTorch on the same checkpoint and batch."""
import json

import jax
import numpy as np
import optax
import pytest
import torch
import transformers
from helpers import torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax.models.lora import add_lora
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer
from prompt_tuning_jax.methods import get_method

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
    state = MeshState(prompted, trainable=get_method(method).trainable(prompted))
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
    for method in ("prompt", "probe", "full", "first:1", "last:2", "middle:1", "lora:2"):
        model = ptj.from_pretrained(tmp_path / "ckpt")
        if method == "lora:2":
            add_lora(model, 2)
        prompted = ptj.with_prompt(model, 5 if method == "prompt" else 0, None, head="linear", num_labels=2)
        trainer = Trainer(MeshState(prompted, trainable=get_method(method).trainable(prompted)), optax.adam(1e-3),
                          objective="classification")
        counts[method] = _count(trainer.trainable)
        assert _count(trainer.opt_state) == 2 * counts[method] + 1  # two moments of what trains, and a count
    head = 32 * 2 + 2
    lora = 3 * 2 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))  # 3 blocks, rank 2: (in + out) * r each
    assert counts == {"prompt": 5 * 32 + head, "probe": head, "full": model_params + head,
                      "first:1": block + head, "last:2": 2 * block + head, "middle:1": block + head,
                      "lora:2": lora + head}


def test_fine_tuning_on_a_model_parallel_mesh_equals_one_device(tmp_path, rng):
    """Weights that train keep their logical-axis sharding (here over 'model'), and the step is the same."""
    from prompt_tuning_jax import partitioning

    torch_model("gpt2", tmp_path / "ckpt", **SIZES)
    batch = _batch(rng)
    results = []
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.make_mesh(4, 2)):
        prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path / "ckpt"), 0, None, placement="suffix")
        state = MeshState(prompted, mesh, trainable=get_method("full").trainable(prompted))
        trainer = Trainer(state, optax.sgd(LR), objective="lm", seed=None)
        trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
        if mesh.shape["model"] == 2:
            fc = trainer.trainable["model"]["h"][0]["mlp"]["c_fc"]["weight"]
            assert "model" in str(fc.sharding.spec)  # sharded, not replicated
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)


def _lora_pairs(prompted):
    """(PEFT module name, our LoRA module) for every adapted projection."""
    from prompt_tuning_jax.models.lora import projections

    return [("base_model.model.transformer." + ".".join(map(str, path)), layer.lora)
            for path, layer in projections(prompted.model) if layer.lora is not None]


@pytest.mark.parametrize("targets", [None, ["c_attn"]])
def test_one_lora_step_equals_peft(tmp_path, rng, targets):
    """LoRA on every projection (or on c_attn only): one SGD step equals PEFT's LoRA on the same checkpoint."""
    import peft

    reference = torch_model("gpt2", tmp_path / "ckpt", random_norms=True, **SIZES).train()
    batch = _batch(rng)
    base = ptj.from_pretrained(tmp_path / "ckpt")
    logits_before = np.asarray(base(batch["input_ids"], batch["attention_mask"]))
    prompted = ptj.with_prompt(add_lora(base, 4, alpha=16, targets=targets, seed=1), 0, None, placement="suffix")
    pairs = _lora_pairs(prompted)
    assert len(pairs) == (SIZES["n_layer"] if targets else 4 * SIZES["n_layer"])
    # B starts at zero: the adapted model is the pretrained one ...
    np.testing.assert_array_equal(np.asarray(prompted.model(batch["input_ids"], batch["attention_mask"])),
                                  logits_before)
    for _, lora in pairs:  # ... then a random B, so that A's gradient is not zero either
        lora.lora_B[...] = 0.05 * rng.standard_normal(lora.lora_B.shape).astype(np.float32)
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, fan_in_fan_out=True,
                             target_modules=targets or ["c_attn", "c_proj", "c_fc"])
    model = peft.get_peft_model(reference, config)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, lora in pairs:
            modules[name].lora_A["default"].weight.copy_(torch.tensor(np.asarray(lora.lora_A[...]).T))
            modules[name].lora_B["default"].weight.copy_(torch.tensor(np.asarray(lora.lora_B[...]).T))
    trainer = Trainer(MeshState(prompted, trainable=get_method("lora:4").trainable(prompted)), optax.sgd(LR),
                      objective="lm", seed=None)
    assert _count(trainer.trainable) == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    a_before = np.asarray(pairs[0][1].lora_A[...])
    metrics = trainer.train_step(batch)
    torch_loss = _torch_lm_step(model, batch, {n for n, _ in model.named_parameters() if "lora_" in n})
    assert float(metrics["loss_sum"] / metrics["denominator"]) == pytest.approx(torch_loss, rel=1e-5)
    for name, lora in _lora_pairs(trainer.prompted_model()):
        for ours, theirs in ((lora.lora_A[...], modules[name].lora_A["default"].weight),
                             (lora.lora_B[...], modules[name].lora_B["default"].weight)):
            np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy().T, rtol=1e-5, atol=1e-6,
                                       err_msg=name)
    assert not np.allclose(a_before, np.asarray(_lora_pairs(trainer.prompted_model())[0][1].lora_A[...]))  # A moved

    # The trained factors as a PEFT adapter: PEFT loads it onto the checkpoint and computes our logits.
    from prompt_tuning_jax.prompts.io import export_peft_lora

    trained = trainer.prompted_model().model
    export_peft_lora(tmp_path / "adapter", trained, str(tmp_path / "ckpt"))
    loaded = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt"),
                                            tmp_path / "adapter").eval()
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].lora_alpha == 16
    with torch.no_grad():
        theirs = loaded(input_ids=torch.tensor(batch["input_ids"]).long(),
                        attention_mask=torch.tensor(batch["attention_mask"]).long()).logits.numpy()
    ours = np.asarray(trained(batch["input_ids"], batch["attention_mask"]))
    real = batch["attention_mask"] > 0
    np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


def test_lora_init_is_peft_init(tmp_path):
    """lora_A is Kaiming-uniform(a=sqrt(5)) as PEFT's, in +-1/sqrt(in); lora_B starts at zero."""
    from prompt_tuning_jax.models.lora import LoRA

    from flax import nnx

    lora = LoRA(128, 32, 8, 8.0, rngs=nnx.Rngs(0))
    a = np.asarray(lora.lora_A[...])
    assert a.shape == (128, 8) and np.abs(a).max() <= 128**-0.5 and np.abs(a).max() > 0.9 * 128**-0.5
    assert np.std(a) == pytest.approx(128**-0.5 / 3**0.5, rel=0.1)  # uniform(-b, b) has std b / sqrt(3)
    assert not np.asarray(lora.lora_B[...]).any() and lora.scaling == 1.0


def test_lora_of_t5_adapts_every_projection(tmp_path):
    from helpers import tiny_model

    from prompt_tuning_jax.models.lora import add_lora, projections

    model = add_lora(tiny_model("t5"), 2)
    names = {path[-1] for path, layer in projections(model) if layer.lora is not None}
    assert names == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"} or names == {"q", "k", "v", "o", "wi", "wo"}
    with pytest.raises(ValueError, match=r"LORA_TARGETS \['c_attn'\] names no projection.*'q'"):
        add_lora(tiny_model("t5"), 2, targets=["c_attn"])


def test_t5_lora_adapter_loads_in_peft_with_our_logits(tmp_path, rng):
    """T5 (v1.1, gated MLP): LoRA factors beside q, k, v, o, wi_0, wi_1, wo, exported as a PEFT adapter
    (SEQ_2_SEQ_LM, PyTorch Linear layout): PEFT's model computes our logits."""
    import peft

    from prompt_tuning_jax.models.lora import add_lora, projections
    from prompt_tuning_jax.prompts.io import export_peft_lora

    torch_model("t5", tmp_path / "ckpt", untied=True)
    model = add_lora(ptj.from_pretrained(tmp_path / "ckpt"), 3, alpha=6)
    for _, layer in projections(model):
        layer.lora.lora_B[...] = 0.1 * rng.standard_normal(layer.lora.lora_B.shape).astype(np.float32)
    export_peft_lora(tmp_path / "adapter", model, str(tmp_path / "ckpt"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["task_type"], config["fan_in_fan_out"], config["r"]) == ("SEQ_2_SEQ_LM", False, 3)
    assert set(config["target_modules"]) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    theirs_model = peft.PeftModel.from_pretrained(
        transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ckpt"), tmp_path / "adapter").eval()
    ids = rng.integers(1, 50, (2, 7)).astype(np.int32)
    dec = rng.integers(1, 50, (2, 4)).astype(np.int32)
    mask, dec_mask = np.ones_like(ids), np.ones_like(dec)
    ours = np.asarray(model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask))
    with torch.no_grad():
        theirs = theirs_model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                              decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
    no_lora = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        base = no_lora(input_ids=torch.tensor(ids).long(), decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
    assert np.abs(theirs - base).max() > 1e-2  # the adapter changes the model ...
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)  # ... as ours does


def test_lora_on_a_model_parallel_mesh_equals_one_device(tmp_path, rng):
    """LoRA factors are replicated while the frozen weights they sit beside are sharded over 'model'."""
    from prompt_tuning_jax import partitioning
    from prompt_tuning_jax.models.lora import projections

    torch_model("gpt2", tmp_path / "ckpt", **SIZES)
    batch = _batch(rng)
    results = []
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.make_mesh(4, 2)):
        model = add_lora(ptj.from_pretrained(tmp_path / "ckpt"), 2, seed=4)
        for _, layer in projections(model):
            layer.lora.lora_B[...] = np.full(layer.lora.lora_B.shape, 0.01, np.float32)
        prompted = ptj.with_prompt(model, 0, None, placement="suffix")
        trainer = Trainer(MeshState(prompted, mesh, trainable=get_method("lora:2").trainable(prompted)), optax.sgd(LR),
                          objective="lm", seed=None)
        trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)
