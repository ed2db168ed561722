"""KV-cached decoding: cached == uncached, greedy and beam == transformers' generate, sampling properties."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import assert_logits_close, left_aligned, padded_batch, torch_model, transformers_greedy

import prompt_tuning_jax as ptj
from prompt_tuning_jax import decoding
from prompt_tuning_jax.prompts import combine

t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
N = 8  # new tokens


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(HF model, our model); a large init range so greedy outputs vary from step to step."""
    folder = tmp_path_factory.mktemp("gpt2")
    return torch_model("gpt2", folder, initializer_range=0.3), ptj.from_pretrained(folder)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    return torch_model("t5", folder, untied=True, decoder_start_token_id=0), ptj.from_pretrained(folder)


def until_eos(tokens, eos):
    """Each row up to and including its first EOS, as lists."""
    rows = []
    for row in np.asarray(tokens).tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


# --- cached forward == uncached forward -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_cached_steps_match_the_full_forward(gpt2, rng, side):
    _, model = gpt2
    ids, mask = padded_batch(rng, 211, [9, 4, 6], 9, side=side)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)  # left padding: as generate numbers them
    embeds = model.embed(ids)
    full = model.forward_embeddings(embeds, mask, positions)

    @nnx.jit
    def step(model, x, pos, cache, index):  # index is traced: one compilation for every step
        return model.forward_cached(x, jnp.asarray(mask), pos, cache, index)

    hidden, cache = model.forward_cached(embeds[:, :3], mask, positions[:, :3], model.init_cache(3, 9), 0)
    outs = [hidden]
    for i in range(3, 9):
        h, cache = step(model, embeds[:, i:i + 1], positions[:, i:i + 1], cache, jnp.int32(i))
        outs.append(h)
    assert_logits_close(jnp.concatenate(outs, 1), full, mask)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_t5_cached_decoder_steps_match_the_full_decoder(t5, rng, side):
    _, model = t5
    ids, mask = padded_batch(rng, 199, [7, 3], 7, side=side)
    dec = rng.integers(0, 199, size=(2, 6)).astype(np.int32)
    encoded = model.encode(model.embed(ids), mask)
    full = model.decode(dec, encoded, mask)

    @nnx.jit
    def step(model, tokens, cache, index):
        return model.decode_cached(tokens, cache, index, jnp.asarray(mask))

    hidden, cache = model.decode_cached(dec[:, :2], model.init_cache(encoded, 6), 0, mask)
    outs = [hidden]
    for i in range(2, 6):
        h, cache = step(model, dec[:, i:i + 1], cache, jnp.int32(i))
        outs.append(h)
    assert_logits_close(model.logits(jnp.concatenate(outs, 1)), model.logits(full))


@pytest.mark.slow
def test_t5_relative_bias_at_an_offset_is_a_slice_of_the_full_bias(t5):
    _, model = t5
    attn = model.decoder.block[0].layer[0].SelfAttention
    full = attn.position_bias(40, 40, False, 8, 20)
    np.testing.assert_array_equal(attn.position_bias(3, 40, False, 8, 20, q_offset=25), full[:, :, 25:28])


# --- greedy == transformers ---------------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_greedy_matches_transformers(gpt2, rng, side):
    hf, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9, 7, 1], 9, side=side)
    ours = decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=-1)  # no EOS: all N tokens
    assert ours.shape == (4, N) and ours.dtype == jnp.int32
    np.testing.assert_array_equal(ours, transformers_greedy(hf, ids, mask, N))
    assert len({tuple(r) for r in np.asarray(ours)}) > 1 and len(set(np.asarray(ours)[0])) > 2  # not degenerate


