"""METHOD 'ptuning' (P-tuning, Liu et al. 2021, as PEFT's PromptEncoderConfig): a prompt encoder (an embedding
of the virtual tokens, then an MLP or a bidirectional LSTM and an MLP) makes the prompt. One SGD step from PEFT's
own initial encoder equals PEFT's step in PyTorch (loss and every weight; GPT-2 and T5, 'mlp' and 'lstm'); the
exported P_TUNING adapter loads in PEFT and gives our logits; the exported .npy evaluates with METHOD 'prompt' as
the encoder does; a run resumes exactly; a (4, 2) mesh equals one device; a bfloat16 model trains a float32
encoder; bad settings are refused."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from helpers import assert_logits_close, padded_batch, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.experiments.loading import load_prompted
from prompt_tuning_jax.methods import ptuning
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

LR, P, HIDDEN = 0.5, 3, 16  # learning rate, PROMPT_LENGTH, PTUNING_HIDDEN
TASK_TYPE = {"gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # get_peft_model's, not ours
t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
forward = nnx.jit(lambda model, ids, mask, **kw: model(ids, mask, **kw))  # compiled: eager calls are slower


def _spec(encoder="mlp", length=P, **kw):
    return PromptSpec(method="ptuning", length=length, init="random_uniform", ptuning_encoder=encoder,
                      ptuning_hidden=HIDDEN, seed=3, **kw)


def _peft(hf, family, encoder):
    """PEFT's own P-tuning model of the transformers model `hf`, as it starts training."""
    from peft import PromptEncoderConfig, get_peft_model

    config = PromptEncoderConfig(task_type=TASK_TYPE[family], num_virtual_tokens=P,
                                 encoder_reparameterization_type=encoder.upper(), encoder_hidden_size=HIDDEN)
    return get_peft_model(hf, config).eval()  # eval: no dropout in the frozen model (the encoder has none)


def _lm_batch(ids, targets, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32)}


def _trainer(prompted, spec, tx, mesh=None):
    mesh = mesh or partitioning.make_mesh(devices=jax.devices()[:1])
    return Trainer(MeshState(prompted, mesh, trainable=spec.trainable(prompted)), tx, objective="lm", seed=None)


def _peft_step(pm, family, ids, targets):
    """PEFT's loss (mean cross-entropy over the target tokens) and its encoder after one SGD step, in PyTorch."""
    b, n = ids.shape
    if family == "gpt2":  # PEFT prepends the P virtual tokens; position P+n-1+l predicts target l
        logits = pm(input_ids=t(np.concatenate([ids, targets[:, :-1]], 1))).logits[:, P + n - 1:]
    else:  # the decoder starts from token 0 (T5's pad) and is fed the targets shifted right
        shifted = np.concatenate([np.zeros((b, 1), np.int64), targets[:, :-1]], 1)
        logits = pm(input_ids=t(ids), decoder_input_ids=t(shifted)).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t(targets).reshape(-1))
    encoder = pm.prompt_encoder["default"]
    loss.backward()
    after = {name: (p - LR * p.grad).detach().numpy() for name, p in encoder.named_parameters()}
    return float(loss.detach()), after


# ===== one step against PEFT =====
@pytest.mark.filterwarnings(PEFT_WARNING)
@pytest.mark.parametrize("family,encoder", [("gpt2", "mlp"), ("gpt2", "lstm"), ("t5", "mlp"), ("t5", "lstm")])
def test_one_sgd_step_equals_peft(tmp_path, rng, family, encoder):
    hf = torch_model(family, tmp_path, untied=family == "t5")
    spec = _spec(encoder)
    prompted = spec.build(ptj.from_pretrained(tmp_path), None)
    pm = _peft(hf, family, encoder)
    ptuning.load_peft_state_dict(prompted.prompt_module, pm.prompt_encoder["default"].state_dict())
    before = ptuning.peft_state_dict(prompted.prompt_module)
    trainer = _trainer(prompted, spec, optax.sgd(LR))
    ids = rng.integers(2, 50, (3, 5)).astype(np.int32)
    targets = rng.integers(2, 50, (3, 3)).astype(np.int32)
    metrics = trainer.train_step(_lm_batch(ids, targets))
    ours = ptuning.peft_state_dict(trainer.prompted_model().prompt_module)
    loss, theirs = _peft_step(pm, family, ids, targets)
    np.testing.assert_allclose(float(metrics["loss_sum"] / metrics["denominator"]), loss, rtol=1e-5)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        step = np.abs(value - before[name]).max()  # GPT-2's tiny logits give small steps: compare the steps too
        assert np.abs(ours[name] - value).max() <= 1e-3 * step + 1e-9, name
    assert all(np.abs(ours[n] - before[n]).max() > 1e-6 for n in ours if n != "embedding.weight")  # all learn


