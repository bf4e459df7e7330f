"""A small client for a running `lensops serve`, and the way to start one in a subprocess.

The closed loop (`lensops.closed_loop`), the tests and the benchmarks talk to the server as any
user's program would: over HTTP, with `requests`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .core.ports import free_port

console = Console()
SHIFTED_PREFIX = "shifted_"  # data.digits names shifted images so


def tool(name: str) -> str:
    """A console script from this environment (the venv's lensops/dvc, whatever PATH says)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class Server:
    """`lensops serve` in a subprocess on a free port, and a small client for it."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        import requests

        self.process = subprocess.Popen([tool("lensops"), "serve", "--port", str(self.port)], cwd=self.root)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"lensops serve exited with {self.process.returncode} before it was healthy")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} did not become healthy in {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self, stop_signal: int = signal.SIGINT) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def predict(self, image: Path) -> dict:
        import requests

        answer = requests.post(f"{self.url}/predict?top_k=1", data=image.read_bytes(), timeout=60)
        answer.raise_for_status()
        return answer.json()

    def served_version(self) -> str:
        import requests

        return str(requests.get(f"{self.url}/model", timeout=10).json()["version"])

    def predict_batch(self, images: list[Path]) -> list[dict]:
        """One `/predict/batch` request for `images`; each image's answer, in order (an error raises)."""
        import requests

        files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
        answer = requests.post(f"{self.url}/predict/batch?top_k=1", files=files, timeout=120)
        answer.raise_for_status()
        results = answer.json()["results"]
        refused = [
            f"{p}: {r['status']} {r.get('detail', '')}"
            for p, r in zip(images, results, strict=True)
            if r["status"] != 200
        ]
        if refused:
            raise RuntimeError(f"{len(refused)} images refused: {'; '.join(refused[:3])}")
        return results

    def send_folder(self, folder: Path, *, batch: int = 32, concurrency: int = 2) -> dict:
        """Every `<label>/<image>.png` under folder, `batch` images per `/predict/batch` request (each
        image answered and logged as its own request would be); accuracy against the folder names."""
        images = sorted(folder.glob("*/*.png"))
        chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
        with ThreadPoolExecutor(concurrency) as pool:
            answers = [a for chunk in pool.map(self.predict_batch, chunks) for a in chunk]
        correct = sum(a["predictions"][0]["label"] == p.parent.name for a, p in zip(answers, images, strict=True))
        versions = sorted({str(a["model"]["version"]) for a in answers})
        wrong = [
            {
                "request_id": a["request_id"],
                "file": str(p),
                "label": p.parent.name,
                "predicted": a["predictions"][0]["label"],
            }
            for a, p in zip(answers, images, strict=True)
            if a["predictions"][0]["label"] != p.parent.name
        ]
        accuracy = round(correct / max(len(images), 1), 4)
        return {"requests": len(images), "accuracy": accuracy, "versions": versions, "first_wrong": wrong[:1]}


def one_per_class(server: Server, root: Path) -> list[dict]:
    answers = []
    for folder in sorted(p for p in (root / "data" / "raw").iterdir() if p.is_dir()):
        originals = sorted(p for p in folder.glob("*.png") if not p.name.startswith(SHIFTED_PREFIX))
        for image in originals[:1]:
            body = server.predict(image)
            top = body["predictions"][0]
            answers.append(
                {
                    "file": f"{folder.name}/{image.name}",
                    "label": folder.name,
                    "predicted": top["label"],
                    "score": round(top["score"], 4),
                    "version": str(body["model"]["version"]),
                }
            )
    table = Table(title=f"answers from {server.url}", title_justify="left")
    for column in ("file", "label", "predicted", "score", "version"):
        table.add_column(column)
    for a in answers:
        table.add_row(*(str(a[c]) for c in ("file", "label", "predicted", "score", "version")))
    console.print(table)
    return answers


def serve_check(root: Path, *, stop_signal: int = signal.SIGINT) -> dict:
    """`lensops serve` in a subprocess: wait until healthy, send one image per class, stop it with a signal."""
    server = Server(root)
    try:
        server.start()
        answers = one_per_class(server, root)
    finally:
        code = server.stop(stop_signal)
    return {"answers": answers, "exit_code": code, "correct": sum(a["label"] == a["predicted"] for a in answers)}


def sha256_of_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill_labels(labels: Path, truth: dict[str, str]) -> int:
    """The scripted labeller of the demo and benchmarks: fills `label` in a labels.csv from the true labels.

    It stands in for a person; returns the number of rows filled.
    """
    import csv

    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["label"] = truth[row["sha256"]]
    with open(labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
