"""PromptX wrappers: placement, parity with PEFT and a PyTorch suffix reference, gradients, multi-task."""
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import assert_logits_close, padded_batch, shared_path, tiny_model, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax.prompts import combine
from prompt_tuning_jax.variables import Trainable

t = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)


# --- placement ----------------------------------------------------------------------

@pytest.mark.parametrize("placement,side,want", [
    ("prefix", "right", "PPab.."), ("prefix", "left", "..PPab"),
    ("suffix", "right", "abPP.."), ("suffix", "left", "..abPP"),
])
def test_prompt_is_adjacent_to_the_text(placement, side, want):
    ids = np.array([[1, 2, 0, 0]]) if side == "right" else np.array([[0, 0, 1, 2]])
    mask = (ids > 0).astype(np.int32)
    embeds = jnp.asarray(ids, jnp.float32)[..., None]
    prompt = -jnp.ones((2, 1))
    out, out_mask, source = combine.insert(embeds, mask, prompt, combine.insert_positions(mask, placement))
    got = "".join({-1: "P", 0: ".", 1: "a", 2: "b"}[int(v)] for v in out[0, :, 0])
    assert got == want
    np.testing.assert_array_equal(out_mask[0], [c != "." for c in want])
    np.testing.assert_array_equal(out[0, source[0], 0], ids[0])  # source maps tokens to their new slots


def test_before_eos_puts_a_suffix_before_the_last_token():
    mask = np.array([[1, 1, 1, 0]])
    assert int(combine.insert_positions(mask, "suffix", before_eos=True)[0]) == 2
    assert int(combine.insert_positions(mask, "suffix")[0]) == 3


def test_unknown_placement():
    with pytest.raises(ValueError, match="unknown prompt placement 'middle'"):
        combine.insert_positions(np.ones((1, 2)), "middle")


# --- parity: prefix vs PEFT ------------------------------------------------------------

def peft_model(hf, task_type, prompt):
    from peft import PromptTuningConfig, get_peft_model

    pm = get_peft_model(hf, PromptTuningConfig(task_type=task_type, num_virtual_tokens=prompt.shape[0]))
    with torch.no_grad():
        pm.prompt_encoder["default"].embedding.weight[: prompt.shape[0]] = torch.tensor(prompt)
    return pm.eval()


def test_gpt2_prefix_matches_peft(tmp_path, rng):
    hf = torch_model("gpt2", tmp_path)
    prompt = rng.normal(size=(5, 48)).astype(np.float32)
    ids, mask = padded_batch(rng, 211, [9, 4, 1], 9, side="right")
    with torch.no_grad():
        theirs = peft_model(hf, "CAUSAL_LM", prompt)(input_ids=t(ids), attention_mask=t(mask)).logits.numpy()
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 5, prompt, placement="prefix")
    out = nnx.jit(lambda m, i, k: m(i, k))(prompted, ids, mask)
    assert out.logits.shape == theirs.shape == (3, 14, 211)
    assert_logits_close(out.logits, theirs, out.attention_mask)


