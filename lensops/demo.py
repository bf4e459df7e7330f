"""The end-to-end demo on the built-in digits, as `make demo` runs it.

Every step is a command a user could type (the lensops CLI or DVC), run as a subprocess, so
the demo exercises exactly what users run and imports no stage package. The steps, their
durations and outcomes are printed as a table and written to `reports/demo_summary.json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

console = Console()
DVC_REMOTE = ".dvc-storage"  # the demo's local DVC remote; git-ignored


@dataclass
class Step:
    name: str
    command: list[str]
    seconds: float = 0.0
    ok: bool = False


def _tool(name: str) -> str:
    """A console script from this environment (the venv's lensops/dvc, whatever PATH says)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def demo_steps(root: Path) -> list[Step]:
    lensops, dvc = _tool("lensops"), _tool("dvc")
    return [
        Step("write the digits as PNG files", [lensops, "data", "demo"]),
        Step(
            "configure a local DVC remote",
            [dvc, "remote", "add", "--local", "--force", "--default", "demo", str(root / DVC_REMOTE)],
        ),
        Step("version data/raw with DVC", [dvc, "add", "--quiet", "data/raw"]),
        Step("push the data version to the remote", [dvc, "push", "--quiet"]),
        Step("dvc repro (validate, prepare, train, review)", [dvc, "repro"]),
        Step("promote the reviewed challenger", [lensops, "promote", "--reason", "make demo: review passed"]),
        Step("list the registered versions", [lensops, "models"]),
        Step("push the pipeline outputs", [dvc, "push", "--quiet"]),
        Step("show DVC metrics", [dvc, "metrics", "show"]),
    ]


def run_demo(root: Path) -> int:
    steps = demo_steps(root)
    for step in steps:
        console.print(Rule(step.name))
        started = time.perf_counter()
        result = subprocess.run(step.command, cwd=root, check=False)
        step.seconds = time.perf_counter() - started
        step.ok = result.returncode == 0
        if not step.ok:
            console.print(f"[red]step failed[/] (exit {result.returncode}): {' '.join(step.command)}")
            break

    table = Table(title="lensops demo", title_justify="left")
    for column in ("step", "seconds", "result"):
        table.add_column(column)
    for step in steps:
        result = "[green]ok[/]" if step.ok else ("[red]failed[/]" if step.seconds else "[dim]not run[/]")
        table.add_row(step.name, f"{step.seconds:.1f}" if step.seconds else "", result)
    console.print(table)

    results: dict = {"ok": all(s.ok for s in steps), "steps": [asdict(s) for s in steps]}
    evaluation = root / "metrics" / "eval.json"
    if evaluation.is_file():  # what the train stage measured on the test split
        metrics = json.loads(evaluation.read_text())
        results["test_accuracy"], results["test_macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
        console.print(f"registered model: test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    review = root / "reports" / "review" / "review.json"
    if review.is_file():
        verdict = json.loads(review.read_text())
        results["review_verdict"] = verdict["verdict"]
        results["reviewed_version"] = verdict["challenger"]["version"]
    summary = root / "reports" / "demo_summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(run_demo(Path.cwd()))
