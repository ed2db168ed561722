"""The model seam: a third family, defined here and nowhere else, runs through everything.

`Toy` is a one-layer, one-head causal decoder that implements `models.base.PromptableModel`
in the plainest way (no KV cache: decoding recomputes the whole sequence). Registered
with `register_family`, it is saved and loaded as a Hugging Face folder, prompted,
trained and evaluated by the experiment layer, restored from its run by `evaluate`,
and decoded by `infer`, with no change to any file of the package.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding, info
from prompt_tuning_jax.experiments import DataSpec, DecodeSpec, ModelSpec, PromptSpec, TrainSpec, evaluate, infer, train
from prompt_tuning_jax.models import base, common, lm_head


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 50
    hidden_size: int = 16
    max_positions: int = 64
    eos_token_id: int = 0

    model_type = "toy"

    @classmethod
    def from_hf(cls, config, tensor_names=None):
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})

    def to_hf(self):
        return {"model_type": "toy", **dataclasses.asdict(self)}

    def describe(self):
        return f"toy: 1 layer, hidden {self.hidden_size}, vocab {self.vocab_size}"


class Toy(nnx.Module):
    target_prefix = " "

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32, remat=False, rngs):
        self.config, self.dtype = config, dtype
        h = config.hidden_size
        self.wte = common.param(rngs, (config.vocab_size, h), ("vocab", "embed"), param_dtype, 0.5)
        self.wpe = common.param(rngs, (config.max_positions, h), ("positions", "embed"), param_dtype, 0.1)
        self.qkv = common.param(rngs, (h, 3 * h), ("embed", "qkv"), param_dtype, h**-0.5)

    def checkpoint_key(self, path):
        return ".".join(str(p) for p in path)

    @property
    def embedding_table(self):
        return self.wte[...]

    def embed(self, input_ids):
        return jnp.take(self.wte[...], input_ids, axis=0).astype(self.dtype)

    def _hidden(self, x, mask):
        """x [B, S, H], mask [B, S] -> [B, S, H]; positions count real tokens only, pads are never attended."""
        positions = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, self.config.max_positions - 1)
        x = x + jnp.take(self.wpe[...], positions, axis=0)
        q, k, v = jnp.split(x @ self.qkv[...], 3, axis=-1)
        s = x.shape[1]
        bias = common.causal_bias(s, s)[0] + common.padding_bias(mask, s)[:, 0]  # [B, S, S]
        probs = jax.nn.softmax(q @ k.swapaxes(1, 2) / np.sqrt(x.shape[-1]) + bias, axis=-1)
        return x + probs @ v

    def activations(self, inputs_embeds, attention_mask, *, decoder_input_ids=None, decoder_attention_mask=None,
                    dropout_rng=None):  # no dropout: the training step's keys are accepted and ignored
        return self._hidden(inputs_embeds, attention_mask), attention_mask

    def output_head(self):
        return lm_head.LMHead(self.wte[...], self.dtype)

    def logits(self, hidden):
        return self.output_head().logits(hidden)

    def target_hidden(self, inputs_embeds, attention_mask, target_ids, target_mask, dropout_rng=None):
        # Targets go after the padding: positions come from the mask, so that is the same as
        # right after the last real token. Target l is read at the position before it.
        (b, s, _), (rb, length) = inputs_embeds.shape, target_ids.shape
        rep = lambda x: jnp.repeat(x, rb // b, axis=0)
        x = jnp.concatenate([rep(inputs_embeds), self.embed(target_ids)], axis=1)
        mask = jnp.concatenate([rep(attention_mask), jnp.ones_like(target_ids)], axis=1)
        hidden = self._hidden(x, mask)
        read = jnp.concatenate([common.last_real(rep(attention_mask))[:, None],
                                s + jnp.arange(length - 1)[None].repeat(rb, 0)], axis=1)
        return jnp.take_along_axis(hidden, read[..., None], axis=1)

    def start_decode(self, inputs_embeds, attention_mask, max_new_tokens):
        b, s, h = inputs_embeds.shape
        x = jnp.concatenate([inputs_embeds, jnp.zeros((b, max_new_tokens, h), inputs_embeds.dtype)], axis=1)
        mask = jnp.concatenate([attention_mask, jnp.zeros((b, max_new_tokens), attention_mask.dtype)], axis=1)
        last = common.last_real(attention_mask)
        first = self.logits(jnp.take_along_axis(self._hidden(x, mask), last[:, None, None], axis=1)[:, 0])

        def step(cache, tokens, t):
            x, mask = cache
            x = jax.lax.dynamic_update_slice(x, self.embed(tokens[:, None]), (0, s + t, 0))
            mask = jax.lax.dynamic_update_slice(mask, jnp.ones((b, 1), mask.dtype), (0, s + t))
            return self.logits(jax.lax.dynamic_slice_in_dim(self._hidden(x, mask), s + t, 1, axis=1)[:, 0]), (x, mask)

        return first, (x, mask), step


@pytest.fixture
def toy_folder(tmp_path, monkeypatch):
    """A registered `toy` family and a random toy checkpoint with the demo's word-level tokenizer."""
    from prompt_tuning_jax.experiments.demo_model import build_tokenizer

    monkeypatch.setitem(base.FAMILIES, "toy", (ToyConfig, Toy))
    tok = build_tokenizer()
    folder = tmp_path / "toy"
    ptj.save_pretrained(ptj.init_random(ToyConfig(vocab_size=len(tok)), seed=3), folder)
    tok.save_pretrained(folder)
    return folder


