"""The path layer (files.py) on local folders and on a GCS emulator, and the readers and writers built on it."""
import json
import os
import sys

import numpy as np
import pytest
from helpers import save_tiny_gpt2

from prompt_tuning_jax import files
from prompt_tuning_jax.prompts import io as prompt_io


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    """A folder to write under: a local one, or a fresh prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("gcs")
    return f"gs://bucket/{request.node.name.replace('[', '-').rstrip(']')}"


def test_write_read_list(root):
    files.atomic_write(f"{root}/a/b.json", json.dumps({"x": 1}))
    files.atomic_write(f"{root}/a/c.bin", lambda f: f.write(b"\x00\x01"))
    assert json.loads(files.read_text(f"{root}/a/b.json")) == {"x": 1}
    assert files.read_bytes(f"{root}/a/c.bin") == b"\x00\x01"
    assert files.is_dir(f"{root}/a") and not files.is_file(f"{root}/a")
    assert files.is_file(f"{root}/a/b.json") and not files.exists(f"{root}/a/missing")
    assert files.listdir(f"{root}/a") == ["b.json", "c.bin"]


def test_failed_write_keeps_the_old_file(root):
    path = f"{root}/keep.txt"
    files.atomic_write(path, "old")

    def broken(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, broken)
    assert files.read_text(path) == "old"
    assert files.listdir(root) == ["keep.txt"]  # no temporary file left behind


def test_makedirs_refuses_a_file(root):
    files.atomic_write(f"{root}/run", "not a folder")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        files.makedirs(f"{root}/run")
    files.makedirs(f"{root}/new/deeper")
    files.makedirs(f"{root}/new/deeper")  # exists already: fine


def test_absolute_keeps_urls():
    assert files.absolute("gs://bucket/run") == "gs://bucket/run"
    assert files.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x")


def test_emulator_host_configures_every_library():
    env = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"}
    files.use_storage_emulator(env)
    assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9023"
    assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false" and env["GOOGLE_AUTH_TOKEN_FOR_TESTING"]
    mine = {"STORAGE_EMULATOR_HOST": "127.0.0.1:9023", "TENSORSTORE_GCS_HTTP_URL": "http://elsewhere:1"}
    files.use_storage_emulator(mine)
    assert mine["TENSORSTORE_GCS_HTTP_URL"] == "http://elsewhere:1"  # the user's own setting wins
    untouched = {}
    files.use_storage_emulator(untouched)
    assert untouched == {}


def test_gs_without_gcsfs_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ImportError, match=r"gs://bucket/x: gs:// paths need gcsfs.*prompt_tuning_jax\[gcs\]"):
        files.exists("gs://bucket/x")


def test_local_folder_copies_a_bucket_folder_once(gcs, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CACHE_DIR", str(tmp_path / "cache"))
    files.atomic_write("gs://bucket/copy/config.json", "{}")
    files.atomic_write("gs://bucket/copy/weights.bin", b"1234")
    files.atomic_write("gs://bucket/copy/notes.md", "skip me")
    local = files.local_folder("gs://bucket/copy", ("*.json", "weights.bin"))
    assert sorted(os.listdir(local)) == ["config.json", "weights.bin"]
    files.atomic_write("gs://bucket/copy/weights.bin", b"123456")  # changed in the bucket: copied again
    assert open(os.path.join(files.local_folder("gs://bucket/copy", ("*.bin",)), "weights.bin"), "rb").read() == \
        b"123456"
    files.atomic_write("gs://bucket/copy/weights.bin", b"abcdef")  # rewritten at the same size: copied again too
    assert open(os.path.join(files.local_folder("gs://bucket/copy", ("*.bin",)), "weights.bin"), "rb").read() == \
        b"abcdef"
    copies = []
    monkeypatch.setattr(files, "atomic_write", lambda *a, **k: copies.append(a[0]))
    files.local_folder("gs://bucket/copy", ("*.json", "weights.bin"))  # unchanged: nothing is copied
    assert copies == []
    assert files.local_folder(str(tmp_path)) == str(tmp_path)


def test_prompt_and_peft_adapter_round_trip(root):
    prompt = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    prompt_io.save_prompt(f"{root}/prompts/p.npy", prompt)
    np.testing.assert_array_equal(prompt_io.load_prompt(f"{root}/prompts/p.npy", expected_shape=(5, 16)), prompt)
    with pytest.raises(ValueError, match="5 prompt tokens"):
        prompt_io.load_prompt(f"{root}/prompts/p.npy", expected_shape=(4, 16))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prompt_io.load_prompt(f"{root}/prompts/missing.npy")
    prompt_io.export_peft(f"{root}/adapter", prompt, "gpt2", "CAUSAL_LM",
                          model_config={"n_layer": 2, "n_embd": 16, "n_head": 2})
    loaded, config = prompt_io.import_peft(f"{root}/adapter")
    np.testing.assert_array_equal(loaded, prompt)
    assert config["num_virtual_tokens"] == 5 and config["token_dim"] == 16


def test_run_record_writes_every_file_to_the_bucket(gcs):
    from prompt_tuning_jax.training.records import RunRecord

    record = RunRecord("gs://bucket/record")
    record.log(0, "train", {"loss": 2.0})
    record.log(1, "train", {"loss": 1.5})
    record.log(1, "eval", {"accuracy": 50.0})
    record.write_summary()
    record.close()
    rows = [json.loads(line) for line in files.read_text("gs://bucket/record/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 1]
    assert files.read_text("gs://bucket/record/metrics.csv").splitlines()[0] == "step,split,accuracy,loss"
    assert files.read_bytes("gs://bucket/record/plots/train_loss.png")[:4] == b"\x89PNG"
    events = files.listdir("gs://bucket/record/tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert b"train/loss" in files.read_bytes(f"gs://bucket/record/tensorboard/{events[0]}")
    resumed = RunRecord("gs://bucket/record")  # a resumed run reads its history back
    assert len(resumed.rows) == 3


def test_run_record_in_a_bucket_sends_each_row_once(gcs, monkeypatch):
    """300 rows with a flush every 10 (a checkpoint): the bytes sent stay those of the rows, where rewriting
    metrics.jsonl at every row would send ~150x them; rows logged after the last flush are not in the bucket
    until the next one (a resumed run redoes those steps)."""
    from prompt_tuning_jax.training.records import RunRecord

    fs = files._gcs()
    sent, whole = [], []
    pipe_file, write = fs.pipe_file, files.atomic_write
    monkeypatch.setattr(fs, "pipe_file", lambda path, data, *a, **k: (sent.append(len(data)),
                                                                         pipe_file(path, data, *a, **k))[1])
    monkeypatch.setattr(files, "atomic_write", lambda path, content: (whole.append(str(path)), write(path, content))[1])
    record = RunRecord("gs://bucket/rows", tensorboard=False)
    for step in range(300):
        record.log(step, "train", {"loss": 1.0 / (step + 1)})
        if step % 10 == 9:
            record.flush()
    record.log(300, "train", {"loss": 0.0})
    path = "gs://bucket/rows/metrics.jsonl"
    size = len(files.read_bytes(path))
    assert [json.loads(line)["step"] for line in files.read_text(path).splitlines()] == list(range(300))
    assert 0 < sum(sent) < size, (sum(sent), size)  # only the new rows; the first flush creates the file whole
    assert whole == [path], whole
    record.close()
    assert json.loads(files.read_text(path).splitlines()[-1])["step"] == 300


def test_checkpoint_folder_in_a_bucket_loads_like_a_local_one(gcs, tmp_path, monkeypatch):
    import prompt_tuning_jax as ptj

    monkeypatch.setattr(files, "CACHE_DIR", str(tmp_path / "cache"))
    local = save_tiny_gpt2(tmp_path / "tiny")
    for name in os.listdir(local):
        with open(os.path.join(local, name), "rb") as f:
            files.atomic_write(f"gs://bucket/models/tiny/{name}", f.read())
    ours = ptj.from_pretrained("gs://bucket/models/tiny")
    theirs = ptj.from_pretrained(local)
    ids = np.array([[3, 4, 5, 6]], np.int32)
    np.testing.assert_array_equal(np.asarray(ours(ids)), np.asarray(theirs(ids)))
    tok = ptj.load_tokenizer("gs://bucket/models/tiny")
    assert tok("good movie")["input_ids"] == ptj.load_tokenizer(local)("good movie")["input_ids"]
    with pytest.raises(ptj.CheckpointError, match="gs://bucket/models/none does not exist"):
        ptj.from_pretrained("gs://bucket/models/none")


def test_task_files_and_infer_inputs_read_from_the_bucket(root):
    from prompt_tuning_jax.data.sources import FileSource

    files.atomic_write(f"{root}/data/train.tsv", "sentence\tlabel\ngood film\t1\r\nbad, \"very\" bad\t0\n")
    files.atomic_write(f"{root}/data/dev.jsonl", '{"sentence": "fine", "label": 1}\n\n')
    source = FileSource(data_dir=f"{root}/data", files={"train": "train.tsv", "validation": "dev.jsonl"})
    assert list(source.load("train", required=("sentence", "label"))) == [
        {"sentence": "good film", "label": "1"}, {"sentence": 'bad, "very" bad', "label": "0"}]
    assert list(source.load("validation")) == [{"sentence": "fine", "label": 1}]
    with pytest.raises(FileNotFoundError, match="data file for split 'test' not found"):
        list(FileSource(data_dir=f"{root}/data", files={"test": "none.tsv"}).load("test"))
