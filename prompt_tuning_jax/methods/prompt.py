"""METHOD 'prompt': prompt tuning (Lester et al., 2021): the soft prompt trains, and a head if there is one."""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method
from prompt_tuning_jax.variables import Trainable


@register_method
class PromptTuning(Method):
    name = "prompt"
    has_prompt = True

    def trainable(self, prompted):
        return Trainable
