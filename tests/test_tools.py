"""The original library's helpers: find_module, extract_variable, and the *_numpy prompt initializers."""
import os

import numpy as np
import pytest
from helpers import tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import extract_variable, find_module
from prompt_tuning_jax.experiments import PromptSpec
from prompt_tuning_jax.experiments.demo_model import build_tokenizer
from prompt_tuning_jax.training.checkpoint import Checkpointer


def test_find_module_prints_the_installed_folders(capsys):
    assert find_module.main([]) == 0
    package = capsys.readouterr().out.strip()
    assert os.path.isfile(os.path.join(package, "cli.py"))
    assert find_module.main(["prompt_tuning_jax.configs"]) == 0
    assert os.path.isfile(os.path.join(capsys.readouterr().out.strip(), "runs", "prompt_finetune.gin"))
    assert find_module.main(["prompt_tuning_jax.pretrained_prompts"]) == 0
    assert os.path.isfile(os.path.join(capsys.readouterr().out.strip(), "t5_1_1_lm100k_base", "sst2.gin"))
    assert find_module.main(["no_such_module_here"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err


def test_extract_variable_from_a_checkpoint_folder_and_from_a_run(tmp_path, capsys):
    model = tiny_model("gpt2", seed=3)
    ptj.save_pretrained(model, tmp_path / "hf")
    table = np.asarray(model.embedding_table)
    assert extract_variable.main([str(tmp_path / "hf"), "embedding_table", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), table)
    assert extract_variable.main([str(tmp_path / "hf"), "transformer.wte.weight", str(tmp_path / "w.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), table)
    prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
    ckpt = Checkpointer(tmp_path / "run")
    trainable = {"soft_prompt": prompt, "head": {"weight": np.ones((4, 2), np.float32)}}
    ckpt.save(7, trainable, {"count": np.zeros((), np.int32)}, {"data": None})
    ckpt.close()
    assert extract_variable.main([str(tmp_path / "run"), "soft_prompt", str(tmp_path / "p.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), prompt)
    assert extract_variable.main([str(tmp_path / "run"), "head.weight", str(tmp_path / "h.npy"), "--step", "7"]) == 0
    assert np.load(tmp_path / "h.npy").shape == (4, 2)
    capsys.readouterr()
    assert extract_variable.main([str(tmp_path / "run"), "nope", str(tmp_path / "x.npy")]) == 2
    assert "no variable 'nope'" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()


def test_numpy_initializers_equal_the_model_ones_given_the_models_table(tmp_path):
    tok = build_tokenizer()
    model = tiny_model("gpt2", vocab_size=len(tok), n_embd=32)
    np.save(tmp_path / "table.npy", np.asarray(model.embedding_table))
    for init in ("class_labels", "sampled_vocab"):
        labels = dict(class_labels=["negative", "positive"])
        ours = PromptSpec(length=5, init=init, **labels).build(model, tok).prompt
        numpy = PromptSpec(length=5, init=f"{init}_numpy", embedding_file=str(tmp_path / "table.npy"),
                           **labels).build(model, tok).prompt
        np.testing.assert_array_equal(numpy, ours)
    np.save(tmp_path / "narrow.npy", np.zeros((10, 8), np.float32))
    with pytest.raises(ValueError, match=r"holds shape \(10, 8\); this model needs \[V, 32\]"):
        PromptSpec(length=5, init="sampled_vocab_numpy", embedding_file=str(tmp_path / "narrow.npy")).build(model, tok)
    with pytest.raises(ValueError, match="needs EMBEDDING_FILE"):
        PromptSpec(length=5, init="sampled_vocab_numpy").build(model, tok)
