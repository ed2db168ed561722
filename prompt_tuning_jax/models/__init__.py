"""Our Flax NNX GPT-2 and T5, and their Hugging Face checkpoint loader."""
from prompt_tuning_jax.models.gpt2 import GPT2, GPT2Config
from prompt_tuning_jax.models.hf import CheckpointError, from_pretrained, init_random, save_pretrained
from prompt_tuning_jax.models.t5 import T5, T5Config


def preset(name: str):
    """The config of a released size by its hub name ('gpt2-medium', 'google/t5-v1_1-base', 't5-small', ...)."""
    from prompt_tuning_jax.models import gpt2, t5

    short = name.split("/")[-1]
    for table in (gpt2.PRESETS, t5.PRESETS):
        if short in table:
            return table[short]
    known = sorted(gpt2.PRESETS) + sorted(t5.PRESETS)
    raise ValueError(f"unknown model size {name!r}; known: {', '.join(known)}")


__all__ = ["GPT2", "GPT2Config", "T5", "T5Config", "CheckpointError", "from_pretrained", "init_random",
           "save_pretrained", "preset"]
