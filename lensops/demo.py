"""The end-to-end demo on the built-in digits, as `make demo` runs it.

Every step is a command a user could type (the lensops CLI or DVC), run as a subprocess, so
the demo exercises exactly what users run and imports no stage package. The steps, their
durations and outcomes are printed as a table and written to `reports/demo_summary.json`.
"""

from __future__ import annotations

import json
import signal
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
        Step("serve the champion and answer a few requests", [sys.executable, "-m", "lensops.demo", "--serve-check"]),
        Step("push the pipeline outputs", [dvc, "push", "--quiet"]),
        Step("show DVC metrics", [dvc, "metrics", "show"]),
    ]


def run_demo(root: Path) -> int:
    steps = demo_steps(root)
    (root / "reports" / "demo_served.json").unlink(missing_ok=True)  # only this run's answers count
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
    served = root / "reports" / "demo_served.json"
    if served.is_file():
        results["served"] = json.loads(served.read_text())
    summary = root / "reports" / "demo_summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(s.ok for s in steps) else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_check(root: Path, *, per_class: int = 1, stop_signal: int = signal.SIGINT, timeout: float = 180) -> dict:
    """`lensops serve` in a subprocess: wait until healthy, send one image per class, stop it with a signal.

    Returns the answers and the server's exit code; writes them to reports/demo_served.json.
    """
    import requests

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([_tool("lensops"), "serve", "--port", str(port)], cwd=root)
    answers = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"lensops serve exited with {server.returncode} before it was healthy")
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy in {timeout:.0f} s")
            time.sleep(0.5)
        for folder in sorted(p for p in (root / "data" / "raw").iterdir() if p.is_dir()):
            for image in sorted(folder.glob("*.png"))[:per_class]:
                body = requests.post(f"{url}/predict?top_k=1", data=image.read_bytes(), timeout=60).json()
                top = body["predictions"][0]
                answers.append(
                    {
                        "file": f"{folder.name}/{image.name}",
                        "label": folder.name,
                        "predicted": top["label"],
                        "score": round(top["score"], 4),
                        "version": body["model"]["version"],
                    }
                )
    finally:
        server.send_signal(stop_signal)
        code = server.wait(timeout=120)
    table = Table(title=f"answers from {url}", title_justify="left")
    for column in ("file", "label", "predicted", "score", "version"):
        table.add_column(column)
    for a in answers:
        table.add_row(*(str(a[c]) for c in ("file", "label", "predicted", "score", "version")))
    console.print(table)
    result = {"answers": answers, "exit_code": code, "correct": sum(a["label"] == a["predicted"] for a in answers)}
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "demo_served.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-check"]:
        outcome = serve_check(Path.cwd())
        sys.exit(0 if outcome["exit_code"] == 0 and outcome["answers"] else 1)
    sys.exit(run_demo(Path.cwd()))
