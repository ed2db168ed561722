"""METHOD 'prefix:P': prefix tuning (Li & Liang, 2021; PEFT's `PrefixTuningConfig`): keys and values of P virtual
positions train in every self-attention the PEFT layout reaches (and a head; no prompt in the input).

The prefix is `models.prefix` (its layout per family, the PREFIX_PROJECTION reparameterisation and where T5
gets it, as PEFT: the decoder's self-attention). It is computed once per batch and shared by every row; a
decode holds it once beside the cache. A finished run writes it, projection folded away, as a PEFT adapter to
MODEL_DIR/prefix_adapter/ (`prompts.io.export_peft_prefix`), which INITIAL_ADAPTER or CHECKPOINT_PATH reads back.
"""
from __future__ import annotations

from prompt_tuning_jax.methods.base import Method, register_method, trained_model, write_adapter


@register_method
class PrefixTuning(Method):
    name = "prefix"
    argument = "P"
    settings = {"prefix_projection": None}  # PREFIX_PROJECTION (PEFT's prefix_projection + encoder_hidden_size)

    def check(self, spec) -> None:
        width = spec.prefix_projection
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(f"PREFIX_PROJECTION must be None (train the keys and values directly) or the MLP's "
                             f"width, an integer >= 1 (e.g. 512), got {width!r}")

    def add_variables(self, model, spec) -> None:
        from prompt_tuning_jax.models.prefix import add_prefix

        add_prefix(model, self.n, spec.prefix_projection, seed=spec.seed)

    def load_adapter(self, prompted, folder: str) -> None:
        from prompt_tuning_jax.prompts.io import import_peft_prefix

        import_peft_prefix(prompted.model, folder)

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """The trained keys and values (projection folded) as a PEFT adapter in MODEL_DIR/prefix_adapter."""
        from prompt_tuning_jax.prompts.io import export_peft_prefix

        return write_adapter(model_dir, "prefix", export_peft_prefix, trained_model(state, trainable).model,
                             base_model)
