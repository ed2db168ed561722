"""Prompt files: atomic .npy save/load, Lester's released prompts, and PEFT adapter export/import."""
import json
import os

import numpy as np
import pytest
from helpers import shared_path, torch_model

from prompt_tuning_jax.prompts import io

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

P = 5


def random_prompt(hidden, length=P, seed=0):
    return (np.random.default_rng(seed).normal(size=(length, hidden)) * 30).astype(np.float32)


# --- .npy ----------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    prompt = random_prompt(16)
    io.save_prompt(tmp_path / "p.npy", prompt)
    got = io.load_prompt(tmp_path / "p.npy", expected_shape=(P, 16))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, prompt)
    assert os.listdir(tmp_path) == ["p.npy"]  # no temporary file left behind
    assert io.load_prompt(tmp_path / "p.npy", dtype=np.float16).dtype == np.float16


def test_save_casts_to_float32_and_takes_task_prompts(tmp_path):
    import jax.numpy as jnp

    io.save_prompt(tmp_path / "a.npy", jnp.ones((2, 3), jnp.bfloat16))
    assert np.load(tmp_path / "a.npy").dtype == np.float32
    tasks = np.random.default_rng(0).normal(size=(3, P, 4))  # [K, P, H] float64
    io.save_prompt(tmp_path / "sub" / "k.npy", tasks)  # missing folders are created
    got = io.load_prompt(tmp_path / "sub" / "k.npy", expected_shape=(3, P, 4))
    np.testing.assert_array_equal(got, tasks.astype(np.float32))
    with pytest.raises(ValueError, match="expected a \\[P, H\\] prompt"):
        io.load_prompt(tmp_path / "sub" / "k.npy")
    with pytest.raises(ValueError, match="got shape \\(4,\\)"):
        io.save_prompt(tmp_path / "bad.npy", np.ones(4))


def test_failed_save_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "p.npy"
    old = random_prompt(8)
    io.save_prompt(path, old)

    def boom(f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_prompt(path, random_prompt(8, seed=1))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), old)
    assert os.listdir(tmp_path) == ["p.npy"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy does not exist"):
        io.load_prompt(tmp_path / "nope.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        io.load_prompt(tmp_path / "text.npy")
    np.save(tmp_path / "flat.npy", np.ones(10))
    with pytest.raises(ValueError, match=r"shape \(10,\); expected a \[P, H\] prompt"):
        io.load_prompt(tmp_path / "flat.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((2, 2)))
    with pytest.raises(ValueError, match="npz archive"):
        io.load_prompt(tmp_path / "two.npz")
    io.save_prompt(tmp_path / "p.npy", np.ones((100, 768)))
    want = (f"prompt file {tmp_path / 'p.npy'} has shape (100, 768) but the model needs (100, 512): "
            "it was trained for a model with hidden size 768")
    with pytest.raises(ValueError) as e:
        io.load_prompt(tmp_path / "p.npy", expected_shape=(100, 512))
    assert str(e.value) == want
    with pytest.raises(ValueError, match="it has 100 prompt tokens"):
        io.load_prompt(tmp_path / "p.npy", expected_shape=(20, 768))


def test_released_prompt_loads_unchanged():
    path = shared_path("released_prompts", "t5_1_1_lm100k_base", "sst2.npy")
    prompt = io.load_prompt(path, expected_shape=(100, 768))
    assert prompt.shape == (100, 768) and prompt.dtype == np.float32
    np.testing.assert_array_equal(prompt, np.load(path))
    assert np.linalg.norm(prompt, axis=1).mean() > 500  # large norms kept (mean ~1000), never renormalised


# --- PEFT ------------------------------------------------------------------------------------------

# The transformers models PEFT wraps: hidden 64, vocab 1000, 4 heads, transformers' own initialisation.
PEFT_SIZES = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=1024),
    "t5": dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, vocab_size=1000, decoder_start_token_id=0,
               relative_attention_num_buckets=32, relative_attention_max_distance=128),
}


def peft_base(family, folder=None):
    return torch_model(family, folder, random_norms=False, **PEFT_SIZES[family])


def peft_saved(model, task_type, folder):
    """A prompt-tuning adapter trained-style by PEFT itself (random init, then perturbed) and saved by PEFT."""
    pm = peft.get_peft_model(model, peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=P))
    with torch.no_grad():
        weight = pm.prompt_encoder["default"].embedding.weight
        weight.add_(torch.randn_like(weight))
    pm.save_pretrained(folder)
    return pm.prompt_encoder["default"].embedding.weight.detach().numpy().copy()