@pytest.mark.slow
def test_t5_prefix_matches_peft(tmp_path, rng):
    hf = torch_model("t5", tmp_path, untied=True)
    prompt = rng.normal(size=(4, 32)).astype(np.float32)
    ids, mask = padded_batch(rng, 199, [8, 3], 8, side="right")
    dec, dec_mask = padded_batch(rng, 199, [3, 2], 3)
    with torch.no_grad():
        theirs = peft_model(hf, "SEQ_2_SEQ_LM", prompt)(
            input_ids=t(ids), attention_mask=t(mask), decoder_input_ids=t(dec),
            decoder_attention_mask=t(dec_mask)).logits.numpy()
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 4, prompt)
    out = prompted(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    assert_logits_close(out.logits, theirs, dec_mask)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT in train mode
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_prompt_gets_the_input_embedding_dropout_as_in_peft(tmp_path, rng, monkeypatch, family):
    """PEFT in train mode feeds [prompt; embeddings] as inputs_embeds: every dropout site, the prompt included,
    where ours are (each site replaced by x * (1 - rate) on both sides: helpers.scale_instead_of_dropout)."""
    from helpers import scale_instead_of_dropout, train_mode

    rates = dict(resid_pdrop=0.1, embd_pdrop=0.2, attn_pdrop=0.3) if family == "gpt2" else dict(dropout_rate=0.3)
    hf = train_mode(torch_model(family, tmp_path, **rates))
    hidden, vocab = hf.config.hidden_size, hf.config.vocab_size
    prompt = rng.normal(size=(4, hidden)).astype(np.float32)
    ids, mask = padded_batch(rng, vocab, [8, 3], 8, side="right")
    dec, dec_mask = padded_batch(rng, vocab, [3, 2], 3)
    extra = {} if family == "gpt2" else dict(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    pm = peft_model(hf, "CAUSAL_LM" if family == "gpt2" else "SEQ_2_SEQ_LM", prompt).train()
    scale_instead_of_dropout(monkeypatch)
    with torch.no_grad():
        theirs = pm(input_ids=t(ids), attention_mask=t(mask), **{k: t(v) for k, v in extra.items()}).logits.numpy()
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 4, prompt, placement="prefix")
    out = prompted(ids, mask, dropout_rng=jax.random.key(0), **extra)
    assert_logits_close(out.logits, theirs, out.attention_mask if family == "gpt2" else dec_mask)


# --- parity: suffix vs a PyTorch reference ----------------------------------------------

def torch_suffix_reference(hf, ids, mask, prompt, head_w=None, head_b=None):
    """Writes the prompt into inputs_embeds right after each example's last real token (a plain loop).

    Positions count real tokens only (cumsum(mask) - 1, clipped at 0), as generate numbers left-padded rows
    and as our GPT-2 always does; under right padding that is transformers' default 0..T-1 at real tokens.
    """
    wte = hf.get_input_embeddings()
    p = prompt.shape[0]
    rows, masks, last = [], [], []
    with torch.no_grad():
        for i in range(ids.shape[0]):
            e = wte(t(ids[i]))
            real = np.nonzero(mask[i])[0]
            end = real[-1] + 1
            rows.append(torch.cat([e[:end], torch.tensor(prompt), e[end:]]))
            masks.append(np.concatenate([mask[i][:end], np.ones(p, np.int64), mask[i][end:]]))
            last.append(end + p - 1)
        masks = np.stack(masks)
        positions = np.maximum(np.cumsum(masks, axis=1) - 1, 0)
        out = hf(inputs_embeds=torch.stack(rows), attention_mask=t(masks), position_ids=t(positions),
                 output_hidden_states=True)
    idx = np.arange(ids.shape[0])
    next_logits = out.logits.numpy()[idx, last]
    hidden = out.hidden_states[-1].numpy()[idx, last]
    classes = hidden @ head_w + head_b if head_w is not None else None
    return next_logits, classes


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_suffix_matches_pytorch_reference(tmp_path, rng, side):
    hf = torch_model("gpt2", tmp_path)
    prompt = rng.normal(size=(3, 48)).astype(np.float32)
    ids, mask = padded_batch(rng, 211, [7, 2, 5], 7, side=side, pad_id=0)
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 3, prompt, placement="suffix", head="linear",
                               num_labels=4)
    w = np.asarray(prompted.head.weight[...])
    b = rng.normal(size=(4,)).astype(np.float32)
    prompted.head.bias[...] = jnp.asarray(b)
    want_next, want_classes = torch_suffix_reference(hf, ids, mask, prompt, w, b)
    out = nnx.jit(lambda m, i, k: m(i, k))(prompted, ids, mask)
    assert out.prediction.shape == (3, 4)
    assert_logits_close(out.prediction, want_classes)
    assert_logits_close(prompted.model.logits(out.hidden), want_next)
    lm_only = ptj.with_prompt(prompted.model, 3, prompt, placement="suffix")
    assert_logits_close(lm_only(ids, mask).prediction, want_next)


