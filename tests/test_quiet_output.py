"""Our commands speak in our words: libraries' notices that mean nothing to a user of this package stay out.

transformers says "PyTorch was not found. Models won't be available ..." when it is imported without torch;
our models are JAX and use only its tokenizers, so the package filters that one line (its other messages
pass). Each case runs in a child process where `import torch` fails (`sys.modules["torch"] = None`), as on a
machine without torch.
"""
import os
import subprocess
import sys

from tests.helpers import REPO

NOTICE = "PyTorch was not found"
WITHOUT_TORCH = "import sys\nsys.modules['torch'] = None  # `import torch` fails, find_spec('torch') is None\n"

# As our commands do: the package first, then a tokenizer (the first import of transformers) saved and loaded.
OUR_TOKENIZER = WITHOUT_TORCH + """
import tempfile
import prompt_tuning_jax
from prompt_tuning_jax.experiments.demo_model import build_tokenizer
folder = tempfile.mkdtemp()
build_tokenizer().save_pretrained(folder)
print("ids", prompt_tuning_jax.load_tokenizer(folder)("a great movie")["input_ids"])
import transformers
transformers.logging.get_logger("transformers").warning("another transformers warning")
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_transformers_says_it_without_torch_when_imported_alone():
    """The control: the child process really lacks torch, so the next test's silence means something."""
    proc = run_without_torch(WITHOUT_TORCH + "import transformers\n")
    assert NOTICE in proc.stderr


def test_our_tokenizer_path_keeps_the_pytorch_notice_out_and_other_warnings_in():
    proc = run_without_torch(OUR_TOKENIZER)
    assert "ids [" in proc.stdout
    assert NOTICE not in proc.stdout and NOTICE not in proc.stderr, proc.stderr
    assert "another transformers warning" in proc.stderr
