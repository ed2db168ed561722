"""`python -m prompt_tuning_jax.eval --gin_file=... [--gin.NAME=VALUE ...]`: evaluate a prompt (`experiments.evaluate`).

configs/runs/prompt_eval.gin binds its arguments; see `cli.py` for the flags.
"""

from prompt_tuning_jax import cli, experiments


def run() -> None:
    metrics = cli.configured(experiments.evaluate)()
    print(", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))


def console_main():
    cli.exit_process(cli.main(run, "Evaluate a soft prompt on a task (gin-configured)."))


if __name__ == "__main__":
    console_main()