def test_gpt2_t5_and_the_toy_implement_the_seam():
    gpt2 = ptj.init_random(ptj.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    t5 = ptj.init_random(ptj.T5Config(vocab_size=11, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2))
    for model in (gpt2, t5, Toy(ToyConfig(), rngs=nnx.Rngs(0))):
        assert isinstance(model, base.PromptableModel)
        assert isinstance(model.target_prefix, str) and model.config.hidden_size == model.embedding_table.shape[1]


@pytest.mark.slow
def test_a_third_family_loads_prompts_and_decodes(toy_folder):
    model = ptj.from_pretrained(toy_folder)
    assert isinstance(model, Toy) and "toy: 1 layer" in info.describe(model)
    ids = jnp.asarray([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.int32)
    prompted = ptj.with_prompt(model, 3, None, placement="suffix")
    out = prompted(ids, mask)
    embeds, prompted_mask = prompted.embed_inputs(ids, mask)
    hidden, _ = model.activations(embeds, prompted_mask)
    last = common.last_real(prompted_mask)
    want = model.logits(hidden[jnp.arange(2), last])
    np.testing.assert_allclose(out.prediction, want, rtol=1e-6, atol=1e-6)
    # Greedy decoding through the seam equals an argmax loop over the full forward.
    tokens = np.asarray(decoding.generate(prompted, ids, mask, max_new_tokens=4, eos_id=-1))
    for row in range(2):
        real = jnp.asarray([[int(i) for i, m in zip(ids[row], mask[row]) if m]])
        start, _ = prompted.embed_inputs(real, jnp.ones_like(real))  # text, then the suffix prompt
        new = []
        for _ in range(4):
            x = jnp.concatenate([start, model.embed(jnp.asarray([new], jnp.int32))], axis=1)
            h, _ = model.activations(x, jnp.ones(x.shape[:2], jnp.int32))
            new.append(int(jnp.argmax(model.logits(h[0, -1]))))
        assert tokens[row].tolist() == new


@pytest.mark.slow
def test_a_third_family_trains_evaluates_and_infers_through_the_experiment_layer(toy_folder, tmp_path):
    model = ModelSpec(str(toy_folder))
    prompt = PromptSpec(length=4, init="class_labels", placement="prefix")
    data = DataSpec("demo_sentiment", feature_lengths={"inputs": 32, "targets": 4}, batch_size=8, eval_limit=16)
    run = tmp_path / "run"
    summary = train(str(run), model, prompt, data, TrainSpec(steps=6, eval_every=3, checkpoint_every=3,
                                                              progress=False), optimizer=optax.adam(0.05))
    assert summary["step"] == 6 and summary["prompt"].shape == (4, 16)
    first = np.load(run / "prompts" / "prompt_3.npy")
    assert not np.array_equal(first, summary["prompt"])  # it trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [0, 3, 6]
    # Rank classification with the prompt restored from the run gives the run's last number.
    metrics = evaluate(model, prompt, data, checkpoint_path=str(run))
    assert metrics["accuracy"] == [r for r in rows if r["split"] == "eval"][-1]["accuracy"]
    out = infer(model, prompt, data, checkpoint_path=str(run), output_dir=str(tmp_path / "infer"),
                decoding=DecodeSpec(max_new_tokens=2))
    assert out["examples"] == 16 and 0.0 <= out["metrics"]["accuracy"] <= 100.0
