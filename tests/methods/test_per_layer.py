"""METHOD 'per_layer' (the original's extended/train/per_layer.py): a [P, H] prompt at the input of every block.
The original's per_layer_test cases (replace_prompt, add_prompt), ported; one SGD step against the same step
written in PyTorch on the transformers models (GPT-2's blocks, T5's encoder blocks, forward pre-hooks); decoding
against a recomputation without the cache; padding; a run that resumes exactly, saves [L, P, H] and evaluates
from its MODEL_DIR and from that file; and a (4, 2) mesh against one device."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, padded_batch, torch_model, trained_on_both_meshes

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.methods import per_layer
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

LR = 0.5


# ===== the original's per_layer_test =====
def test_replace_prompt():
    prompt, embed = jnp.zeros((2, 5, 20)), jnp.ones((2, 14, 20))  # the original's sizes
    with_prompt = jax.jit(per_layer.replace_prompt)(prompt, embed)
    assert with_prompt.shape == embed.shape
    np.testing.assert_array_equal(with_prompt[:, :5], prompt)
    np.testing.assert_array_equal(with_prompt[:, 5:], embed[:, 5:])


def test_add_prompt():
    prompt, embed = 2 * jnp.ones((2, 5, 20)), jnp.ones((2, 14, 20))
    with_prompt = jax.jit(per_layer.add_prompt)(prompt, embed)
    assert with_prompt.shape == embed.shape
    np.testing.assert_array_equal(with_prompt[:, :5], 3 * jnp.ones((2, 5, 20)))
    np.testing.assert_array_equal(with_prompt[:, 5:], embed[:, 5:])


# ===== one step against PyTorch =====
def _spec(combine, placement="prefix", length=3, **kw):
    return PromptSpec(method="per_layer", per_layer_combine=combine, length=length, init="random_uniform",
                      placement=placement, seed=3, **kw)


def _lm_batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


def _hook(prompt, start, combine):
    """A forward pre-hook that puts `prompt` [P, H] at positions start..start+P-1 of a block's hidden states."""
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        p = prompt.shape[0]
        new = prompt.expand(hidden.shape[0], -1, -1) if combine == "replace" else hidden[:, start:start + p] + prompt
        hidden = hidden.clone()
        hidden[:, start:start + p] = new
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}
    return hook


def _torch_step(family, hf, prompts, ids, targets, combine, placement):
    """prompts [L, P, H] - LR * the gradient of the mean target cross-entropy, in PyTorch."""
    import torch

    w = torch.nn.Parameter(torch.tensor(prompts))
    b, t = ids.shape
    p = prompts.shape[1]
    start = 0 if placement == "prefix" else t
    embed = hf.get_input_embeddings()
    tokens = embed(torch.tensor(ids))
    first = w[0].expand(b, -1, -1)
    inputs = torch.cat([first, tokens], 1) if placement == "prefix" else torch.cat([tokens, first], 1)
    blocks = hf.transformer.h if family == "gpt2" else hf.encoder.block
    handles = [blocks[i].register_forward_pre_hook(_hook(w[i], start, combine), with_kwargs=True)
               for i in range(1, len(blocks))]
    try:
        if family == "gpt2":
            seq = torch.cat([inputs, embed(torch.tensor(targets[:, :-1]))], 1)
            logits = hf(inputs_embeds=seq).logits[:, t + p - 1:]  # position t+p-1+l predicts target l
        else:  # the decoder starts from token 0 (T5's pad) and is fed the targets shifted right
            shifted = torch.tensor(np.concatenate([np.zeros((b, 1), np.int64), targets[:, :-1]], 1))
            logits = hf(inputs_embeds=inputs, decoder_input_ids=shifted).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.tensor(targets).reshape(-1).long())
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    assert float(w.grad[1:].abs().max()) > 1e-5  # the deeper layers' prompts learn
    return (w - LR * w.grad).detach().numpy()


