"""The package's shape, checked from its source: layers import only downwards, no import cycles, no
branch on the model family outside models/, and no function longer than about 60 lines."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "prompt_tuning_jax"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = {
    "variables": 0, "files": 0, "partitioning": 0, "tokenizer": 0, "pretrained_prompts": 0, "topologies": 0,
    "models": 1, "data": 1,
    "prompts": 2, "heads": 2, "methods": 2,
    "decoding": 3,
    "training": 4,
    "experiments": 5,
    "compat": 6,
    "cli": 6, "info": 6, "find_module": 6, "extract_variable": 6,
    "train": 7, "eval": 7, "infer": 7, "sweep": 7, "inspect": 7, "compile": 7,
}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere in its file (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prompt_tuning_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prompt_tuning_jax"):
            for alias in node.names:  # `from pkg import submodule` is an edge to the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m != name}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if "." in m and layer(m) is None
                and m.split(".")[1] != "configs"]
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_layers_import_only_downwards():
    mods = modules()
    upward = []
    for name, path in mods.items():
        for target in imports_of(name, path, set(mods)):
            if layer(name) is not None and layer(target) is not None and layer(target) > layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "upward imports: " + ", ".join(upward)


def test_models_and_data_import_nothing_from_training_or_experiments():
    mods = modules()
    bad = [f"{n} -> {t}" for n, p in mods.items() if n.split(".")[1:2] in (["models"], ["data"])
           for t in imports_of(n, p, set(mods)) if t.split(".")[1:2] in (["training"], ["experiments"])]
    assert not bad, bad


def test_no_import_cycles():
    mods = modules()
    graph = {n: {t for t in imports_of(n, p, set(mods)) if t in mods and t != "prompt_tuning_jax"}
             for n, p in mods.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "active":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _mentions_family(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "model_type":
            return True
        if isinstance(sub, ast.Constant) and sub.value in ("gpt2", "t5"):
            return True
        if isinstance(sub, ast.Name) and sub.id in ("GPT2", "T5", "GPT2Config", "T5Config"):
            return True
    return False


def test_no_branch_on_the_model_family_outside_models():
    branches = []
    for name, path in modules().items():
        # models/ is where families differ; data/ never sees a model (its "t5" is T5's text format).
        if name.startswith(("prompt_tuning_jax.models", "prompt_tuning_jax.data")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            tests = []
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                tests.append(node.test)
            if isinstance(node, ast.Compare):
                tests.append(node)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                tests.append(node)
            branches += [f"{name}:{t.lineno}" for t in tests if _mentions_family(t)]
    assert not branches, "family branches outside models/: " + ", ".join(sorted(set(branches)))


def test_no_function_is_longer_than_about_60_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert not long, long
