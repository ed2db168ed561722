"""Writing T5X checkpoints (models/t5x.py: write_checkpoint, variables_from_model, t5x_name) and
scripts/make_random_checkpoint.py --format t5x: round trips through the reader, the layout of the original
library's fixture (tests/models/fixtures/t5x_tiny, written by T5X), and half-written directories.
"""
import dataclasses
import functools
import importlib.util
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO, cli_env, tiny_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax.models import t5x

FIXTURE = REPO / "tests" / "models" / "fixtures" / "t5x_tiny" / "checkpoint_3"
PROMPT = "target/encoder/prompt/prompt/prompt"
# d_model 8, 2 + 2 layers, 2 heads of 4, d_ff 16, vocab 64, 4 buckets
TINY = {"vocab_size": 64, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 2, "num_heads": 2,
        "relative_attention_num_buckets": 4}
STYLES = {"v1.1": {"untied": True},  # gated GELU, own LM head (logits_dense), no rescale
          "v1.0": {}}  # ReLU, tied head, rescaled decoder output


def tiny_t5(style="v1.1", seed=0, **kw):
    return tiny_model("t5", seed=seed, **STYLES[style], **{**TINY, **kw})


def params(model) -> dict:
    """{our parameter path: numpy array} of a model."""
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for path in pa:
        assert pa[path].dtype == pb[path].dtype, path
        np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


def restore(folder) -> dict:
    from flax import serialization

    return serialization.msgpack_restore((folder / "checkpoint").read_bytes())


