"""The design's rules, checked: one-way imports between stages, and no work at import time."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Who may import whom (DESIGN.md): lensops <- data <- stages; stages never import each other.
ALLOWED = {
    "lensops": set(),
    "data": {"lensops"},
    "training": {"data", "lensops"},
    "serving": {"data", "lensops"},
    "monitoring": {"data", "lensops"},
}


# The CLI is the composition root: it alone dispatches to the stages, and only from inside a
# command (a lazy import), so importing lensops never pulls in a stage.
CLI = "lensops/cli.py"


def imported_packages(path, top_level_only=False):
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package):
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    offenders = [
        (str(f.relative_to(REPO)), name)
        for f in sorted((REPO / package).rglob("*.py"))
        for name in imported_packages(f, top_level_only=f.relative_to(REPO).as_posix() == CLI)
        if name in forbidden
    ]
    assert offenders == []


def test_cli_reaches_the_stages_only_lazily():
    lazy = set(imported_packages(REPO / CLI)) - set(imported_packages(REPO / CLI, top_level_only=True))
    assert "data" in lazy  # the check above would catch a top-level stage import


def test_importing_every_module_does_no_work(tmp_path):
    # Import each module in a fresh interpreter inside an empty folder: nothing may be
    # created, and no Ray or MLflow state may be started.
    modules = sorted(
        ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in ALLOWED
        for f in (REPO / package).rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert 'ray' not in sys.modules or not __import__('ray').is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
