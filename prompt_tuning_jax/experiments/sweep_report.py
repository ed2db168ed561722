"""A sweep's results as a markdown table (mean ± std over seeds) and plots; rows are `sweeps.result_row` dicts."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from prompt_tuning_jax import files


def _ordered(rows, key) -> list:
    """The distinct values of `key` in the order the grid produced them."""
    return list(dict.fromkeys(r[key] for r in rows))


def _usable(row) -> bool:
    return row["value"] is not None and not row["degenerate"]


def summarize(values) -> tuple[float, float, int]:
    """mean, std (sample, 0 for one value), n."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def markdown_table(rows: list[dict], metric: str) -> str:
    """One table per (task, prompt length): rows model, columns method, cells `mean ± std (n)` over seeds.

    Degenerate runs (stuck at the majority class, NaN) are left out of the mean and counted in the cell.
    """
    out = [f"# Sweep results: {metric}", "",
           "Mean ± std over seeds (n runs). Degenerate runs (majority class or NaN) are left out and counted.", ""]
    methods, models = _ordered(rows, "method"), _ordered(rows, "model")
    for task in _ordered(rows, "task"):
        for length in _ordered(rows, "prompt_length"):
            out += [f"## {task}, prompt length {length}", "", "| model | " + " | ".join(methods) + " |",
                    "| --- |" + " --- |" * len(methods)]
            for model in models:
                cells = []
                for method in methods:
                    group = [r for r in rows if (r["task"], r["prompt_length"], r["model"], r["method"])
                             == (task, length, model, method)]
                    cells.append(_cell(group))
                out.append(f"| {model} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out + parameters_table(rows))


def parameters_table(rows: list[dict]) -> list[str]:
    """Lines of a table of the values each method trains, per model (the x axis of metric_vs_parameters.png)."""
    methods, models = _ordered(rows, "method"), _ordered(rows, "model")
    out = ["## Trainable parameters", "", "| model | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for model in models:
        cells = []
        for method in methods:
            counts = sorted({int(r["trainable_params"]) for r in rows if (r["model"], r["method"]) == (model, method)
                             and r.get("trainable_params") not in (None, "")})
            cells.append(" / ".join(f"{c:,}" for c in counts) or "-")
        out.append(f"| {model} | " + " | ".join(cells) + " |")
    return out + [""]


def _cell(group: list[dict]) -> str:
    good = [r["value"] for r in group if _usable(r)]
    bad = sum(1 for r in group if r["degenerate"])
    missing = sum(1 for r in group if r["value"] is None)
    text = "-" if not good else "{:.2f} ± {:.2f} ({})".format(*summarize(good))
    notes = ([f"{bad} degenerate"] if bad else []) + ([f"{missing} unfinished"] if missing else [])
    return text + (f" [{', '.join(notes)}]" if notes else "")


def plots(rows: list[dict], sweep, folder: str) -> list[str]:
    """metric_vs_model.png, metric_vs_prompt_length.png, metric_vs_parameters.png (the paper's Figure 4 axes),
    learning_curves.png in `folder` -> their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files.makedirs(folder)
    written = []
    for name, draw in (("metric_vs_model.png", _by_model), ("metric_vs_prompt_length.png", _by_length),
                       ("metric_vs_parameters.png", _by_parameters), ("learning_curves.png", _curves)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax, rows, sweep)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(folder, name)
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _save(fig, path: str) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    files.atomic_write(path, buffer.getvalue())


def _means(rows, x_key, x_values, **match):
    pick = [r for r in rows if _usable(r) and all(r[k] == v for k, v in match.items())]
    xs, ms, ss = [], [], []
    for i, x in enumerate(x_values):
        vals = [r["value"] for r in pick if r[x_key] == x]
        if vals:
            m, s, _ = summarize(vals)
            xs.append(i if x_key == "model" else x)
            ms.append(m)
            ss.append(s)
    return xs, ms, ss


def _by_model(ax, rows, sweep):
    models = _ordered(rows, "model")
    for method in _ordered(rows, "method"):
        xs, ms, ss = _means(rows, "model", models, method=method)
        if xs:
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=method)
    ax.set_xticks(range(len(models)), models)
    ax.set_xlabel("model")
    ax.set_title(f"{sweep.metric} against model size (mean ± std over seeds)")


def _by_length(ax, rows, sweep):
    lengths = sorted(_ordered(rows, "prompt_length"))
    for method in _ordered(rows, "method"):
        for model in _ordered(rows, "model"):
            xs, ms, ss = _means(rows, "prompt_length", lengths, method=method, model=model)
            if xs:
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=f"{method} / {model}")
    ax.set_xlabel("prompt length")
    ax.set_title(f"{sweep.metric} against prompt length")


def _by_parameters(ax, rows, sweep):
    """One point per (method, model, prompt length): mean ± std over seeds against the values trained, log x."""
    for i, method in enumerate(_ordered(rows, "method")):
        xs, ms, ss = [], [], []
        for model in _ordered(rows, "model"):
            for length in _ordered(rows, "prompt_length"):
                group = [r for r in rows if _usable(r) and (r["method"], r["model"], r["prompt_length"])
                         == (method, model, length) and r.get("trainable_params") not in (None, "", 0)]
                if group:
                    m, s, _ = summarize([r["value"] for r in group])
                    xs.append(max(int(group[0]["trainable_params"]), 1))
                    ms.append(m)
                    ss.append(s)
        if xs:
            ax.errorbar(xs, ms, yerr=ss, marker="o", linestyle="none", capsize=3, color=f"C{i}", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_title(f"{sweep.metric} against trainable parameters (mean ± std over seeds)")


def _curves(ax, rows, sweep):
    colors = {m: f"C{i}" for i, m in enumerate(_ordered(rows, "method"))}
    labelled = set()
    for r in rows:
        steps, values = eval_curve(r["model_dir"], sweep.metric)
        if steps:
            label = None if r["method"] in labelled else r["method"]
            labelled.add(r["method"])
            ax.plot(steps, values, color=colors[r["method"]], alpha=0.7, label=label)
    ax.set_xlabel("step")
    ax.set_title("eval curves, one line per run")


def eval_curve(model_dir: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric` (or `rank_<metric>`) in a run's eval records."""
    path = os.path.join(model_dir, "metrics.jsonl")
    if not files.exists(path):
        return [], []
    points = defaultdict(float)
    for line in files.read_text(path).splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("split") == "eval":
            for name in (metric, f"rank_{metric}"):
                if name in record:
                    points[record["step"]] = record[name]
    steps = sorted(points)
    return steps, [points[s] for s in steps]
