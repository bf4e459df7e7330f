"""The design's rules, checked: the core on the ground floor, one-way imports, short code, no import-time work."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

STAGES = ("data", "training", "serving", "monitoring")
PACKAGES = ("lensops", *STAGES)
CORE = "lensops.core"
# The front door stands above the stages: it alone calls them.
FRONT_DOOR = ("lensops.cli", "lensops.closed_loop", "lensops.client")

# Who may import whom (DESIGN.md): lensops.core <- data <- stages; stages never import each other.
ALLOWED = {
    CORE: {CORE},
    "data": {"data", CORE},
    "training": {"training", "data", CORE},
    "serving": {"serving", "data", CORE},
    "monitoring": {"monitoring", "data", CORE},
}


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> str:
    if module == CORE or module.startswith(CORE + "."):
        return CORE
    if module.startswith(FRONT_DOOR):
        return "front door"
    if module == "lensops":
        return CORE  # the package's own __init__ stands with the core: it must import nothing above it
    return module.split(".")[0]


def imports(path: Path, *, top_level_only: bool = False):
    """Absolute names of the project's modules that a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_of(path) if path.name == "__init__.py" else module_of(path).rpartition(".")[0]
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names = [f"{module}.{alias.name}" for alias in node.names] if not node.module else [module]
        else:
            continue
        yield from (n for n in names if n.split(".")[0] in PACKAGES)


def sources(*packages: str):
    return sorted(f for p in packages for f in (REPO / p).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_flow_one_way(layer):
    """Lazily or not: the core imports no stage and nothing of the front door; stages never import each other."""
    offenders = [
        (str(f.relative_to(REPO)), name)
        for f in sources(*PACKAGES)
        if layer_of(module_of(f)) == layer
        for name in imports(f)
        if layer_of(name) not in ALLOWED[layer]
    ]
    assert offenders == []


def test_the_front_door_reaches_the_stages_only_lazily():
    """`lensops --help` must not import every stage: commands import their stage inside the function."""
    front = [f for f in sources("lensops") if layer_of(module_of(f)) == "front door"]
    eager = [
        (str(f.relative_to(REPO)), n) for f in front for n in imports(f, top_level_only=True) if n.startswith(STAGES)
    ]
    lazy = {n.split(".")[0] for f in front for n in imports(f) if n.startswith(STAGES)}
    assert eager == [] and {"data", "training", "serving", "monitoring"} <= lazy


def test_code_stays_short_enough_to_read():
    """Modules under 400 lines, functions under 60: the sizes a newcomer can hold in their head."""
    long = []
    for f in sources(*PACKAGES):
        text = f.read_text()
        if text.count("\n") > 400:
            long.append(f"{f.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{f.relative_to(REPO)}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_importing_every_module_does_no_work(tmp_path):
    # Import each module in a fresh interpreter inside an empty folder: nothing may be
    # created, and no Ray or MLflow state may be started.
    modules = [module_of(f) for f in sources(*PACKAGES)]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
