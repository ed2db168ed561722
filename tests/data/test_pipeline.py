"""Tokenize, bucket, pad, shuffle, resume, shard, mix and prefetch."""
import logging
import threading

import numpy as np
import pytest
from transformers import AutoTokenizer

from prompt_tuning_jax.data import get_task, pipeline, shared_data_dir
from prompt_tuning_jax.data.pipeline import (EvalIterator, Prefetch, Tokenized, TrainIterator, bucket_lengths,
                                             fit_buckets, measure_throughput, target_bucket_lengths, tokenize,
                                             tokenize_task)

SHARED = shared_data_dir()
KEYS = {"input_ids", "attention_mask", "target_ids", "target_mask", "label", "task_index", "weight",
        "example_index"}
ONE_HOST = {"process_index": 0, "process_count": 1}


def _tokenizer(name):
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{folder} absent (set PTJ_SHARED_DATA to the shared data folder)")
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def t5():
    return _tokenizer("t5_tokenizer")


@pytest.fixture(scope="module")
def gpt2():
    return _tokenizer("gpt2_tokenizer")


def synthetic(n, seed=0, max_len=40, pad_id=0, float_labels=False):
    """n examples with random lengths 1..max_len; token ids encode (example, position)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    labels = rng.random(n).astype(np.float32) if float_labels else rng.integers(2, size=n).astype(np.int32)
    return Tokenized(
        input_ids=[np.arange(1, L + 1, dtype=np.int32) + 1000 * i for i, L in enumerate(lengths)],
        target_ids=[np.array([7, 1000 + i], np.int32) for i in range(n)],
        label=labels, pad_id=pad_id, max_input_length=max_len, max_target_length=4,
    )


# ---------------------------------------------------------------- tokenization (real tokenizers)


def test_special_tokens_and_pad_ids(t5, gpt2):
    assert pipeline.special_tokens(t5) == ([], [1])
    assert pipeline.special_tokens(gpt2) == ([], [])
    assert pipeline.pad_id_for(t5) == 0
    assert pipeline.pad_id_for(gpt2) == 50256


def test_tokenize_sst2_t5_and_gpt2(t5, gpt2):
    examples = get_task("sst2", style="raw").load("test", limit=50) if (SHARED / "sst2").is_dir() else None
    examples = examples or [{"inputs": "hello world", "targets": "positive", "label": 1}]
    tok = tokenize(examples, t5, max_input_length=512, max_target_length=8)
    assert all(x[-1] == 1 for x in tok.input_ids)  # EOS as the tokenizer adds it
    assert {tuple(y) for y in tok.target_ids} <= {(1465, 1), (2841, 1)}
    assert tok.label.dtype == np.int32 and tok.num_truncated == 0
    tok = tokenize([{"inputs": "hello world", "targets": "positive", "label": 1}], gpt2,
                   max_input_length=16, max_target_length=4, target_prefix=" ")
    assert tok.input_ids[0].tolist() == [31373, 995]  # no special tokens for GPT-2
    assert tok.target_ids[0].tolist() == [3967]  # " positive"


def test_a_bos_goes_before_inputs_only():
    """A tokenizer that puts BOS before text (Llama 3, Mistral): inputs start with it, targets never do (they
    continue the input), and a trailing EOS would still end both."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "hello": 2, "world": 3, "positive": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", pad_token="<pad>")
    assert pipeline.special_tokens(tok) == ([0], [])
    out = tokenize([{"inputs": "hello world", "targets": "positive", "label": 1}], tok, max_input_length=8,
                   max_target_length=1, target_prefix=" ")
    assert out.input_ids[0].tolist() == [0, 2, 3] and out.target_ids[0].tolist() == [4]


