"""Loading holds a checkpoint once: tensors are read one by one (each device's slice only), converted a
chunk at a time, never memory-mapped, and the files are let go when loading ends."""
import json
import mmap
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from helpers import REPO, cli_env, save_tiny_gpt2, torch_model

import prompt_tuning_jax as ptj
from prompt_tuning_jax import files, partitioning
from prompt_tuning_jax.models import hf

BF16 = np.dtype(ml_dtypes.bfloat16)
MMAP = mmap.mmap  # the class, before a test patches it


def params(model) -> dict:
    from flax import nnx

    return {model.checkpoint_key(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture
def no_memory_maps(monkeypatch):
    """Any memory map of a file while loading fails the test (its pages would count twice); anonymous
    memory (fileno -1) is what the arrays are made of."""
    anonymous_only = mmap.mmap

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint file was memory-mapped")

    def checked(fileno, *args, **kwargs):
        if fileno != -1:
            refuse()
        return anonymous_only(fileno, *args, **kwargs)

    monkeypatch.setattr(np, "memmap", refuse)
    monkeypatch.setattr(mmap, "mmap", checked)


@pytest.fixture
def reads(monkeypatch):
    """[(file, key, index, dtype)] of every SafetensorsFile.read, and the files opened."""
    calls, opened = [], []
    read, init = hf.SafetensorsFile.read, hf.SafetensorsFile.__init__

    def recording_read(self, key, index=None, dtype=None):
        calls.append((os.path.basename(self.path), key, index, None if dtype is None else np.dtype(dtype)))
        return read(self, key, index, dtype)

    def recording_init(self, path):
        init(self, path)
        opened.append(self)

    monkeypatch.setattr(hf.SafetensorsFile, "read", recording_read)
    monkeypatch.setattr(hf.SafetensorsFile, "__init__", recording_init)
    return calls, opened


def test_each_tensor_is_read_once_into_its_dtype_and_the_files_are_closed(tmp_path, no_memory_maps, reads):
    import jax.numpy as jnp

    torch_model("gpt2", tmp_path)
    calls, opened = reads
    model = ptj.from_pretrained(tmp_path, param_dtype=jnp.bfloat16)
    keys = [key for _, key, _, _ in calls]
    assert len(keys) == len(set(keys)) == len(params(model))  # one read per parameter, whole (no mesh)
    assert all(index is None and dtype == BF16 for _, _, index, dtype in calls)  # converted by the reader
    assert opened and all(f._file is None for f in opened)  # closed when loading ended
    with hf.Checkpoint(str(tmp_path)) as ckpt:
        for key, value in params(model).items():
            found = key if key in ckpt else key[len("transformer."):]
            np.testing.assert_array_equal(value, ckpt.get(found).astype(BF16))


def test_sharded_safetensors_read_tensor_by_tensor(tmp_path, no_memory_maps, reads):
    import transformers

    torch_model("gpt2", tmp_path / "one")
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "one").save_pretrained(tmp_path / "sharded",
                                                                                  max_shard_size="20KB")
    calls, opened = reads
    sharded = params(ptj.from_pretrained(tmp_path / "sharded"))
    assert len({name for name, _, _, _ in calls}) > 1 and all(f._file is None for f in opened)
    for key, value in params(ptj.from_pretrained(tmp_path / "one")).items():
        np.testing.assert_array_equal(sharded[key], value)


def test_on_a_mesh_each_process_reads_each_distinct_slice_once(tmp_path, no_memory_maps, reads):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    torch_model("gpt2", tmp_path, n_embd=64, n_head=4, vocab_size=256)
    calls, _ = reads
    mesh = partitioning.make_mesh(data=2, model=4)
    model = ptj.from_pretrained(tmp_path, mesh=mesh)
    table = model.embedding_table
    assert table.sharding.spec[0] == "model" and table.addressable_shards[0].data.shape == (64, 64)
    wte = [index for _, key, index, _ in calls if key.endswith("wte.weight")]
    assert sorted(i[0].indices(256)[:2] for i in wte) == [(64 * k, 64 * (k + 1)) for k in range(4)]
    replicated = [index for _, key, index, _ in calls if key.endswith("ln_f.weight")]
    assert len(replicated) == 1  # the 8 devices share one read
    single = params(ptj.from_pretrained(tmp_path))
    for key, value in params(model).items():
        np.testing.assert_array_equal(value, single[key])


@pytest.mark.parametrize("stored,target", [(np.float32, np.float32), (np.float32, BF16), (BF16, np.float32),
                                           (np.float16, np.float32), (BF16, BF16), (np.int64, np.int32)])
def test_slices_and_conversions_match_numpy(tmp_path, monkeypatch, no_memory_maps, stored, target):
    monkeypatch.setattr(hf, "READ_CHUNK_BYTES", 200)  # many chunks, a row larger than a chunk
    monkeypatch.setattr(hf, "_ANONYMOUS_FROM", 256)  # both kinds of memory
    rng = np.random.default_rng(0)
    tensors = {"m": (rng.normal(size=(37, 11, 5)) * 100).astype(stored), "row": rng.normal(size=(1, 90)).astype(stored),
               "v": rng.normal(size=(64,)).astype(stored), "s": np.asarray(3.5).astype(stored),
               "empty": np.zeros((0, 4), stored)}
    hf.write_safetensors(tmp_path / "t.safetensors", tensors)
    f = hf.SafetensorsFile(str(tmp_path / "t.safetensors"))
    indices = [None, (slice(3, 20),), (slice(None), slice(2, 7)), (slice(5, 6), slice(0, 11), slice(1, 4)),
               (slice(30, 37), slice(4, 11))]
    for key, want in tensors.items():
        for index in indices if want.ndim == 3 else [None, (slice(0, 1),)] if want.ndim else [None]:
            got = f.read(key, index, target)
            expected = (want if index is None else want[index]).astype(target)
            assert got.dtype == np.dtype(target) and got.shape == expected.shape
            assert got.tobytes() == expected.tobytes(), (key, index)  # bit for bit
            root = got
            while isinstance(root, np.ndarray) and root.base is not None:
                root = root.base
            root = root.obj if isinstance(root, memoryview) else root
            assert type(root) is MMAP and root.closed is False or type(root) is np.ndarray and root.flags.owndata
            assert got.size == 0 or got.ctypes.data % 64 == 0  # taken in place by the CPU backend
    f.close()
    assert f._file is None


@pytest.mark.parametrize("anonymous_from", [2**22, 0], ids=["small", "own-mapping"])
def test_cpu_arrays_are_taken_without_a_copy(tmp_path, monkeypatch, anonymous_from):
    monkeypatch.setattr(hf, "_ANONYMOUS_FROM", anonymous_from)
    hf.write_safetensors(tmp_path / "t.safetensors", {"w": np.ones((128, 64), np.float32)})
    array = hf.SafetensorsFile(str(tmp_path / "t.safetensors")).read("w", dtype=BF16)
    placed = jax.device_put(array, jax.devices("cpu")[0])
    assert placed.unsafe_buffer_pointer() == array.ctypes.data


def test_a_truncated_file_is_named(tmp_path):
    hf.write_safetensors(tmp_path / "t.safetensors", {"w": np.ones((128, 64), np.float32)})
    with open(tmp_path / "t.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "t.safetensors") - 4)
    with pytest.raises(hf.CheckpointError, match=r"t\.safetensors: tensor 'w'.*is the file complete"):
        hf.SafetensorsFile(str(tmp_path / "t.safetensors"))


def test_a_dtype_it_cannot_read_fails_only_when_read(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "odd": {"dtype": "C64", "shape": [1], "data_offsets": [8, 16]}}
    raw = json.dumps(header).encode()
    (tmp_path / "t.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + np.ones(4, np.float32).tobytes())
    f = hf.SafetensorsFile(str(tmp_path / "t.safetensors"))
    np.testing.assert_array_equal(f.read("w"), [1, 1])
    with pytest.raises(hf.CheckpointError, match=r"tensor 'odd' has dtype 'C64'"):
        f.read("odd")


def test_bfloat16_pytorch_bin(tmp_path):
    import torch

    model = torch_model("gpt2", tmp_path / "st").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    import jax.numpy as jnp

    from_bin = params(ptj.from_pretrained(tmp_path / "bin", param_dtype=jnp.bfloat16))
    for key, value in params(ptj.from_pretrained(tmp_path / "st", param_dtype=jnp.bfloat16)).items():
        assert from_bin[key].dtype == BF16
        np.testing.assert_array_equal(from_bin[key], value)


def test_a_bucket_folder_is_copied_in_chunks_and_loads_like_a_local_one(gcs, tmp_path, monkeypatch):
    folder = save_tiny_gpt2(tmp_path / "local")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            files.atomic_write(f"gs://bucket/streaming/tiny/{name}", f.read())
    monkeypatch.setattr(files, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "COPY_CHUNK_BYTES", 4096)
    bucket_path = type(files.Path("gs://bucket/streaming/tiny/config.json"))
    monkeypatch.setattr(bucket_path, "read_bytes", lambda self: pytest.fail(f"{self} was read whole"))
    remote = params(ptj.from_pretrained("gs://bucket/streaming/tiny"))
    for key, value in params(ptj.from_pretrained(folder)).items():
        np.testing.assert_array_equal(remote[key], value)


CHILD = """
import json, sys
import jax, jax.numpy as jnp, psutil
import prompt_tuning_jax as ptj
from prompt_tuning_jax.models import hf

def peak():  # this process's RSS high-water mark (ru_maxrss would count the forking pytest process too)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

jnp.zeros(1).block_until_ready()
start = max(peak(), psutil.Process().memory_info().rss)
dtype = getattr(jnp, sys.argv[2])
model = ptj.from_pretrained(sys.argv[1], dtype=dtype, param_dtype=dtype)
weights = sum(x.nbytes for x in jax.block_until_ready(jax.tree.leaves(ptj.models.hf.nnx.state(model))))
print(json.dumps({"added": peak() - start, "weights": weights}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_adds_about_the_weights_to_peak_memory(tmp_path_factory, dtype):
    """A ~190 MB float32 checkpoint loaded in a fresh process: its peak RSS grows by the weights, not twice
    that (the memory-mapped reader it replaced took 2x: the file's pages and the model's arrays)."""
    folder = tmp_path_factory.getbasetemp() / "streaming_gpt2"
    if not (folder / "model.safetensors").exists():
        config = ptj.GPT2Config(vocab_size=50257, n_positions=256, n_embd=512, n_layer=10, n_head=8)
        ptj.save_pretrained(ptj.init_random(config), folder)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], env=cli_env(1), capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["weights"] > (150e6 if dtype == "float32" else 75e6)
    print(result)
    assert result["added"] < 1.3 * result["weights"], result
