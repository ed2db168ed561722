"""`python -m prompt_tuning_jax.train --gin_file=... [--gin.NAME=VALUE ...]`: train a prompt (`experiments.train`).

configs/runs/prompt_finetune.gin binds its arguments; see `cli.py` for the flags.
"""

from prompt_tuning_jax import cli, experiments


def run() -> None:
    summary = cli.configured(experiments.train)()
    if summary.get("preempted"):
        print(f"preempted (SIGTERM) at step {summary['step']}: checkpoint saved in {summary['model_dir']}; "
              "run the same command again to resume")
        return
    if summary.get("trained") is False:
        print(f"METHOD {summary['method']} trains nothing; "
              + ", ".join(f"{k} {v:.2f}" for k, v in summary["eval"].items()) + f"; results in {summary['model_dir']}")
        return
    msg = f"trained {summary['step']} steps; " + (f"prompt: {summary['prompt_file']}" if summary.get("prompt_file")
                                                   else f"METHOD {summary.get('method')}, "
                                                        f"{summary.get('trainable_params', 0):,} trainable parameters, "
                                                        f"checkpoints in {summary['model_dir']}/checkpoints")
    if summary.get("eval"):
        msg += "; final " + ", ".join(f"{k} {v:.2f}" for k, v in summary["eval"].items())
    best = summary.get("best") or {}
    if best:
        msg += f"; best {best['metric']} {best['value']:.2f} at step {best['step']}"
    if "padding_fraction" in summary:
        msg += f"; batches {100 * summary['padding_fraction']:.0f}% padding, {summary['batch_shapes']} shapes"
    print(msg)


def console_main():
    cli.exit_process(cli.main(run, "Train a soft prompt (gin-configured)."))


if __name__ == "__main__":
    console_main()