def gpt2_reference_embeds(hf, ids, mask, prompt, placement):
    """PyTorch inputs_embeds with the prompt next to the text, left-padded: [pads, (prompt,) text(, prompt)]."""
    wte = hf.transformer.wte.weight.detach().numpy()
    rows = []
    for i in range(len(ids)):
        text = wte[ids[i][mask[i] > 0]]
        rows.append(np.concatenate([prompt, text] if placement == "prefix" else [text, prompt]))
    width = max(len(r) for r in rows)
    embeds = np.zeros((len(rows), width, wte.shape[1]), np.float32)
    emask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        embeds[i, width - len(r):], emask[i, width - len(r):] = r, 1
    return torch.tensor(embeds), torch.tensor(emask)


@pytest.mark.parametrize("placement,side", [("prefix", "right"), ("suffix", "right"), ("suffix", "left")])
def test_gpt2_prompted_greedy_matches_transformers_on_inputs_embeds(gpt2, rng, placement, side):
    hf, model = gpt2
    prompt = rng.normal(size=(3, 48)).astype(np.float32)
    ids, mask = padded_batch(rng, 211, [5, 8, 2], 8, side=side)
    prompted = ptj.with_prompt(model, 3, prompt, placement=placement)
    ours = decoding.generate(prompted, ids, mask, max_new_tokens=N, eos_id=-1)
    embeds, emask = gpt2_reference_embeds(hf, ids, mask, prompt, placement)
    theirs = hf.generate(inputs_embeds=embeds, attention_mask=emask, max_new_tokens=N, do_sample=False,
                         eos_token_id=None, pad_token_id=0)  # new tokens only
    np.testing.assert_array_equal(ours, theirs.numpy())


@pytest.mark.slow
def test_gpt2_greedy_stops_at_eos_and_pads(gpt2, rng):
    hf, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9, 7], 9, side="right")
    free = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=-1))
    eos = int(free[0, 2])  # a token row 0 produces at step 2
    ours = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=eos, pad_id=7))
    first = list(free[0]).index(eos)
    np.testing.assert_array_equal(ours[0, :first + 1], free[0, :first + 1])
    assert (ours[0, first + 1:] == 7).all()
    theirs = transformers_greedy(hf, ids, mask, N, eos_token_id=eos, pad_token_id=7)
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)


def test_t5_greedy_matches_transformers(t5, rng):
    hf, model = t5
    ids, mask = padded_batch(rng, 199, [6, 3, 5], 6)
    ours = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=1, pad_id=0))
    theirs = hf.generate(t(ids), attention_mask=t(mask), max_new_tokens=N, do_sample=False)[:, 1:].numpy()
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == 0).all()


def test_t5_prefix_prompted_greedy_matches_transformers_on_inputs_embeds(t5, rng):
    hf, model = t5
    prompt = rng.normal(size=(4, 32)).astype(np.float32)
    ids, mask = padded_batch(rng, 199, [6, 3, 5], 6)
    prompted = ptj.with_prompt(model, 4, prompt, placement="prefix")
    ours = np.asarray(decoding.generate(prompted, ids, mask, max_new_tokens=N, eos_id=1, pad_id=0))
    with torch.no_grad():
        embeds = torch.cat([torch.tensor(prompt)[None].expand(3, -1, -1), hf.shared(t(ids))], 1)
    emask = torch.cat([torch.ones(3, 4, dtype=torch.long), t(mask)], 1)
    theirs = hf.generate(inputs_embeds=embeds, attention_mask=emask, max_new_tokens=N,
                         do_sample=False)[:, 1:].numpy()
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)


# --- beam search == transformers -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("early_stopping,length_penalty", [(False, 1.0), (True, 1.0), ("never", 1.0),
                                                          (False, 0.0)])
