"""Generation with a KV cache: greedy, sampling and beam search, each one compiled loop.

    tokens = generate(prompted, input_ids, attention_mask, method="greedy", max_new_tokens=16, eos_id=50256)
    tokens = DecodeSpec(method="beam", num_beams=4, max_new_tokens=16).generate(prompted, ids, mask, eos_id)

`prompted` is a `PromptedModel` (the prompt is put into the embedded input, so
the prefill includes it) or a bare model. The model's `start_decode` (its seam,
`models/base.py`) does the prefill and gives the per-token step; this module
only chooses tokens. The whole loop runs under
`jax.jit` as a `lax.while_loop` over fixed-size caches: one compilation per
batch shape and decoding setting, no Python work per token, and it stops early
once every row has produced `eos_id`. Output: new tokens only, [B, max_new_tokens]
int32, `pad_id` (default `eos_id`) after each row's EOS.

- GPT-2 left-aligns the prompted sequence and takes positions from the mask,
  so generation continues right after each row's last real position, whatever
  the padding side or prompt placement.
- T5 runs the encoder once and feeds `decoder_start_token_id` as the loop's
  first pass (the decoder step is compiled once, as the loop's body); its
  cross-attention reads the encoder output through the k and v weights.
- greedy: argmax. sample: temperature, then top-k, then top-p (nucleus), as
  Hugging Face applies them; `seed` makes it deterministic.
- beam: Hugging Face's beam search (transformers >= 4.50, `do_sample=False`):
  2K candidates a step, hypotheses ending in EOS (or reaching max_new_tokens)
  scored sum(log p) / length ** length_penalty (length = generated tokens),
  `early_stopping` True / False / "never" as there. Returns the best hypothesis.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

METHODS = ("greedy", "sample", "beam")
NEG = -1.0e9  # Hugging Face's "impossible" beam score


@dataclasses.dataclass(frozen=True)
class _Options:
    method: str
    max_new_tokens: int
    num_beams: int
    temperature: float
    top_k: int
    top_p: float
    length_penalty: float
    early_stopping: bool | str
    eos_id: int
    pad_id: int


def generate(prompted, input_ids, attention_mask=None, *, method: str = "greedy", max_new_tokens: int,
             num_beams: int = 4, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             length_penalty: float = 1.0, early_stopping: bool | str = False, eos_id: int,
             pad_id: int | None = None, seed: int = 0, task_index=None) -> jax.Array:
    """Generates up to `max_new_tokens` after each input: input_ids / attention_mask [B, T] -> [B, N] int32.

    prompted: a PromptedModel or a bare GPT-2 / T5. task_index [B]: which task
    prompt per row (multi-task prompts). method: "greedy" | "sample" | "beam".
    Positions after a row's EOS hold `pad_id` (default `eos_id`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; use one of {METHODS}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if method == "beam" and num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if method == "sample" and (temperature <= 0 or top_k < 0 or not 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0, top_k >= 0 and 0 < top_p <= 1; got temperature="
                         f"{temperature}, top_k={top_k}, top_p={top_p}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if task_index is not None and not hasattr(prompted, "embed_inputs"):
        raise ValueError("task_index needs a PromptedModel with task prompts, not a bare model")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    opts = _Options(method, max_new_tokens, int(num_beams) if method == "beam" else 1, float(temperature),
                    int(top_k), float(top_p), float(length_penalty), early_stopping, int(eos_id),
                    int(eos_id if pad_id is None else pad_id))
    graphdef, state = nnx.split(prompted)
    task_index = None if task_index is None else jnp.asarray(task_index, jnp.int32)
    return _generate(graphdef, state, input_ids, mask, task_index, jax.random.key(seed), opts)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _generate(graphdef, state, input_ids, mask, task_index, rng, opts: _Options):
    prompted = nnx.merge(graphdef, state)
    if opts.num_beams > 1:  # every beam is a row: [B*K, ...]
        repeat = lambda x: None if x is None else jnp.repeat(x, opts.num_beams, axis=0)
        input_ids, mask, task_index = repeat(input_ids), repeat(mask), repeat(task_index)
    if hasattr(prompted, "embed_inputs"):  # a PromptedModel
        logits, cache, step = prompted.start_decode(input_ids, mask, task_index, opts.max_new_tokens)
    else:
        logits, cache, step = prompted.start_decode(prompted.embed(input_ids), mask, opts.max_new_tokens)
    if opts.method == "beam":
        if logits is None:  # an encoder-decoder's start token, fed before the search
            logits, cache = step(cache, jnp.zeros(input_ids.shape[:1], jnp.int32), -1)
        return _beam_search(logits, cache, step, opts)
    return _sample_loop(logits, cache, step, rng, opts)


