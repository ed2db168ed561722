"""Soft prompts: initializers, placement (combine), the PromptX wrapper and prompt files."""
from prompt_tuning_jax.prompts.prompt import Prompt, PromptedModel, PromptOutput, with_prompt

__all__ = ["Prompt", "PromptedModel", "PromptOutput", "with_prompt"]