def test_truncation_policies_and_count(t5, caplog):
    examples = [{"inputs": "one two three four five six seven eight nine ten", "targets": "x", "label": 0},
                {"inputs": "short", "targets": "y", "label": 1}]
    full = tokenize(examples, t5, max_input_length=64, max_target_length=4).input_ids[0]
    with caplog.at_level(logging.WARNING, logger="prompt_tuning_jax.data.pipeline"):
        right = tokenize(examples, t5, max_input_length=5, max_target_length=4, name="demo")
    assert right.num_truncated == 1
    assert right.input_ids[0].tolist() == full[:4].tolist() + [1]  # EOS survives truncation
    [record] = [r for r in caplog.records if r.name == "prompt_tuning_jax.data.pipeline"]
    assert "demo: truncated 1 of 2 examples" in record.getMessage()
    left = tokenize(examples, t5, max_input_length=5, max_target_length=4, truncate="left")
    assert left.input_ids[0].tolist() == full[-5:].tolist()  # last 4 tokens, then EOS
    with pytest.raises(ValueError, match="example 0"):
        tokenize(examples, t5, max_input_length=5, max_target_length=4, truncate="error")
    with pytest.raises(ValueError, match="truncate"):
        tokenize(examples, t5, max_input_length=5, max_target_length=4, truncate="middle")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_sides_with_gpt2(gpt2, side):
    examples = get_task("demo_sentiment").load("validation", limit=20)
    tok = tokenize(examples, gpt2, max_input_length=64, max_target_length=4, target_prefix=" ")
    batch = next(TrainIterator(tok, 8, seed=1, padding_side=side, **ONE_HOST))
    assert set(batch) == KEYS
    for b, i in enumerate(batch["example_index"]):
        ids, n = tok.input_ids[i], len(tok.input_ids[i])
        mask = batch["attention_mask"][b]
        assert mask.sum() == n  # lengths come from the mask only
        real = slice(0, n) if side == "right" else slice(-n, None)
        pads = slice(n, None) if side == "right" else slice(0, -n)
        assert batch["input_ids"][b, real].tolist() == ids.tolist() and mask[real].all()
        assert (batch["input_ids"][b, pads] == 50256).all() and not mask[pads].any()
        m = len(tok.target_ids[i])  # targets are right-padded whatever the side
        assert batch["target_ids"][b, :m].tolist() == tok.target_ids[i].tolist()
        assert batch["target_mask"][b].tolist() == [1] * m + [0] * (batch["target_mask"].shape[1] - m)


def test_tokenize_task_regression_labels_are_float(t5):
    examples = [{"inputs": "a", "targets": "3.8", "label": 3.75}, {"inputs": "b", "targets": "1.0", "label": 1.0}]
    tok = tokenize(examples, t5, max_input_length=8, max_target_length=4)
    batch = next(iter(EvalIterator(tok, 4, **ONE_HOST)))
    assert batch["label"].dtype == np.float32 and batch["label"][:2].tolist() == [3.75, 1.0]


# ---------------------------------------------------------------- batches (synthetic token ids)


def test_bucket_lengths_and_batch_shapes():
    assert bucket_lengths(100) == (16, 32, 48, 64, 80, 96, 100)
    assert bucket_lengths(32) == (16, 32)
    assert bucket_lengths(8) == (8,)
    assert bucket_lengths(512) == tuple(range(32, 513, 32))  # at most 16 shapes: the step grows
    assert len(bucket_lengths(2048)) == 16
    tok = synthetic(300, max_len=100)
    buckets = bucket_lengths(100)
    it = EvalIterator(tok, 4, sort_by_length=False, buckets=buckets, **ONE_HOST)
    for batch in it:
        T = batch["input_ids"].shape[1]
        longest = batch["attention_mask"].sum(1).max()
        assert T == min(b for b in buckets if b >= longest)
        assert batch["input_ids"].dtype == np.int32 and batch["weight"].dtype == np.float32
    assert {t for t, _ in it.batcher.shapes} <= set(buckets)  # a jitted step compiles at most once per bucket
    fixed = next(iter(EvalIterator(tok, 4, buckets=False, **ONE_HOST)))
    assert fixed["input_ids"].shape == (4, 100)


def test_fit_buckets_minimise_padding_with_no_more_lengths():
    sst2 = [12, 14, 16, 17, 19, 21, 22, 24, 25, 26, 27, 29, 30, 31, 32, 33, 34, 36, 38, 39, 42, 44, 46, 48, 52,
            56, 63, 79]  # the longest T5 input of each batch of 32 of SST-2 validation, sorted
    assert fit_buckets(sst2, 3, 512) == (32, 48, 80, 512)
    assert fit_buckets(sst2, 2, 512) == (40, 80, 512)
    assert fit_buckets(sst2, 1, 512) == (80, 512)
    assert fit_buckets(sst2, 16, 512) == (32, 48, 80, 512)  # a fourth length saves less than a batch
    assert fit_buckets([30, 35, 40, 70], 3, 512) == (40, 72, 512)  # the third would save 8 positions
    assert fit_buckets([99, 100, 97], 4, 100) == (100,)  # capped at max_length, never past it
    assert fit_buckets([5], 1, 8) == (8,)