@pytest.mark.parametrize("family,combine,placement", [
    ("gpt2", "replace", "prefix"), ("gpt2", "add", "suffix"), ("t5", "replace", "prefix"), ("t5", "add", "suffix"),
])
def test_one_sgd_step_equals_the_same_step_in_pytorch(tmp_path, rng, family, combine, placement):
    hf = torch_model(family, tmp_path, untied=family == "t5")
    model = ptj.from_pretrained(tmp_path)
    spec = _spec(combine, placement)
    prompted = spec.build(model, None)
    layers = model.config.prompt_blocks
    assert prompted.prompt.shape == (layers, 3, model.config.hidden_size) and layers > 1
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    trainer = Trainer(MeshState(prompted, one, trainable=spec.trainable(prompted)), optax.sgd(LR), objective="lm",
                      seed=None)
    before = np.asarray(trainer.prompt)
    ids = rng.integers(2, 50, (3, 5)).astype(np.int32)
    targets = rng.integers(2, 50, (3, 3)).astype(np.int32)
    trainer.train_step(_lm_batch(ids, targets))
    expected = _torch_step(family, hf, before, ids, targets, combine, placement)
    np.testing.assert_allclose(np.asarray(trainer.prompt), expected, rtol=2e-4, atol=2e-6)


def test_the_trainable_values_are_layers_x_p_x_h(tiny_gpt2_dir):
    spec = _spec("replace", length=4)
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == 2 * 4 * 32
    assert state.has_prompt and state.prompt.shape == (2, 4, 32)
    assert not np.allclose(state.prompt[0], state.prompt[1])  # each layer drawn on its own


