"""prompt_tuning_jax: soft-prompt tuning (Lester et al., 2021) for GPT-2, T5, Llama, Mistral, Qwen and Gemma 3 in JAX /
Flax NNX."""
from prompt_tuning_jax import files as _files

_files.use_storage_emulator()  # before gcsfs or tensorstore read their settings

from prompt_tuning_jax.models import (GPT2, T5, CheckpointError, Gemma3, Gemma3Config, GPT2Config, Llama, LlamaConfig,
                                      T5Config, from_pretrained, init_random, save_pretrained)
from prompt_tuning_jax.prompts import PromptedModel, with_prompt
from prompt_tuning_jax.tokenizer import load_tokenizer
from prompt_tuning_jax.variables import Trainable

__version__ = "0.1.0"
__all__ = ["GPT2", "T5", "Llama", "Gemma3", "GPT2Config", "T5Config", "LlamaConfig", "Gemma3Config", "CheckpointError", "from_pretrained", "init_random",
           "save_pretrained", "load_tokenizer", "with_prompt", "PromptedModel", "Trainable"]
