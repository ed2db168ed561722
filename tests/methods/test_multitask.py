"""METHOD 'multitask' (the original's extended/multitask_prompts.py and multitask_factorized_prompts.py): a
shared prompt and per-task parts combined for each row by its task. The original's tests of each combination
(shapes and values against NumPy) and of its sizes, ported; one SGD step of each combination against jax.grad
of a direct implementation; a 2-task mixture that trains, resumes exactly and evaluates from its MODEL_DIR;
and a (4, 2) mesh against one device."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import padded_batch

import prompt_tuning_jax as ptj
from prompt_tuning_jax import partitioning
from prompt_tuning_jax.data import get_task, register_task
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.experiments.loading import load_prompted
from prompt_tuning_jax.methods import multitask as mt
from prompt_tuning_jax.prompts import initializers
from prompt_tuning_jax.training import objectives
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

# The original's test sizes.
BATCH_SIZE, SEQ_LEN, SEQ_LEN2, FEATURES, FEATURES2 = 10, 5, 4, 20, 7
LR = 0.5
P, P_T, H, K = 3, 2, 32, 3  # PROMPT_LENGTH, MULTITASK_TASK_LENGTH, the tiny model's width, tasks
FACTORS = [[0, 0], [0, 1], [1, 0]]  # task 0: (a0, b0), task 1: (a0, b1), task 2: (a1, b0)
SETTINGS = {"add": {}, "concat": {"multitask_task_length": P_T}, "concat_features": {},
            "project": {"multitask_shared_features": 8}, "factorized": {"multitask_factors": FACTORS,
                                                                        "multitask_task_length": P_T}}


def _arange(*shape):
    return jnp.reshape(jnp.arange(int(np.prod(shape)), dtype=jnp.float32), shape)


# ===== the original's multitask_prompts_test and multitask_factorized_prompts_test =====
def test_add_shared_and_tasks():
    shared, tasks = _arange(SEQ_LEN, FEATURES), _arange(BATCH_SIZE, SEQ_LEN, FEATURES)
    added = jax.jit(mt.add)(shared, tasks)
    assert added.shape == (BATCH_SIZE, SEQ_LEN, FEATURES)
    for i, row in enumerate(added):
        np.testing.assert_allclose(row, np.asarray(shared) + np.asarray(tasks[i]))


def test_concat_shared_and_tasks_along_the_length():
    shared, tasks = _arange(SEQ_LEN, FEATURES), _arange(BATCH_SIZE, SEQ_LEN2, FEATURES)
    concat = jax.jit(mt.concat_length)(shared, tasks)
    assert concat.shape == (BATCH_SIZE, SEQ_LEN + SEQ_LEN2, FEATURES)
    for i, row in enumerate(concat):
        np.testing.assert_allclose(row[:SEQ_LEN], shared)
        np.testing.assert_allclose(row[SEQ_LEN:], tasks[i])


def test_concat_shared_and_tasks_along_the_features():
    shared, tasks = _arange(SEQ_LEN, FEATURES), _arange(BATCH_SIZE, SEQ_LEN, FEATURES2)
    concat = jax.jit(mt.concat_features)(shared, tasks)
    assert concat.shape == (BATCH_SIZE, SEQ_LEN, FEATURES + FEATURES2)
    for i, row in enumerate(concat):
        np.testing.assert_allclose(row[:, :FEATURES], shared)
        np.testing.assert_allclose(row[:, FEATURES:], tasks[i])


def test_project_shared_with_tasks():
    """Each row's kernel [H, H_s] (the original's flattened layout: out x in) and bias map the shared prompt."""
    shared = _arange(SEQ_LEN, FEATURES)
    kernels = np.stack([np.arange(FEATURES * FEATURES2).reshape(FEATURES2, FEATURES) + i for i in range(BATCH_SIZE)])
    bias = np.stack([np.arange(FEATURES2) + i for i in range(BATCH_SIZE)]).astype(np.float32)
    proj = jax.jit(mt.project)(shared, jnp.asarray(kernels, jnp.float32), jnp.asarray(bias))
    assert proj.shape == (BATCH_SIZE, SEQ_LEN, FEATURES2)
    for i, row in enumerate(proj):
        np.testing.assert_allclose(row, np.asarray(shared) @ kernels[i].T + bias[i])


def test_concat_language_and_task_factors():
    langs, tasks = _arange(BATCH_SIZE, 6, FEATURES), _arange(BATCH_SIZE, 4, FEATURES) + 1000
    concat = jax.jit(mt.concat_factors)(langs, tasks)
    assert concat.shape == (BATCH_SIZE, 6 + 4, FEATURES)
    for i, row in enumerate(concat):
        np.testing.assert_allclose(row[:6], langs[i])
        np.testing.assert_allclose(row[6:], tasks[i])


def test_each_row_gets_its_tasks_prompt():
    """The original's test_multi_task_lookup_tasks: task k's part holds k, rows in a random task order."""
    tasks = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 2, 3))
    module = mt.MultiTaskPrompt("add", {"shared": np.zeros((2, 3)), "tasks": tasks}, num_tasks=8)
    order = np.asarray(jax.random.permutation(jax.random.key(0), 8))
    rows = jax.jit(lambda m, k: m(k))(module, order)
    for row, k in zip(rows, order):
        np.testing.assert_array_equal(row, np.full((2, 3), k))
    factorized = mt.MultiTaskPrompt("factorized", {"first": _arange(2, 1, 3), "second": _arange(2, 2, 3) + 100},
                                    num_tasks=3, factors=FACTORS)
    for k, (a, b) in enumerate(FACTORS):
        np.testing.assert_array_equal(factorized.all_tasks()[k], np.concatenate([_arange(2, 1, 3)[a],
                                                                                 _arange(2, 2, 3)[b] + 100]))
    fixed = mt.MultiTaskPrompt("add", {"shared": np.zeros((2, 3)), "tasks": tasks}, num_tasks=8, task=5)
    np.testing.assert_array_equal(fixed(order), np.full((8, 2, 3), 5.0))  # MULTITASK_TASK: every row task 5


def _built(folder, combine, num_tasks=K, init="random_uniform", **kw):
    spec = PromptSpec(method="multitask", multitask_combine=combine, length=P, init=init, num_tasks=num_tasks,
                      seed=2, **{**SETTINGS[combine], **kw})
    return spec, spec.build(ptj.from_pretrained(folder), None)


@pytest.mark.parametrize("combine,count", [
    ("add", (K + 1) * P * H),                      # the original's match_shared: P * H per task
    ("concat", P * H + K * P_T * H),               # task_length_attr_or_match_shared: P_t * H
    ("concat_features", P * 16 + K * P * 16),      # task_features_or_match_shared: P * H_t
    ("project", P * 8 + K * (H * 8 + H)),          # projection_size: H_s * H + H
    ("factorized", 2 * P * H + 2 * P_T * H),       # 2 languages, 2 tasks
])
def test_the_trainable_values_per_combination(tiny_gpt2_dir, combine, count):
    spec, prompted = _built(tiny_gpt2_dir, combine)
    state = MeshState(prompted, trainable=spec.trainable(prompted))
    assert sum(np.size(x) for x in jax.tree.leaves(state.trainable)) == count
    assert mt.parameter_count(combine, K, P, H, SETTINGS[combine].get("multitask_task_length"),
                              SETTINGS[combine].get("multitask_shared_features"), FACTORS) == count
    assert set(state.trainable) == {"prompt_module"} and not state.has_prompt  # the empty soft prompt is frozen


@pytest.mark.parametrize("combine", list(SETTINGS))
def test_every_task_starts_as_the_initial_prompt(tiny_gpt2_dir, combine):
    """PROMPT_INIT's one [P', H] prompt is every task's combined prompt at step 0 ('project' with H_s < H:
    its first H_s features, then zeros)."""
    _, prompted = _built(tiny_gpt2_dir, combine)
    length = P + P_T if combine in ("concat", "factorized") else P
    start = np.array(initializers.random_uniform(0.5)(nnx.Rngs(2).params(), (length, H)))  # SEED 2's first key
    if combine == "project":
        start[:, 8:] = 0
    np.testing.assert_allclose(prompted.prompt_module.all_tasks(), np.broadcast_to(start, (K, length, H)), atol=1e-6)
    assert prompted.prompt.shape == (K, 0, H)


def _direct(combine, parts):
    """Every task's prompt [K, P', H], written task by task from the original's definitions."""
    if combine == "add":
        return jnp.stack([parts["shared"] + t for t in parts["tasks"]])
    if combine == "concat":
        return jnp.stack([jnp.concatenate([parts["shared"], t], axis=0) for t in parts["tasks"]])
    if combine == "concat_features":
        return jnp.stack([jnp.concatenate([parts["shared"], t], axis=1) for t in parts["tasks"]])
    if combine == "project":
        return jnp.stack([parts["shared"] @ k.T + b for k, b in zip(parts["kernel"], parts["bias"])])
    return jnp.stack([jnp.concatenate([parts["first"][a], parts["second"][b]]) for a, b in FACTORS])


