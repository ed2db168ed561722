"""T5X checkpoints (models/t5x.py): reading variables, the config from shapes, parity with transformers, and
damaged or foreign checkpoints.

The fixture is the original library's own test checkpoint, copied unchanged from google-research/prompt-tuning:
fixtures/t5x_tiny/checkpoint_3 is prompt_tuning/test_data/test_t5_1_1_tiny/checkpoint_3 (T5 1.1, 2+2 layers,
d_model 4, 2 heads of 2, d_ff 8, 4 buckets, max distance 8: prompt_tuning/configs/test/t5_1_1_tiny.gin), and
fixtures/t5x_tiny/tiny_embeddings_32128x4.npy is prompt_tuning/test_data/tiny_embeddings_32128x4.npy, its
embedding table as the original's extract_variable wrote it.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, assert_logits_close, cli_env, padded_batch

import prompt_tuning_jax as ptj
from prompt_tuning_jax import extract_variable, files
from prompt_tuning_jax.models import t5x

FIXTURE = REPO / "tests" / "models" / "fixtures" / "t5x_tiny"
CKPT = FIXTURE / "checkpoint_3"
TINY = {"relative_attention_max_distance": 8}  # the one field the arrays cannot tell


def t5_call(model, ids, mask, dec, dec_mask):
    return model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


def batches(rng):
    return padded_batch(rng, 32128, [9, 5], 9), padded_batch(rng, 32128, [4, 2], 4)


def copy_fixture(tmp_path):
    out = tmp_path / "checkpoint_3"
    shutil.copytree(CKPT, out)
    return out


def rewrite_msgpack(folder, edit):
    """Reads the checkpoint's msgpack as T5X does, applies `edit` to it, writes it back."""
    from flax import serialization

    path = folder / "checkpoint"
    contents = serialization.msgpack_restore(path.read_bytes())
    edit(contents)
    path.write_bytes(serialization.msgpack_serialize(contents))


# --- reading variables -----------------------------------------------------------

def test_embedding_equals_the_original_librarys_extraction(tmp_path, capsys):
    gold = np.load(FIXTURE / "tiny_embeddings_32128x4.npy")
    assert t5x.is_t5x_checkpoint(CKPT) and not t5x.is_t5x_checkpoint(FIXTURE)
    got = t5x.read_variables(CKPT, ["target/token_embedder/embedding"])
    assert list(got) == ["target/token_embedder/embedding"]  # only what was asked for
    np.testing.assert_array_equal(got["target/token_embedder/embedding"], gold)
    for variable in ("target/token_embedder/embedding", "/token_embedder/embedding", "embedding_table"):
        out = tmp_path / "e.npy"
        assert extract_variable.main([str(CKPT), variable, str(out)]) == 0
        saved = np.load(out)
        assert saved.dtype == np.float32 and saved.shape == (32128, 4)
        np.testing.assert_array_equal(saved, gold)
    assert "wrote" in capsys.readouterr().out


def test_every_variable_is_read_by_its_t5x_path():
    everything = t5x.read_variables(CKPT)
    # per layer: encoder 4 attention + 3 mlp + 2 norms, decoder 4 + 4 + 3 + 3 norms; 6 outside the layers
    assert len(everything) == 2 * 9 + 2 * 14 + 6
    assert everything["target/encoder/relpos_bias/rel_embedding"].shape == (2, 4)  # [heads, buckets]
    assert everything["target/decoder/layers_1/mlp/wo/kernel"].shape == (8, 4)  # [in, out]
    assert everything["target/decoder/logits_dense/kernel"].shape == (4, 32128)
    assert all(name.startswith("target/") for name in everything)  # never the optimizer's param_states


# --- the config and the model ----------------------------------------------------

