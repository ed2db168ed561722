"""Our Flax NNX GPT-2 and T5, the seam they share (`base.py`), and their Hugging Face checkpoint loader."""
from prompt_tuning_jax.models.base import PromptableModel, preset, register_family
from prompt_tuning_jax.models.gpt2 import GPT2, GPT2Config
from prompt_tuning_jax.models.hf import CheckpointError, from_pretrained, init_random, save_pretrained
from prompt_tuning_jax.models.t5 import T5, T5Config

# Released checkpoints by family and size (configs/models/sizes/ picks the size).
_SIZES = ("small", "base", "large", "xl", "xxl")
HUB_IDS = {
    "gpt2": {"small": "gpt2", "medium": "gpt2-medium", "large": "gpt2-large", "xl": "gpt2-xl"},
    "t5": {"small": "t5-small", "base": "t5-base", "large": "t5-large", "3b": "t5-3b", "11b": "t5-11b"},
    "t5_1_1": {s: f"google/t5-v1_1-{s}" for s in _SIZES},
    "t5_1_1_lm100k": {s: f"google/t5-{s}-lm-adapt" for s in _SIZES},
    "flan_t5": {s: f"google/flan-t5-{s}" for s in _SIZES},
}


def hub_id(family: str, size: str) -> str:
    """The hub id of a released checkpoint: hub_id('t5_1_1_lm100k', 'base') -> 'google/t5-base-lm-adapt'."""
    if family not in HUB_IDS:
        raise ValueError(f"unknown checkpoint family {family!r}; known: {', '.join(HUB_IDS)}")
    if size not in HUB_IDS[family]:
        raise ValueError(f"{family} has no size {size!r}; its sizes: {', '.join(HUB_IDS[family])} "
                         "(include one of configs/models/sizes/)")
    return HUB_IDS[family][size]


__all__ = ["GPT2", "GPT2Config", "T5", "T5Config", "CheckpointError", "PromptableModel", "from_pretrained",
           "hub_id", "init_random", "preset", "register_family", "save_pretrained"]