def _batch(rng):
    ids, mask = padded_batch(rng, 20, [6, 4, 5, 3, 6, 2, 5, 4], 6)
    return {"input_ids": ids, "attention_mask": mask, "target_ids": rng.integers(1, 20, (8, 2)).astype(np.int32),
            "target_mask": np.ones((8, 2), np.int32), "label": np.zeros(8, np.int32),
            "weight": np.ones(8, np.float32), "task_index": np.array([0, 1, 2, 0, 1, 2, 1, 0], np.int32)}


def _randomize(module, rng):
    for name in mt.PARTS[module.combine]:
        variable = getattr(module, name)
        variable[...] = jnp.asarray(rng.normal(0, 0.5, variable.shape), jnp.float32)


@pytest.mark.parametrize("combine", list(SETTINGS))
def test_one_sgd_step_equals_jax_grad_of_a_direct_implementation(tiny_gpt2_dir, rng, combine):
    """Our step (the module combines each row's parts) against parts - LR * jax.grad of the mean loss of
    K plain task prompts [K, P', H] built by `_direct` (the K-task soft prompt path, tested against PEFT)."""
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    spec, prompted = _built(tiny_gpt2_dir, combine, placement="suffix")
    _randomize(prompted.prompt_module, rng)
    batch = _batch(rng)
    trainer = Trainer(MeshState(prompted, one, trainable=spec.trainable(prompted)), optax.sgd(LR), objective="lm",
                      seed=None)
    parts = jax.tree.map(np.asarray, trainer.trainable["prompt_module"])
    trainer.train_step(batch)

    combined = _direct(combine, parts)
    plain = ptj.with_prompt(ptj.from_pretrained(tiny_gpt2_dir), combined.shape[1], np.asarray(combined),
                            placement="suffix", num_tasks=K)
    state = MeshState(plain, one)

    def mean_loss(parts):
        terms = objectives.loss_terms(state.merge({"soft_prompt": _direct(combine, parts)}), batch, "lm")
        return terms["loss_sum"] / terms["denominator"]

    grads = jax.jit(jax.grad(mean_loss))(parts)
    for name, value in trainer.trainable["prompt_module"].items():
        assert np.abs(grads[name]).max() > 1e-4, name  # every part learns from this batch
        np.testing.assert_allclose(value, parts[name] - LR * grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("combine", ["project", "factorized"])
def test_a_model_parallel_mesh_equals_one_device(tiny_gpt2_dir, rng, combine):
    batch = _batch(rng)
    results = []
    for mesh in (partitioning.make_mesh(4, 2), partitioning.make_mesh(devices=jax.devices()[:1])):
        spec, prompted = _built(tiny_gpt2_dir, combine)
        trainer = Trainer(MeshState(prompted, mesh, trainable=spec.trainable(prompted)), optax.adam(0.05),
                          objective="lm", seed=None)
        for _ in range(2):
            trainer.train_step(batch)
        results.append(jax.tree.map(np.asarray, trainer.trainable))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)