def test_config_from_shapes():
    config = t5x.config_from_checkpoint(CKPT, TINY)
    assert (config.num_layers, config.n_decoder_layers, config.d_model, config.num_heads, config.d_kv,
            config.d_ff, config.vocab_size) == (2, 2, 4, 2, 2, 8, 32128)
    assert config.relative_attention_num_buckets == 4 and config.relative_attention_max_distance == 8
    assert config.is_gated and config.feed_forward_proj == "gated-gelu"
    assert not config.tie_word_embeddings and not config.scale_decoder_outputs  # decoder/logits_dense exists
    assert t5x.config_from_checkpoint(CKPT).relative_attention_max_distance == 128  # released sizes' value
    assert ptj.models.hf.pretrained_config(str(CKPT), config_overrides=TINY) == config


def test_config_json_beside_the_checkpoint_and_contradictions(tmp_path):
    ckpt = copy_fixture(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "t5", "relative_attention_max_distance": 8, '
                                          '"d_model": 4, "feed_forward_proj": "gated-gelu"}')
    assert t5x.config_from_checkpoint(ckpt).relative_attention_max_distance == 8
    assert t5x.config_from_checkpoint(ckpt, {"relative_attention_max_distance": 16}) \
        .relative_attention_max_distance == 16  # config_overrides win
    (ckpt / "config.json").write_text('{"d_model": 8}')  # inside the directory comes first
    with pytest.raises(ptj.CheckpointError, match=r"config.json says d_model=8, but the arrays of .* d_model=4"):
        t5x.config_from_checkpoint(ckpt)
    with pytest.raises(ptj.CheckpointError, match="feed_forward_proj='relu'.*gated"):
        t5x.config_from_checkpoint(CKPT, {"feed_forward_proj": "relu"})
    with pytest.raises(ptj.CheckpointError, match=r"config_overrides: \['max_distance'\] cannot be set"):
        t5x.config_from_checkpoint(CKPT, {"max_distance": 8})


