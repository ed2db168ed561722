"""METHOD 'prefix:P' (prefix tuning, PEFT's PrefixTuningConfig): one SGD step from the same prefix and batch as
PEFT's (GPT-2 and T5, with and without PREFIX_PROJECTION: the loss and every updated weight), exported adapters
in PEFT and PEFT's adapters here, the prefix computed once per batch, decoding that holds it once beside the
cache, bfloat16, a run that resumes exactly and evaluates from its MODEL_DIR, and a (4, 2) mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, padded_batch, torch_model, trained_on_both_meshes

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.models.prefix import add_prefix, fold_prefix, from_flat, to_flat
from prompt_tuning_jax.prompts.io import export_peft_prefix, import_peft_prefix
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

LR = 0.5
# T5 with 3 layers (PEFT's rows 0, 2, 1 for decoder blocks 0, 1, 2) and heads x d_kv = 24 != d_model 32.
SHAPES = {"gpt2": {}, "t5": {"num_layers": 3, "d_kv": 6}}


def _batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


def _torch_loss(family, model, ids, targets):
    """Mean cross-entropy of the targets teacher-forced after the inputs (GPT-2) or decoded (T5)."""
    import torch

    b, t = ids.shape
    if family == "gpt2":
        full = np.concatenate([ids, targets[:, :-1]], 1)
        logits = model(input_ids=torch.tensor(full).long(), attention_mask=torch.ones(full.shape).long()).logits
        logits = logits[:, t - 1:]
    else:
        shifted = np.concatenate([np.zeros((b, 1), np.int64), targets[:, :-1]], 1)
        logits = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.ones(ids.shape).long(),
                       decoder_input_ids=torch.tensor(shifted), decoder_attention_mask=torch.ones(shifted.shape)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.tensor(targets).reshape(-1).long())


def _peft_model(hf, prefix, family):
    """PEFT's trainable prefix-tuning model (with `prefix_projection` when ours has one), its weights set to
    our `prefix`'s (PEFT loads saved prompt-learning adapters for inference only)."""
    import torch
    from peft import PrefixTuningConfig, get_peft_model

    layers, _, length, heads, head_dim = prefix.shape
    projected = prefix.table is None
    config = PrefixTuningConfig(task_type="CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM",
                                num_virtual_tokens=length, prefix_projection=projected,
                                encoder_hidden_size=prefix.transform[0]["weight"].shape[0] if projected else None,
                                token_dim=heads * head_dim, num_attention_heads=heads, num_layers=layers)
    peft = get_peft_model(hf, config)
    encoder = peft.prompt_encoder["default"]
    with torch.no_grad():
        for name, value in _ours_by_peft_name(prefix).items():
            target = encoder.get_parameter(name)
            assert tuple(target.shape) == value.shape, name
            target.copy_(torch.tensor(value))
    return peft


def _ours_by_peft_name(prefix) -> dict:
    if prefix.table is not None:
        return {"embedding.weight": to_flat(prefix.table[...])}
    names = {"embedding.weight": prefix.embedding[...]}
    for i, linear in zip((0, 2), prefix.transform):
        names.update({f"transform.{i}.weight": linear["weight"][...], f"transform.{i}.bias": linear["bias"][...]})
    return {k: np.asarray(v) for k, v in names.items()}


