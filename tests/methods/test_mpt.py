"""METHOD 'mpt' (multitask prompt tuning, PEFT's MultitaskPromptTuningConfig): a shared prompt rescaled by each
task's low-rank matrix. One SGD step with each row's task equals PEFT's step in PyTorch (loss and every variable;
GPT-2 and T5); the exported MULTITASK_PROMPT_TUNING adapter loads in PEFT and gives our logits for given task_ids
and restores the module; a 2-task mixture trains, resumes exactly and evaluates task k from its MODEL_DIR; a (4, 2)
mesh equals one device; bad settings are refused."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import assert_logits_close, padded_batch, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.data import get_task, register_task
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.experiments.loading import load_prompted
from prompt_tuning_jax.methods import mpt
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

LR, P, R = 0.5, 3, 2  # learning rate, PROMPT_LENGTH, MPT_RANK
TASK_TYPE = {"gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # get_peft_model's, not ours
t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)


def _spec(num_tasks, **kw):
    return PromptSpec(method="mpt", length=P, init="random_uniform", mpt_rank=R, num_tasks=num_tasks, seed=3, **kw)


def _peft(hf, family, num_tasks):
    """PEFT's own MPT model of `hf` (one transformer submodule: the encoder's prompt only, module docstring)."""
    from peft import MultitaskPromptTuningConfig, get_peft_model

    _start_token(hf)
    config = MultitaskPromptTuningConfig(task_type=TASK_TYPE[family], num_virtual_tokens=P, num_tasks=num_tasks,
                                         num_ranks=R, num_transformer_submodules=1)
    return get_peft_model(hf, config).eval()  # eval: no dropout in the frozen model


def _start_token(hf):
    """MPT's seq2seq path shifts the labels right with config.decoder_start_token_id, which the tiny T5's config
    (transformers 5) lacks: T5's, the pad id 0."""
    if hf.config.is_encoder_decoder and getattr(hf.config, "decoder_start_token_id", None) is None:
        hf.config.decoder_start_token_id = hf.config.pad_token_id
    return hf


def _scale_up(pm, seed=1):
    """PEFT's task matrices start at N(0, 0.02), so every prompt starts near zero and barely moves the loss: draw
    larger ones (N(0, 0.7)) so that every variable's step is large and a wrong one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (pm.prompt_encoder["default"].prefix_task_cols, pm.prompt_encoder["default"].prefix_task_rows):
            p.copy_(0.7 * torch.randn(p.shape, generator=gen))


def _lm_batch(ids, targets, tasks, mask=None):
    b = ids.shape[0]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask, "target_ids": targets,
            "target_mask": np.ones_like(targets), "label": np.zeros(b, np.int32), "weight": np.ones(b, np.float32),
            "task_index": np.asarray(tasks, np.int32)}


def _trainer(prompted, spec, tx, mesh=None):
    mesh = mesh or partitioning.make_mesh(devices=jax.devices()[:1])
    return Trainer(MeshState(prompted, mesh, trainable=spec.trainable(prompted)), tx, objective="lm", seed=None)


def _peft_step(pm, family, ids, targets, tasks):
    """PEFT's loss (mean cross-entropy over the target tokens) and its variables after one SGD step, in PyTorch."""
    n = ids.shape[1]
    task_ids = t(tasks)
    if family == "gpt2":  # PEFT prepends the P virtual tokens; position P+n-1+l predicts target l
        logits = pm(input_ids=t(np.concatenate([ids, targets[:, :-1]], 1)), task_ids=task_ids).logits[:, P + n - 1:]
    else:  # MPT's seq2seq path drops decoder_input_ids: the decoder is fed the labels shifted right
        logits = pm(input_ids=t(ids), labels=t(targets), task_ids=task_ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t(targets).reshape(-1))
    encoder = pm.prompt_encoder["default"]
    loss.backward()
    after = {name: (p - LR * p.grad).detach().numpy() for name, p in encoder.named_parameters()}
    return float(loss.detach()), {("prompt_embeddings" if k == "embedding.weight" else k): v for k, v in after.items()}