def assert_config_like_peft(ours, theirs):
    """Same keys and values as PEFT's own adapter_config.json, except where the base model is named."""
    assert set(ours) == set(theirs)
    for key in ours:
        if key != "base_model_name_or_path":
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_export_loads_in_peft(tmp_path, family):
    task, embed = (("CAUSAL_LM", lambda m: m.transformer.wte) if family == "gpt2"
                   else ("SEQ_2_SEQ_LM", lambda m: m.shared))
    make = lambda folder=None: peft_base(family, folder)
    make(tmp_path / "base")
    prompt = random_prompt(64)
    io.export_peft(tmp_path / "ours", prompt, str(tmp_path / "base"), task)
    assert sorted(os.listdir(tmp_path / "ours")) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_saved(make(), task, tmp_path / "theirs")
    assert_config_like_peft(config, json.loads((tmp_path / "theirs" / "adapter_config.json").read_text()))
    assert (config["num_layers"], config["num_attention_heads"], config["token_dim"]) == (2, 4, 64)

    base = make()
    pm = peft.PeftModel.from_pretrained(base, tmp_path / "ours")
    weight = pm.prompt_encoder["default"].embedding.weight.detach().numpy()
    submodules = 2 if family == "t5" else 1
    assert weight.shape == (P * submodules, 64)
    for k in range(submodules):
        np.testing.assert_array_equal(weight[k * P:(k + 1) * P], prompt)

    # What PEFT runs is the base model on [prompt; embedded input].
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    inputs_embeds = torch.cat([torch.tensor(prompt)[None], embed(base)(ids)], dim=1)
    full_mask = torch.ones(1, P + 4, dtype=torch.long)
    with torch.no_grad():
        if family == "gpt2":
            got = pm(input_ids=ids, attention_mask=mask).logits
            want = base(inputs_embeds=inputs_embeds, attention_mask=full_mask).logits
        else:
            dec = torch.tensor([[0, 9, 10]])
            got = pm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            want = base(inputs_embeds=inputs_embeds, attention_mask=full_mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want)


def test_peft_seq2seq_ignores_decoder_rows(tmp_path):
    """PEFT's SEQ_2_SEQ_LM prompt table has 2P rows; rows [P, 2P) are never used nor trained."""
    model = peft_base("t5")
    pm = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P))
    weight = pm.prompt_encoder["default"].embedding.weight
    assert weight.shape == (2 * P, 64)
    ids, labels = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[9, 10, 1]])
    loss = pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    assert weight.grad[:P].abs().sum() > 0 and weight.grad[P:].abs().sum() == 0  # never trained
    pm.eval()
    dec = torch.tensor([[0, 9]])
    with torch.no_grad():
        before = pm(input_ids=ids, decoder_input_ids=dec).logits
        weight[P:] = torch.randn(P, 64) * 100
        torch.testing.assert_close(pm(input_ids=ids, decoder_input_ids=dec).logits, before)  # never read
        weight[:P] += 1.0
        assert not torch.allclose(pm(input_ids=ids, decoder_input_ids=dec).logits, before)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_import_peft_saved_adapter(tmp_path, family):
    task = "CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM"
    weight = peft_saved(peft_base(family), task, tmp_path / "adapter")
    prompt, config = io.import_peft(tmp_path / "adapter")
    assert prompt.dtype == np.float32 and prompt.shape == (P, 64)
    np.testing.assert_array_equal(prompt, weight[:P])  # for T5: the encoder rows
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == task


def test_export_import_round_trip_and_seq_cls_head(tmp_path):
    prompt = random_prompt(64)
    head = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    io.export_peft(tmp_path / "cls", prompt, None, "SEQ_CLS", num_layers=2, num_attention_heads=4,
                   extra_tensors={"base_model.score.weight": head})
    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=1000, num_labels=3, pad_token_id=0))
    pm = peft.PeftModel.from_pretrained(model, tmp_path / "cls")
    np.testing.assert_array_equal(pm.prompt_encoder["default"].embedding.weight.detach().numpy(), prompt)
    np.testing.assert_array_equal(pm.base_model.score.weight.detach().numpy(), head)
    with pytest.warns(UserWarning, match="base_model.score.weight"):
        got, config = io.import_peft(tmp_path / "cls")
    np.testing.assert_array_equal(got, prompt)
    assert config["task_type"] == "SEQ_CLS" and config["num_virtual_tokens"] == P


def test_export_errors(tmp_path):
    peft_base("gpt2", tmp_path / "base")
    with pytest.raises(ValueError, match="task_type"):
        io.export_peft(tmp_path / "a", random_prompt(64), None, "CLM")
    with pytest.raises(ValueError, match="one \\[P, H\\] prompt"):
        io.export_peft(tmp_path / "a", np.ones((2, P, 64)), None, "CAUSAL_LM")
    with pytest.raises(ValueError, match="hidden size 32 but the base model's is 64"):
        io.export_peft(tmp_path / "a", random_prompt(32), str(tmp_path / "base"), "CAUSAL_LM")
    with pytest.raises(ValueError, match="TEXT"):
        io.export_peft(tmp_path / "a", random_prompt(64), None, "CAUSAL_LM", prompt_tuning_init="TEXT")
    assert not (tmp_path / "a").exists()


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.import_peft(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        io.import_peft(tmp_path / "empty")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(ValueError, match="holds a LORA adapter"):
        io.import_peft(tmp_path / "lora")
    io.export_peft(tmp_path / "bad", random_prompt(64), None, "CAUSAL_LM")
    config = json.loads((tmp_path / "bad" / "adapter_config.json").read_text())
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 7}))
    with pytest.raises(ValueError, match="7 virtual tokens x 1 submodules = 7 rows"):
        io.import_peft(tmp_path / "bad")
    os.remove(tmp_path / "bad" / "adapter_model.safetensors")
    with pytest.raises(FileNotFoundError, match="neither adapter_model.safetensors"):
        io.import_peft(tmp_path / "bad")