@pytest.mark.parametrize("family", ["gpt2", "t5"])
@pytest.mark.parametrize("projection", [None, 12])
def test_one_sgd_step_equals_peft(tmp_path, rng, family, projection):
    """From the same prefix (copied into PEFT's table, or its embedding and MLP) and batch: the same loss, and
    every trained weight updated alike."""
    import torch

    hf = torch_model(family, tmp_path / "base", untied=family == "t5", **SHAPES[family])
    spec = PromptSpec(method="prefix:3", prefix_projection=projection, seed=1)
    prompted = spec.build(ptj.from_pretrained(tmp_path / "base"), None)
    peft = _peft_model(hf, prompted.model.prefix, family)
    ids = rng.integers(2, 50, (3, 5)).astype(np.int32)
    targets = rng.integers(2, 50, (3, 3)).astype(np.int32)
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    trainer = Trainer(MeshState(prompted, one, trainable=spec.trainable(prompted)), optax.sgd(LR), objective="lm",
                      seed=None)
    metrics = trainer.train_step(_batch(ids, targets))

    params = {n.split("prompt_encoder.default.")[-1]: p for n, p in peft.named_parameters() if p.requires_grad}
    loss = _torch_loss(family, peft, ids, targets)
    loss.backward()
    with torch.no_grad():
        updated = {n: (p - LR * p.grad).numpy() for n, p in params.items()}
    assert float(metrics["loss_sum"]) / float(metrics["denominator"]) == pytest.approx(loss.item(), rel=1e-5)
    ours = _ours_by_peft_name(trainer.state.merge(trainer.trainable).model.prefix)
    assert set(ours) == set(updated)
    for name, value in ours.items():
        np.testing.assert_allclose(value, updated[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_adapters_both_ways_give_peft_logits(tmp_path, rng, family):
    """Our exported prefix (a projection folded first) in PEFT gives our logits; a PEFT-saved projected adapter
    read back here gives PEFT's; generation through the cache equals teacher forcing."""
    import torch
    from peft import PeftModel

    hf = torch_model(family, tmp_path / "base", untied=family == "t5", **SHAPES[family])
    model = add_prefix(ptj.from_pretrained(tmp_path / "base"), 4, projection=10, seed=3)
    ids = rng.integers(2, 50, (2, 6)).astype(np.int64)
    dec = np.concatenate([np.zeros((2, 1), np.int64), ids[:, :3]], 1)
    kw = {} if family == "gpt2" else {"decoder_input_ids": jnp.asarray(dec)}
    projected = np.asarray(model(jnp.asarray(ids), **kw))
    fold_prefix(model)
    assert model.prefix.transform is None
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), **kw)), projected, rtol=1e-5, atol=1e-5)
    export_peft_prefix(tmp_path / "ours", model, str(tmp_path / "base"))
    peft = PeftModel.from_pretrained(hf, str(tmp_path / "ours"))
    tkw = {} if family == "gpt2" else {"decoder_input_ids": torch.tensor(dec),
                                       "decoder_attention_mask": torch.ones(dec.shape).long()}
    with torch.no_grad():
        theirs = peft(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape).long(), **tkw).logits.numpy()
    np.testing.assert_allclose(projected, theirs, rtol=1e-4, atol=1e-4)

    # PEFT saves its own (trainable, projected) prefix as the MLP's output; ours reads it.
    peft_projected = _peft_model(torch_model(family, None, untied=family == "t5", **SHAPES[family]),
                                     add_prefix(ptj.from_pretrained(tmp_path / "base"), 4, projection=10, seed=5).prefix,
                                     family)
    peft_projected.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        expected = peft_projected(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape).long(),
                                  **tkw).logits.numpy()
    again = add_prefix(ptj.from_pretrained(tmp_path / "base"), 4)
    import_peft_prefix(again, tmp_path / "peft" / "default" if (tmp_path / "peft" / "default").exists()
                       else tmp_path / "peft")
    np.testing.assert_allclose(np.asarray(again(jnp.asarray(ids), **kw)), expected, rtol=1e-4, atol=1e-4)


def test_flat_layout_round_trips(rng):
    table = rng.normal(size=(3, 2, 4, 2, 5)).astype(np.float32)
    flat = to_flat(table)
    assert flat.shape == (4, 3 * 2 * 2 * 5)
    np.testing.assert_array_equal(flat.reshape(4, 6, 2, 5)[:, 2 * 1 + 1], table[1, 1])  # PEFT's view(P, L*2, N, D)
    np.testing.assert_array_equal(from_flat(flat, table.shape), table)


