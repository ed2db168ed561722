"""`python -m prompt_tuning_jax.train --gin_file=... [--gin.NAME=VALUE ...]`: train a prompt (configs/runs/prompt_finetune.gin)."""
import sys


def _run():
    import gin

    summary = gin.get_configurable("ptj.train")()
    best = summary.get("best") or {}
    if summary.get("preempted"):
        print(f"preempted (SIGTERM) at step {summary['step']}: checkpoint saved in {summary['model_dir']}; "
              "run the same command again to resume")
        return
    msg = f"trained {summary['step']} steps; prompt: {summary['prompt_file']}"
    if summary.get("eval"):
        msg += "; final " + ", ".join(f"{k} {v:.2f}" for k, v in summary["eval"].items())
    if best:
        msg += f"; best {best['metric']} {best['value']:.2f} at step {best['step']}"
    print(msg)


def console_main():
    from prompt_tuning_jax import cli

    sys.exit(cli.main(_run, "Train a soft prompt (gin-configured)."))


if __name__ == "__main__":
    console_main()