def test_the_trainable_values_are_the_encoders(tiny_gpt2_dir):
    h, w = HIDDEN, 32
    for encoder, count in (("mlp", P * w + (w * h + h) + (h * h + h) + (h * w + w)),
                           ("lstm", P * w + 2 * (4 * h * (w + h + 2)) + 2 * (4 * h * (2 * h + h + 2))
                            + (2 * h * 2 * h + 2 * h) + (2 * h * w + w))):
        spec = _spec(encoder)
        prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
        state = MeshState(prompted, trainable=spec.trainable(prompted))
        assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == count
        assert set(state.trainable) == {"prompt_module"} and not state.has_prompt  # the empty soft prompt: frozen
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))


# ===== what a run exports =====
def _export(tmp_path, prompted, spec, base):
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    return spec.method_impl.export(str(tmp_path / "run"), state, state.trainable, base)


@pytest.mark.filterwarnings(PEFT_WARNING)
@pytest.mark.parametrize("family,encoder", [("gpt2", "mlp"), ("t5", "lstm")])
def test_the_exported_adapter_loads_in_peft_and_gives_our_logits(tmp_path, rng, family, encoder):
    import transformers
    from peft import PeftModel

    hf = torch_model(family, tmp_path / "base", untied=family == "t5")
    spec = _spec(encoder)
    prompted = spec.build(ptj.from_pretrained(tmp_path / "base"), None)
    out = _export(tmp_path, prompted, spec, str(tmp_path / "base"))
    folder = out["ptuning_adapter"]
    written = json.loads((tmp_path / "run" / "ptuning_adapter" / "adapter_config.json").read_text())
    _peft(hf, family, encoder).save_pretrained(tmp_path / "peft_saved")  # the keys PEFT writes itself
    assert set(written) == set(json.loads((tmp_path / "peft_saved" / "adapter_config.json").read_text()))
    assert written["peft_type"] == "P_TUNING" and written["encoder_reparameterization_type"] == encoder.upper()

    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.T5ForConditionalGeneration
    peft = PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base").eval(), folder).eval()
    vocab = hf.config.vocab_size
    ids, mask = padded_batch(rng, vocab, [7, 4], 7)
    dec, dec_mask = padded_batch(rng, vocab, [3, 2], 3)
    extra = {} if family == "gpt2" else {"decoder_input_ids": dec, "decoder_attention_mask": dec_mask}
    with torch.no_grad():
        theirs = peft(input_ids=t(ids), attention_mask=t(mask), **{k: t(v) for k, v in extra.items()}).logits.numpy()
    ours = forward(prompted, ids, mask, **extra)
    assert_logits_close(ours.logits, theirs, ours.attention_mask if family == "gpt2" else dec_mask)
    np.testing.assert_array_equal(np.load(out["prompt_file"]), out["prompt"])
    assert out["prompt"].shape == (P, hf.config.hidden_size)


def test_the_exported_npy_evaluates_with_method_prompt_as_the_encoder(tiny_gpt2_dir, tmp_path, rng):
    spec = _spec("lstm", placement="suffix")
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    out = _export(tmp_path, prompted, spec, tiny_gpt2_dir)
    plain = load_prompted(ModelSpec(tiny_gpt2_dir), PromptSpec(length=P, placement="suffix"), [],
                          partitioning.make_mesh(devices=jax.devices()[:1]), checkpoint_path=out["prompt_file"])
    ids, mask = padded_batch(rng, 20, [5, 3, 6], 6)
    ours = np.asarray(forward(prompted, ids, mask).prediction)
    theirs = np.asarray(forward(plain.state.merge(), ids, mask).prediction)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    adapter = load_prompted(ModelSpec(tiny_gpt2_dir), PromptSpec(length=P, placement="suffix"), [],  # PEFT's folder
                            partitioning.make_mesh(devices=jax.devices()[:1]), checkpoint_path=out["ptuning_adapter"])
    np.testing.assert_allclose(np.asarray(forward(adapter.state.merge(), ids, mask).prediction), ours,
                               rtol=1e-5, atol=1e-5)


