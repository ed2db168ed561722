"""The one seam between a model family and everything built on it, and the registry of families.

The prompt wrapper, the heads, decoding, the runtime and the experiment layer
use a model only through `PromptableModel`; none of them asks which family it
is. A new family is one file that implements the protocol and calls
`register_family` (as `gpt2.py` and `t5.py` do), and it then trains, evaluates
and decodes with no other change (tests/models/test_base.py builds one inside
the test).

Shapes: B batch, S input positions (prompt included), T read positions, L
target tokens, R targets per input, H hidden size, V vocabulary.

Padding: a row's numbers must not depend on the side or amount of its padding
(GPT-2 numbers positions from the attention mask; T5's are relative).

Dropout is explicit: the two methods training uses, `activations` and
`target_hidden`, take `dropout_rng`:
- None (the default, and what evaluation, prediction and decoding pass): no dropout;
- one PRNG key per row [B] (what the training step passes: row i of the global
  batch gets fold_in(fold_in(key(seed), step), i)): row b draws all its masks
  from its own key, so splitting a batch into micro-batches or over devices
  never changes a mask;
- a single key: treated as row keys fold_in(key, b) (`common.row_keys`).
The rates are the checkpoint's (config.json), or one `dropout_rate` for all
(`from_pretrained(..., dropout_rate=)`, T5X's DROPOUT_RATE); a rate of 0 draws
no random numbers at all. A family without dropout accepts and ignores the key.

Layer prompts (METHOD 'per_layer'): `activations`, `target_hidden` and `start_decode` may be given
`prompt_site` (a `common.PromptSite`: where the prompt sits, one prompt per block); a family that
supports them puts `common.block_input(site, i, x, slots)` before each block i of the stack the
prompt enters (GPT-2's blocks, T5's encoder). Without the keyword nothing changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Collection, Protocol, runtime_checkable

import jax

if TYPE_CHECKING:
    from prompt_tuning_jax.models.lm_head import LMHead

# step(cache, tokens [B], t) -> (logits [B, V] after generated token t, cache)
DecodeStep = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


class ModelConfig(Protocol):
    """What the rest of the library reads from a family's config (besides the family's own fields)."""

    model_type: str       # the Hugging Face `model_type`; a label, never branched on outside models/
    hidden_size: int      # H, the width of embeddings and of the prompt
    eos_token_id: int
    prompt_blocks: int    # the blocks a prompt at the input passes through (decoder-only: all; T5: the encoder's)

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: Collection[str] | None = None) -> "ModelConfig":
        """From a Hugging Face config.json (and, when known, the checkpoint's tensor names)."""

    def to_hf(self) -> dict[str, Any]:
        """The config.json that transformers loads back."""

    def describe(self) -> str:
        """The family, then layers, widths, heads and vocabulary, in one line: 'gpt2: 12 layers, ...'."""

    def with_dropout(self, rate: float) -> "ModelConfig":
        """The same config with every dropout rate replaced by `rate` (needed only to honour `dropout_rate=`)."""


@runtime_checkable
class PromptableModel(Protocol):
    """A frozen language model seen through embeddings: the whole interface the library relies on.

    A family module also gives its model class the constructor
    `(config, *, dtype, param_dtype, remat, rngs)` and `checkpoint_key(path)`
    (our parameter path -> the Hugging Face tensor name), which `models/hf.py`
    uses to load and save checkpoints; a family that reads names other than
    the ones it writes (Gemma 3's multimodal checkpoints) adds `load_key(path)`.
    """

    config: Any
    # Text put before every target string: " " where targets continue the input text
    # (decoder-only models), "" where a decoder starts them afresh (encoder-decoder).
    target_prefix: str

    @property
    def embedding_table(self) -> jax.Array:
        """The token embedding table [V, H] (prompt initializers sample and look up rows of it)."""

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings without positions: [B, S] -> [B, S, H] in the compute dtype."""

    def activations(self, inputs_embeds: jax.Array, attention_mask: jax.Array, *,
                    decoder_input_ids: jax.Array | None = None,
                    decoder_attention_mask: jax.Array | None = None,
                    dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Runs the model on embedded inputs [B, S, H] (mask [B, S]) -> (hidden [B, T, H], mask [B, T]).

        `hidden` are the states the LM head reads (a decoder-only model: the input
        positions; an encoder-decoder: its decoder's, from `decoder_input_ids`,
        by default one start token). A prediction (the next token, a class) is
        read at the last position the returned mask marks real. Soft prompts are
        part of `inputs_embeds`, so input-embedding dropout applies to them.
        dropout_rng: None (no dropout), row keys [B] or one key (module docstring).
        """

    def output_head(self) -> "LMHead":
        """The LM head (`models/lm_head.py`): its weight [V, H], compute dtype, and any scale or soft cap."""

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: [..., H] -> [..., V] float32 (`output_head().logits`)."""

    def target_hidden(self, inputs_embeds: jax.Array, attention_mask: jax.Array, target_ids: jax.Array,
                      target_mask: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Teacher-forced hidden states that predict each target token: [R*B, L, H] (the LM head's input).

        inputs_embeds [B, S, H] with mask [B, S]; target_ids / target_mask [R*B, L],
        R targets per input in example-major order (rank classification scores R = C
        label strings). Position l of the result predicts target token l. The "lm" loss
        and rank classification score them with `output_head().log_probs`, a chunk of
        the vocabulary's logits at a time.
        dropout_rng: None (no dropout), row keys [B] (one per input) or one key.
        """

    def start_decode(self, inputs_embeds: jax.Array, attention_mask: jax.Array,
                     max_new_tokens: int) -> tuple[jax.Array, Any, DecodeStep]:
        """Prefill for generation -> (next-token logits [B, V], cache, step).

        Everything is jit-traceable with static shapes: decoding runs `step` inside a
        `lax.while_loop`, feeding generated token t (t = 0, 1, ...) to get the logits after it.
        An encoder-decoder may return None for the logits: `step(cache, any tokens, -1)` then feeds its
        start token, as the loop's first pass (one compiled decoder step instead of two).
        Never drops out.
        """


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor and the fix."""


FAMILIES: dict[str, tuple[type, type]] = {}
PRESETS: dict[str, Any] = {}  # released sizes by hub name (no org): their configs, for use without the hub


# Released checkpoints by family and size (configs/models/sizes/ picks the size).
_SIZES = ("small", "base", "large", "xl", "xxl")
HUB_IDS = {
    "gpt2": {"small": "gpt2", "medium": "gpt2-medium", "large": "gpt2-large", "xl": "gpt2-xl"},
    "t5": {"small": "t5-small", "base": "t5-base", "large": "t5-large", "3b": "t5-3b", "11b": "t5-11b"},
    "t5_1_1": {s: f"google/t5-v1_1-{s}" for s in _SIZES},
    "t5_1_1_lm100k": {s: f"google/t5-{s}-lm-adapt" for s in _SIZES},
    "flan_t5": {s: f"google/flan-t5-{s}" for s in _SIZES},
    "mt5": {s: f"google/mt5-{s}" for s in _SIZES},
}


def register_family(model_type: str, config_cls: type, model_cls: type, presets: dict[str, Any] = {}) -> None:  # noqa: B006
    """Makes `from_pretrained` load checkpoints whose config.json says `model_type`; `presets` are the
    configs of its released sizes by hub name ('gpt2-medium', 't5-xxl-lm-adapt')."""
    FAMILIES[model_type] = (config_cls, model_cls)
    PRESETS.update(presets)


def preset(name: str):
    """The config of a released size by its hub name ('gpt2-medium', 'google/t5-v1_1-base', 't5-small', ...)."""
    short = name.split("/")[-1]
    if short not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[short]


def family(model_type: str) -> tuple[type, type]:
    """(config class, model class) registered for `model_type`; KeyError if none."""
    return FAMILIES[model_type]
