"""`python -m prompt_tuning_jax.eval --gin_file=... [--gin.NAME=VALUE ...]`: evaluate a prompt (configs/runs/prompt_eval.gin)."""
import sys


def _run():
    import gin

    metrics = gin.get_configurable("ptj.evaluate")()
    print(", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))


def console_main():
    from prompt_tuning_jax import cli

    sys.exit(cli.main(_run, "Evaluate a soft prompt on a task (gin-configured)."))


if __name__ == "__main__":
    console_main()