# ===== one step against PEFT =====
@pytest.mark.filterwarnings(PEFT_WARNING)
@pytest.mark.parametrize("family,num_tasks", [("gpt2", 3), ("t5", 2)])
def test_one_sgd_step_equals_peft(tmp_path, rng, family, num_tasks):
    hf = torch_model(family, tmp_path, untied=family == "t5")
    spec = _spec(num_tasks)
    prompted = spec.build(ptj.from_pretrained(tmp_path), None)
    pm = _peft(hf, family, num_tasks)
    _scale_up(pm)
    mpt.set_from_peft(prompted.prompt_module, pm.prompt_encoder["default"].state_dict())
    before = mpt.peft_tensors(prompted.prompt_module)
    trainer = _trainer(prompted, spec, optax.sgd(LR))
    ids = rng.integers(2, 50, (4, 5)).astype(np.int32)
    targets = rng.integers(2, 50, (4, 3)).astype(np.int32)
    tasks = np.arange(4) % num_tasks
    metrics = trainer.train_step(_lm_batch(ids, targets, tasks))
    ours = mpt.peft_tensors(trainer.prompted_model().prompt_module)
    loss, theirs = _peft_step(pm, family, ids, targets, tasks)
    ours_loss = float(metrics["loss_sum"] / metrics["denominator"])
    np.testing.assert_allclose(ours_loss, loss, rtol=1e-5)
    assert set(ours) == set(theirs)
    diffs = {"loss": abs(ours_loss - loss)}
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        step = np.abs(value - before[name]).max()
        assert step > 1e-5, name  # every variable learns from this batch
        diffs[name] = float(np.abs(ours[name] - value).max())
        assert diffs[name] <= 1e-3 * step + 1e-8, (name, diffs[name], step)
    print(family, diffs)


