"""Checkpoint loading, saving, sharding and bad input."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from helpers import REPO, assert_logits_close, padded_batch, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax.models import hf


def t5_call(model, ids, mask, dec, dec_mask):
    return model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "t5-v1.0", "t5-v1.1"])
def test_save_pretrained_round_trips_through_transformers(tmp_path, rng, family):
    import transformers

    src, out = tmp_path / "src", tmp_path / "out"
    if family == "gpt2":
        torch_model("gpt2", src)
    else:
        torch_model("t5", src, untied=family == "t5-v1.1")
    model = ptj.from_pretrained(src)
    ptj.save_pretrained(model, out)
    auto = transformers.AutoModelForSeq2SeqLM if family.startswith("t5") else transformers.AutoModelForCausalLM
    back = auto.from_pretrained(out).eval()
    ids, mask = padded_batch(rng, 199, [6, 4], 6)
    t = lambda a: torch.tensor(a, dtype=torch.long)
    with torch.no_grad():
        if family == "gpt2":
            theirs = back(input_ids=t(ids), attention_mask=t(mask)).logits.numpy()
            ours, real = model(ids, mask), mask  # at pads our positions differ (they count real tokens only)
        else:
            dec, dec_mask = padded_batch(rng, 199, [3, 3], 3)
            theirs = back(input_ids=t(ids), attention_mask=t(mask), decoder_input_ids=t(dec),
                          decoder_attention_mask=t(dec_mask)).logits.numpy()
            ours, real = t5_call(model, ids, mask, dec, dec_mask), None
    assert_logits_close(ours, theirs, real)
    assert back.config.to_dict()["resid_pdrop" if family == "gpt2" else "dropout_rate"] == 0.1  # rates written
    again = ptj.from_pretrained(out)  # and our own loader reads it back bit for bit
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, ptj.models.hf.nnx.state(model))),
                    jax.tree.leaves(jax.tree.map(np.asarray, ptj.models.hf.nnx.state(again)))):
        np.testing.assert_array_equal(a, b)


def test_sharded_safetensors_with_index(tmp_path, rng):
    import transformers

    torch_model("gpt2", tmp_path / "one")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "one")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids, mask = padded_batch(rng, 211, [5], 5)
    assert_logits_close(ptj.from_pretrained(tmp_path / "sharded")(ids, mask),
                        ptj.from_pretrained(tmp_path / "one")(ids, mask))


def test_pytorch_bin_checkpoint(tmp_path, rng):
    hf_model = torch_model("gpt2", tmp_path / "st")
    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    ids, mask = padded_batch(rng, 211, [5], 5)
    np.testing.assert_allclose(ptj.from_pretrained(tmp_path / "bin")(ids, mask),
                               ptj.from_pretrained(tmp_path / "st")(ids, mask), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_same_logits_on_an_8_device_mesh(tmp_path, rng, family):
    from jax.sharding import NamedSharding

    from prompt_tuning_jax import partitioning

    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    if family == "gpt2":
        torch_model("gpt2", tmp_path, n_embd=64, n_head=4, vocab_size=256)
    else:
        torch_model("t5", tmp_path, untied=True, vocab_size=256, d_ff=64)
    single = ptj.from_pretrained(tmp_path)
    mesh = partitioning.make_mesh(data=2, model=4)
    sharded = ptj.from_pretrained(tmp_path, mesh=mesh)
    table = sharded.embedding_table
    assert isinstance(table.sharding, NamedSharding) and table.sharding.spec[0] == "model"
    assert len(table.addressable_shards) == 8 and table.addressable_shards[0].data.shape[0] == 64
    ids, mask = padded_batch(rng, 256, [8, 5, 3, 1], 8)
    batch = jax.device_put((ids, mask), partitioning.batch_sharding(mesh))
    if family == "gpt2":
        fn = lambda m, i, k: m(i, k)
        args, sargs = (ids, mask), batch
    else:
        dec, dec_mask = padded_batch(rng, 256, [4, 4, 2, 1], 4)
        fn = lambda m, i, k, d, e: t5_call(m, i, k, d, e)
        args = (ids, mask, dec, dec_mask)
        sargs = batch + jax.device_put((dec, dec_mask), partitioning.batch_sharding(mesh))
    from flax import nnx
    want = nnx.jit(fn)(single, *args)
    got = nnx.jit(fn)(sharded, *sargs)
    assert_logits_close(got, want)


# --- bad input ---------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(hf.CheckpointError, match="does not exist"):
        ptj.from_pretrained(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(hf.CheckpointError, match="config.json"):
        ptj.from_pretrained(tmp_path)


def test_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(hf.CheckpointError, match=r"model_type 'bert'.*supports \['gemma3', 'gemma3_text', 'gpt2', "
                                                 r"'llama', 'mistral', 'mt5', 'qwen2', 'qwen3', 't5'\]"):
        ptj.from_pretrained(tmp_path)


def test_missing_weights_file(tmp_path):
    torch_model("gpt2", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(hf.CheckpointError, match="no weights in"):
        ptj.from_pretrained(tmp_path)


def _rewrite_checkpoint(folder, edit):
    ckpt = hf.Checkpoint(str(folder))
    tensors = {k: np.array(ckpt.get(k)) for k in ckpt.keys()}
    edit(tensors)
    hf.write_safetensors(str(folder / "model.safetensors"), tensors)


def test_missing_tensor_is_named(tmp_path):
    torch_model("gpt2", tmp_path)
    _rewrite_checkpoint(tmp_path, lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(hf.CheckpointError, match=r"no tensor 'transformer\.h\.1\.mlp\.c_fc\.weight'.*\(48, 192\)"):
        ptj.from_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    torch_model("t5", tmp_path)
    key = "encoder.block.1.layer.1.DenseReluDense.wi.weight"
    _rewrite_checkpoint(tmp_path, lambda t: t.update({key: np.zeros((65, 32), np.float32)}))
    with pytest.raises(hf.CheckpointError, match=rf"model.safetensors: tensor '{key}' has shape \(65, 32\).*\(64, 32\)"):
        ptj.from_pretrained(tmp_path)


def test_command_line_error_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.info", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "model_type 'bert'" in lines[0], proc.stderr


def test_command_line_info_describes_a_model(tmp_path):
    torch_model("t5", tmp_path, untied=True)
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.info", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "t5" in proc.stdout and "parameters" in proc.stdout