# --- padding never changes a prediction --------------------------------------------------

def pad(ids, total, side, other=None):
    """One example (a list of ids) alone [1, n], or padded to `total` on `side` next to a longer row `other`."""
    if side == "alone":
        return np.array([ids], np.int32), np.ones((1, len(ids)), np.int32)
    rows, masks = [], []
    for row in (ids, other):
        padding = [0] * (total - len(row))
        rows.append(padding + row if side == "left" else row + padding)
        masks.append([0] * len(padding) + [1] * len(row) if side == "left" else [1] * len(row) + [0] * len(padding))
    return np.array(rows, np.int32), np.array(masks, np.int32)


PADDING_CASES = {
    "gpt2 bare": ("gpt2", None),
    "gpt2 prefix prompt": ("gpt2", "prefix"),
    "gpt2 suffix prompt": ("gpt2", "suffix"),
    "t5 prefix prompt": ("t5", "prefix"),
}


@pytest.mark.parametrize("case", list(PADDING_CASES))
def test_a_prediction_does_not_depend_on_padding(rng, case):
    """An example alone, left-padded and right-padded (next to a longer row): the same prediction to 1e-5."""
    family, placement = PADDING_CASES[case]
    model = (tiny_model("gpt2", initializer_range=0.3, **SMALL) if family == "gpt2"
             else tiny_model("t5", untied=True))  # large enough logits that positions would show
    vocab = model.config.vocab_size
    example, other = rng.integers(1, vocab, 5).tolist(), rng.integers(1, vocab, 9).tolist()
    prompt = rng.normal(size=(3, model.config.hidden_size)).astype(np.float32)
    if placement is None:
        logits = jax.jit(lambda ids, mask: model(ids, mask))
        predict = lambda ids, mask: logits(ids, mask)[0, int(np.nonzero(mask[0])[0][-1])]  # next-token logits
    else:
        prompted = ptj.with_prompt(model, 3, prompt, placement=placement)
        predict = nnx.jit(lambda m, ids, mask: m(ids, mask).prediction[0])
        predict = functools.partial(predict, prompted)
    alone = np.asarray(predict(*pad(example, 0, "alone")))
    for side in ("left", "right"):
        np.testing.assert_allclose(predict(*pad(example, 12, side, other)), alone, rtol=0, atol=1e-5, err_msg=side)
    if family == "gpt2" and placement is None:  # numbering pads (transformers' forward) would change it
        ids, mask = pad(example, 12, "left", other)
        counted = model(ids, mask, position_ids=np.arange(12)[None])[0, -1]
        assert np.abs(np.asarray(counted) - alone).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_target_scores_do_not_depend_on_padding(rng, family):
    """Rank classification (teacher-forced targets) of an example alone, left- and right-padded."""
    from prompt_tuning_jax.heads import rank_classification

    model = (tiny_model("gpt2", initializer_range=0.3, **SMALL) if family == "gpt2"
             else tiny_model("t5", untied=True))
    vocab = model.config.vocab_size
    prompted = ptj.with_prompt(model, 3, rng.normal(size=(3, model.config.hidden_size)).astype(np.float32),
                               placement="suffix" if family == "gpt2" else "prefix")
    example, other = rng.integers(1, vocab, 5).tolist(), rng.integers(1, vocab, 9).tolist()
    labels, label_mask = rng.integers(1, vocab, (3, 2)), np.array([[1, 1], [1, 0], [1, 1]])
    score = lambda ids, mask: np.asarray(rank_classification(prompted, ids, mask, labels, label_mask))[0]
    alone = score(*pad(example, 0, "alone"))
    for side in ("left", "right"):
        np.testing.assert_allclose(score(*pad(example, 12, side, other)), alone, rtol=0, atol=1e-5, err_msg=side)


# --- the wrapper ------------------------------------------------------------------------

