"""METHOD 'prompt': prompt tuning (Lester et al., 2021): the soft prompt trains, and a head if there is one."""
from __future__ import annotations

import jax.numpy as jnp

from prompt_tuning_jax.methods.base import Method, register_method
from prompt_tuning_jax.variables import Trainable


def load_prompt_adapter(prompted, folder: str) -> None:
    """The soft prompt of `prompted` from a PEFT prompt-tuning adapter (`prompts.io.import_peft`)."""
    from prompt_tuning_jax.prompts.io import check_prompt_shape, import_peft

    prompt, _ = import_peft(folder)
    check_prompt_shape(prompt.shape, prompted.soft_prompt.shape, f"PEFT adapter {folder}")
    prompted.soft_prompt[...] = jnp.asarray(prompt, jnp.float32)


@register_method
class PromptTuning(Method):
    name = "prompt"
    has_prompt = True

    def trainable(self, prompted):
        return Trainable

    def load_adapter(self, prompted, folder: str) -> None:
        load_prompt_adapter(prompted, folder)
