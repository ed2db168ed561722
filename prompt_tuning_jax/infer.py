"""`python -m prompt_tuning_jax.infer --gin_file=... [--gin.NAME=VALUE ...]`: generate text (`experiments.infer`).

configs/runs/prompt_infer.gin binds its arguments; see `cli.py` for the flags.
"""

from prompt_tuning_jax import cli, experiments


def run() -> None:
    summary = cli.configured(experiments.infer)()
    msg = f"wrote {summary['examples']} predictions to {summary['predictions']}"
    if summary["metrics"]:
        msg += "; " + ", ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    print(msg)


def console_main():
    cli.exit_process(cli.main(run, "Generate text with a soft prompt (gin-configured)."))


if __name__ == "__main__":
    console_main()
