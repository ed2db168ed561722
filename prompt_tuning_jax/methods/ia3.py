"""METHOD 'ia3' (Liu et al., 2022; PEFT's `IA3Config`, the original's `extended/train/ia3.py`): vectors that
rescale the frozen blocks' keys, values and MLP activations train (and a head; no prompt).

The vectors are `models.ia3` layers on the family's targets (PEFT's defaults, listed there), starting at one.
A finished run writes them as a PEFT IA3 adapter to MODEL_DIR/ia3_adapter/ (`prompts.io.export_peft_ia3`);
`models.ia3.merge_ia3` folds them into the frozen weights for evaluation, with the same logits.
"""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method, trained_model, write_adapter


@register_method
class IA3(Method):
    name = "ia3"

    def add_variables(self, model, spec) -> None:
        from prompt_tuning_jax.models.ia3 import add_ia3

        add_ia3(model)

    def load_adapter(self, prompted, folder: str) -> None:
        from prompt_tuning_jax.prompts.io import import_peft_ia3

        import_peft_ia3(prompted.model, folder)

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """The trained vectors as a PEFT adapter in MODEL_DIR/ia3_adapter (written by process 0)."""
        from prompt_tuning_jax.prompts.io import export_peft_ia3

        return write_adapter(model_dir, "ia3", export_peft_ia3, trained_model(state, trainable).model, base_model)
