"""Our Flax NNX model families (GPT-2, T5, Llama / Mistral / Qwen 2 / Qwen 3, Gemma 3), the seam they share (`base.py`), and
their Hugging Face checkpoint loader."""
from prompt_tuning_jax.models.base import HUB_IDS, PromptableModel, preset, register_family
from prompt_tuning_jax.models.gpt2 import GPT2, GPT2Config
from prompt_tuning_jax.models.gemma3 import Gemma3, Gemma3Config
from prompt_tuning_jax.models.hf import CheckpointError, from_pretrained, init_random, save_pretrained
from prompt_tuning_jax.models.llama import Llama, LlamaConfig
from prompt_tuning_jax.models.t5 import T5, T5Config


def hub_id(family: str, size: str) -> str:
    """The hub id of a released checkpoint: hub_id('t5_1_1_lm100k', 'base') -> 'google/t5-base-lm-adapt'."""
    if family not in HUB_IDS:
        raise ValueError(f"unknown checkpoint family {family!r}; known: {', '.join(HUB_IDS)}")
    if size not in HUB_IDS[family]:
        raise ValueError(f"{family} has no size {size!r}; its sizes: {', '.join(HUB_IDS[family])} "
                         "(include one of configs/models/sizes/)")
    return HUB_IDS[family][size]


__all__ = ["Gemma3", "Gemma3Config", "GPT2", "GPT2Config", "Llama", "LlamaConfig", "T5", "T5Config", "CheckpointError", "PromptableModel", "from_pretrained",
           "hub_id", "init_random", "preset", "register_family", "save_pretrained"]