# ===== what the prompts do in the model =====
def test_block_zero_is_the_inserted_prompt_and_later_blocks_get_theirs(tiny_gpt2_dir, rng):
    """Replacing with the hidden states a block already has there changes nothing; 'add' of zeros neither;
    and a per-layer model whose later prompts are ignored is plain prompt tuning with layers[0]."""
    model = ptj.from_pretrained(tiny_gpt2_dir)
    prompted = _spec("add").build(model, None)
    ids, mask = padded_batch(rng, 20, [5, 3, 6], 6)
    plain = ptj.with_prompt(model, 3, np.asarray(prompted.prompt[0]))
    prompted.soft_prompt[...] = prompted.soft_prompt[...].at[1:].set(0.0)  # add zeros: plain prompt tuning
    np.testing.assert_allclose(prompted(ids, mask).prediction, plain(ids, mask).prediction, rtol=1e-5, atol=1e-5)
    moved = jnp.asarray(rng.normal(0, 1, (1, 3, 32)), jnp.float32)  # not constant: LayerNorm would hide that
    prompted.soft_prompt[...] = prompted.soft_prompt[...].at[1:].set(moved)  # block 1's input moves
    assert np.abs(np.asarray(prompted(ids, mask).prediction - plain(ids, mask).prediction)).max() > 1e-3


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_a_prediction_does_not_depend_on_padding(tiny_gpt2_dir, rng, placement):
    prompted = _spec("replace", placement).build(ptj.from_pretrained(tiny_gpt2_dir), None)
    ids, mask = padded_batch(rng, 20, [5, 3, 6], 6)
    right = np.asarray(prompted(ids, mask).prediction)
    left_ids, left_mask = padded_batch(np.random.default_rng(0), 20, [5, 3, 6], 9, side="left")
    left_ids = np.where(left_mask > 0, 0, left_ids)
    for b, n in enumerate([5, 3, 6]):
        left_ids[b, 9 - n:] = ids[b, :n]
    np.testing.assert_allclose(np.asarray(prompted(left_ids, left_mask).prediction), right, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,placement", [("gpt2", "prefix"), ("gpt2", "suffix"), ("t5", "prefix")])
def test_decoding_never_re_adds_the_prompt(rng, family, placement):
    """Greedy generation through the cache equals greedy steps recomputed on the whole sequence each time
    (the prompt's positions fixed, the generated tokens after the input and prompt)."""
    from prompt_tuning_jax.decoding import generate
    from helpers import tiny_model

    model = tiny_model(family, seed=1)
    prompted = _spec("add", placement).build(model, None)
    prompted.soft_prompt[...] = prompted.soft_prompt[...] * 4.0  # a prompt that matters
    ids, mask = padded_batch(rng, 40, [5, 3, 6], 6)
    ours = np.asarray(generate(prompted, ids, mask, max_new_tokens=4, eos_id=-1))
    embeds, full_mask, _, site = prompted._combine(jnp.asarray(ids), jnp.asarray(mask), None)
    tokens = []
    for _ in range(4):
        if family == "gpt2":
            at = jnp.asarray(full_mask.sum(1))  # right-padded: after the last real position
            seq, seq_mask, _ = ptj.models.common.insert(embeds, full_mask, model.embed(jnp.asarray(
                np.stack(tokens, 1) if tokens else np.zeros((3, 0), np.int32))), at) if tokens else (embeds, full_mask, 0)
            hidden, _ = model.activations(seq, seq_mask, **site)
            last = jnp.asarray(seq_mask.sum(1) - 1)
            logits = model.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
        else:
            start = jnp.full((3, 1), model.config.decoder_start_token_id, jnp.int32)
            dec = jnp.concatenate([start, jnp.asarray(np.stack(tokens, 1), jnp.int32)], 1) if tokens else start
            hidden, _ = model.activations(embeds, full_mask, decoder_input_ids=dec, **site)
            logits = model.logits(hidden[:, -1])
        tokens.append(np.asarray(jnp.argmax(logits, -1), np.int32))
    np.testing.assert_array_equal(ours[:, :4], np.stack(tokens, 1))


# ===== training runs =====
def _run(folder, tmp_path, name, steps, combine="replace", mesh_shape=(-1, 1)):
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), _spec(combine, length=4), data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 mesh_shape=mesh_shape, optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_run_resumes_exactly_saves_layers_and_evaluates_from_them(tiny_gpt2_dir, tmp_path):
    whole = _run(tiny_gpt2_dir, tmp_path, "whole", 4, "add")
    assert whole["method"] == "per_layer" and whole["trainable_params"] == 2 * 4 * 32
    saved = np.load(tmp_path / "whole" / "prompts" / "prompt_4.npy")
    assert saved.shape == (2, 4, 32)
    np.testing.assert_array_equal(saved, whole["prompt"])
    _run(tiny_gpt2_dir, tmp_path, "halves", 2, "add")
    resumed = _run(tiny_gpt2_dir, tmp_path, "halves", 4, "add")  # from the checkpoint of step 2
    np.testing.assert_array_equal(resumed["prompt"], whole["prompt"])

    model = ModelSpec(tiny_gpt2_dir)
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    spec = _spec("add", length=4)
    from_dir = evaluate(model, spec, data, checkpoint_path=str(tmp_path / "whole"), scoring="rank")
    from_file = evaluate(model, spec, data, checkpoint_path=str(tmp_path / "whole" / "prompts" / "prompt_4.npy"),
                         scoring="rank")
    as_init = evaluate(model, PromptSpec(method="per_layer", per_layer_combine="add", length=4, init="file",
                                         file=str(tmp_path / "whole" / "prompts" / "prompt_4.npy")),
                       data, scoring="rank")
    assert from_dir["rank_accuracy"] == from_file["rank_accuracy"] == as_init["rank_accuracy"]
    assert from_dir["rank_accuracy"] == whole["eval"]["rank_accuracy"]


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = _lm_batch(ids, ids[:, :2], mask)
    assert_trees_close(*trained_on_both_meshes(tiny_gpt2_dir, _spec("replace", "suffix"), batch))


@pytest.mark.parametrize("kw,message", [
    (dict(method="per_layer", per_layer_combine="concat"), "PER_LAYER_COMBINE must be 'replace' or 'add'"),
    (dict(method="per_layer", num_tasks=2), "METHOD 'per_layer' trains one prompt per block for one task"),
    (dict(method="prompt", per_layer_combine="add"), "PER_LAYER_COMBINE is set but METHOD is 'prompt'"),
])
def test_bad_per_layer_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**kw)


def test_a_prompt_file_of_another_shape_is_refused(tiny_gpt2_dir, tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((4, 32), np.float32))
    spec = PromptSpec(method="per_layer", length=4, init="file", file=str(tmp_path / "plain.npy"))
    with pytest.raises(ValueError, match=r"has shape \(4, 32\); layer prompts are one per block, \[L, P, H\] = "
                                         r"\(2, 4, 32\)"):
        spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