def test_gpt2_beam_matches_transformers(gpt2, early_stopping, length_penalty):
    """16 rows and a common token as EOS, so hypotheses end at many different steps: these settings
    catch an off-by-one length normalisation, a missing early-stopping rule and EOS candidates
    outside the K best being kept (each was checked to fail here)."""
    hf, model = gpt2
    rng = np.random.default_rng(0)
    ids, mask = padded_batch(rng, 211, list(rng.integers(1, 10, 16)), 9, side="right")
    n = 10
    greedy = np.asarray(decoding.generate(model, ids, mask, max_new_tokens=n, eos_id=-1))
    values, counts = np.unique(greedy, return_counts=True)
    eos = int(values[np.argmax(counts)])
    kw = dict(num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping)
    ours = decoding.generate(model, ids, mask, method="beam", max_new_tokens=n, eos_id=eos, **kw)
    left_ids, left_mask = left_aligned(ids, mask)
    theirs = hf.generate(t(left_ids), attention_mask=t(left_mask), max_new_tokens=n, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos, **kw)[:, 9:]
    assert until_eos(ours, eos) == until_eos(theirs, eos)
    lengths = {len(row) for row in until_eos(ours, eos)}
    assert len(lengths) > 2  # hypotheses of several lengths compete


@pytest.mark.slow
def test_t5_prompted_beam_matches_transformers(t5, rng):
    hf, model = t5
    prompt = rng.normal(size=(4, 32)).astype(np.float32)
    ids, mask = padded_batch(rng, 199, [6, 3, 5], 6)
    prompted = ptj.with_prompt(model, 4, prompt)
    greedy = np.asarray(decoding.generate(prompted, ids, mask, max_new_tokens=N, eos_id=-1))
    eos = int(greedy[0, 2])
    ours = decoding.generate(prompted, ids, mask, method="beam", num_beams=4, max_new_tokens=N, eos_id=eos)
    with torch.no_grad():
        embeds = torch.cat([torch.tensor(prompt)[None].expand(3, -1, -1), hf.shared(t(ids))], 1)
    emask = torch.cat([torch.ones(3, 4, dtype=torch.long), t(mask)], 1)
    theirs = hf.generate(inputs_embeds=embeds, attention_mask=emask, max_new_tokens=N, do_sample=False,
                         num_beams=4, eos_token_id=eos, pad_token_id=0)[:, 1:]
    assert until_eos(ours, eos) == until_eos(theirs, eos)


@pytest.mark.slow
def test_beam_of_one_is_greedy(gpt2, rng):
    _, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9], 9)
    greedy = decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=-1)
    beam = decoding.generate(model, ids, mask, method="beam", num_beams=1, max_new_tokens=N, eos_id=-1)
    np.testing.assert_array_equal(beam, greedy)


# --- sampling ----------------------------------------------------------------------------------

def test_sampling_is_deterministic_given_the_seed(gpt2, rng):
    _, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9, 3], 9)
    sample = lambda seed: np.asarray(decoding.generate(model, ids, mask, method="sample", max_new_tokens=N,
                                                       eos_id=-1, temperature=2.0, seed=seed))
    np.testing.assert_array_equal(sample(1), sample(1))
    assert not np.array_equal(sample(1), sample(2))


@pytest.mark.slow
def test_top_k_1_is_greedy(t5, rng):
    _, model = t5
    ids, mask = padded_batch(rng, 199, [6, 3], 6)
    greedy = decoding.generate(model, ids, mask, max_new_tokens=N, eos_id=1)
    sampled = decoding.generate(model, ids, mask, method="sample", top_k=1, temperature=5.0, max_new_tokens=N,
                                eos_id=1, seed=3)
    np.testing.assert_array_equal(sampled, greedy)


@pytest.mark.slow
def test_sampled_tokens_come_from_the_top_k(gpt2, rng):
    _, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9, 7, 2], 9)
    k = 3
    for seed in range(3):
        tokens = np.asarray(decoding.generate(model, ids, mask, method="sample", top_k=k, temperature=3.0,
                                              max_new_tokens=N, eos_id=-1, seed=seed))
        # Teacher-force the sampled tokens after each row's last real token and read each step's logits.
        at = combine.last_real(jnp.asarray(mask)) + 1
        full, full_mask, _ = combine.insert(model.embed(ids), jnp.asarray(mask), model.embed(tokens), at)
        logits = model.logits(model.forward_embeddings(full, full_mask))
        pos = at[:, None] - 1 + jnp.arange(N)[None]
        step_logits = np.asarray(jnp.take_along_axis(logits, pos[..., None], axis=1))  # [B, N, V]
        top = np.argsort(-step_logits, axis=-1)[..., :k]
        assert (top == tokens[..., None]).any(-1).all()