def test_one_task_needs_no_task_index(tiny_gpt2_dir, rng):
    _, prompted = _built(tiny_gpt2_dir, "concat", num_tasks=1)
    ids, mask = padded_batch(rng, 20, [4, 3], 5)
    embeds, out_mask = prompted.embed_inputs(ids, mask)  # task 0 for every row
    assert embeds.shape == (2, 5 + P + P_T, H) and int(out_mask.sum()) == 7 + 2 * (P + P_T)
    np.testing.assert_array_equal(embeds, prompted.embed_inputs(ids, mask, np.zeros(2, np.int32))[0])


@pytest.mark.parametrize("kw,message", [
    (dict(multitask_combine="multiply"), "MULTITASK_COMBINE must be one of"),
    (dict(multitask_task_length=4), "MULTITASK_TASK_LENGTH is set but MULTITASK_COMBINE is 'add'"),
    (dict(multitask_combine="concat", multitask_shared_features=4), "MULTITASK_SHARED_FEATURES is set but"),
    (dict(multitask_combine="factorized"), "'factorized' needs MULTITASK_FACTORS"),
    (dict(multitask_combine="factorized", multitask_factors=[[0, 1, 2]]), "'factorized' needs MULTITASK_FACTORS"),
    (dict(multitask_combine="concat", multitask_task_length=0), "MULTITASK_TASK_LENGTH must be an integer >= 1"),
    (dict(multitask_task=2, num_tasks=2), "MULTITASK_TASK=2 picks a task of a run with more tasks"),
    (dict(method="prompt", multitask_combine="concat"), "MULTITASK_COMBINE is set but METHOD is 'prompt'"),
])
def test_bad_multitask_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**{"method": "multitask", **kw})


def test_training_refuses_multitask_task(tiny_gpt2_dir, tmp_path):
    spec = PromptSpec(method="multitask", length=P, multitask_task=1, num_tasks=2)
    data = DataSpec(["demo_sentiment", "demo_sentiment"], {"inputs": 24, "targets": 4}, batch_size=8)
    with pytest.raises(ValueError, match="MULTITASK_TASK=1 gives every row one task's prompt"):
        train(str(tmp_path / "run"), ModelSpec(tiny_gpt2_dir), spec, data, TrainSpec(steps=1, progress=False))
    assert not (tmp_path / "run").exists()  # refused before MODEL_DIR is made


