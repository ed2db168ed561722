"""Bad settings and damaged run folders, tried from the command line as a new user would on the demo.

Each case must exit 2 with exactly one stderr line that starts with `error:` and names the setting or
file, without a traceback or gin's "In call to configurable" wrapper. `-s` prints the table of cases.
"""
import subprocess
import sys

import pytest

from prompt_tuning_jax import cli, train
from tests.helpers import REPO

TABLE = []


def run_train(capsys, *flags, model_dir):
    code = cli.main(train.run, "train", ["--gin_file=runs/demo.gin", f"--gin.MODEL_DIR='{model_dir}'", *flags])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_error_line(code, err, *names):
    assert code == 2, err
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert all(name in errors[0] for name in names), errors[0]
    assert "In call to configurable" not in errors[0] and not any("Traceback" in line for line in err)
    return errors[0]


BAD_SETTINGS = [
    ("--gin.TRAIN_STEPZ=5", ["TRAIN_STEPZ", "did you mean TRAIN_STEPS"]),
    ("--gin.TRAIN_STEPS=-3", ["TRAIN_STEPS", "-3"]),
    ("--gin.TRAIN_STEPS=0", ["TRAIN_STEPS"]),
    ("--gin.BATCH_SIZE=0", ["BATCH_SIZE"]),
    ("--gin.BATCH_SIZE=2.5", ["BATCH_SIZE", "2.5"]),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 'x'}", ["TASK_FEATURE_LENGTHS['inputs']", "'x'"]),
    ("--gin.TASK_FEATURE_LENGTHS={'input': 32}", ["TASK_FEATURE_LENGTHS"]),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'target': 4}", ["TASK_FEATURE_LENGTHS", "'target'"]),
    ("--gin.TASK_FEATURE_LENGTHS=32", ["TASK_FEATURE_LENGTHS", "32"]),
    ("--gin.PROMPT_LENGTH=0", ["PROMPT_LENGTH"]),
    ("--gin.PROMPT_PLACEMENT='middle'", ["PROMPT_PLACEMENT", "'middle'"]),
    ("--gin.EVAL_SCORING='best'", ["EVAL_SCORING"]),
    ("--gin.EVAL_PERIOD=-1", ["EVAL_PERIOD"]),
    ("--gin.ptj.DataSpec.batch_sizee=3", ["batch_sizee"]),
    ("--gin.ptj.PromptSpec.init='vocab'", ["'vocab'", "init"]),
    ("--gin.COMPUTE_DTYPE='float8'", ["COMPUTE_DTYPE", "float8"]),
    ("--gin.MESH_SHAPE=(3, 1)", ["MESH_SHAPE (3, 1)", "needs 3 devices"]),
    ("--gin.MESH_SHAPE=(0, 1)", ["MESH_SHAPE", "(0, 1)"]),
    ("--gin.METHOD='lora:0'", ["METHOD 'lora:0'", "'lora:R'"]),
    ("--gin.METHOD='icl:2'", ["METHOD 'icl:2'", "linear_head.gin"]),
    ("--gin.LORA_TARGETS=['c_attn']", ["LORA_TARGETS", "METHOD is 'prompt'"]),
    ("--gin.LORA_ALPHA=0", ["LORA_ALPHA"]),
    ("--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks'", ["MIXTURE_OR_TASK_MODULE 'no_such_tasks' cannot be imported"]),
    ("--gin.adafactor.Adafactor.decay_rate=0.8", ["adafactor.Adafactor.decay_rate", "T5X setting with no counterpart"]),
    ("--gin.utils.DatasetConfig.batch_size=8", ["utils.DatasetConfig.batch_size", "does nothing in T5X's train"]),
    ("--gin_file=prompt_tuning/configs/models/mt5_80b_prompt.gin", ["mt5_80b_prompt.gin", "no counterpart here"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("flag,names", BAD_SETTINGS, ids=[f for f, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_error_line(tmp_path, capsys, flag, names):
    code, _, err = run_train(capsys, flag, model_dir=tmp_path / "run")
    TABLE.append((flag, code, assert_one_error_line(code, err, *names)))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
def test_model_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = run_train(capsys, model_dir=target)
    TABLE.append(("MODEL_DIR is a file", code, assert_one_error_line(code, err, "MODEL_DIR", str(target))))
    assert target.read_text() == "mine"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step demo run with checkpoints at steps 2 and 4 (made once, copied by the tests that damage it)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    code = cli.main(train.run, "train", ["--gin_file=runs/demo.gin", f"--gin.MODEL_DIR='{folder}'",
                                         "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0"])
    assert code == 0
    return folder


@pytest.mark.slow
def test_resuming_with_another_prompt_length(finished_run, capsys):
    code, _, err = run_train(capsys, "--gin.PROMPT_LENGTH=3", "--gin.TRAIN_STEPS=6", model_dir=finished_run)
    line = assert_one_error_line(code, err, "PROMPT_LENGTH=8", str(finished_run), "(3, 64)")
    TABLE.append(("resume with another PROMPT_LENGTH", code, line))


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(finished_run, tmp_path, capsys, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for f in (run / "checkpoints" / "4").rglob("*"):
        if f.is_file():
            f.write_text("garbage")
    code, out, err = run_train(capsys, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=0",
                               model_dir=run)
    assert code == 0, err
    assert "trained 6 steps" in out
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 4" in warnings and "resuming from step 2" in warnings
    damaged = list((run / "checkpoints_damaged").iterdir())
    assert len(damaged) == 1 and damaged[0].name.startswith("4-")  # set aside, not deleted
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4", "6"]
    TABLE.append(("damaged latest checkpoint", code, "falls back to step 2: " + out.strip().splitlines()[-1][:60]))


@pytest.mark.slow
def test_no_intact_checkpoint_names_the_folder(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file():
            f.write_text("garbage")
    code, _, err = run_train(capsys, "--gin.TRAIN_STEPS=6", model_dir=run)
    line = assert_one_error_line(code, err, "no checkpoint", str(run / "checkpoints"))
    assert not any("Expecting value" in e for e in err), err  # json's own words for the damaged file
    TABLE.append(("every checkpoint damaged", code, line))


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_nan_naming_the_last_good_checkpoint(tmp_path, capsys):
    # Adam's first update moves the prompt by ~1e38: every later step's loss is NaN or Inf.
    code, _, err = run_train(capsys, "--gin.ptj.make_optimizer.learning_rate=1e38", "--gin.TRAIN_STEPS=40",
                             "--gin.CHECKPOINT_PERIOD=1", "--gin.EVAL_PERIOD=0", model_dir=tmp_path / "run")
    line = assert_one_error_line(code, err, "NaN or Inf", f"Last good checkpoint: step 1 in {tmp_path / 'run'}",
                                 "nonfinite")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
    TABLE.append(("LEARNING_RATE 1e38 (the loss turns NaN)", code, line))


@pytest.mark.slow
def test_bad_files_are_named(tmp_path, capsys):
    import numpy as np

    nan_prompt = tmp_path / "nan.npy"
    np.save(nan_prompt, np.full((8, 64), np.nan, np.float32))
    int_prompt = tmp_path / "ints.npy"
    np.save(int_prompt, np.ones((8, 64), np.int32))
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\ngood\t1\nso so\tmaybe\n")
    (data / "test.tsv").write_text("sentence\tlabel\ngood\t1\n")  # sst2's validation split
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.tsv").write_text("")
    (empty / "test.tsv").write_text("sentence\tlabel\ngood\t1\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "run.lock").write_text('{"host": "tpu-worker-7", "pid": 4242, "started": "2026-11-23T10:00:00"}')
    sst2 = ["--gin.MIXTURE_OR_TASK_NAME='sst2'", "--gin.TRAIN_STEPS=2"]
    cases = [
        ("init from a prompt file of NaN", [f"--gin.ptj.PromptSpec.file='{nan_prompt}'",
                                            "--gin.ptj.PromptSpec.init='file'"], ["nan.npy", "NaN or Inf"], None),
        ("init from a prompt file of ints", [f"--gin.ptj.PromptSpec.file='{int_prompt}'",
                                             "--gin.ptj.PromptSpec.init='file'"], ["ints.npy", "int32"], None),
        ("an unknown label in the data", [*sst2, f"--gin.TASK_OVERRIDES={{'data_dir': '{data}'}}"],
         [f"{data}/train.tsv:3", "unknown label 'maybe'"], None),
        ("an empty train file", [*sst2, f"--gin.TASK_OVERRIDES={{'data_dir': '{empty}'}}"],
         [f"{empty}/train.tsv", "no examples"], None),
        ("MODEL_DIR locked by a live lease on another host", [],
         ["in use by process 4242 on tpu-worker-7", "its lease was renewed", "run.lock"], locked),
    ]
    for name, flags, names, model_dir in cases:
        code, _, err = run_train(capsys, *flags, model_dir=model_dir or tmp_path / name.replace(" ", "_"))
        TABLE.append((name, code, assert_one_error_line(code, err, *names)))


@pytest.mark.slow
def test_bad_t5x_checkpoints_are_named(tmp_path, capsys):
    import shutil

    import numpy as np
    from flax import serialization

    fixture = REPO / "tests" / "models" / "fixtures" / "t5x_tiny" / "checkpoint_3"
    damaged, missing, foreign = (tmp_path / name for name in ("damaged", "missing", "foreign"))
    for folder in (damaged, missing, foreign):
        shutil.copytree(fixture, folder)
    (damaged / "checkpoint").write_bytes((fixture / "checkpoint").read_bytes()[:4096])  # a cut-off copy
    shutil.rmtree(missing / "target.encoder.layers_0.attention.query.kernel")
    contents = serialization.msgpack_restore((fixture / "checkpoint").read_bytes())
    contents["optimizer"]["target"]["encoder"]["adapter"] = {"kernel": np.zeros((4, 2), np.float32)}
    (foreign / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
    cases = [
        ("T5X checkpoint with a damaged msgpack", damaged, [f"{damaged}/checkpoint", "not a readable T5X"]),
        ("T5X checkpoint missing a zarr array", missing,
         [f"{missing}/target.encoder.layers_0.attention.query.kernel", "cannot open the zarr array"]),
        ("T5X checkpoint of another model", foreign,
         [f"{foreign}/checkpoint", "not a T5X checkpoint of T5", "target/encoder/adapter/kernel"]),
    ]
    for name, folder, names in cases:
        code, _, err = run_train(capsys, f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'",
                                 model_dir=tmp_path / name.replace(" ", "_"))
        TABLE.append((name, code, assert_one_error_line(code, err, *names)))


@pytest.mark.slow
def test_a_real_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
                           f"--gin.MODEL_DIR='{tmp_path}/run'", "--gin.TRAIN_STEPZ=5"],
                          capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --gin.TRAIN_STEPZ"), proc.stderr
    TABLE.append(("a real process: --gin.TRAIN_STEPZ=5", proc.returncode, lines[0]))


@pytest.mark.slow
def test_an_offline_hub_dataset_without_a_cache_is_named(tmp_path, capsys, monkeypatch):
    import datasets

    cache = tmp_path / "datasets_cache"  # empty: nothing was ever downloaded
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # datasets reads both when imported
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    code, _, err = run_train(capsys, "--gin.MIXTURE_OR_TASK_NAME='cola'", "--gin.TRAIN_STEPS=2",
                             model_dir=tmp_path / "run")
    line = assert_one_error_line(code, err, "nyu-mll/glue/cola", f"not in the datasets cache {cache}",
                                 "HF_DATASETS_OFFLINE=1", "TASK_OVERRIDES={'data_dir': '<folder with dev.tsv>'}")
    assert "Couldn't reach" not in line  # our words, not datasets'
    TABLE.append(("HF_DATASETS_OFFLINE=1, hub task cola, empty datasets cache", code, line))


def test_a_sweep_dir_of_another_grid_is_named(tmp_path, capsys):
    """A sweep worker pointed at a SWEEP_DIR another sweep file made: one line naming it and the fix, nothing run."""
    from prompt_tuning_jax import sweep
    from prompt_tuning_jax.experiments import sweeps

    folder = tmp_path / "sweep"
    sweeps.check_grid(sweeps.Sweep(str(folder), ["runs/demo.gin"], methods={"prompt": {}}))  # its sweep.json
    code = cli.main(sweep.run, "sweep", ["--gin_file=sweeps/demo.gin", f"--gin.SWEEP_DIR='{folder}'"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    line = assert_one_error_line(code, err, f"SWEEP_DIR {folder} holds another grid", "sweep.json",
                                 "run the sweep file that made it, or pick a new SWEEP_DIR")
    assert not (folder / "runs").exists()
    TABLE.append(("SWEEP_DIR made by another sweep file", code, line))


def test_zz_print_the_table():
    """Runs last in this file: the cases tried (visible with -s)."""
    if TABLE:
        print("\n| input | exit | message |\n| --- | --- | --- |")
        for case, code, message in TABLE:
            print(f"| {case} | {code} | {message[:150]} |")