def test_filter_logits_matches_transformers_warpers(rng):
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(0.7, 0, 0.9), (1.0, 5, 1.0), (1.5, 10, 0.5), (1.0, 0, 0.01)]:
        x = torch.tensor(logits)
        x = TemperatureLogitsWarper(temperature)(None, x)
        if top_k:
            x = TopKLogitsWarper(top_k)(None, x)
        if top_p < 1:
            x = TopPLogitsWarper(top_p)(None, x)
        ours = np.asarray(decoding.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(x.numpy()))
        np.testing.assert_allclose(ours[np.isfinite(ours)], x.numpy()[np.isfinite(ours)], rtol=1e-6)


def test_argmax_is_jnp_argmax_with_ties_nans_and_infinities(rng):
    logits = rng.normal(size=(6, 300)).astype(np.float32)
    logits[1, [7, 40]] = 9.0  # a tie: the first index
    logits[2, [30, 12]] = np.nan  # the first NaN wins, as in jnp.argmax
    logits[3] = -np.inf
    logits[4, 299] = np.inf
    logits[5] = 0.0
    ours = np.asarray(decoding.argmax(jnp.asarray(logits)))
    np.testing.assert_array_equal(ours, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert ours.dtype == np.int32 and ours.tolist()[1:] == [7, 12, 0, 299, 0]


# --- API -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_decode_spec_and_multitask_prompts(gpt2, rng):
    _, model = gpt2
    prompts = rng.normal(size=(2, 3, 48)).astype(np.float32)
    ids, mask = padded_batch(rng, 211, [5, 9], 9)
    multi = ptj.with_prompt(model, 3, prompts, placement="suffix", num_tasks=2)
    spec = decoding.DecodeSpec(max_new_tokens=N)
    got = spec.generate(multi, ids, mask, eos_id=-1, task_index=np.array([1, 0]))
    for row, task in ((0, 1), (1, 0)):
        single = ptj.with_prompt(model, 3, prompts[task], placement="suffix")
        np.testing.assert_array_equal(got[row], decoding.generate(single, ids, mask, max_new_tokens=N,
                                                                   eos_id=-1)[row])
    with pytest.raises(ValueError, match="max_new_tokens is not set"):
        decoding.DecodeSpec().generate(model, ids, mask, eos_id=0)


@pytest.mark.slow
def test_generate_runs_inside_jit_and_compiles_once_per_shape(gpt2, rng):
    _, model = gpt2
    ids, mask = padded_batch(rng, 211, [5, 9], 9)
    decoding._generate.clear_cache()
    for seed in range(3):  # the seed is traced: no recompilation
        decoding.generate(model, ids, mask, method="sample", max_new_tokens=4, eos_id=-1, seed=seed)
    assert decoding._generate._cache_size() == 1
    outer = nnx.jit(lambda m, i, k: decoding.generate(m, i, k, max_new_tokens=4, eos_id=-1))
    np.testing.assert_array_equal(outer(model, ids, mask),
                                  decoding.generate(model, ids, mask, max_new_tokens=4, eos_id=-1))


def test_bad_arguments(gpt2):
    _, model = gpt2
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="unknown decoding method"):
        decoding.generate(model, ids, method="nucleus", max_new_tokens=2, eos_id=0)
    with pytest.raises(ValueError, match="n_positions"):
        decoding.generate(model, ids, max_new_tokens=61, eos_id=0)
    with pytest.raises(ValueError, match="top_p"):
        decoding.generate(model, ids, method="sample", top_p=0.0, max_new_tokens=2, eos_id=0)