def test_eval_fits_buckets_to_its_batches():
    tok = synthetic(301, max_len=100)
    fitted, fixed = (EvalIterator(tok, 8, buckets=b, **ONE_HOST) for b in (True, bucket_lengths(100)))
    batches, _ = list(fitted), list(fixed)
    assert fitted.batcher.input_buckets[-1] == 100
    assert len(fitted.batcher.shapes) <= len(fixed.batcher.shapes)
    assert fitted.batcher.padding_fraction < fixed.batcher.padding_fraction
    for batch in batches:
        T, longest = batch["input_ids"].shape[1], batch["attention_mask"].sum(1).max()
        assert T == min(b for b in fitted.batcher.input_buckets if b >= longest) and (T % 8 == 0 or T == 100)


def test_targets_get_small_buckets_so_a_label_word_is_not_padded_to_eight():
    assert target_bucket_lengths(8) == (1, 2, 4, 8)
    assert target_bucket_lengths(1) == (1,)
    assert target_bucket_lengths(20) == (1, 2, 4, 8, 16, 20)
    assert target_bucket_lengths(128)[:5] == (1, 2, 4, 8, 16) and target_bucket_lengths(128)[-1] == 128
    tok = synthetic(40)  # two-token targets, max_target_length 4
    for it in (EvalIterator(tok, 8, **ONE_HOST), TrainIterator(tok, 8, seed=0, **ONE_HOST)):
        batch = next(iter(it))
        assert batch["target_ids"].shape[1] == 2  # the longest target, not TASK_FEATURE_LENGTHS['targets']
        assert batch["target_mask"].sum(1).max() == 2