def hf_reference(arrays):
    """transformers' T5 1.1 with the T5X arrays, placed by walking transformers' own parameter names."""
    import transformers

    config = transformers.T5Config(vocab_size=32128, d_model=4, d_kv=2, d_ff=8, num_layers=2, num_decoder_layers=2,
                                   num_heads=2, relative_attention_num_buckets=4, relative_attention_max_distance=8,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    # transformers 5 reads tie_word_embeddings=False as "no rescale" and still ties lm_head to shared: untie it
    model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
    modules = {"encoder": ["attention", "mlp"], "decoder": ["self_attention", "encoder_decoder_attention", "mlp"]}
    norms = {"encoder": ["pre_attention_layer_norm", "pre_mlp_layer_norm"],
             "decoder": ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"]}
    renamed = {"q": "query", "k": "key", "v": "value", "o": "out"}

    def source(key):  # -> (T5X path, transposed?)
        parts = key.split(".")
        if key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            return "token_embedder/embedding", False
        if key == "lm_head.weight":
            return "decoder/logits_dense/kernel", True
        if parts[1] == "final_layer_norm":
            return f"{parts[0]}/{parts[0]}_norm/scale", False
        stack, block, sub, module = parts[0], parts[2], int(parts[4]), parts[6] if len(parts) > 6 else None
        if parts[5] == "layer_norm":
            return f"{stack}/layers_{block}/{norms[stack][sub]}/scale", False
        if module == "relative_attention_bias":
            return f"{stack}/relpos_bias/rel_embedding", True
        return f"{stack}/layers_{block}/{modules[stack][sub]}/{renamed.get(module, module)}/kernel", True

    state = {}
    for key in model.state_dict():
        name, transposed = source(key)
        array = arrays[f"target/{name}"]
        state[key] = torch.tensor(array.T if transposed else array)
    model.load_state_dict(state, strict=True)
    return model


def test_logits_equal_transformers_given_the_same_arrays(rng):
    ours = ptj.from_pretrained(CKPT, config_overrides=TINY)
    theirs = hf_reference(t5x.read_variables(CKPT))
    (ids, mask), (dec, dec_mask) = batches(rng)
    t = lambda a: torch.tensor(a, dtype=torch.long)
    with torch.no_grad():
        want = theirs(input_ids=t(ids), attention_mask=t(mask), decoder_input_ids=t(dec),
                      decoder_attention_mask=t(dec_mask)).logits.numpy()
    got = np.asarray(t5_call(ours, ids, mask, dec, dec_mask))
    err = np.abs(got.astype(np.float64) - want).max()
    print(f"max |logits - transformers| = {err:.3g} (max |logit| {np.abs(want).max():.3g})")
    assert_logits_close(got, want)
    assert err < 1e-5
    np.testing.assert_array_equal(np.asarray(ours.embedding_table), np.load(FIXTURE / "tiny_embeddings_32128x4.npy"))


def test_same_logits_on_an_8_device_mesh(rng):
    from flax import nnx

    from prompt_tuning_jax import partitioning

    mesh = partitioning.make_mesh(data=2, model=4)
    sharded = ptj.from_pretrained(CKPT, config_overrides=TINY, mesh=mesh)
    table = sharded.embedding_table
    assert len(table.addressable_shards) == 8 and table.addressable_shards[0].data.shape[0] == 32128 // 4
    single = ptj.from_pretrained(CKPT, config_overrides=TINY)
    (ids, mask), (dec, dec_mask) = batches(rng)
    fn = nnx.jit(t5_call)
    assert_logits_close(fn(sharded, ids, mask, dec, dec_mask), fn(single, ids, mask, dec, dec_mask))


# --- a prompt-tuned checkpoint -----------------------------------------------------

def add_prompt(folder, prompt, inline):
    """The prompt as T5X writes it: an inline array, or a zarr array with a `gfile` spec in the msgpack."""
    import tensorstore as ts

    name = "target.encoder.prompt.prompt.prompt"
    metadata = {"chunks": list(prompt.shape), "compressor": {"id": "gzip", "level": 1}, "dtype": "<f4",
                "shape": list(prompt.shape)}
    if not inline:
        store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(folder / name)},
                         "metadata": metadata}, create=True).result()
        store.write(prompt).result()
    value = prompt if inline else {"driver": "zarr", "kvstore": {"driver": "gfile", "path": name},
                                   "metadata": metadata}
    rewrite_msgpack(folder, lambda c: c["optimizer"]["target"]["encoder"].update(
        prompt={"prompt": {"prompt": value}}))


@pytest.mark.parametrize("inline", [False, True], ids=["zarr", "inline"])
def test_extracts_the_prompt_of_a_prompt_tuned_checkpoint(tmp_path, rng, inline):
    ckpt = copy_fixture(tmp_path)
    prompt = rng.normal(size=(5, 4)).astype(np.float32)
    add_prompt(ckpt, prompt, inline)
    out = tmp_path / "prompt.npy"
    assert extract_variable.main([str(ckpt), "target/encoder/prompt/prompt/prompt", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), prompt)
    model = ptj.from_pretrained(ckpt, config_overrides=TINY)  # the prompt is no model weight: left out
    np.testing.assert_array_equal(np.asarray(model.embedding_table), np.load(FIXTURE / "tiny_embeddings_32128x4.npy"))


# --- damaged and foreign checkpoints -----------------------------------------------

def test_damaged_msgpack_names_the_file(tmp_path):
    ckpt = copy_fixture(tmp_path)
    for damage in (b"garbage, not msgpack", (CKPT / "checkpoint").read_bytes()[:5000]):
        (ckpt / "checkpoint").write_bytes(damage)
        for load in (lambda: ptj.from_pretrained(ckpt), lambda: t5x.read_variables(ckpt)):
            with pytest.raises(ptj.CheckpointError, match=f"{ckpt / 'checkpoint'} is not a readable T5X checkpoint"):
                load()