def _projection_rows(fn, *args, weight_shape) -> list[int]:
    """The rows of every matrix product with the projection's last weight ([L*2*N*D, H']): how many times
    the keys and values are made."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general" and any(v.aval.shape in (weight_shape, weight_shape[::-1]) for v in eqn.invars):
                found.append(int(np.prod(eqn.outvars[0].aval.shape[:-1])))
            for value in eqn.params.values():  # inner jaxprs (jit, remat, custom_vjp, ...)
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_the_prefix_is_computed_once_per_batch_and_decoding_holds_it_once(rng):
    """The projection runs on the P virtual tokens only ([P, H'] -> keys and values), not once per row; every
    row attends to the same [1, P] keys; a decode's cache has no prefix slots and generates what teacher
    forcing predicts."""
    from helpers import tiny_model

    model = add_prefix(tiny_model("gpt2"), 3, projection=8)
    ids, mask = padded_batch(rng, 50, [5, 3, 6, 4], 6)
    rows = _projection_rows(lambda i, m: model(i, m), ids, mask, weight_shape=(2 * 2 * 48, 8))
    assert rows == [3], rows  # one [P, H'] @ [H', L*2*H] product for the batch of 4, not one per row

    prompted = ptj.with_prompt(model, 0)
    logits, cache, step = prompted.start_decode(jnp.asarray(ids), jnp.asarray(mask), None, 2)
    assert all(k.shape == (4, 6 + 2, 4, 12) for k, _ in cache)  # S + max_new_tokens slots, no prefix rows
    token = jnp.argmax(logits, -1)
    after, _ = step(cache, token, 0)
    # Teacher forcing: append the token after each row's last real one.
    full = np.zeros((4, 7), np.int32)
    full_mask = np.zeros((4, 7), np.int32)
    for b, n in enumerate(mask.sum(1)):
        full[b, :n], full[b, n], full_mask[b, :n + 1] = ids[b, :n], int(token[b]), 1
    forced = model(jnp.asarray(full), jnp.asarray(full_mask))
    expected = np.stack([np.asarray(forced[b, n]) for b, n in enumerate(mask.sum(1))])
    np.testing.assert_allclose(np.asarray(after), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_a_bfloat16_step(rng, family):
    from helpers import tiny_model

    spec = PromptSpec(method="prefix:2")
    prompted = spec.build(tiny_model(family, dtype=jnp.bfloat16), None)
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    layers, _, p, n, d = prompted.model.prefix.shape
    assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == layers * 2 * p * n * d
    ids, mask = padded_batch(rng, 50, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    trainer = Trainer(state, optax.adam(0.05), objective="lm", seed=None)
    metrics = trainer.train_step(_batch(ids, ids[:, :2], mask))
    assert np.isfinite(float(metrics["loss_sum"]))
    assert {x.dtype for x in jax.tree.leaves(trainer.trainable)} == {jnp.dtype(jnp.float32)}


def test_the_padding_side_does_not_change_a_prediction(rng):
    from helpers import tiny_model

    prompted = ptj.with_prompt(add_prefix(tiny_model("gpt2"), 2), 0)
    lengths = [6, 4, 5, 3]
    ids, mask = padded_batch(rng, 50, lengths, 6)
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for b, n in enumerate(lengths):
        left_ids[b, 6 - n:], left_mask[b, 6 - n:] = ids[b, :n], 1
    np.testing.assert_allclose(np.asarray(prompted(left_ids, left_mask).prediction),
                               np.asarray(prompted(ids, mask).prediction), rtol=1e-5, atol=1e-5)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="PREFIX_PROJECTION must be None"):
        PromptSpec(method="prefix:4", prefix_projection=0)
    with pytest.raises(ValueError, match="METHOD 'prefix:0'"):
        PromptSpec(method="prefix:0")
    with pytest.raises(ValueError, match="PREFIX_PROJECTION is set but METHOD is .prompt."):
        PromptSpec(method="prompt", prefix_projection=8)


def _run(folder, tmp_path, name, steps, **kw):
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), PromptSpec(method="prefix:4", **kw), data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_run_resumes_exactly_writes_its_adapter_and_evaluates_from_it(tiny_gpt2_dir, tmp_path):
    whole = _run(tiny_gpt2_dir, tmp_path, "whole", 4, prefix_projection=16)
    assert whole["method"] == "prefix:4"
    assert whole["trainable_params"] == 4 * 32 + (32 * 16 + 16) + (16 * 2 * 2 * 32 + 2 * 2 * 32)  # [P, H], MLP
    adapter = tmp_path / "whole" / "prefix_adapter"
    assert whole["prefix_adapter"] == str(adapter) and (adapter / "adapter_config.json").exists()
    _run(tiny_gpt2_dir, tmp_path, "halves", 2, prefix_projection=16)
    resumed = _run(tiny_gpt2_dir, tmp_path, "halves", 4, prefix_projection=16)
    from prompt_tuning_jax.prompts.io import _read_peft_tensors

    np.testing.assert_array_equal(*(_read_peft_tensors(str(tmp_path / run / "prefix_adapter"))["prompt_embeddings"]
                                    for run in ("whole", "halves")))
    assert resumed["eval"] == whole["eval"]
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    for path, kw in ((tmp_path / "whole", {"prefix_projection": 16}), (adapter, {})):
        again = evaluate(ModelSpec(tiny_gpt2_dir), PromptSpec(method="prefix:4", **kw), data,
                         checkpoint_path=str(path), scoring="rank")
        assert again["rank_accuracy"] == whole["eval"]["rank_accuracy"]


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = _batch(ids, ids[:, :2], mask)
    # the (4, 2) mesh sums attention and projections in another order: a few 1e-6 over the training steps
    assert_trees_close(*trained_on_both_meshes(tiny_gpt2_dir, PromptSpec(method="prefix:2", prefix_projection=8),
                                               batch), atol=1e-5)


def test_adapters_that_do_not_fit_are_refused(tmp_path):
    from helpers import tiny_model

    from prompt_tuning_jax.models.ia3 import add_ia3
    from prompt_tuning_jax.prompts.io import import_peft_ia3

    export_peft_prefix(tmp_path / "p4", add_prefix(tiny_model("gpt2"), 4))
    with pytest.raises(ValueError, match=r"has 4 virtual tokens; this run's prefix has 3: set METHOD 'prefix:4'"):
        import_peft_prefix(add_prefix(tiny_model("gpt2"), 3), tmp_path / "p4")
    with pytest.raises(ValueError, match="start from it with PREFIX_PROJECTION = None"):
        import_peft_prefix(add_prefix(tiny_model("gpt2"), 4, projection=8), tmp_path / "p4")
    with pytest.raises(ValueError, match=r"prompt_embeddings has shape \(4, 192\), which does not fit"):
        import_peft_prefix(add_prefix(tiny_model("gpt2", n_layer=3), 4), tmp_path / "p4")
    with pytest.raises(ValueError, match="holds a PREFIX_TUNING adapter, but this METHOD reads IA3 adapters"):
        import_peft_ia3(add_ia3(tiny_model("gpt2")), tmp_path / "p4")