def test_the_module_is_peft_forward_and_starts_as_peft(tiny_gpt2_dir):
    spec = _spec(4)
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    module = prompted.prompt_module
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    assert set(state.trainable) == {"prompt_module"} and not state.has_prompt  # the empty soft prompt: frozen
    assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == P * 32 + 4 * (P * R + R * 32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))
    tensors = mpt.peft_tensors(module)
    assert tensors["prefix_task_cols"].shape == (4, P, R) and tensors["prefix_task_rows"].shape == (4, R, 32)
    both = np.concatenate([tensors["prefix_task_cols"].ravel(), tensors["prefix_task_rows"].ravel()])
    assert abs(both.mean()) < 0.005 and 0.015 < both.std() < 0.025  # N(0, 0.02), as PEFT draws them
    tasks = np.array([3, 0, 2, 2, 1])
    expected = tensors["prompt_embeddings"][None] * (tensors["prefix_task_cols"][tasks]
                                                     @ tensors["prefix_task_rows"][tasks])
    np.testing.assert_allclose(module(tasks), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(module.all_tasks()[tasks], expected, rtol=1e-6, atol=1e-7)
    fixed = mpt.MultitaskPromptTuning(tensors["prompt_embeddings"], tensors["prefix_task_cols"],
                                      tensors["prefix_task_rows"], task=2)
    np.testing.assert_allclose(fixed(tasks), np.broadcast_to(expected[2], expected.shape), rtol=1e-6, atol=1e-7)


# ===== the exported adapter =====
def _export(folder, prompted, spec, base):
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    return spec.method_impl.export(str(folder), state, state.trainable, base)


@pytest.mark.filterwarnings(PEFT_WARNING)
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_the_exported_adapter_loads_in_peft_and_gives_our_logits(tmp_path, rng, family):
    import transformers
    from peft import PeftModel

    hf = torch_model(family, tmp_path / "base", untied=family == "t5")
    spec = _spec(3)
    prompted = spec.build(ptj.from_pretrained(tmp_path / "base"), None)
    mpt.set_from_peft(prompted.prompt_module, {  # tasks that differ (PEFT's start makes all prompts near zero)
        name: rng.normal(0, 0.7, value.shape).astype(np.float32)
        for name, value in mpt.peft_tensors(prompted.prompt_module).items()})
    out = _export(tmp_path / "run", prompted, spec, str(tmp_path / "base"))
    folder = out["mpt_adapter"]
    written = json.loads((tmp_path / "run" / "mpt_adapter" / "adapter_config.json").read_text())
    _peft(hf, family, 3).save_pretrained(tmp_path / "peft_saved")  # the keys and tensors PEFT writes itself
    assert set(written) == set(json.loads((tmp_path / "peft_saved" / "adapter_config.json").read_text()))
    from safetensors.numpy import load_file
    saved = load_file(tmp_path / "peft_saved" / "adapter_model.safetensors")
    assert set(saved) == set(load_file(tmp_path / "run" / "mpt_adapter" / "adapter_model.safetensors"))
    assert written["peft_type"] == "MULTITASK_PROMPT_TUNING" and (written["num_tasks"], written["num_ranks"]) == (3, R)

    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.T5ForConditionalGeneration
    peft = PeftModel.from_pretrained(_start_token(cls.from_pretrained(tmp_path / "base").eval()), folder).eval()
    vocab, tasks = hf.config.vocab_size, np.array([2, 0, 1])
    ids, mask = padded_batch(rng, vocab, [7, 4, 6], 7)
    labels = rng.integers(1, vocab, (3, 4)).astype(np.int32)
    with torch.no_grad():
        extra = {} if family == "gpt2" else {"labels": t(labels)}  # MPT's seq2seq path reads the decoder's input
        theirs = peft(input_ids=t(ids), attention_mask=t(mask), task_ids=t(tasks), **extra).logits.numpy()
    if family == "gpt2":
        ours = prompted(ids, mask, task_index=tasks)
        keep = np.asarray(ours.attention_mask) > 0
    else:
        dec = np.concatenate([np.zeros((3, 1), np.int32), labels[:, :-1]], 1)  # T5 shifts the labels right
        ours = prompted(ids, mask, decoder_input_ids=dec, decoder_attention_mask=np.ones_like(dec), task_index=tasks)
        keep = np.ones(dec.shape, bool)
    assert_logits_close(ours.logits, theirs, keep)
    print(family, "logits max |diff|", np.abs(np.asarray(ours.logits)[keep] - theirs[keep]).max())
    np.testing.assert_array_equal(np.load(out["prompt_file"]), out["prompt"])
    assert out["prompt"].shape == (3, P, hf.config.hidden_size)

    again = _spec(3).build(ptj.from_pretrained(tmp_path / "base"), None)  # the adapter restores the module
    spec.method_impl.load_adapter(again, folder)
    jax.tree.map(np.testing.assert_array_equal, mpt.peft_tensors(again.prompt_module),
                 mpt.peft_tensors(prompted.prompt_module))


def test_adapters_that_do_not_fit_are_refused(tiny_gpt2_dir, tmp_path):
    spec = _spec(2)
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    folder = _export(tmp_path / "run", prompted, spec, tiny_gpt2_dir)["mpt_adapter"]
    with pytest.raises(ValueError, match=r"prefix_task_cols has shape \(2, 3, 2\), but this run's is \(3, 3, 2\)"):
        spec.method_impl.load_adapter(_spec(3).build(ptj.from_pretrained(tiny_gpt2_dir), None), folder)
    with pytest.raises(ValueError, match="not all of a multitask prompt"):
        mpt.set_from_peft(prompted.prompt_module, {"prompt_embeddings": np.zeros((P, 32))})
    config = json.loads((tmp_path / "run" / "mpt_adapter" / "adapter_config.json").read_text())
    (tmp_path / "run" / "mpt_adapter" / "adapter_config.json").write_text(
        json.dumps({**config, "num_transformer_submodules": 2}))
    with pytest.raises(ValueError, match="num_transformer_submodules=2: PEFT puts half of its prompt before the "
                                         "decoder's input"):
        spec.method_impl.load_adapter(prompted, folder)
    with pytest.raises(ValueError, match="holds a MULTITASK_PROMPT_TUNING adapter, but this METHOD reads IA3"):
        PromptSpec(method="ia3").method_impl.load_adapter(prompted, folder)


# ===== a mixture through experiments.train =====
TASKS = ["demo_sentiment", "demo_sentiment_words"]


def _mixture(folder, tmp_path, name, steps):
    base = get_task("demo_sentiment")
    register_task(dataclasses.replace(base, name="demo_sentiment_words", label_names=("dull", "great")),
                  overwrite=True)
    spec = PromptSpec(method="mpt", length=P, mpt_rank=R, init="sampled_vocab")
    data = DataSpec(TASKS, {"inputs": 24, "targets": 4}, batch_size=8, eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), spec, data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_mixture_trains_resumes_exactly_and_evaluates_task_k_from_its_model_dir(tiny_gpt2_dir, tmp_path):
    whole = _mixture(tiny_gpt2_dir, tmp_path, "whole", 4)
    assert whole["method"] == "mpt" and whole["prompt"].shape == (2, P, 32)
    assert whole["trainable_params"] == P * 32 + 2 * (P * R + R * 32)
    saved = np.load(tmp_path / "whole" / "prompts" / "prompt_latest.npy")
    np.testing.assert_array_equal(saved, whole["prompt"])
    for k in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / "whole" / "prompts" / f"task_{k}.npy"), saved[k])
    assert (tmp_path / "whole" / "mpt_adapter" / "adapter_model.safetensors").exists()
    _mixture(tiny_gpt2_dir, tmp_path, "halves", 2)
    resumed = _mixture(tiny_gpt2_dir, tmp_path, "halves", 4)  # from the checkpoint of step 2
    np.testing.assert_array_equal(resumed["prompt"], whole["prompt"])

    model, run = ModelSpec(tiny_gpt2_dir), str(tmp_path / "whole")
    spec = PromptSpec(method="mpt", length=P, mpt_rank=R, num_tasks=2)
    for k, task in enumerate(TASKS):  # MPT_TASK k: task k's prompt for every row
        data = DataSpec(task, {"inputs": 24, "targets": 4}, batch_size=8, eval_limit=16)
        ours = evaluate(model, dataclasses.replace(spec, mpt_task=k), data, checkpoint_path=run, scoring="rank")
        assert ours["rank_accuracy"] == whole["eval"][f"{task}/rank_accuracy"]
        adapter = evaluate(model, dataclasses.replace(spec, mpt_task=k), data, scoring="rank",
                           checkpoint_path=str(tmp_path / "whole" / "mpt_adapter"))  # the PEFT adapter
        assert adapter["rank_accuracy"] == ours["rank_accuracy"]
    loaded = load_prompted(model, spec, data.tasks(), partitioning.make_mesh(), run)
    np.testing.assert_array_equal(loaded.state.merge().prompt_module.all_tasks(), saved)  # the checkpoint's


