"""A run's readable record: metrics.jsonl, metrics.csv, TensorBoard events and PNG plots (and W&B if asked).

Only process 0 writes. Rows are flat dicts `{"step": int, "split": "train"|"eval", name: float}`.
The directory may be a bucket (gs://...). Rows then wait in memory and go up at every `flush`: at each
checkpoint (`CheckpointHook` calls it, so nothing logged before the last checkpoint is lost), at the end,
and at least every FLUSH_S seconds. A flush sends only the new rows (`files.append`: an object composed
onto metrics.jsonl), so a row costs O(1), not O(rows). TensorBoard writes its events to a local folder
that is copied up at the same flushes; the other files go up whole through `files.atomic_write`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
from typing import Any

import jax

from prompt_tuning_jax import files
from prompt_tuning_jax.files import atomic_write

FLUSH_S = 60.0  # in a bucket, rows wait at most this long (or until the next checkpoint) before going up


class RunRecord:
    """wandb_project: also log to Weights & Biases (optional; `WANDB_MODE=offline` works without network)."""

    def __init__(self, directory: str | os.PathLike, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None):
        self.directory = os.fspath(directory)
        self.active = jax.process_index() == 0
        self.rows: list[dict[str, Any]] = []
        self._unsent: list[dict[str, Any]] = []  # bucket rows not yet in metrics.jsonl
        self._flushed = time.monotonic()
        self._tb = self._wandb = None
        if not self.active:
            return
        if wandb_project:
            self._wandb = _WandB(wandb_project, self.directory, config or {})
        files.makedirs(self.directory)
        path = os.path.join(self.directory, "metrics.jsonl")
        if files.exists(path):  # a resumed run keeps its history
            self.rows = [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]
        if tensorboard:
            self._tb = _TensorBoard(os.path.join(self.directory, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` (a resumed run redoes those steps)."""
        self.rows = [r for r in self.rows if r["step"] <= step]
        self._unsent = []
        if self.active:
            atomic_write(os.path.join(self.directory, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if not self.active:
            return
        if files.is_local(self.directory):
            files.append(os.path.join(self.directory, "metrics.jsonl"), json.dumps(row) + "\n")
        else:
            self._unsent.append(row)
        if self._tb is not None:
            self._tb.log(step, split, metrics)
        if self._wandb is not None:
            self._wandb.log(step, split, metrics)
        if time.monotonic() - self._flushed > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Sends the rows logged since the last flush (and TensorBoard's events) to a bucket directory."""
        self._flushed = time.monotonic()
        if not self.active:
            return
        if self._unsent:
            files.append(os.path.join(self.directory, "metrics.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in self._unsent))
            self._unsent = []
        if self._tb is not None:
            self._tb.upload()

    def write_summary(self) -> None:
        """metrics.csv (one row per step and split) and plots/{train_loss,eval_metrics}.png."""
        self.flush()
        if not self.active or not self.rows:
            return
        keys = ["step", "split"] + sorted({k for r in self.rows for k in r} - {"step", "split"})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(os.path.join(self.directory, "metrics.csv"), text.getvalue())
        self._plot()

    def _plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = os.path.join(self.directory, "plots")
        for split, title, skip in (("train", "training loss", ()), ("eval", "validation metrics", ("loss",))):
            rows = [r for r in self.rows if r["split"] == split]
            names = ["loss"] if split == "train" else sorted({k for r in rows for k in r} - {"step", "split", *skip})
            names = [n for n in names if any(n in r for r in rows)]
            if not rows or not names:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for name in names:
                pts = [(r["step"], r[name]) for r in rows if name in r]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if split == "eval" else None,
                        label=name)
            ax.set_xlabel("step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=100)
            atomic_write(os.path.join(folder, f"{split}_{'loss' if split == 'train' else 'metrics'}.png"),
                         png.getvalue())
            plt.close(fig)

    def close(self):
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb.upload()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


class _WandB:
    """A W&B run per MODEL_DIR (its id comes from the folder, so a resumed run continues the same W&B run)."""

    def __init__(self, project: str, directory: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError(f"W&B logging is on (project {project!r}) but wandb is not installed: "
                              "pip install 'prompt_tuning_jax[wandb]'") from None
        local = directory if files.is_local(directory) else tempfile.mkdtemp(prefix="ptj-wandb-")
        files.makedirs(local)
        run_id = hashlib.sha1(files.absolute(directory).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, dir=local, id=run_id, resume="allow", config=config,
                              name=os.path.basename(os.path.normpath(directory)))

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.run.log({f"{split}/{k}": float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class _TensorBoard:
    """tensorboardX scalars in `directory`; for a bucket, written locally and copied up at each `upload`."""

    def __init__(self, directory: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self.writer = None
            return
        self.directory = directory
        self.local = directory if files.is_local(directory) else tempfile.mkdtemp(prefix="ptj-tensorboard-")
        self.writer = SummaryWriter(self.local)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(f"{split}/{k}", float(v), int(step))
        if self.local == self.directory:
            self.writer.flush()  # a local folder shows every row at once; a bucket's go up at `upload`

    def upload(self) -> None:
        """Flushes the events, and for a bucket copies the event files up."""
        if self.writer is None:
            return
        self.writer.flush()
        if self.local != self.directory:
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as f:
                    atomic_write(os.path.join(self.directory, name), f.read())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