# --------------------------------------------------------------------------- greedy and sampling


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Temperature, then top-k, then top-p (the smallest set of most likely tokens whose probability
    reaches top_p); filtered-out tokens get -inf. logits [B, V] -> [B, V] float32."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # the mass before this token is short of top_p
        threshold = jnp.take_along_axis(ordered, jnp.sum(keep, axis=-1, keepdims=True) - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax(logits, -1)` [B, V] -> [B] int32 (the first largest value, or the first NaN) in two plain
    reductions: XLA:CPU runs argmax's (value, index) reduction over a vocabulary 3x slower."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == top) | jnp.isnan(logits)
    v = logits.shape[-1]
    return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def _sample_loop(logits, cache, step, rng, opts: _Options):
    """logits None (an encoder-decoder, `models.base.Model.start_decode`): the loop's first pass, t = -1,
    feeds the start token and keeps nothing, so that the decoder step is compiled once, in the loop."""
    t0 = 0
    if logits is None:
        t0, rows = -1, jax.tree.leaves(cache)[0].shape[0]
        shape = jax.eval_shape(step, cache, jnp.zeros((rows,), jnp.int32), t0)[0]  # [B, V]: not computed
        logits = jnp.zeros(shape.shape, shape.dtype)
    b, n = logits.shape[0], opts.max_new_tokens

    def choose(logits, t):
        if opts.method == "greedy":
            return argmax(logits)
        filtered = filter_logits(logits, opts.temperature, opts.top_k, opts.top_p)
        return jax.random.categorical(jax.random.fold_in(rng, t), filtered, axis=-1).astype(jnp.int32)

    def cond(state):
        t, _, _, _, done = state
        return (t < n) & ~jnp.all(done)

    def body(state):
        t, logits, cache, tokens, done = state
        token = jnp.where(done, opts.pad_id, choose(logits, t))
        if t0 < 0:  # the start pass (t = -1) records nothing
            keep = t >= 0
            tokens = jnp.where(keep, tokens.at[:, jnp.maximum(t, 0)].set(token), tokens)
            done = done | (keep & (token == opts.eos_id))
        else:
            tokens = tokens.at[:, t].set(token)
            done = done | (token == opts.eos_id)
        logits, cache = step(cache, token, t)
        return t + 1, logits, cache, tokens, done

    tokens = jnp.full((b, n), opts.pad_id, jnp.int32)
    state = (jnp.int32(t0), logits, cache, tokens, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, state)[3]


# --------------------------------------------------------------------------- beam search


def _beam_search(logits, cache, step, opts: _Options):
    """Hugging Face's beam search on [B*K] rows (K beams per example) -> best hypothesis [B, N]."""
    k, n, lp = opts.num_beams, opts.max_new_tokens, opts.length_penalty
    bk, v = logits.shape
    b = bk // k
    gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    top_k_mask = jnp.arange(2 * k) < k  # only the K best candidates may become hypotheses

    def cond(state):
        t, keep_going = state[0], state[-1]
        return (t < n) & keep_going

    def body(state):
        (t, logits, cache, run_seqs, run_scores, fin_seqs, fin_scores, fin_done, improvable, _) = state
        # a. 2K best continuations over all beams of an example
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v) + run_scores[..., None]
        cand_scores, flat = jax.lax.top_k(logp.reshape(b, k * v), 2 * k)  # [B, 2K]
        parent, token = flat // v, (flat % v).astype(jnp.int32)
        cand_seqs = gather(run_seqs, parent).at[:, :, t].set(token)  # [B, 2K, N]
        hits = (token == opts.eos_id) | (t == n - 1)
        # b. the K best unfinished ones keep running
        running = cand_scores + jnp.where(hits, NEG, 0.0)
        _, keep = jax.lax.top_k(running, k)
        run_seqs, run_scores, parent = gather(cand_seqs, keep), gather(running, keep), gather(parent, keep)
        # c. finished ones join the K best hypotheses, length-normalised
        just_done = hits & top_k_mask
        full = jnp.all(fin_done, axis=-1, keepdims=True) & (opts.early_stopping is True)
        scores = (cand_scores / (t + 1.0) ** lp + jnp.where(full, NEG, 0.0) + jnp.where(improvable, 0.0, NEG)
                  + jnp.where(just_done, 0.0, NEG))
        merged = jnp.concatenate([fin_scores, scores], axis=1)
        _, best = jax.lax.top_k(merged, k)
        fin_seqs = gather(jnp.concatenate([fin_seqs, cand_seqs], axis=1), best)
        fin_scores = gather(merged, best)
        fin_done = gather(jnp.concatenate([fin_done, just_done], axis=1), best)
        # d. reorder the cache to the surviving beams and feed their tokens
        rows = (jnp.arange(b)[:, None] * k + parent).reshape(bk)
        cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)
        logits, cache = step(cache, run_seqs[:, :, t].reshape(bk), t)
        # e. can any example still improve?
        generated = (n if opts.early_stopping == "never" and lp > 0 else t + 1.0)
        best_possible = run_scores[:, :1] / generated**lp
        worst = jnp.where(fin_done, jnp.min(fin_scores, axis=1, keepdims=True), NEG)
        improvable = improvable & jnp.any(best_possible > worst, axis=-1, keepdims=True)
        keep_going = (jnp.any(improvable) & ~(jnp.all(fin_done) & (opts.early_stopping is True))
                      & ~jnp.all(hits))
        return t + 1, logits, cache, run_seqs, run_scores, fin_seqs, fin_scores, fin_done, improvable, keep_going

    seqs = jnp.full((b, k, n), opts.pad_id, jnp.int32)
    run_scores = jnp.zeros((b, k), jnp.float32).at[:, 1:].set(NEG)  # identical beams: expand the first only
    state = (jnp.int32(0), logits, cache, seqs, run_scores, seqs, jnp.full((b, k), NEG, jnp.float32),
             jnp.zeros((b, k), bool), jnp.ones((b, 1), bool), jnp.array(True))
    return jax.lax.while_loop(cond, body, state)[5][:, 0]


# --------------------------------------------------------------------------- gin-friendly settings


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Decoding settings (configs/decoding/*.gin bind them); see `generate`.

    max_new_tokens None: the caller decides (infer() uses TASK_FEATURE_LENGTHS['targets']).
    """

    method: str = "greedy"
    max_new_tokens: int | None = None
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    seed: int = 0

    def generate(self, prompted, input_ids, attention_mask, eos_id: int, task_index=None,
                 max_new_tokens: int | None = None, pad_id: int | None = None) -> jax.Array:
        """`generate(...)` with these settings -> [B, N] new tokens; `max_new_tokens` overrides the spec's."""
        n = max_new_tokens if max_new_tokens is not None else self.max_new_tokens
        if n is None:
            raise ValueError("DecodeSpec.max_new_tokens is not set (and no max_new_tokens was given)")
        return generate(prompted, input_ids, attention_mask, method=self.method, max_new_tokens=n,
                        num_beams=self.num_beams, temperature=self.temperature, top_k=self.top_k,
                        top_p=self.top_p, length_penalty=self.length_penalty,
                        early_stopping=self.early_stopping, eos_id=eos_id, pad_id=pad_id, seed=self.seed,
                        task_index=task_index)
