"""The experiment layer: train, evaluate and infer from typed specs; gin (`cli.py`) only binds their fields.

    from prompt_tuning_jax.experiments import DataSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, infer, train

    model = ModelSpec("gpt2", dtype="bfloat16")
    prompt = PromptSpec(length=20, init="class_labels", placement="suffix", head="linear")
    data = DataSpec("sst2", feature_lengths={"inputs": 128, "targets": 4}, batch_size=32)
    summary = train("runs/sst2", model, prompt, data, TrainSpec(steps=2000, eval_every=200, checkpoint_every=200))
    metrics = evaluate(model, prompt, data, checkpoint_path="runs/sst2")

All three share `load_prompted` (the frozen model, its tokenizer and the prompt,
placed on the mesh, optionally restored from a run or a `.npy`).
"""
from prompt_tuning_jax.decoding import DecodeSpec
from prompt_tuning_jax.experiments.evaluation import evaluate
from prompt_tuning_jax.experiments.inference import infer
from prompt_tuning_jax.experiments.loading import Loaded, load_prompted
from prompt_tuning_jax.experiments.specs import DataSpec, ModelSpec, PromptSpec, TrainSpec
from prompt_tuning_jax.experiments.training import train

__all__ = ["DataSpec", "DecodeSpec", "Loaded", "ModelSpec", "PromptSpec", "TrainSpec", "evaluate", "infer",
           "load_prompted", "train"]
