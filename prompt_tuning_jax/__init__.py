"""prompt_tuning_jax: soft-prompt tuning (Lester et al., 2021) for GPT-2, T5, Llama, Mistral, Qwen and Gemma 3 in JAX /
Flax NNX."""
import logging as _logging


class _NoTorchNotice(_logging.Filter):
    """Drops transformers' "PyTorch was not found. Models won't be available ..." line, said when it is imported
    without torch: our models are JAX and need only its tokenizers. Its other messages pass."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith("PyTorch was not found.")


_logging.getLogger("transformers").addFilter(_NoTorchNotice())  # before anything imports transformers

from prompt_tuning_jax import files as _files  # noqa: E402

_files.use_storage_emulator()  # before gcsfs or tensorstore read their settings

from prompt_tuning_jax.models import (GPT2, T5, CheckpointError, Gemma3, Gemma3Config, GPT2Config, Llama, LlamaConfig,
                                      T5Config, from_pretrained, init_random, save_pretrained)
from prompt_tuning_jax.prompts import PromptedModel, with_prompt
from prompt_tuning_jax.tokenizer import load_tokenizer
from prompt_tuning_jax.variables import Trainable

__version__ = "0.1.0"
__all__ = ["GPT2", "T5", "Llama", "Gemma3", "GPT2Config", "T5Config", "LlamaConfig", "Gemma3Config", "CheckpointError", "from_pretrained", "init_random",
           "save_pretrained", "load_tokenizer", "with_prompt", "PromptedModel", "Trainable"]
