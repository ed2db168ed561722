"""PEFT adapters as a starting point (INITIAL_ADAPTER) and as CHECKPOINT_PATH: prompt tuning, LoRA and IA3 runs
start from the adapter's values (the same logits as PEFT's model with that adapter), evaluate from one, and
refuse an adapter of another type or model with one clear error."""
import numpy as np
import optax
import pytest
from helpers import torch_model

from prompt_tuning_jax import partitioning
from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, train
from prompt_tuning_jax.experiments.loading import load_prompted
from prompt_tuning_jax.prompts import io

DATA = DataSpec(task="demo_sentiment", batch_size=8, feature_lengths={"inputs": 24, "targets": 4}, eval_limit=16)


def _peft_adapter(tmp_path, folder, kind):
    """A PEFT adapter of `kind` with random (not initial) values, made and saved by PEFT itself."""
    import torch
    from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    config = {"prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
              "lora:2": LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=8, target_modules=["c_attn"],
                                   fan_in_fan_out=True),
              "ia3": IA3Config(task_type="CAUSAL_LM")}[kind]
    peft = get_peft_model(GPT2LMHeadModel.from_pretrained(folder), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in peft.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if kind == "ia3" else 0.0))
    path = tmp_path / f"adapter_{kind.replace(':', '')}"
    peft.save_pretrained(path)
    return str(path), peft.eval()


def _spec(kind, **kw):
    extra = {"lora_targets": ["c_attn"]} if kind.startswith("lora") else {}
    return PromptSpec(method=kind, length=4, init="random_uniform", **extra, **kw)


@pytest.mark.parametrize("kind", ["prompt", "lora:2", "ia3"])
def test_a_run_starts_from_a_peft_adapter_with_peft_logits(tmp_path, rng, kind):
    import torch

    folder = tmp_path / "base"
    torch_model("gpt2", folder)
    path, peft = _peft_adapter(tmp_path, folder, kind)
    loaded = load_prompted(ModelSpec(str(folder)), _spec(kind, adapter=path), [], partitioning.make_mesh())
    ids = rng.integers(2, 50, (2, 5)).astype(np.int32)
    ours = np.asarray(loaded.state.merge()(ids, np.ones_like(ids)).logits)
    with torch.no_grad():
        theirs = peft(input_ids=torch.tensor(ids).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)  # PEFT's prompt rows too, for 'prompt'


@pytest.mark.slow
def test_a_peft_adapter_evaluates_as_checkpoint_path_and_starts_training(tmp_path, tiny_gpt2_dir):
    folder = tiny_gpt2_dir  # with the demo task's tokenizer
    path, _ = _peft_adapter(tmp_path, folder, "ia3")
    as_checkpoint = evaluate(ModelSpec(str(folder)), _spec("ia3"), DATA, checkpoint_path=path, scoring="rank")
    started = train(str(tmp_path / "run"), ModelSpec(str(folder)), _spec("ia3", adapter=path), DATA,
                    TrainSpec(steps=1, eval_every=1, eval_scoring="rank", progress=False),
                    optimizer=optax.sgd(0.0))  # a step that changes nothing: step 1 evaluates the adapter
    assert started["eval"]["rank_accuracy"] == as_checkpoint["rank_accuracy"]
    saved = io.read_peft_adapter(tmp_path / "run" / "ia3_adapter", "IA3")[1]
    for name, value in io.read_peft_adapter(path, "IA3")[1].items():
        np.testing.assert_allclose(saved[name], value, rtol=1e-6)


def test_an_adapter_of_another_type_or_model_is_refused(tmp_path, tiny_gpt2_dir):
    folder = tmp_path / "base"
    torch_model("gpt2", folder)
    path, _ = _peft_adapter(tmp_path, folder, "ia3")
    with pytest.raises(ValueError, match="holds a IA3 adapter, but this METHOD reads LORA adapters"):
        load_prompted(ModelSpec(str(folder)), _spec("lora:2", adapter=path), [], partitioning.make_mesh())
    with pytest.raises(ValueError, match="does not fit this model's"):  # the demo tokenizer's GPT-2 is wider
        load_prompted(ModelSpec(tiny_gpt2_dir), _spec("ia3", adapter=path), [], partitioning.make_mesh())
    with pytest.raises(ValueError, match="METHOD 'full' has no PEFT adapter to start from"):
        load_prompted(ModelSpec(str(folder)), PromptSpec(method="full", adapter=path), [], partitioning.make_mesh())
    with pytest.raises(FileNotFoundError, match="INITIAL_ADAPTER .* is not a PEFT adapter folder"):
        load_prompted(ModelSpec(str(folder)), _spec("ia3", adapter=str(tmp_path)), [], partitioning.make_mesh())
    with pytest.raises(ValueError, match="holds no linear head"):
        evaluate(ModelSpec(str(folder)), _spec("ia3", head="linear"), DATA, checkpoint_path=path)