def test_missing_zarr_array_names_its_folder(tmp_path):
    ckpt = copy_fixture(tmp_path)
    shutil.rmtree(ckpt / "target.encoder.layers_1.mlp.wo.kernel")
    message = rf"{ckpt / 'target.encoder.layers_1.mlp.wo.kernel'}: cannot open the zarr array of " \
              r"target/encoder/layers_1/mlp/wo/kernel \(NOT_FOUND"
    with pytest.raises(ptj.CheckpointError, match=message):
        ptj.from_pretrained(ckpt, config_overrides=TINY)
    with pytest.raises(ptj.CheckpointError, match=message):
        t5x.read_variables(ckpt, ["encoder/layers_1/mlp/wo/kernel"])
    assert t5x.read_variables(ckpt, ["encoder/layers_0/mlp/wo/kernel"])  # the others still read


def test_unknown_layouts_name_the_file(tmp_path):
    ckpt = copy_fixture(tmp_path)
    file = ckpt / "checkpoint"
    rewrite_msgpack(ckpt, lambda c: c["optimizer"]["target"]["encoder"].update(
        adapter={"kernel": np.zeros((4, 2), np.float32)}))
    with pytest.raises(ptj.CheckpointError, match=rf"{file}: not a T5X checkpoint of T5 .*"
                                                  r"'target/encoder/adapter/kernel'"):
        ptj.from_pretrained(ckpt)
    assert t5x.read_variables(ckpt, ["encoder/adapter/kernel"])["target/encoder/adapter/kernel"].shape == (4, 2)
    rewrite_msgpack(ckpt, lambda c: c["optimizer"].pop("target"))
    with pytest.raises(ptj.CheckpointError, match=rf"{file} holds no T5X parameters: expected optimizer/target"):
        t5x.read_variables(ckpt)
    near = r"has no variable 'target/encoder/nope'; it has e\.g\. \['target/encoder/encoder_norm/scale'.*\(52 in all\)"
    with pytest.raises(ptj.CheckpointError, match=near):
        t5x.read_variables(CKPT, ["encoder/nope"])


def test_command_line_errors_are_one_line_and_write_nothing(tmp_path):
    ckpt = copy_fixture(tmp_path)
    shutil.rmtree(ckpt / "target.token_embedder.embedding")
    cases = [(CKPT, "target/encoder/prompt/prompt/prompt", "has no variable 'target/encoder/prompt/prompt/prompt'"),
             (ckpt, "target/token_embedder/embedding", "target.token_embedder.embedding: cannot open the zarr")]
    for source, variable, expected in cases:
        out = tmp_path / "out.npy"
        proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.extract_variable", str(source), variable,
                               str(out)], capture_output=True, text=True, cwd=REPO, env=cli_env())
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert expected in lines[0] and str(source) in lines[0], lines[0]
        assert not out.exists() and not list(tmp_path.glob(".out.npy*"))


# --- in a bucket ---------------------------------------------------------------------

def test_a_checkpoint_in_a_bucket_reads_like_a_local_one(gcs, rng):
    for root, _, names in os.walk(CKPT):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), CKPT)
            with open(os.path.join(root, name), "rb") as f:
                files.atomic_write(f"gs://bucket/t5x/checkpoint_3/{relative}", f.read())
    files.atomic_write("gs://bucket/t5x/config.json", '{"relative_attention_max_distance": 8}')
    remote = "gs://bucket/t5x/checkpoint_3"
    assert t5x.is_t5x_checkpoint(remote) and t5x.config_from_checkpoint(remote).relative_attention_max_distance == 8
    np.testing.assert_array_equal(t5x.read_variables(remote, ["token_embedder/embedding"])
                                  ["target/token_embedder/embedding"],
                                  np.load(FIXTURE / "tiny_embeddings_32128x4.npy"))
    (ids, mask), (dec, dec_mask) = batches(rng)
    np.testing.assert_array_equal(np.asarray(t5_call(ptj.from_pretrained(remote), ids, mask, dec, dec_mask)),
                                  np.asarray(t5_call(ptj.from_pretrained(CKPT, config_overrides=TINY), ids, mask,
                                                     dec, dec_mask)))