SMALL = dict(vocab_size=97, n_positions=32, n_embd=16, n_head=2)  # sizes for tiny_model("gpt2", **SMALL)


@pytest.mark.slow
def test_gradients_only_for_prompt_and_head(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", **SMALL), 4, None, placement="suffix", head="linear", num_labels=3)
    graphdef, trainable, frozen = nnx.split(prompted, Trainable, ...)
    ids, mask = padded_batch(rng, 97, [6, 3], 6)
    labels = jnp.array([0, 2])

    def loss(trainable, frozen):
        out = nnx.merge(graphdef, trainable, frozen)(ids, mask)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out.prediction), labels[:, None], 1))

    grads = jax.grad(loss)(trainable, frozen)
    paths = sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(grads))
    assert paths == ["head.bias", "head.weight", "soft_prompt"]
    assert all(float(jnp.abs(g[...]).sum()) > 0 for _, g in nnx.to_flat_state(grads))
    # No weight gradient is even computed: no dot in the backward pass yields a [H, 3H] or [H, 4H] matrix.
    jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable, frozen)
    shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "dot_general"
              for v in eqn.outvars}
    assert (16, 48) not in shapes and (16, 64) not in shapes and (64, 16) not in shapes


@pytest.mark.slow
def test_multitask_batch_uses_each_examples_prompt(rng):
    model = tiny_model("gpt2", **SMALL)
    prompts = rng.normal(size=(3, 4, 16)).astype(np.float32)
    multi = ptj.with_prompt(model, 4, prompts, placement="suffix", num_tasks=3)
    assert multi.prompt.shape == (3, 4, 16)
    ids, mask = padded_batch(rng, 97, [6, 3, 5, 2], 6)
    task = np.array([2, 0, 1, 2])
    got = multi(ids, mask, task_index=task).prediction
    for i, k in enumerate(task):
        single = ptj.with_prompt(model, 4, prompts[k], placement="suffix")
        want = single(ids[i:i + 1], mask[i:i + 1]).prediction
        np.testing.assert_allclose(got[i], want[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass task_index"):
        multi(ids, mask)


@pytest.mark.slow
def test_head_validation():
    with pytest.raises(ValueError, match="num_labels=1 means regression"):
        ptj.with_prompt(tiny_model("gpt2", **SMALL), 2, None, head="linear", num_labels=1)
    reg = ptj.with_prompt(tiny_model("gpt2", **SMALL), 2, None, head="linear", num_labels=1, regression=True)
    assert reg(np.ones((2, 3), np.int32)).prediction.shape == (2,)
    with pytest.raises(ValueError, match="needs num_labels"):
        ptj.with_prompt(tiny_model("gpt2", **SMALL), 2, None, head="linear")


@pytest.mark.slow
def test_bfloat16_model_keeps_a_float32_prompt(rng):
    prompted = ptj.with_prompt(tiny_model("gpt2", dtype=jnp.bfloat16, **SMALL), 3, None)
    assert prompted.prompt.dtype == jnp.float32
    out = prompted(*padded_batch(rng, 97, [4], 4))
    assert out.logits.dtype == jnp.float32 and np.isfinite(np.asarray(out.logits)).all()


@pytest.mark.slow
def test_rank_classification_matches_pytorch(tmp_path, rng):
    """GPT-2: score each label string after the suffix prompt; compare with a direct PyTorch computation."""
    from prompt_tuning_jax.heads import rank_classification

    hf = torch_model("gpt2", tmp_path)
    prompt = rng.normal(size=(2, 48)).astype(np.float32)
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 2, prompt, placement="suffix")
    ids, mask = padded_batch(rng, 211, [5, 3], 5)
    labels = [[7, 8, 9], [11, 0, 0]]
    label_mask = [[1, 1, 1], [1, 0, 0]]
    got = rank_classification(prompted, ids, mask, np.array(labels), np.array(label_mask))
    wte = hf.get_input_embeddings()
    for i in range(2):
        n = int(mask[i].sum())
        for c, (lab, lm) in enumerate(zip(labels, label_mask)):
            lab = [x for x, m in zip(lab, lm) if m]
            with torch.no_grad():
                e = torch.cat([wte(t(ids[i, :n])), torch.tensor(prompt), wte(t(lab))])[None]
                logp = torch.log_softmax(hf(inputs_embeds=e).logits[0], -1).numpy()
            start = n + 2
            want = sum(logp[start - 1 + k, tok] for k, tok in enumerate(lab))
            np.testing.assert_allclose(got[i, c], want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_t5_rank_classification_matches_direct_scoring(tmp_path, rng):
    from prompt_tuning_jax.heads import rank_classification, token_log_likelihood

    torch_model("t5", tmp_path, untied=True)
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path), 3, rng.normal(size=(3, 32)).astype(np.float32))
    ids, mask = padded_batch(rng, 199, [6, 4], 6)
    labels, label_mask = np.array([[5, 1], [9, 1]]), np.ones((2, 2), np.int32)
    got = rank_classification(prompted, ids, mask, labels, label_mask)
    for c in range(2):
        dec = np.concatenate([np.zeros((2, 1), np.int32), np.tile(labels[c, :1], (2, 1))], 1)
        logits = prompted(ids, mask, decoder_input_ids=dec).logits
        want = token_log_likelihood(logits, np.tile(labels[c], (2, 1)), np.ones((2, 2)))
        np.testing.assert_allclose(got[:, c], want, rtol=1e-5, atol=1e-5)


