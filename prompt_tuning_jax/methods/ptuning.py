"""METHOD 'ptuning': P-tuning (Liu et al., 2021, "GPT Understands, Too"), PEFT's `PromptEncoderConfig`.

The prompt [P, H] is not trained directly: a small network, the prompt encoder, makes it from an
embedding of P virtual tokens, and the embedding and the network train. P is PROMPT_LENGTH here (the
issue wrote `ptuning:P`; taking PROMPT_LENGTH lets a sweep's prompt-length axis drive it). The encoder
is PEFT's `PromptEncoder.forward` (peft/tuners/p_tuning/model.py), with its variable names and PyTorch
layouts (`peft_state_dict`). PTUNING_ENCODER picks the network on the embedding [T, H] (h: PTUNING_HIDDEN,
None: H, as PEFT fills `encoder_hidden_size` with the model's width):

- 'mlp':  Linear(H, h), ReLU, Linear(h, h), ReLU, Linear(h, H) (PTUNING_NUM_LAYERS unused, as in PEFT);
- 'lstm': a bidirectional LSTM of PTUNING_NUM_LAYERS layers, h a direction ([T, 2h]), then Linear(2h, 2h),
  ReLU, Linear(2h, H).

T is P for decoder-only models and 2P for encoder-decoder ones: PEFT embeds `num_virtual_tokens *
num_transformer_submodules` tokens (2 for SEQ_2_SEQ_LM) and puts only the first P outputs before the
encoder's input. With 'mlp' rows [P, 2P) change nothing; with 'lstm' they are read by the backward
direction, so they are kept to compute what PEFT computes. The prompt's rows are the same for every
input row (one encoder, one task: several tasks are refused).

Defaults are PEFT's ('mlp', h = H, 2 layers, no dropout). The paper's encoder (its code, THUDM/P-tuning)
is a 2-layer bidirectional LSTM of H/2 a direction and a 2-layer MLP H -> H -> H: PTUNING_ENCODER 'lstm'
with PTUNING_HIDDEN H/2. PTUNING_DROPOUT (PEFT's `encoder_dropout`) acts where PyTorch's LSTM applies it,
on every LSTM layer's output but the last, in training only (`prompts.PromptedModel` hands the training
step's dropout key to a prompt module with a `dropout_rate`); one mask per batch, as PEFT runs the encoder
once per batch. PEFT's MLP ignores the setting, so with 'mlp' (or a 1-layer LSTM) a nonzero one is refused.

Start: PEFT draws the embedding from N(0, 1) (torch.nn.Embedding); here it is PROMPT_INIT's prompt
`init(rng, (P, H))` like every method's (for T = 2P, twice), so the prompt at step 0 is the encoder's
output of that prompt. The layers are drawn as PyTorch draws them: Linear weights and biases from
U(+-1/sqrt(fan_in)), every LSTM weight and bias from U(+-1/sqrt(h)). All are `Trainable`, float32.

Saved: checkpoints hold the encoder (`prompt_module`; the soft prompt is empty and frozen, so no
`prompt_<step>.npy`). At the end of a run, `prompts/prompt_latest.npy` holds the encoder's output [P, H]
(evaluate it with METHOD 'prompt' and CHECKPOINT_PATH, or start from it as PROMPT_FILE), and
`ptuning_adapter/` a PEFT P_TUNING adapter: as PEFT saves one, it holds only the encoder's output,
`prompt_embeddings` [T, H], which `PeftModel.from_pretrained` loads as a fixed prompt (inference mode).
So a P_TUNING adapter cannot restart or restore METHOD 'ptuning' (`load_adapter` refuses it): its rows
[0, P) are a plain prompt, the one `prompts/prompt_latest.npy` holds for METHOD 'prompt'.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt_tuning_jax.methods.base import HEAD, Method, register_method, trained_model
from prompt_tuning_jax.models import common
from prompt_tuning_jax.variables import Trainable

ENCODERS = ("mlp", "lstm")
MLP_LAYERS = 2  # PEFT's default encoder_num_layers; its MLP ignores the setting


def _uniform(rngs: nnx.Rngs, shape, bound: float) -> jax.Array:
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)


class Linear(nnx.Module):
    """x [..., in] -> x @ weight.T + bias [..., out]; weight [out, in] as PyTorch lays it out and draws it."""

    def __init__(self, fan_in: int, fan_out: int, rngs: nnx.Rngs):
        bound = 1.0 / np.sqrt(fan_in)
        self.weight = Trainable(_uniform(rngs, (fan_out, fan_in), bound))
        self.bias = Trainable(_uniform(rngs, (fan_out,), bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight[...].T + self.bias[...]


class LSTMDirection(nnx.Module):
    """One direction of one layer of PyTorch's LSTM: x [T, in] -> hidden states [T, h], from zero state.

    weight_ih [4h, in], weight_hh [4h, h], bias_ih and bias_hh [4h], gates in PyTorch's order i, f, g, o.
    reverse: the backward direction (reads x from the end; output t is still position t's).
    """

    def __init__(self, fan_in: int, hidden: int, reverse: bool, rngs: nnx.Rngs):
        bound = 1.0 / np.sqrt(hidden)
        self.reverse = reverse
        self.weight_ih = Trainable(_uniform(rngs, (4 * hidden, fan_in), bound))
        self.weight_hh = Trainable(_uniform(rngs, (4 * hidden, hidden), bound))
        self.bias_ih = Trainable(_uniform(rngs, (4 * hidden,), bound))
        self.bias_hh = Trainable(_uniform(rngs, (4 * hidden,), bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        w_hh = self.weight_hh[...]
        inputs = x @ self.weight_ih[...].T + self.bias_ih[...] + self.bias_hh[...]  # [T, 4h]

        def step(carry, gates_x):
            h, c = carry
            i, f, g, o = jnp.split(gates_x + h @ w_hh.T, 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zero = jnp.zeros((w_hh.shape[1],), jnp.float32)
        _, hidden = jax.lax.scan(step, (zero, zero), inputs, reverse=self.reverse)
        return hidden


class PromptEncoder(nnx.Module):
    """PEFT's P-tuning prompt encoder: an embedding [T, H] of the virtual tokens and the network on it.

    start: PROMPT_INIT's prompt [P, H]; the embedding is it, `submodules` times ([T, H], T = P * submodules).
    Called with task_index [B] -> the first P outputs for every row [B, P, H]; `encode()` gives all T.
    """

    def __init__(self, start, *, encoder: str = "mlp", hidden: int | None = None, num_layers: int = MLP_LAYERS,
                 submodules: int = 1, dropout_rate: float = 0.0, rngs: nnx.Rngs):
        if encoder not in ENCODERS:
            raise ValueError(f"PTUNING_ENCODER must be one of {ENCODERS}, got {encoder!r}")
        start = jnp.asarray(start, jnp.float32)
        self.length, width = start.shape  # P, H
        self.encoder_type, self.submodules = encoder, submodules  # PEFT's names
        self.hidden, self.num_layers = hidden or width, num_layers if encoder == "lstm" else MLP_LAYERS
        self.dropout_rate = dropout_rate  # between LSTM layers in training (PEFT's encoder_dropout)
        hidden = self.hidden
        self.embedding = Trainable(jnp.concatenate([start] * submodules, axis=0))
        if encoder == "lstm":
            self.lstm_head = nnx.List([
                nnx.List([LSTMDirection(width if k == 0 else 2 * hidden, hidden, reverse, rngs)
                          for reverse in (False, True)]) for k in range(num_layers)])
            sizes = (2 * hidden, 2 * hidden, width)
        else:
            self.lstm_head = None
            sizes = (width, hidden, hidden, width)
        self.mlp_head = nnx.List([Linear(a, b, rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def encode(self, dropout_rng: jax.Array | None = None) -> jax.Array:
        """The encoder's output for every virtual token [T, H] (what PEFT saves as `prompt_embeddings`).

        dropout_rng: a key in training: dropout at `dropout_rate` on each LSTM layer's output but the last, as
        PyTorch's LSTM(dropout=...) in PEFT's encoder; one mask for the batch (the prompt is the same for every
        row). None: no dropout."""
        x = self.embedding[...]
        layers = list(self.lstm_head or ())
        for k, layer in enumerate(layers):
            x = jnp.concatenate([direction(x) for direction in layer], axis=-1)  # [T, 2h]
            if dropout_rng is not None and k < len(layers) - 1:
                x = common.dropout(x[None], self.dropout_rate, jax.random.fold_in(dropout_rng, k)[None])[0]
        for i, linear in enumerate(self.mlp_head):
            x = linear(x) if i == 0 else linear(jax.nn.relu(x))
        return x

    def __call__(self, task_index, dropout_rng: jax.Array | None = None) -> jax.Array:
        prompt = self.encode(dropout_rng)[:self.length]  # [P, H]: the rows PEFT puts before the input
        return jnp.broadcast_to(prompt, (jnp.shape(task_index)[0], *prompt.shape))


def peft_variables(encoder: PromptEncoder) -> dict[str, nnx.Variable]:
    """PEFT's state-dict name of each variable (`PeftModel.prompt_encoder['default'].state_dict()`'s keys:
    'embedding.weight', 'mlp_head.0.weight', 'lstm_head.weight_ih_l0_reverse', ...) -> the variable."""
    names = {"embedding.weight": encoder.embedding}
    for i, linear in enumerate(encoder.mlp_head):  # PEFT's Sequential puts a ReLU between: Linear at 0, 2, 4
        names.update({f"mlp_head.{2 * i}.weight": linear.weight, f"mlp_head.{2 * i}.bias": linear.bias})
    for k, layer in enumerate(encoder.lstm_head or ()):
        for direction, suffix in zip(layer, ("", "_reverse")):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                names[f"lstm_head.{name}_l{k}{suffix}"] = getattr(direction, name)
    return names


def peft_state_dict(encoder: PromptEncoder) -> dict[str, np.ndarray]:
    """The encoder's weights under PEFT's names and in PyTorch's layouts, as float32 NumPy."""
    return {name: np.asarray(variable[...], np.float32) for name, variable in peft_variables(encoder).items()}


