"""METHOD 'lora:R': rank-R LoRA factors beside the blocks' projections train (and a head; no prompt).

The factors are `models.lora` layers (`LoRAParam`, scaled by LORA_ALPHA / R, on LORA_TARGETS or
every projection); a finished run writes them as a PEFT adapter to MODEL_DIR/lora_adapter/.
"""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method, trained_model, write_adapter


@register_method
class LoRA(Method):
    name = "lora"
    argument = "R"
    settings = {"lora_alpha": 8.0, "lora_targets": None}  # LORA_ALPHA, LORA_TARGETS

    def check(self, spec) -> None:
        alpha = spec.lora_alpha
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise ValueError(f"LORA_ALPHA must be a number > 0, got {alpha!r}")
        targets = spec.lora_targets
        if targets is not None and (isinstance(targets, str) or not targets):
            raise ValueError(f"LORA_TARGETS must be a non-empty list of projection names (e.g. ['c_attn']) or "
                             f"None for all, got {targets!r}")

    def add_variables(self, model, spec) -> None:
        from prompt_tuning_jax.models.lora import add_lora

        add_lora(model, self.n, spec.lora_alpha, spec.lora_targets, seed=spec.seed)

    def load_adapter(self, prompted, folder: str) -> None:
        from prompt_tuning_jax.prompts.io import import_peft_lora

        import_peft_lora(prompted.model, folder)

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """The trained factors as a PEFT adapter in MODEL_DIR/lora_adapter (written by process 0)."""
        from prompt_tuning_jax.prompts.io import export_peft_lora

        return write_adapter(model_dir, "lora", export_peft_lora, trained_model(state, trainable).model, base_model)