def test_training_refuses_mpt_task(tiny_gpt2_dir, tmp_path):
    spec = PromptSpec(method="mpt", length=P, mpt_task=1, num_tasks=2)
    data = DataSpec(["demo_sentiment", "demo_sentiment"], {"inputs": 24, "targets": 4}, batch_size=8)
    with pytest.raises(ValueError, match="MPT_TASK=1 gives every row one task's prompt"):
        train(str(tmp_path / "run"), ModelSpec(tiny_gpt2_dir), spec, data, TrainSpec(steps=1, progress=False))
    assert not (tmp_path / "run").exists()  # refused before MODEL_DIR is made


# ===== meshes and settings =====
def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    batch = _lm_batch(ids, ids[:, :2], [0, 1, 2, 0, 1, 2, 1, 0], mask)
    results = []
    for mesh in (partitioning.make_mesh(4, 2), partitioning.make_mesh(devices=jax.devices()[:1])):
        spec = _spec(3)
        prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
        trainer = _trainer(prompted, spec, optax.adam(0.05), mesh)
        for _ in range(3):
            trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)


def test_a_bfloat16_model_trains_float32_task_prompts(tiny_gpt2_dir, rng):
    spec = _spec(2)
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir, dtype=jnp.bfloat16), None)
    trainer = _trainer(prompted, spec, optax.sgd(LR))
    before = jax.tree.map(np.asarray, trainer.trainable)
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3], 6)
    metrics = trainer.train_step(_lm_batch(ids, ids[:, :2], [0, 1, 1, 0], mask))
    assert np.isfinite(float(metrics["loss_sum"])) and float(metrics["nonfinite_steps"]) == 0
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.trainable))
    moved = jax.tree.map(lambda a, b: bool(np.abs(np.asarray(b) - a).max() > 0), before, trainer.trainable)
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_generation_uses_each_rows_task_prompt(rng, family):
    """Greedy decoding through the KV cache gives, row by row, what decoding that row alone with its task's prompt
    gives, and the other task's prompt predicts otherwise."""
    from helpers import tiny_model

    from prompt_tuning_jax import decoding

    spec = _spec(2)
    prompted = spec.build(tiny_model(family), None)
    module = prompted.prompt_module
    for name in ("prefix_task_cols", "prefix_task_rows"):  # tasks far apart
        variable = getattr(module, name)
        variable[...] = jnp.asarray(rng.normal(0, 3.0, variable.shape), jnp.float32)
    ids, mask = padded_batch(rng, 50, [5, 3, 6, 4], 6)
    tasks = np.array([0, 1, 1, 0], np.int32)
    both = np.asarray(decoding.generate(prompted, ids, mask, max_new_tokens=4, eos_id=-1, task_index=tasks))
    for b in range(4):
        alone = decoding.generate(prompted, ids[b:b + 1], mask[b:b + 1], max_new_tokens=4, eos_id=-1,
                                  task_index=tasks[b:b + 1])
        np.testing.assert_array_equal(np.asarray(alone)[0], both[b])
    first = [np.asarray(prompted(ids, mask, task_index=k).prediction) for k in (tasks, 1 - tasks)]
    assert np.abs(first[0] - first[1]).max() > 1e-3  # the other task's prompt predicts otherwise
    np.testing.assert_array_equal(both[:, 0], first[0].argmax(-1))  # the cached decode's first token is the forward's


