"""The method seam: METHOD names a registered `methods.Method`, and a method defined here and nowhere else
(`Norms`, which trains the layer norms, as "LayerNorm tuning" does) trains, checkpoints and exports through the
experiment layer with no change to any file of the package."""
import json
import os
import pathlib
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import prompt_tuning_jax as ptj
from prompt_tuning_jax import methods
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, train
from prompt_tuning_jax.methods import base
from prompt_tuning_jax.training.runtime import MeshState
from prompt_tuning_jax.training.trainer import Trainer

PACKAGE = pathlib.Path(ptj.__file__).parent


class Norms(methods.Method):
    """METHOD 'norms': the weights of every layer norm train (and a head, if any); no prompt."""

    name = "norms"

    def check(self, spec):
        if spec.placement != "prefix":
            raise ValueError("METHOD 'norms' is tested with prefix placement only")

    def trainable(self, prompted):
        return nnx.Any(methods.HEAD, nnx.All(nnx.Param, lambda path, _: any(str(p).startswith("ln_") for p in path)))

    def export(self, model_dir, state, trainable, base_model):
        path = os.path.join(model_dir, "norms.json")
        if jax.process_index() == 0:
            with open(path, "w") as f:
                json.dump({"base_model": base_model, "tensors": len(jax.tree.leaves(trainable))}, f)
        return {"norms_file": path}


@pytest.fixture
def with_norms(monkeypatch):
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))  # the registration ends with the test
    methods.register_method(Norms)
    return Norms


def test_methods_are_registered_in_order_and_parsed():
    assert list(methods.registered()) == ["prompt", "probe", "full", "first", "last", "middle", "lora", "icl",
                                          "wayward", "multitask", "per_layer", "ptuning", "ia3", "mpt", "prefix"]
    middle = methods.get_method("middle:3")
    assert type(middle).__name__ == "MiddleBlocks" and middle.n == 3 and str(middle) == "middle:3"
    assert methods.get_method("icl:0").demonstrations == 0 and not methods.get_method("icl:0").trains
    assert methods.get_method("prompt").has_prompt and not methods.get_method("lora:8").has_prompt


@pytest.mark.parametrize("bad", ["lora", "lora:0", "icl", "icl:-1", "last:x", "prompt:2", "norms"])
def test_a_bad_method_names_the_forms(bad):
    with pytest.raises(ValueError, match=re.escape(f"METHOD '{bad}' is not a training method; use 'prompt', "
                                                   "'probe', 'full', 'first:K' (K >= 1)")):
        methods.get_method(bad)


def test_a_setting_only_another_method_reads_is_refused():
    with pytest.raises(ValueError, match=r"LORA_TARGETS is set but METHOD is 'full', which does not read it: set "
                                         r"METHOD 'lora:R'"):
        PromptSpec(method="full", lora_targets=["c_attn"])
    PromptSpec(method="lora:4", lora_targets=["c_attn"])  # its own


def test_a_method_defined_in_a_test_is_checked_and_trains_what_it_says(with_norms, tiny_gpt2_dir):
    with pytest.raises(ValueError, match="tested with prefix placement only"):
        PromptSpec(method="norms", placement="suffix")
    spec = PromptSpec(method="norms", length=4, init="random_uniform")
    prompted = spec.build(ptj.from_pretrained(tiny_gpt2_dir), None)
    trainer = Trainer(MeshState(prompted, trainable=spec.trainable(prompted)), optax.sgd(0.5), objective="lm")
    names = {".".join(map(str, path)) for path, _ in jax.tree_util.tree_flatten_with_path(trainer.trainable)[0]}
    assert names and all(re.search(r"\bln_", n) for n in names), names  # layer norms only, and no prompt
    before = jax.tree.map(np.asarray, trainer.trainable)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, (8, 6)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_ids": ids[:, :2],
             "target_mask": np.ones((8, 2), np.int32), "label": np.zeros(8, np.int32), "weight": np.ones(8, np.float32)}
    trainer.train_step(batch)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, np.asarray(b)), before, trainer.trainable)
    assert all(jax.tree.leaves(moved))


@pytest.mark.slow
def test_a_method_defined_in_a_test_runs_through_the_experiment_layer(with_norms, tiny_gpt2_dir, tmp_path):
    summary = train(str(tmp_path / "run"), ModelSpec(tiny_gpt2_dir), PromptSpec(method="norms", length=4),
                    DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}),
                    TrainSpec(steps=3, eval_every=0, checkpoint_every=3, progress=False), mesh_shape=(-1, 1))
    norms = 4 * 2 * 32 + 2 * 32  # two blocks' ln_1 and ln_2, then ln_f: weight and bias of 32 each
    assert summary["method"] == "norms" and summary["trainable_params"] == norms and summary["prompt_file"] is None
    assert json.loads((tmp_path / "run" / "norms.json").read_text()) == {"base_model": tiny_gpt2_dir, "tensors": 10}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["trainable_params"] == norms


def test_nothing_outside_methods_branches_on_a_method_name():
    """The engine asks the method; only methods/ may compare METHOD with a name (a prompt's placement, 'prefix'
    or 'suffix', is another setting that shares a word with METHOD 'prefix:P')."""
    names = "|".join(methods.registered())
    branch = re.compile(rf"""(==|!=|\bin\b|startswith\()\s*\(?\s*["']({names})[:"']|["']({names})["']\s*(==|!=)""")
    found = [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if "methods" not in path.parts
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if branch.search(line) and "placement" not in line]
    assert not found, found