def load_peft_state_dict(encoder: PromptEncoder, state: dict) -> None:
    """Sets the encoder's weights (in place) from PEFT's (torch tensors or arrays, e.g. from
    `peft_model.prompt_encoder['default'].state_dict()` of a PEFT P-tuning model being trained)."""
    variables = peft_variables(encoder)
    if set(state) != set(variables):
        raise ValueError(f"the PEFT prompt encoder's weights {sorted(state)} are not this encoder's "
                         f"{sorted(variables)}: build it with the same encoder type and number of layers")
    for name, variable in variables.items():
        value = state[name]
        value = np.asarray(value.detach().cpu().float().numpy() if hasattr(value, "detach") else value, np.float32)
        if value.shape != variable.shape:
            raise ValueError(f"{name} has shape {value.shape}; this encoder's is {variable.shape}")
        variable[...] = jnp.asarray(value)


def peft_adapter_config(encoder: PromptEncoder, model, base_model_name_or_path: str | None) -> dict:
    """adapter_config.json of a PEFT P_TUNING adapter (the keys PEFT 0.21 writes, inference mode)."""
    from prompt_tuning_jax.prompts.io import _model_dims

    dims = _model_dims(model.config)
    config = {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path,
        "encoder_dropout": encoder.dropout_rate, "encoder_hidden_size": encoder.hidden, "encoder_num_layers": encoder.num_layers,
        "encoder_reparameterization_type": encoder.encoder_type.upper(), "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": dims.get("num_attention_heads"),
        "num_layers": dims.get("num_layers"), "num_transformer_submodules": encoder.submodules,
        "num_virtual_tokens": encoder.length, "peft_type": "P_TUNING", "revision": None,
        "task_type": getattr(model, "peft_task_type", None), "token_dim": int(encoder.embedding.shape[1]),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        config["peft_version"] = importlib.metadata.version("peft")  # as PEFT writes it; omitted without peft
    return config


def export_peft_ptuning(folder: str | os.PathLike, encoder: PromptEncoder, model,
                        base_model_name_or_path: str | None = None) -> str:
    """Writes the encoder as PEFT saves a P-tuning model: `adapter_config.json` (peft_type P_TUNING) and
    `adapter_model.safetensors` holding only the encoder's output, `prompt_embeddings` [T, H], which
    `PeftModel.from_pretrained(base, folder)` prepends as it is. Returns the folder."""
    from prompt_tuning_jax.prompts.io import _write_peft

    tensors = {"prompt_embeddings": np.ascontiguousarray(np.asarray(encoder.encode(), np.float32))}
    return _write_peft(os.fspath(folder), peft_adapter_config(encoder, model, base_model_name_or_path), tensors)


def _check_number(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@register_method
class PTuning(Method):
    name = "ptuning"
    has_prompt = True
    # PTUNING_ENCODER, PTUNING_HIDDEN, PTUNING_NUM_LAYERS, PTUNING_DROPOUT (PEFT's encoder_* settings)
    settings = {"ptuning_encoder": "mlp", "ptuning_hidden": None, "ptuning_num_layers": MLP_LAYERS,
                "ptuning_dropout": 0.0}

    def check(self, spec) -> None:
        encoder = spec.ptuning_encoder
        if encoder not in ENCODERS:
            raise ValueError(f"PTUNING_ENCODER must be one of {ENCODERS} (PEFT's encoder_reparameterization_type "
                             f"MLP or LSTM), got {encoder!r}")
        if spec.ptuning_hidden is not None:
            _check_number(spec.ptuning_hidden, "PTUNING_HIDDEN (None: the model's width)", 1)
        _check_number(spec.ptuning_num_layers, "PTUNING_NUM_LAYERS", 1)
        if encoder == "mlp" and spec.ptuning_num_layers != MLP_LAYERS:
            raise ValueError(f"PTUNING_NUM_LAYERS={spec.ptuning_num_layers} is read by PTUNING_ENCODER 'lstm' only "
                             "(PEFT's MLP always has 3 linear layers and ignores it): use 'lstm', or drop it")
        rate = spec.ptuning_dropout
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"PTUNING_DROPOUT must be a number in [0, 1), got {rate!r}")
        if rate and (encoder != "lstm" or spec.ptuning_num_layers < 2):
            raise ValueError(f"PTUNING_DROPOUT={rate} acts between LSTM layers only (PEFT's encoder_dropout: its MLP "
                             "ignores it, as does a 1-layer LSTM): use PTUNING_ENCODER 'lstm' with PTUNING_NUM_LAYERS "
                             ">= 2, or set PTUNING_DROPOUT = 0.0")
        if isinstance(spec.num_tasks, int) and spec.num_tasks > 1:
            raise ValueError(f"METHOD 'ptuning' trains one prompt encoder for one task, but there are "
                             f"{spec.num_tasks} tasks: give one MIXTURE_OR_TASK_NAME, or use METHOD 'multitask'")

    def prompt_module(self, spec, model, init, num_tasks: int) -> PromptEncoder:
        """The encoder, its embedding PROMPT_INIT's [P, H] prompt (module docstring), layers drawn from SEED."""
        from prompt_tuning_jax.prompts.prompt import _resolve_init

        rngs = nnx.Rngs(spec.seed)
        start = _resolve_init(init, model)(rngs.params(), (spec.length, model.config.hidden_size))
        submodules = 2 if getattr(model, "peft_task_type", None) == "SEQ_2_SEQ_LM" else 1  # as PEFT counts them
        return PromptEncoder(start, encoder=spec.ptuning_encoder, hidden=spec.ptuning_hidden,
                             num_layers=spec.ptuning_num_layers, submodules=submodules,
                             dropout_rate=float(spec.ptuning_dropout), rngs=rngs)

    def trainable(self, prompted):
        return HEAD  # the encoder and a head (the empty soft prompt is frozen)

    def load_adapter(self, prompted, folder: str) -> None:
        """Refused: a PEFT P_TUNING adapter holds the encoder's output only, not the encoder."""
        raise ValueError(f"METHOD 'ptuning' cannot start from or evaluate the PEFT adapter {folder}: PEFT saves a "
                         "P-tuning model as its encoder's output alone (prompt_embeddings), not the encoder. Give this "
                         "run's MODEL_DIR as CHECKPOINT_PATH, or evaluate the prompt it holds with METHOD 'prompt', "
                         "PROMPT_LENGTH = P and CHECKPOINT_PATH = this adapter (or MODEL_DIR/prompts/prompt_latest.npy)")

    def export(self, model_dir: str, state, trainable, base_model: str) -> dict:
        """The encoder's output as prompts/prompt_latest.npy [P, H] and as a PEFT P_TUNING adapter in
        MODEL_DIR/ptuning_adapter (written by process 0)."""
        from prompt_tuning_jax.prompts.io import save_prompt

        prompted = trained_model(state, trainable)
        encoder = prompted.prompt_module
        prompt = np.asarray(encoder.encode())[:encoder.length]  # [P, H]
        latest = os.path.join(model_dir, "prompts", "prompt_latest.npy")
        folder = os.path.join(model_dir, "ptuning_adapter")
        if jax.process_index() == 0:
            save_prompt(latest, prompt)
            export_peft_ptuning(folder, encoder, prompted.model, base_model)
        return {"prompt_file": latest, "ptuning_adapter": folder, "prompt": prompt}
