"""Optional W&B logging, in offline mode (no network): the run's metrics go to a local W&B run in MODEL_DIR."""
import os

import pytest

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'prompt_tuning_jax[wandb]')")

from test_nonfinite import _stream, _trainer  # noqa: E402 - after the skip

from prompt_tuning_jax.training.hooks import standard_hooks  # noqa: E402
from prompt_tuning_jax.training.loop import fit  # noqa: E402
from prompt_tuning_jax.training.records import RunRecord  # noqa: E402


def test_offline_wandb_run_holds_the_metrics(rng, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    hooks = standard_hooks(str(tmp_path), log_every=2, progress=False, wandb_project="ptj-test",
                           config={"prompt": {"length": 3}})
    fit(_trainer(), _stream(rng, bad_steps=set()), 4, hooks.hooks, resume_from=hooks.checkpointer, prefetch=0)
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1
    files = os.listdir(tmp_path / "wandb" / runs[0])
    assert any(f.endswith(".wandb") for f in files)  # the offline run's record, ready for `wandb sync`
    assert os.path.getsize(tmp_path / "wandb" / runs[0] / next(f for f in files if f.endswith(".wandb"))) > 0
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.csv").exists()  # still the default


def test_without_wandb_installed_the_message_says_how(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match=r"pip install 'prompt_tuning_jax\[wandb\]'"):
        RunRecord(str(tmp_path), wandb_project="p")
