"""Prompt initializers: ranges, sampling, class labels with the real T5 tokenizer, strings, arrays, jit."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import shared_path

from prompt_tuning_jax.prompts import initializers as inits
from prompt_tuning_jax.prompts.io import save_prompt

KEY = jax.random.key(0)


def indexed_table(vocab, hidden, seed=0):
    """A [V, H] table whose column 0 is the row index, so a row tells where it came from."""
    table = np.random.default_rng(seed).normal(size=(vocab, hidden)).astype(np.float32)
    table[:, 0] = np.arange(vocab)
    return table


def jitted(init, shape, key=KEY):
    return jax.jit(lambda k: init(k, shape))(key)


@pytest.fixture(scope="module")
def t5_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_path("t5_tokenizer"))


# --- random ----------------------------------------------------------------------------

def test_random_uniform_range_and_determinism():
    init = inits.random_uniform()  # the project's default: [0, 0.5)
    x = np.asarray(init(KEY, (100, 64)))
    assert x.shape == (100, 64) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 0.5
    assert x.min() < 0.01 and x.max() > 0.49  # fills the range, not [0, 0.01) like flax's uniform()
    np.testing.assert_array_equal(x, np.asarray(init(KEY, (100, 64))))
    assert not np.array_equal(x, np.asarray(init(jax.random.key(1), (100, 64))))
    np.testing.assert_array_equal(x, np.asarray(jitted(init, (100, 64))))


def test_random_uniform_centered_and_scale():
    x = np.asarray(inits.random_uniform(scale=2.0, centered=True)(KEY, (50, 40)))
    assert x.min() >= -2.0 and x.max() < 2.0 and x.min() < -1.9 and x.max() > 1.9


def test_normal_stddev():
    x = np.asarray(inits.normal(stddev=0.1)(KEY, (200, 100)))
    assert abs(x.std() - 0.1) < 0.005 and abs(x.mean()) < 0.005
    np.testing.assert_allclose(np.asarray(jitted(inits.normal(stddev=0.1), (200, 100))), x, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(10,), (0, 4), (2, 3, 4)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="P, H"):
        inits.random_uniform()(KEY, shape)


# --- sampled vocabulary ------------------------------------------------------------------------

def test_sample_without_replacement_from_first_rows():
    table = indexed_table(1000, 8)
    init = inits.from_sample_of_embeddings(table, population_size=50)
    for seed in range(5):
        rows = np.asarray(init(jax.random.key(seed), (40, 8)))
        index = rows[:, 0].astype(int)
        assert len(set(index)) == 40 and index.max() < 50  # unique, only from the first N rows
        np.testing.assert_array_equal(rows, table[index])
    # Same draw as the original library: jax.random.choice(rng, N, (P,), replace=False).
    np.testing.assert_array_equal(np.asarray(init(KEY, (40, 8)))[:, 0],
                                  np.asarray(jax.random.choice(KEY, 50, (40,), replace=False)))


def test_sample_whole_population_is_a_permutation():
    rows = np.asarray(inits.from_sample_of_embeddings(indexed_table(30, 4))(KEY, (30, 4)))
    assert sorted(rows[:, 0].astype(int)) == list(range(30))


def test_sample_with_replacement_only_when_prompt_is_longer():
    table = indexed_table(100, 4)
    init = inits.from_sample_of_embeddings(table, population_size=5)
    with pytest.warns(UserWarning, match="with replacement"):
        rows = np.asarray(init(KEY, (20, 4)))
    index = rows[:, 0].astype(int)
    assert index.max() < 5 and len(set(index)) < 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # P == N: no replacement, no warning
        assert len(set(np.asarray(init(KEY, (5, 4)))[:, 0])) == 5


def test_sample_population_clamped_and_errors():
    with pytest.warns(UserWarning, match="larger than the embedding table"):
        init = inits.from_sample_of_embeddings(indexed_table(10, 4), population_size=5000)
    assert sorted(np.asarray(init(KEY, (10, 4)))[:, 0].astype(int)) == list(range(10))
    with pytest.raises(ValueError, match="population_size"):
        inits.from_sample_of_embeddings(indexed_table(10, 4), population_size=0)
    with pytest.raises(ValueError, match="hidden size 4"):
        init(KEY, (3, 5))


def test_sample_under_jit_and_dtype():
    table = indexed_table(500, 8).astype(jnp.bfloat16)
    init = inits.from_sample_of_embeddings(table, population_size=100)
    eager = init(KEY, (20, 8))
    assert eager.dtype == jnp.bfloat16  # the table's dtype, as in the original
    np.testing.assert_array_equal(np.asarray(jitted(init, (20, 8)), np.float32), np.asarray(eager, np.float32))


# --- class labels ------------------------------------------------------------------------------

def test_embedded_list_rows_order_and_fallback():
    h = 6
    labels = [np.full((3, h), 1.0), np.arange(2 * h, dtype=np.float32).reshape(2, h), np.full((h,), 7.0)]
    fallback = inits.random_uniform()
    init = inits.from_embedded_list(labels, fallback)
    prompt = np.asarray(init(KEY, (5, h)))
    np.testing.assert_allclose(prompt[0], np.ones(h))
    np.testing.assert_allclose(prompt[1], labels[1].mean(axis=0))  # mean over the label's sub-tokens
    np.testing.assert_allclose(prompt[2], np.full(h, 7.0))  # an already averaged [H] row
    np.testing.assert_array_equal(prompt[3:], np.asarray(fallback(KEY, (5, h)))[3:])
    np.testing.assert_allclose(np.asarray(jitted(init, (5, h))), prompt, rtol=1e-6)


def test_embedded_list_drops_extra_labels_with_warning():
    rows = [np.full((4,), float(i)) for i in range(4)]
    init = inits.from_embedded_list(rows, names=["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match=r"\['c', 'd'\]"):
        prompt = np.asarray(init(KEY, (2, 4)))
    np.testing.assert_array_equal(prompt, [[0.0] * 4, [1.0] * 4])


def test_embedded_list_errors():
    with pytest.raises(ValueError, match="different hidden sizes"):
        inits.from_embedded_list([np.ones((2, 4)), np.ones((1, 5))])
    with pytest.raises(ValueError, match="no token embeddings"):
        inits.from_embedded_list([np.ones((0, 4))])
    with pytest.raises(ValueError, match="hidden size 4"):
        inits.from_embedded_list([np.ones((2, 4))])(KEY, (3, 8))


def test_class_labels_with_real_t5_tokenizer(t5_tokenizer):
    assert t5_tokenizer.convert_ids_to_tokens([3, 35, 5756, 297]) == ["▁", "en", "tail", "ment"]
    assert t5_tokenizer.encode("entailment", add_special_tokens=False) == [3, 35, 5756, 297]
    table = indexed_table(32128, 16)
    init = inits.from_class_labels(table, t5_tokenizer, ["entailment", "positive"])
    prompt = np.asarray(init(KEY, (10, 16)))
    np.testing.assert_allclose(prompt[0], table[[3, 35, 5756, 297]].mean(axis=0), rtol=1e-6)  # four pieces
    np.testing.assert_array_equal(prompt[1], table[1465])  # "positive" is one piece, no EOS added
    # The paper's fallback: rows sampled without replacement from the first 5,000 vocabulary rows.
    rest = prompt[2:, 0]
    assert np.all(rest == np.round(rest)) and rest.max() < 5000 and len(set(rest)) == 8
    want = inits.from_sample_of_embeddings(table, population_size=5000)(KEY, (10, 16))
    np.testing.assert_array_equal(prompt[2:], np.asarray(want)[2:])
    np.testing.assert_allclose(np.asarray(jitted(init, (10, 16))), prompt, rtol=1e-6)


def test_class_labels_ids_outside_table(t5_tokenizer):
    with pytest.raises(ValueError, match="outside the embedding table of 100 rows"):
        inits.from_class_labels(indexed_table(100, 4), t5_tokenizer, ["positive"])
    with pytest.raises(TypeError, match="list of strings"):
        inits.from_class_labels(indexed_table(100, 4), t5_tokenizer, "positive")


# --- strings -------------------------------------------------------------------------------------

def test_embedded_string_truncates_and_fills():
    text = np.arange(12, dtype=np.float32).reshape(3, 4) + 100
    fallback = inits.normal()
    init = inits.from_embedded_string(text, fallback)
    prompt = np.asarray(init(KEY, (5, 4)))
    np.testing.assert_array_equal(prompt[:3], text)
    np.testing.assert_array_equal(prompt[3:], np.asarray(fallback(KEY, (5, 4)))[3:])
    with pytest.warns(UserWarning, match="last 1 tokens are dropped"):
        np.testing.assert_array_equal(np.asarray(init(KEY, (2, 4))), text[:2])
    np.testing.assert_array_equal(np.asarray(jitted(init, (5, 4))), prompt)


def test_from_string_with_real_t5_tokenizer(t5_tokenizer):
    table = indexed_table(32128, 8)
    prompt = np.asarray(inits.from_string(table, t5_tokenizer, "positive negative")(KEY, (4, 8)))
    np.testing.assert_array_equal(prompt[:2], table[[1465, 2841]])  # no EOS row
    assert prompt[2:, 0].max() < 5000


# --- arrays and files --------------------------------------------------------------------------

def test_from_array_exact_and_shape_error():
    array = np.random.default_rng(0).normal(size=(3, 4))  # float64
    init = inits.from_array(array)
    got = init(KEY, (3, 4))
    assert got.dtype == np.float64  # kept; the caller casts
    np.testing.assert_array_equal(got, array)
    array[0, 0] = 99.0  # the initializer holds its own copy
    assert got[0, 0] != 99.0 and init(KEY, (3, 4))[0, 0] != 99.0
    with pytest.raises(ValueError, match=r"\(3, 4\) but the model needs \(3, 8\).*hidden size 4"):
        init(KEY, (3, 8))
    with pytest.raises(ValueError, match="prompt length to 3"):
        init(KEY, (5, 4))
    with pytest.raises(ValueError, match="a prompt is"):
        inits.from_array(np.ones(4))
    np.testing.assert_allclose(np.asarray(jitted(init, (3, 4))), got, rtol=1e-6)


def test_from_npy(tmp_path):
    prompt = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32) * 1000
    save_prompt(tmp_path / "p.npy", prompt)
    init = inits.from_npy(tmp_path / "p.npy")
    np.testing.assert_array_equal(init(KEY, (5, 8)), prompt)  # never renormalised
    with pytest.raises(ValueError, match=r"prompt file .*p\.npy has shape \(5, 8\) but the model needs \(5, 16\)"):
        init(KEY, (5, 16))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        inits.from_npy(tmp_path / "missing.npy")


def test_from_npy_released_float64_prompt_keeps_dtype():
    path = shared_path("released_prompts", "prompt_5x256.npy")
    got = inits.from_npy(path)(KEY, (5, 256))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.load(path))


def test_zeros_draws_nothing():
    x = np.asarray(inits.zeros()(KEY, (7, 16)))
    assert x.shape == (7, 16) and x.dtype == np.float32 and not x.any()
    with pytest.raises(ValueError):
        inits.zeros()(KEY, (7,))