def test_the_gin_file_binds_the_settings():
    import gin

    from prompt_tuning_jax import cli

    cli.parse_gin(["models/gpt2.gin", "prompts/mpt.gin", "runs/prompt_finetune.gin"],
                  ["MODEL_DIR='/tmp/x'", "MIXTURE_OR_TASK_NAME='sst2'", "MPT_RANK=4", "MPT_TASK=0"])
    try:
        spec = gin.get_configurable("ptj.PromptSpec")()
    finally:
        gin.clear_config()
    assert (spec.method, spec.mpt_rank, spec.mpt_task) == ("mpt", 4, 0)


@pytest.mark.parametrize("kw,message", [
    (dict(mpt_rank=0), r"MPT_RANK \(PEFT's num_ranks\) must be an integer >= 1, got 0"),
    (dict(mpt_rank=1.5), r"MPT_RANK \(PEFT's num_ranks\) must be an integer >= 1, got 1.5"),
    (dict(mpt_task=-1), r"MPT_TASK \(None: each row's own task\) must be an integer >= 0"),
    (dict(mpt_task=2, num_tasks=2), "MPT_TASK=2 picks a task of a run with more tasks than num_tasks=2"),
    (dict(method="prompt", mpt_rank=2), "MPT_RANK is set but METHOD is 'prompt'"),
    (dict(method="multitask", mpt_task=0), "MPT_TASK is set but METHOD is 'multitask'"),
    (dict(multitask_task=0), "MULTITASK_TASK is set but METHOD is 'mpt'"),
])
def test_bad_mpt_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**{"method": "mpt", **kw})
