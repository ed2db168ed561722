"""Disk full while a run saves: the run stops with one error line, every file written before is intact, and the
run resumes from them on a disk with room. A real full filesystem: a 1.5 MB tmpfs (needs root; skipped else)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning_jax import files
from tests.helpers import REPO


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:100]})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _train(model_dir, steps):
    return subprocess.run([sys.executable, "-m", "prompt_tuning_jax.train", "--gin_file=runs/demo.gin",
                           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_PERIOD=1",
                           "--gin.KEEP_CHECKPOINTS=None", "--gin.EVAL_PERIOD=0"],
                          cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_loses_nothing(tiny_disk, tmp_path):
    full = _train(tiny_disk / "run", 200)
    lines = [line for line in full.stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert full.returncode == 2, full.stderr[-2000:]
    assert lines[-1].startswith("error:") and "No space left on device" in lines[-1], lines
    assert sum(line.startswith("error:") for line in lines) == 1 and not any("Traceback" in line for line in lines), lines
    prompts = tiny_disk / "run" / "prompts"
    saved = sorted(int(n[7:-4]) for n in os.listdir(prompts) if n[7:-4].isdigit())
    assert saved and max(saved) < 200
    for step in saved:  # every exported prompt is whole
        assert np.load(prompts / f"prompt_{step}.npy").shape == (8, 64)
    latest = np.load(prompts / "prompt_latest.npy")  # the newest, or the one before if the disk filled between
    assert any(np.array_equal(latest, np.load(prompts / f"prompt_{step}.npy")) for step in saved[-2:])
    assert not [n for n in os.listdir(prompts) if not n.endswith(".npy")]  # no temporary files left

    roomy = tmp_path / "copy"
    shutil.copytree(tiny_disk / "run", roomy)
    resumed = _train(roomy, max(saved) + 3)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"trained {max(saved) + 3} steps" in resumed.stdout


def test_a_failing_write_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "prompt_latest.npy"
    files.atomic_write(str(target), b"old content")

    def full_disk(content):
        def write(f):
            f.write(content[: len(content) // 2])
            raise OSError(28, "No space left on device")
        return write

    monkeypatch.setattr(files, "_writer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(str(target), b"new content that does not fit")
    assert target.read_bytes() == b"old content" and os.listdir(tmp_path) == ["prompt_latest.npy"]


@pytest.mark.slow
def test_a_read_only_model_dir_is_one_error_line(tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.decode().strip()[:100]})")
    try:
        for target in (disk, disk / "new_run"):  # an existing folder, and one that would have to be made
            proc = _train(target, 2)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(lines) == 1, proc.stderr
            assert lines[0].startswith("error:") and str(target) in lines[0] and "Read-only" in lines[0], lines
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