def test_settings_the_model_refuses(tiny_gpt2_dir):
    with pytest.raises(ValueError, match="MULTITASK_SHARED_FEATURES must be from 1 to 31 with 'concat_features'"):
        _built(tiny_gpt2_dir, "concat_features", multitask_shared_features=H)
    with pytest.raises(ValueError, match="MULTITASK_FACTORS gives 3 tasks their factors, but the run has 2 tasks"):
        _built(tiny_gpt2_dir, "factorized", num_tasks=2)


# ===== a mixture through experiments.train =====
def _mixture(folder, tmp_path, name, steps):
    base = get_task("demo_sentiment")
    register_task(dataclasses.replace(base, name="demo_sentiment_words", label_names=("dull", "great")),
                  overwrite=True)
    spec = PromptSpec(method="multitask", multitask_combine="concat", multitask_task_length=P_T, length=P,
                      init="sampled_vocab")
    data = DataSpec(["demo_sentiment", "demo_sentiment_words"], {"inputs": 24, "targets": 4}, batch_size=8,
                    eval_limit=16)
    return train(str(tmp_path / name), ModelSpec(folder), spec, data,
                 TrainSpec(steps=steps, eval_every=steps, checkpoint_every=2, eval_scoring="rank", progress=False),
                 optimizer=optax.adam(0.05))


@pytest.mark.slow
def test_a_mixture_trains_resumes_exactly_and_evaluates_from_its_model_dir(tiny_gpt2_dir, tmp_path):
    whole = _mixture(tiny_gpt2_dir, tmp_path, "whole", 4)
    assert whole["trainable_params"] == P * H + 2 * P_T * H and whole["prompt"].shape == (2, P + P_T, H)
    saved = np.load(tmp_path / "whole" / "prompts" / "prompt_latest.npy")
    np.testing.assert_array_equal(saved, whole["prompt"])
    for k in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / "whole" / "prompts" / f"task_{k}.npy"), saved[k])
    assert not np.allclose(saved[0, P:], saved[1, P:])  # the task parts moved apart from the same start
    _mixture(tiny_gpt2_dir, tmp_path, "halves", 2)
    resumed = _mixture(tiny_gpt2_dir, tmp_path, "halves", 4)  # from the checkpoint of step 2
    np.testing.assert_array_equal(resumed["prompt"], whole["prompt"])

    model, run = ModelSpec(tiny_gpt2_dir), str(tmp_path / "whole")
    spec = PromptSpec(method="multitask", multitask_combine="concat", multitask_task_length=P_T, length=P,
                      num_tasks=2)
    for k, task in enumerate(["demo_sentiment", "demo_sentiment_words"]):  # MULTITASK_TASK k: task k's prompt
        data = DataSpec(task, {"inputs": 24, "targets": 4}, batch_size=8, eval_limit=16)
        ours = evaluate(model, dataclasses.replace(spec, multitask_task=k), data, checkpoint_path=run, scoring="rank")
        assert ours["rank_accuracy"] == whole["eval"][f"{task}/rank_accuracy"]
    loaded = load_prompted(model, spec, data.tasks(), partitioning.make_mesh(), run)
    np.testing.assert_array_equal(loaded.state.merge().prompt_module.all_tasks(), saved)  # the checkpoint's parts
    plain = evaluate(model, PromptSpec(length=P + P_T), data, scoring="rank",  # METHOD 'prompt', task 1's .npy
                     checkpoint_path=str(tmp_path / "whole" / "prompts" / "task_1.npy"))
    assert plain["rank_accuracy"] == ours["rank_accuracy"]


@pytest.mark.parametrize("combine", ["concat", "project"])
def test_decoding_equals_decoding_with_the_combined_task_prompts(tiny_gpt2_dir, rng, combine):
    """Greedy generation through the multi-task module gives the tokens of a plain K-prompt model whose task
    prompts are the combined ones (`all_tasks`): the cached decode steps see the same prefix."""
    from prompt_tuning_jax.decoding import generate

    spec, prompted = _built(tiny_gpt2_dir, combine)
    parts = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32),
                         nnx.state(prompted.prompt_module))
    nnx.update(prompted.prompt_module, parts)  # tasks that differ
    combined = np.asarray(prompted.prompt_module.all_tasks())
    plain = ptj.with_prompt(ptj.from_pretrained(tiny_gpt2_dir), combined.shape[1], combined, num_tasks=K)
    ids, mask = padded_batch(rng, 20, [5, 3, 6, 4, 2, 6], 6)
    tasks = np.array([0, 1, 2, 2, 1, 0])
    ours = generate(prompted, ids, mask, max_new_tokens=5, eos_id=0, task_index=tasks)
    theirs = generate(plain, ids, mask, max_new_tokens=5, eos_id=0, task_index=tasks)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