def test_eval_batches_sorted_by_length_pad_less_and_cover_every_example():
    tok = synthetic(301, max_len=100)
    plain, ordered = (EvalIterator(tok, 8, sort_by_length=s, **ONE_HOST) for s in (False, True))
    batches = list(ordered)
    list(plain)
    assert ordered.batcher.padding_fraction < plain.batcher.padding_fraction / 2
    index = np.concatenate([b["example_index"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    assert sorted(index[weight > 0]) == list(range(301)) and (index[weight == 0] == -1).all()
    longest = [int(b["attention_mask"].sum(1).max()) for b in batches]
    assert longest == sorted(longest, reverse=True)


def test_eval_covers_every_example_once_with_weight_zero_padding():
    tok = synthetic(10)
    batches = list(EvalIterator(tok, 4, sort_by_length=False, **ONE_HOST))
    assert len(batches) == 3 and all(b["input_ids"].shape[0] == 4 for b in batches)
    weight = np.concatenate([b["weight"] for b in batches])
    index = np.concatenate([b["example_index"] for b in batches])
    assert weight.tolist() == [1.0] * 10 + [0.0] * 2
    assert index[weight > 0].tolist() == list(range(10)) and (index[weight == 0] == -1).all()
    last = batches[-1]
    assert (last["attention_mask"][2:].sum(1) > 0).all()  # padding rows are never fully masked
    np.testing.assert_array_equal(last["input_ids"][2], last["input_ids"][0])


def _draw(iterator, steps):
    return [next(iterator) for _ in range(steps)]


def _same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shuffling_is_deterministic_per_seed_and_epoch():
    tok = synthetic(12)
    a = _draw(TrainIterator(tok, 4, seed=3, **ONE_HOST), 6)
    _same(a, _draw(TrainIterator(tok, 4, seed=3, **ONE_HOST), 6))
    other = _draw(TrainIterator(tok, 4, seed=4, **ONE_HOST), 6)
    assert any((x["example_index"] != y["example_index"]).any() for x, y in zip(a, other))
    order = np.concatenate([b["example_index"] for b in a])
    epoch0, epoch1 = order[:12], order[12:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))  # every example once per epoch
    assert epoch0.tolist() != epoch1.tolist()  # reshuffled each epoch
    assert all((b["weight"] == 1).all() for b in a)


def test_epochs_flow_across_batch_boundaries():
    tok = synthetic(10)
    order = np.concatenate([b["example_index"] for b in _draw(TrainIterator(tok, 4, seed=0, **ONE_HOST), 5)])
    assert sorted(order[:10]) == sorted(order[10:]) == list(range(10))


def test_resume_continues_exactly():
    tok = synthetic(10)
    it = TrainIterator(tok, 4, seed=7, **ONE_HOST)
    _draw(it, 4)
    state = it.state()
    assert state == {"seed": 7, "step": 4, "cursors": [[1, 6]]}
    expected = _draw(it, 5)
    resumed = TrainIterator(tok, 4, seed=7, **ONE_HOST)
    resumed.restore(state)
    _same(expected, _draw(resumed, 5))
    with pytest.raises(ValueError, match="seed"):
        TrainIterator(tok, 4, seed=8, **ONE_HOST).restore(state)


def test_length_grouping_keeps_every_example_once_per_epoch_and_resumes_exactly():
    tok = synthetic(203, max_len=100)
    grouped = TrainIterator(tok, 8, seed=1, group_by_length=5, **ONE_HOST)
    batches = _draw(grouped, 60)  # 480 rows: two epochs and more
    order = np.concatenate([b["example_index"] for b in batches])
    assert sorted(order[:203]) == sorted(order[203:406]) == list(range(203))
    assert order[:203].tolist() != order[203:406].tolist()
    input_padding = lambda bs: 1 - sum(b["attention_mask"].sum() for b in bs) / sum(b["attention_mask"].size for b in bs)
    plain = _draw(TrainIterator(tok, 8, seed=1, **ONE_HOST), 60)
    assert input_padding(batches) < 0.75 * input_padding(plain)  # 0.29 vs 0.43 here (uniform lengths 1..100)
    real = sum(b["attention_mask"].sum() + b["target_mask"].sum() for b in batches)
    positions = sum(b["attention_mask"].size + b["target_mask"].size for b in batches)
    assert grouped.batcher.padding_fraction == pytest.approx(1 - real / positions)
    # Within a window of 5 batches (40 examples) the rows are sorted; the batches' order is shuffled.
    lengths = tok.input_lengths[order[:40]].reshape(5, 8)
    assert all((np.diff(row) <= 0).all() for row in lengths)
    assert sorted(lengths.max(1).tolist(), reverse=True) != lengths.max(1).tolist() or len(set(lengths.max(1))) == 1
    # Resume at any step gives the same batches.
    again = TrainIterator(tok, 8, seed=1, group_by_length=5, **ONE_HOST)
    _draw(again, 23)
    state = again.state()
    resumed = TrainIterator(tok, 8, seed=1, group_by_length=5, **ONE_HOST)
    resumed.restore(state)
    _same(batches[23:60], _draw(resumed, 37))


@pytest.mark.parametrize("process_count", [2, 4])
def test_grouped_host_slices_concatenate_to_the_global_batch(process_count):
    tok = synthetic(50, max_len=70)
    global_train = _draw(TrainIterator(tok, 8, seed=2, group_by_length=3, **ONE_HOST), 9)
    hosts = [_draw(TrainIterator(tok, 8, seed=2, group_by_length=3, process_index=p, process_count=process_count), 9)
             for p in range(process_count)]
    _same(global_train, [{k: np.concatenate([h[s][k] for h in hosts]) for k in KEYS} for s in range(9)])


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_concatenate_to_the_global_batch(process_count):
    parts = [synthetic(13, seed=0, max_len=70), synthetic(7, seed=1, max_len=70)]
    global_train = _draw(TrainIterator(parts, 8, seed=5, rates=(2, 1), **ONE_HOST), 6)
    hosts = [_draw(TrainIterator(parts, 8, seed=5, rates=(2, 1), process_index=p, process_count=process_count), 6)
             for p in range(process_count)]
    joined = [{k: np.concatenate([h[s][k] for h in hosts]) for k in KEYS} for s in range(6)]
    _same(global_train, joined)
    assert hosts[0][0]["input_ids"].shape[0] == 8 // process_count

    tok = synthetic(11, max_len=70)
    global_eval = list(EvalIterator(tok, 8, **ONE_HOST))
    host_eval = [list(EvalIterator(tok, 8, process_index=p, process_count=process_count))
                 for p in range(process_count)]
    joined = [{k: np.concatenate([h[s][k] for h in host_eval]) for k in KEYS} for s in range(2)]
    _same(global_eval, joined)
    with pytest.raises(ValueError, match="divisible"):
        TrainIterator(tok, 6, process_index=0, process_count=4)


def test_mixture_task_indices_and_rates():
    a, b = synthetic(30, seed=0, max_len=40), synthetic(20, seed=1, max_len=40, pad_id=0, float_labels=False)
    it = TrainIterator([a, b], 16, seed=0, rates=(3, 1), **ONE_HOST)
    batches = _draw(it, 50)
    task = np.concatenate([x["task_index"] for x in batches])
    index = np.concatenate([x["example_index"] for x in batches])
    np.testing.assert_array_equal(task, (index >= 30).astype(np.int32))  # rows 30.. are task 1's
    assert 0.68 < np.mean(task == 0) < 0.82
    first = batches[0]
    for row, i in enumerate(first["example_index"]):  # content really comes from that task's example
        source, j = (a, i) if i < 30 else (b, i - 30)
        n = len(source.input_ids[j])
        assert first["input_ids"][row, :n].tolist() == source.input_ids[j].tolist()
        assert first["label"][row] == source.label[j]
    assert it.state()["cursors"] == [[c.epoch, c.position] for c in it.cursors] and len(it.cursors) == 2
    only_a = _draw(TrainIterator([a, b], 8, seed=0, rates=(1, 0), **ONE_HOST), 5)
    assert all((x["task_index"] == 0).all() for x in only_a)


def test_eval_task_index_for_one_task_of_a_mixture():
    batch = next(iter(EvalIterator(synthetic(5), 4, task_index=2, **ONE_HOST)))
    assert batch["task_index"].tolist() == [2, 2, 2, 2]


# ---------------------------------------------------------------- prefetch and throughput


def test_prefetch_yields_the_same_batches_and_resumes():
    tok = synthetic(10)
    expected = _draw(TrainIterator(tok, 4, seed=2, **ONE_HOST), 6)
    with Prefetch(TrainIterator(tok, 4, seed=2, **ONE_HOST), size=3) as pre:
        got = _draw(pre, 3)
        state = pre.state()  # state after the 3 batches handed out, not the ones queued
    _same(expected[:3], got)
    assert state["step"] == 3 and not pre._thread.is_alive()
    resumed = TrainIterator(tok, 4, seed=2, **ONE_HOST)
    resumed.restore(state)
    _same(expected[3:], _draw(resumed, 3))


def test_prefetch_ends_and_propagates_errors():
    tok = synthetic(9)
    assert len(list(Prefetch(EvalIterator(tok, 4, **ONE_HOST)))) == 3

    def broken():
        yield 1
        raise RuntimeError("boom")

    pre = Prefetch(broken())
    assert next(pre) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(pre)
    pre.close()
    threads = threading.active_count()
    pre = Prefetch(TrainIterator(tok, 4, **ONE_HOST))
    next(pre)
    pre.close()
    pre.close()
    assert threading.active_count() <= threads


def test_measure_throughput():
    stats = measure_throughput(TrainIterator(synthetic(50), 8, **ONE_HOST), num_batches=20, warmup=2)
    assert stats["batches"] == 20 and stats["examples_per_s"] > 0 and stats["tokens_per_s"] > 0


def test_tokenize_task_on_shared_sst2(t5):
    if not (SHARED / "sst2").is_dir():
        pytest.skip(f"{SHARED / 'sst2'} absent")
    tok = tokenize_task(get_task("sst2"), "test", t5, max_input_length=128, max_target_length=4)
    assert len(tok) == 872 and tok.num_truncated == 0
    batches = list(EvalIterator(tok, 64, **ONE_HOST))
    assert sum(b["weight"].sum() for b in batches) == 872
    labels = np.concatenate([b["label"][b["weight"] > 0] for b in batches])
    index = np.concatenate([b["example_index"][b["weight"] > 0] for b in batches])
    assert labels[np.argsort(index)].tolist() == tok.label.tolist()