# --- released prompts --------------------------------------------------------------------

def abstract_t5(size):
    from prompt_tuning_jax.models import preset

    return nnx.eval_shape(lambda: ptj.init_random(preset(size)))


def test_released_sst2_prompt_loads_into_a_t5_base_sized_model():
    path = shared_path("released_prompts", "t5_1_1_lm100k_base", "sst2.npy")
    prompted = ptj.with_prompt(abstract_t5("t5-v1_1-base"), 100, str(path))
    assert prompted.prompt.shape == (100, 768) and prompted.prompt.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(prompted.prompt), np.load(path))  # never renormalised
    assert np.linalg.norm(np.asarray(prompted.prompt), axis=1).mean() > 100


def test_released_prompt_into_t5_small_fails_clearly():
    path = shared_path("released_prompts", "t5_1_1_lm100k_base", "sst2.npy")
    with pytest.raises(ValueError, match=r"\(100, 768\).*\(100, 512\)"):
        ptj.with_prompt(abstract_t5("t5-v1_1-small"), 100, str(path))


@pytest.mark.slow
def test_prompt_exported_to_peft_runs_in_peft_and_comes_back(tmp_path, rng):
    """Train-side prompt -> PEFT adapter folder -> PeftModel gives our logits; import_peft gives our array."""
    import transformers
    from peft import PeftModel

    from prompt_tuning_jax.prompts.io import export_peft, import_peft

    torch_model("gpt2", tmp_path / "base")
    prompted = ptj.with_prompt(ptj.from_pretrained(tmp_path / "base"), 6, None, placement="prefix", seed=3)
    export_peft(tmp_path / "adapter", np.asarray(prompted.prompt), str(tmp_path / "base"), "CAUSAL_LM")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    peft = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = padded_batch(rng, 211, [7, 4], 7)
    with torch.no_grad():
        theirs = peft(input_ids=t(ids), attention_mask=t(mask)).logits.numpy()
    ours = prompted(ids, mask)
    assert_logits_close(ours.logits, theirs, ours.attention_mask)
    back, _ = import_peft(tmp_path / "adapter")
    np.testing.assert_array_equal(back, np.asarray(prompted.prompt))