def test_a_peft_adapter_cannot_restore_the_encoder(tiny_gpt2_dir, tmp_path):
    spec = _spec("mlp")
    out = _export(tmp_path, spec.build(ptj.from_pretrained(tiny_gpt2_dir), None), spec, tiny_gpt2_dir)
    with pytest.raises(ValueError, match="PEFT saves a P-tuning model as its encoder's output alone"):
        load_prompted(ModelSpec(tiny_gpt2_dir), spec, [], partitioning.make_mesh(devices=jax.devices()[:1]),
                      checkpoint_path=out["ptuning_adapter"])


# ===== training runs =====
def _run(folder, tmp_path, name, steps, mesh_shape=(-1, 1)):
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), _spec("lstm", length=4), data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 mesh_shape=mesh_shape, optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_run_resumes_exactly_and_evaluates_from_its_model_dir_and_npy(tiny_gpt2_dir, tmp_path):
    whole = _run(tiny_gpt2_dir, tmp_path, "whole", 4)
    assert whole["method"] == "ptuning" and whole["prompt"].shape == (4, 32)
    assert (tmp_path / "whole" / "ptuning_adapter" / "adapter_model.safetensors").exists()
    _run(tiny_gpt2_dir, tmp_path, "halves", 2)
    resumed = _run(tiny_gpt2_dir, tmp_path, "halves", 4)  # from the checkpoint of step 2
    np.testing.assert_array_equal(resumed["prompt"], whole["prompt"])

    model = ModelSpec(tiny_gpt2_dir)
    data = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)
    from_dir = evaluate(model, _spec("lstm", length=4), data, checkpoint_path=str(tmp_path / "whole"), scoring="rank")
    from_npy = evaluate(model, PromptSpec(length=4), data, scoring="rank",  # METHOD 'prompt'
                        checkpoint_path=str(tmp_path / "whole" / "prompts" / "prompt_latest.npy"))
    assert from_dir["rank_accuracy"] == from_npy["rank_accuracy"] == whole["eval"]["rank_accuracy"]


def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = _lm_batch(ids, ids[:, :2], mask)
    results = []
    for mesh in (partitioning.make_mesh(4, 2), partitioning.make_mesh(devices=jax.devices()[:1])):
        spec = _spec("lstm")
        prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
        trainer = _trainer(prompted, spec, optax.adam(0.05), mesh)
        for _ in range(3):
            trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)


def test_a_bfloat16_model_trains_a_float32_encoder(tiny_gpt2_dir, rng):
    spec = _spec("mlp")
    model = ptj.from_pretrained(tiny_gpt2_dir, dtype=jnp.bfloat16)
    prompted = spec.build(model, None)
    trainer = _trainer(prompted, spec, optax.sgd(LR))
    before = jax.tree.map(np.asarray, trainer.trainable)
    ids, mask = padded_batch(rng, 20, [6, 4, 5], 6)
    metrics = trainer.train_step(_lm_batch(ids, ids[:, :2], mask))
    assert np.isfinite(float(metrics["loss_sum"])) and float(metrics["nonfinite_steps"]) == 0
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.trainable))
    moved = jax.tree.map(lambda a, b: bool(np.abs(np.asarray(b) - a).max() > 0), before, trainer.trainable)
    assert all(jax.tree.leaves(moved))


# ===== settings =====
def test_the_gin_file_binds_the_settings():
    import gin

    from prompt_tuning_jax import cli

    cli.parse_gin(["models/gpt2.gin", "prompts/ptuning.gin", "runs/prompt_finetune.gin"],
                  ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='sst2'", "PTUNING_ENCODER='lstm'", "PTUNING_HIDDEN=8",
                   "PTUNING_NUM_LAYERS=1"])
    try:
        spec = gin.get_configurable("ptj.PromptSpec")()
    finally:
        gin.clear_config()
    assert (spec.method, spec.ptuning_encoder, spec.ptuning_hidden, spec.ptuning_num_layers,
            spec.ptuning_dropout) == ("ptuning", "lstm", 8, 1, 0.0)