def leaves(tree, prefix="target") -> dict:
    """{'target/encoder/...': inline array or zarr spec dict} of a msgpack's target tree."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "driver" not in value:
            out.update(leaves(value, f"{prefix}/{key}"))
        else:
            out[f"{prefix}/{key}"] = value
    return out


# --- round trips -------------------------------------------------------------------

@pytest.mark.parametrize("style", list(STYLES))
def test_round_trip_gives_identical_params(tmp_path, style):
    model = tiny_t5(style, seed=3)
    ckpt = tmp_path / "checkpoint_42"
    t5x.write_checkpoint(ckpt, t5x.variables_from_model(model), step=42)
    assert t5x.is_t5x_checkpoint(ckpt) and t5x.checkpoint_step(ckpt) == 42
    overrides = {"relative_attention_max_distance": model.config.relative_attention_max_distance}
    loaded = ptj.from_pretrained(ckpt, config_overrides=overrides)
    assert loaded.config == dataclasses.replace(model.config, num_decoder_layers=2)
    assert_same_params(loaded, model)
    names = t5x.read_variables(ckpt).keys()
    assert ("target/decoder/logits_dense/kernel" in names) == (style == "v1.1")
    assert ("target/encoder/layers_1/mlp/wi_0/kernel" in names) == (style == "v1.1")


def test_bfloat16_round_trip_keeps_the_dtype(tmp_path):
    model = ptj.init_random(tiny_t5().config, param_dtype=jnp.bfloat16)
    variables = t5x.variables_from_model(model)
    assert {a.dtype.name for a in variables.values()} == {"bfloat16"}
    t5x.write_checkpoint(tmp_path / "c", variables, step=1)
    read = t5x.read_variables(tmp_path / "c")
    assert read["target/encoder/encoder_norm/scale"].dtype.name == "bfloat16"  # inline
    assert read["target/token_embedder/embedding"].dtype.name == "bfloat16"  # zarr
    assert_same_params(ptj.from_pretrained(tmp_path / "c", param_dtype=jnp.bfloat16), model)


def test_names_invert_hf_name():
    for style in STYLES:
        model = tiny_t5(style)
        shapes = t5x.variable_shapes(nnx.eval_shape(functools.partial(ptj.init_random, model.config)))
        for path, array in params(model).items():
            name, transposed = t5x.t5x_name(model.checkpoint_key(path))
            assert t5x.hf_name(name[len("target/"):]) == (model.checkpoint_key(path), transposed)
            assert shapes[name] == (array.shape[::-1] if transposed else array.shape)
    assert t5x.t5x_name("decoder.block.1.layer.1.EncDecAttention.o.weight") == \
        ("target/decoder/layers_1/encoder_decoder_attention/out/kernel", True)
    for bad in ("encoder.block.0.layer.0.SelfAttention.x.weight", "encoder.block.0.layer.0.layer_norm.q.weight",
                "encoder.embed_tokens.weight", "h.0.attn.c_attn.weight"):
        with pytest.raises(ValueError, match="is not a parameter of T5X's T5"):
            t5x.t5x_name(bad)


def test_models_t5x_cannot_hold_are_refused():
    with pytest.raises(TypeError, match="T5X checkpoints hold T5 models only, not GPT2"):
        t5x.variables_from_model(tiny_model("gpt2"))
    with pytest.raises(ValueError, match="ties the LM head .* exactly when it rescales"):
        t5x.variables_from_model(tiny_t5("v1.1", scale_decoder_outputs=True))


@pytest.mark.parametrize("shape", [(5, 8), (1, 8)], ids=["zarr", "inline"])
def test_a_prompt_variable_reads_back(tmp_path, rng, shape):
    prompt = rng.normal(size=shape).astype(np.float32)
    variables = {**t5x.variables_from_model(tiny_t5()), PROMPT: prompt}
    t5x.write_checkpoint(tmp_path / "c", variables, step=7)
    np.testing.assert_array_equal(t5x.read_variables(tmp_path / "c", [PROMPT])[PROMPT], prompt)
    where = t5x.T5XCheckpoint(tmp_path / "c").where(PROMPT)
    assert where == ("target.encoder.prompt.prompt.prompt" if prompt.size >= 16 else "checkpoint")
    assert_same_params(ptj.from_pretrained(tmp_path / "c"), tiny_t5())  # the prompt is no model weight


def test_in_a_bucket(gcs):
    model = tiny_t5("v1.0", seed=5)
    remote = "gs://bucket/t5x_write/checkpoint_9"
    t5x.write_checkpoint(remote, {**t5x.variables_from_model(model), PROMPT: np.ones((4, 8), np.float32)}, 9)
    assert t5x.is_t5x_checkpoint(remote) and t5x.checkpoint_step(remote) == 9
    spec = t5x.T5XCheckpoint(remote).variables["target/token_embedder/embedding"]
    assert spec["kvstore"] == {"driver": "gfile", "path": "target.token_embedder.embedding"}  # portable
    assert_same_params(ptj.from_pretrained(remote), model)
    np.testing.assert_array_equal(t5x.read_variables(remote, [PROMPT])[PROMPT], np.ones((4, 8), np.float32))


# --- T5X's layout --------------------------------------------------------------------

def test_layout_is_the_fixtures(tmp_path):
    """The fixture's own variables, written again: same msgpack structure, same inline/zarr split, same
    spec and .zarray fields (chunks aside: T5X's chunking has changed since the fixture was written)."""
    ours_dir = tmp_path / "checkpoint_3"
    t5x.write_checkpoint(ours_dir, t5x.read_variables(FIXTURE), step=3)
    theirs, ours = restore(FIXTURE), restore(ours_dir)
    assert ours.keys() == theirs.keys() == {"version", "optimizer"} and ours["version"] == theirs["version"] == 3
    assert ours["optimizer"].keys() == theirs["optimizer"].keys() == {"target", "state"}
    assert ours["optimizer"]["state"]["step"] == theirs["optimizer"]["state"]["step"] == 3
    assert ours["optimizer"]["state"]["step"].dtype == theirs["optimizer"]["state"]["step"].dtype
    theirs_leaves, ours_leaves = leaves(theirs["optimizer"]["target"]), leaves(ours["optimizer"]["target"])
    assert ours_leaves.keys() == theirs_leaves.keys()
    zarr = [name for name, value in theirs_leaves.items() if isinstance(value, dict)]
    assert [name for name, value in ours_leaves.items() if isinstance(value, dict)] == zarr
    assert "target/encoder/layers_0/mlp/wi_0/kernel" in zarr and "target/encoder/relpos_bias/rel_embedding" not in zarr
    for name in zarr:
        spec, want = ours_leaves[name], theirs_leaves[name]
        assert spec["kvstore"] == want["kvstore"] and spec["kvstore"]["driver"] == "gfile"
        assert {**spec, "metadata": None} == {**want, "metadata": None}
        assert {**spec["metadata"], "chunks": None} == {**want["metadata"], "chunks": None}
        folder = ours_dir / spec["kvstore"]["path"]
        zarray, fixture_zarray = (json.loads((d / ".zarray").read_text()) for d in (folder, FIXTURE / folder.name))
        for field in ("compressor", "dtype", "shape", "order", "fill_value", "filters", "zarr_format"):
            assert zarray[field] == fixture_zarray[field], (name, field)
    assert sorted(p.name for p in ours_dir.iterdir()) == sorted(p.name for p in FIXTURE.iterdir())
    assert_same_params(ptj.from_pretrained(ours_dir, config_overrides={"relative_attention_max_distance": 8}),
                       ptj.from_pretrained(FIXTURE, config_overrides={"relative_attention_max_distance": 8}))


def test_chunks_are_t5xs():
    """T5X's own cases (t5x/checkpoints_test.py, CheckpointChunkShapeTest), in bytes of float32."""
    f32 = 4
    assert t5x.chunk_shape([4096, 4096], f32, 4096 * 4096 * f32) == [4096, 4096]
    assert t5x.chunk_shape([8192, 8192], f32, 4096 * 4096 * f32) == [4096, 4096]
    assert t5x.chunk_shape([8192, 8193], f32, 4096 * 4096 * f32) == [4096, 2731]
    assert t5x.chunk_shape([8192], f32, 4096 * f32) == [4096]
    assert t5x.chunk_shape([8193], f32, 4096 * f32) == [2731]
    assert t5x.chunk_shape([32128, 768], f32) == [16064, 768]  # t5-base's embedding over 64 MiB


# --- incomplete directories -------------------------------------------------------------

def test_without_its_msgpack_a_directory_is_no_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint_1"
    t5x.write_checkpoint(ckpt, t5x.variables_from_model(tiny_t5()), step=1)
    (ckpt / "checkpoint").unlink()
    assert not t5x.is_t5x_checkpoint(ckpt) and (ckpt / "target.token_embedder.embedding" / ".zarray").exists()
    t5x.write_checkpoint(ckpt, t5x.variables_from_model(tiny_t5()), step=1)
    assert t5x.is_t5x_checkpoint(ckpt)

    calls = []

    def failing(directory, name, array, write=t5x._write_zarr):  # the disk fills up at the third array
        calls.append(name)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return write(directory, name, array)

    monkeypatch.setattr(t5x, "_write_zarr", failing)
    with pytest.raises(OSError, match="No space"):
        t5x.write_checkpoint(ckpt, t5x.variables_from_model(tiny_t5(seed=1)), step=2)
    assert not t5x.is_t5x_checkpoint(ckpt)  # the earlier checkpoint's msgpack went first
    assert not list(ckpt.glob(".checkpoint*"))


def test_clashing_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        t5x.write_checkpoint(tmp_path / "c", {"encoder/x": np.ones(2), "target/encoder/x": np.ones(2)}, 1)
    for x in (np.ones(2), np.ones(32)):  # inline, zarr
        with pytest.raises(ValueError, match="x is itself a variable"):
            t5x.write_checkpoint(tmp_path / "c", {"encoder/x": x, "encoder/x/y": np.ones(2)}, 1)
    assert not t5x.is_t5x_checkpoint(tmp_path / "c")


# --- scripts/make_random_checkpoint.py --format t5x ---------------------------------------

SCRIPT = REPO / "scripts" / "make_random_checkpoint.py"
TINY_OVERRIDES = [f"{k}={v}" for k, v in TINY.items()]


def test_script_writes_a_t5x_checkpoint_that_loads(tmp_path):
    out = tmp_path / "t5_1_1_lm100k_base" / "checkpoint_1100000"
    cmd = [sys.executable, str(SCRIPT), "t5_1_1_lm100k_base", str(out), "--format", "t5x"]
    for item in TINY_OVERRIDES:
        cmd += ["--override", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"wrote a random T5X checkpoint of t5_1_1_lm100k_base (google/t5-base-lm-adapt), {4208:,} parameters "
        f"(float32), step 1100000, to {out}")
    assert t5x.checkpoint_step(out) == 1_100_000
    model = ptj.from_pretrained(out)
    assert sum(a.size for a in params(model).values()) == 4208
    config = model.config
    assert (config.d_model, config.num_layers, config.n_decoder_layers, config.num_heads, config.d_kv, config.d_ff,
            config.vocab_size, config.feed_forward_proj, config.tie_word_embeddings) == \
        (8, 2, 2, 2, 4, 16, 64, "gated-gelu", False)  # lm-adapt is T5 1.1
    table = np.asarray(model.embedding_table)
    assert 0.8 < table.std() < 1.2 and np.all(np.asarray(model.encoder.final_layer_norm.weight[...]) == 1)


def load_script():
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_names_and_refusals(tmp_path, capsys):
    script = load_script()
    assert script.hub_id_of("t5_1_1_xl") == "google/t5-v1_1-xl" and script.hub_id_of("t5_3b") == "t5-3b"
    assert script.hub_id_of("mt5_small") == "google/mt5-small" and script.hub_id_of("t5-small") == "t5-small"
    for argv, message in (
            (["gpt2", str(tmp_path / "g"), "--format", "t5x"], "T5X checkpoints hold T5 models only; gpt2 is gpt2"),
            (["t5_small", str(tmp_path / "t"), "--format", "t5x", "--tokenizer", "t5-small"],
             "a T5X checkpoint holds no tokenizer"),
            (["t5_small", str(tmp_path / "h"), "--step", "5"], "--step is for --format t5x")):
        assert script.main(argv) == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert script.main(["t5_base", str(tmp_path / "c"), "--format", "t5x", "--step", "5", "--seed", "1",
                        *[a for item in TINY_OVERRIDES for a in ("--override", item)]]) == 0
    assert t5x.checkpoint_step(tmp_path / "c") == 5
    assert ptj.from_pretrained(tmp_path / "c").config.feed_forward_proj == "relu"  # T5 1.0