@pytest.mark.parametrize("side", ["right", "left"])
def test_shared_prefix_gives_the_same_loss_and_gradients(rng, side):
    """A prefix prompt runs once per batch (GPT-2, no dropout): loss and prompt gradient equal inserting the
    prompt into every row, the step this replaced; an empty input (the LM objective's) included."""
    from prompt_tuning_jax.heads import target_token_logprobs

    model = tiny_model("gpt2", initializer_range=0.3, dropout_rate=0.0, **SMALL)
    prompt = rng.normal(size=(4, 16)).astype(np.float32)
    ids, mask = padded_batch(rng, 97, [6, 2, 4, 1], 7, side=side)
    mask[3] = 0  # an empty input: the targets follow the prompt directly
    targets, target_mask = rng.integers(1, 97, (4, 3)), np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])

    graphdef, trainable, frozen = nnx.split(ptj.with_prompt(model, 4, prompt, placement="prefix"), Trainable, ...)

    def loss(trainable, shared):
        prompted = nnx.merge(graphdef, trainable, frozen)
        if shared:
            logp = target_token_logprobs(prompted, ids, mask, targets, target_mask)
        else:
            embeds, full_mask = prompted.embed_inputs(ids, mask)
            logits = prompted.model.target_logits(embeds, full_mask, targets, target_mask)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0] * target_mask
        return -logp.sum()

    assert nnx.merge(graphdef, trainable, frozen)._shares_prefix(None)
    (shared, g_shared), (full, g_full) = (jax.value_and_grad(loss)(trainable, s) for s in (True, False))
    g_shared, g_full = g_shared["soft_prompt"][...], g_full["soft_prompt"][...]
    np.testing.assert_allclose(shared, full, rtol=1e-5)
    np.testing.assert_allclose(g_shared, g_full, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(g_full).sum()) > 0


def _remat_calls(jaxpr) -> int:
    """How many rematerialised calls (jax.checkpoint) a jaxpr makes, nested ones included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name in ("checkpoint", "remat", "remat2")
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _remat_calls(sub)
    return count


@pytest.mark.parametrize("family, placement, blocks", [("gpt2", "prefix", 4), ("gpt2", "suffix", 4),
                                                       ("t5", "prefix", 8)])
def test_remat_wraps_every_block_and_changes_no_number(rng, family, placement, blocks):
    """remat=True: every block of the LM loss's forward is rematerialised, on every path (GPT-2's shared prefix
    ran its blocks without it: its training step took 3.2 GiB a chip on a v4-8, not 0.6), with the same loss
    and prompt gradient."""
    from helpers import tiny_config

    from prompt_tuning_jax.heads import target_token_logprobs

    config = tiny_config(family, **(dict(SMALL, n_positions=96, n_layer=4) if family == "gpt2" else
                                    dict(vocab_size=97, d_model=16, num_heads=2, num_layers=4)))
    prompt = rng.normal(size=(8, 16)).astype(np.float32)
    ids, mask = padded_batch(rng, 97, [60, 31, 47, 12, 60, 5, 33, 20], 64)
    targets, target_mask = rng.integers(1, 97, (8, 3)), np.ones((8, 3), np.float32)
    results = []
    for remat in (False, True):
        model = ptj.init_random(config, seed=0, remat=remat, dropout_rate=0.0)
        prompted = ptj.with_prompt(model, 8, prompt, placement=placement)
        assert prompted._shares_prefix(None) == ((family, placement) == ("gpt2", "prefix"))  # both GPT-2 paths
        graphdef, trainable, frozen = nnx.split(prompted, Trainable, ...)
        trainable, frozen = nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)  # as MeshState holds them

        def loss(trainable, frozen):
            return -target_token_logprobs(nnx.merge(graphdef, trainable, frozen), ids, mask, targets,
                                          target_mask).sum()

        assert _remat_calls(jax.make_jaxpr(loss)(trainable, frozen).jaxpr) == (blocks if remat else 0)
        value, grad = jax.jit(jax.value_and_grad(loss))(trainable, frozen)
        results.append((value, grad["soft_prompt"]))
    (plain, g_plain), (remat, g_remat) = results
    np.testing.assert_allclose(remat, plain, rtol=1e-5)
    np.testing.assert_allclose(g_remat, g_plain, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(g_plain).sum()) > 0