@pytest.mark.parametrize("kw,message", [
    (dict(ptuning_encoder="gru"), r"PTUNING_ENCODER must be one of \('mlp', 'lstm'\)"),
    (dict(ptuning_encoder="MLP"), r"PTUNING_ENCODER must be one of \('mlp', 'lstm'\)"),
    (dict(ptuning_hidden=0), "PTUNING_HIDDEN"),
    (dict(ptuning_num_layers=3), "PTUNING_NUM_LAYERS=3 is read by PTUNING_ENCODER 'lstm' only"),
    (dict(ptuning_encoder="lstm", ptuning_num_layers=0), "PTUNING_NUM_LAYERS must be an integer >= 1"),
    (dict(ptuning_dropout=0.1), "PTUNING_DROPOUT=0.1 acts between LSTM layers only"),
    (dict(ptuning_encoder="lstm", ptuning_num_layers=1, ptuning_dropout=0.1), "PTUNING_DROPOUT=0.1 acts between"),
    (dict(ptuning_encoder="lstm", ptuning_dropout=1.0), r"PTUNING_DROPOUT must be a number in \[0, 1\)"),
    (dict(num_tasks=2), "METHOD 'ptuning' trains one prompt encoder for one task, but there are 2 tasks"),
    (dict(method="prompt", ptuning_encoder="lstm"), "PTUNING_ENCODER is set but METHOD is 'prompt'"),
    (dict(method="multitask", ptuning_hidden=8), "PTUNING_HIDDEN is set but METHOD is 'multitask'"),
])
def test_bad_ptuning_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**{"method": "ptuning", **kw})


def test_dropout_acts_between_lstm_layers_in_training_only(monkeypatch, tiny_gpt2_dir, rng):
    """PTUNING_DROPOUT where PyTorch's LSTM(dropout=...) puts it in PEFT's encoder: on each LSTM layer's output but
    the last, with one mask for the batch, only when the training step gives a dropout key."""
    from prompt_tuning_jax.models import common

    spec = _spec("lstm", ptuning_num_layers=3, ptuning_dropout=0.5)
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    encoder = prompted.prompt_module
    calls, real = [], common.dropout

    def recording(x, rate, keys):  # the encoder's calls: one [1, T, 2h] row (the model's have a row per example)
        if keys is not None and x.shape[0] == 1:
            calls.append((x.shape, rate))
        return real(x, rate, keys)

    monkeypatch.setattr(common, "dropout", recording)
    plain = np.asarray(encoder.encode())
    ids, mask = padded_batch(rng, 20, [5, 3], 5)
    np.testing.assert_array_equal(np.asarray(prompted(ids, mask).prediction),
                                  np.asarray(prompted(ids, mask).prediction))  # no key, no dropout
    assert calls == []
    a, b, c = (np.asarray(encoder.encode(jax.random.key(seed))) for seed in (0, 0, 1))
    assert calls == [((1, P, 2 * HIDDEN), 0.5)] * 2 * 3  # layers 0 and 1 of 3, per call
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)
    calls.clear()
    trained = prompted(ids, mask, dropout_rng=jax.random.key(0)).prediction  # the training path hands it a key
    assert len(calls) == 2 and not np.allclose(np.asarray(trained), np.asarray(prompted(ids, mask).prediction))
    config = ptuning.peft_adapter_config(encoder, prompted.model, None)
    assert config["encoder_dropout"] == 0.5


def test_a_peft_encoder_of_another_shape_is_refused(tiny_gpt2_dir):
    from peft import PromptEncoder, PromptEncoderConfig

    prompted = _spec("mlp").build(ptj.from_pretrained(tiny_gpt2_dir), None)
    lstm = PromptEncoder(PromptEncoderConfig(num_virtual_tokens=P, token_dim=32, num_transformer_submodules=1,
                                             encoder_reparameterization_type="LSTM", encoder_hidden_size=HIDDEN))
    with pytest.raises(ValueError, match="are not this encoder's"):
        ptuning.load_peft_state_dict(prompted.prompt_module, lstm.state_dict())
