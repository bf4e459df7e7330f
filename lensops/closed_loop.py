"""The end-to-end demo on the built-in digits, as `make demo` runs it: the closed loop.

demo data → validate → prepare → train → review → promote → serve → clean traffic (no drift)
→ shifted traffic (the digits blurred, darkened, tilted) → drift found → the shifted images,
labelled, added to `data/raw` as a new DVC version → retrain → review → promote → the same
server now answers with the new version → shifted traffic again.

Every step is a command a user could type (the lensops CLI or DVC), run as a subprocess, or an
HTTP client talking to the running `lensops serve`; the demo imports no stage package. The
steps, their durations and outcomes are printed as a table and written to
`reports/demo_summary.json`.

Held-out honesty: the shifted traffic that is added to the training data comes from the train
and validation splits; the accuracy before and after retraining is measured on shifted copies
(another seed) of the test split, which neither version trained on in any form.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from .client import SHIFTED_PREFIX, Server, one_per_class, tool

console = Console()
DVC_REMOTE = ".dvc-storage"  # the demo's local DVC remote; git-ignored
TRAFFIC = Path("reports/demo")
SHIFT_SEED_1 = ["--shift", "--seed", "1"]  # the demo's traffic folders


@dataclass
class Step:
    name: str
    command: list[str] | None = None
    action: Callable[[], int] | None = None  # returns an exit code
    expect: tuple[int, ...] = (0,)
    seconds: float = 0.0
    ok: bool = False
    returncode: int | None = None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "command": self.command,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "returncode": self.returncode,
        }


@dataclass
class ClosedLoop:
    """The demo's state between steps: the server, the traffic windows, what was measured."""

    root: Path
    server: Server | None = None
    windows: dict[str, str] = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    # -- steps that are not a single command --

    def reset_shifted(self) -> int:
        """Remove shifted images an earlier demo run added to data/raw (its DVC version keeps them)."""
        raw = self.root / "data" / "raw"
        stale = list(raw.glob(f"*/{SHIFTED_PREFIX}*")) if raw.is_dir() else []
        for path in stale:
            path.unlink()
        if stale:
            console.print(f"removed {len(stale)} shifted images of an earlier demo run from data/raw")
        shutil.rmtree(self.root / TRAFFIC, ignore_errors=True)
        for name in ("demo_served.json", "demo_summary.json"):
            (self.root / "reports" / name).unlink(missing_ok=True)
        return 0

    def first_repro(self) -> int:
        code = _run([tool("dvc"), "repro"], self.root)
        evaluation = self._json("metrics/eval.json")
        if evaluation:  # kept: the retraining overwrites metrics/eval.json
            self.results["first_eval"] = {k: evaluation[k] for k in ("accuracy", "macro_f1")}
        return code

    def start_server(self) -> int:
        self.server = Server(self.root)
        self.server.start()
        console.print(f"serving at {self.server.url}, version {self.server.served_version()}")
        return 0

    def answer_one_per_class(self) -> int:
        assert self.server is not None
        answers = one_per_class(self.server, self.root)
        self.results["served"] = {"answers": answers, "correct": sum(a["label"] == a["predicted"] for a in answers)}
        return 0 if answers else 1

    def send(self, key: str, folder: Path) -> int:
        """Send a traffic folder; the window's start time is kept for `lensops drift --since`."""
        assert self.server is not None
        self.windows.setdefault(key, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + "Z")
        sent = self.server.send_folder(self.root / folder)
        self.results.setdefault("traffic", {})[f"{key}:{folder.name}"] = sent
        console.print(f"sent {sent['requests']} requests from {folder}: accuracy {sent['accuracy']:.4f}, "
                      f"answered by version {', '.join(sent['versions'])}")  # fmt: skip
        return 0

    def drift_command(self, key: str, *extra: str) -> list[str]:
        # The window is fixed when the step runs, so these are built lazily (see `lazy`).
        return [tool("lensops"), "drift", "--since", self.windows[key], "--report-dir", f"reports/drift/{key}", *extra]

    def add_shifted_to_raw(self) -> int:
        """The shifted production images, labelled, become part of data/raw (next to the originals)."""
        added = 0
        for image in sorted((self.root / TRAFFIC / "shifted").glob("*/*.png")):
            target = self.root / "data" / "raw" / image.parent.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, target)
            added += 1
        console.print(f"added {added} labelled shifted images to data/raw")
        self.results["added_images"] = added
        return 0 if added else 1

    def wait_for_new_version(self, timeout: float = 60) -> int:
        """The running server follows @champion: wait until it answers with the promoted version."""
        assert self.server is not None
        retrained = self._json("reports/retrain/retrain.json") or {}
        target = retrained.get("version")
        if not target:
            return 1
        deadline = time.monotonic() + timeout
        while self.server.served_version() != target:
            if time.monotonic() > deadline:
                console.print(f"[red]the server still answers with {self.server.served_version()}, not {target}[/]")
                return 1
            time.sleep(1)
        console.print(f"the same server now answers with version {target}, without a restart")
        return 0

    def stop_server(self) -> int:
        code = self.server.stop() if self.server else 0
        self.results.setdefault("served", {})["exit_code"] = code
        self.server = None
        return code

    def _json(self, relative: str) -> dict | None:
        path = self.root / relative
        return json.loads(path.read_text()) if path.is_file() else None


def demo_steps(loop: ClosedLoop) -> list[Step]:
    return [*first_version_steps(loop), *loop_steps(loop)]


def first_version_steps(loop: ClosedLoop) -> list[Step]:
    """From the digits to a served champion: data, DVC, the pipeline, promotion, the server."""
    root = loop.root
    lensops, dvc = tool("lensops"), tool("dvc")
    return [
        Step("reset what an earlier demo run added", action=loop.reset_shifted),
        Step("write the digits as PNG files", [lensops, "data", "demo"]),
        Step(
            "configure a local DVC remote",
            [dvc, "remote", "add", "--local", "--force", "--default", "demo", str(root / DVC_REMOTE)],
        ),
        Step("version data/raw with DVC", [dvc, "add", "--quiet", "data/raw"]),
        Step("push the data version to the remote", [dvc, "push", "--quiet"]),
        Step("dvc repro (validate, prepare, train, review)", action=loop.first_repro),
        Step("promote the reviewed challenger", [lensops, "promote", "--reason", "make demo: review passed"]),
        Step("serve the champion", action=loop.start_server),
        Step("answer one image per class", action=loop.answer_one_per_class),
    ]


def loop_steps(loop: ClosedLoop) -> list[Step]:
    """Production traffic, drift, new labelled data, retraining, and the server following the new champion."""
    root = loop.root
    lensops, dvc = tool("lensops"), tool("dvc")
    traffic = [lensops, "data", "traffic"]
    return [
        Step("write clean traffic (test split)", [*traffic, "--out", str(TRAFFIC / "clean"), "--split", "test"]),
        Step("send clean traffic", action=lambda: loop.send("clean", TRAFFIC / "clean")),
        Step("drift on clean traffic: none expected", action=lambda: _run(loop.drift_command("clean"), root)),
        Step(
            "write shifted traffic (train and val splits, blurred, dark, tilted)",
            [*traffic, "--out", str(TRAFFIC / "shifted"), "--split", "train", "--split", "val", *SHIFT_SEED_1],
        ),
        Step(
            "write the shifted hold-out (test split, another seed)",
            [*traffic, "--out", str(TRAFFIC / "shifted_holdout"), "--split", "test", "--shift", "--seed", "2"],
        ),
        Step("send shifted traffic", action=lambda: loop.send("shifted", TRAFFIC / "shifted")),
        Step("send the shifted hold-out", action=lambda: loop.send("shifted", TRAFFIC / "shifted_holdout")),
        Step(
            "drift on shifted traffic: drift expected",
            action=lambda: _run(loop.drift_command("shifted"), root),
            expect=(4,),
        ),
        Step("add the labelled shifted images to data/raw", action=loop.add_shifted_to_raw),
        Step("version the new data/raw with DVC", [dvc, "add", "--quiet", "data/raw"]),
        Step("push the new data version", [dvc, "push", "--quiet"]),
        Step(
            "retrain (dvc repro), review, promote",
            action=lambda: _run(
                [
                    lensops,
                    "retrain",
                    "--force",
                    "--reason",
                    "make demo: drift on shifted traffic",
                    "--drift-run",
                    (loop._json("reports/drift/shifted/drift.json") or {}).get("run_id") or "",
                ],
                root,
            ),
        ),
        Step("the running server follows @champion", action=loop.wait_for_new_version),
        Step("send the shifted hold-out again", action=lambda: loop.send("after", TRAFFIC / "shifted_holdout")),
        Step("drift after retraining", action=lambda: _run(loop.drift_command("after"), root), expect=(0, 4)),
        Step("stop serving", action=loop.stop_server),
        Step("list the registered versions", [lensops, "models"]),
        Step("push the pipeline outputs", [dvc, "push", "--quiet"]),
        Step("show DVC metrics", [dvc, "metrics", "show"]),
    ]


def _run(command: list[str], root: Path) -> int:
    return subprocess.run(command, cwd=root, check=False).returncode


def run_demo(root: Path) -> int:
    loop = ClosedLoop(root)
    steps = demo_steps(loop)
    started = time.perf_counter()
    try:
        for step in steps:
            console.print(Rule(step.name))
            begun = time.perf_counter()
            try:
                step.returncode = step.action() if step.action else _run(step.command or [], root)
            except Exception as e:  # a step that raises fails the demo with its reason, not a traceback wall
                console.print(f"[red]{type(e).__name__}: {e}[/]")
                step.returncode = 1
            step.seconds = time.perf_counter() - begun
            step.ok = step.returncode in step.expect
            if not step.ok:
                console.print(f"[red]step failed[/] (exit {step.returncode}, expected {step.expect}): {step.name}")
                break
    finally:
        if loop.server is not None:
            loop.stop_server()
    summary = summarize(loop, steps, time.perf_counter() - started)
    print_table(steps, summary)
    return 0 if summary["ok"] else 1


def summarize(loop: ClosedLoop, steps: list[Step], seconds: float) -> dict:
    root = loop.root
    results: dict = {
        "ok": all(s.ok for s in steps),
        "seconds": round(seconds, 1),
        "steps": [s.as_dict() for s in steps],
    }
    evaluation = root / "metrics" / "eval.json"
    first = loop.results.get("first_eval")
    if evaluation.is_file():  # what the last train stage measured on its test split
        metrics = json.loads(evaluation.read_text())
        results["test_accuracy"], results["test_macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
    if first:  # the first version, on the clean digits' test split
        results["first_model"] = first
        console.print(f"first model: test accuracy {first['accuracy']:.4f}, macro F1 {first['macro_f1']:.4f}")
    review = loop._json("reports/review/review.json")
    if review:
        results["review_verdict"] = review["verdict"]
        results["reviewed_version"] = review["challenger"]["version"]
    for key in ("clean", "shifted", "after"):
        drift = loop._json(f"reports/drift/{key}/drift.json")
        if drift:
            results[f"drift_{key}"] = {k: drift[k] for k in ("drift", "verdict", "method", "score", "threshold",
                                                               "n_reference", "n_current", "run_id")}  # fmt: skip
            results[f"drift_{key}"]["model_version"] = drift["model"]["version"]
    retrained = loop._json("reports/retrain/retrain.json")
    results["retrained"] = bool(retrained and retrained.get("outcome") in ("promoted", "trained", "held"))
    results["retrain"] = retrained
    results["promoted_version"] = retrained.get("version") if retrained and retrained["outcome"] == "promoted" else None
    traffic = loop.results.get("traffic", {})
    before = traffic.get("shifted:shifted_holdout")
    after = traffic.get("after:shifted_holdout")
    results["accuracy_on_shifted_before"] = before["accuracy"] if before else None
    results["accuracy_on_shifted_after"] = after["accuracy"] if after else None
    results["accuracy_on_clean"] = traffic.get("clean:clean", {}).get("accuracy")
    results["traffic"] = traffic
    results["added_images"] = loop.results.get("added_images", 0)
    results["served"] = loop.results.get("served")
    summary = root / "reports" / "demo_summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_table(steps: list[Step], summary: dict) -> None:
    table = Table(title="lensops demo: the closed loop", title_justify="left")
    for column in ("step", "seconds", "result"):
        table.add_column(column)
    for step in steps:
        if step.returncode is None:
            result = "[dim]not run[/]"
        elif step.ok:
            result = "[green]ok[/]" + (f" (exit {step.returncode})" if step.returncode else "")
        else:
            result = f"[red]failed (exit {step.returncode})[/]"
        table.add_row(step.name, f"{step.seconds:.1f}" if step.returncode is not None else "", result)
    console.print(table)
    lines = []
    for key in ("clean", "shifted", "after"):
        d = summary.get(f"drift_{key}")
        if d:
            lines.append(f"drift on {key} traffic (v{d['model_version']}): {d['verdict']}, score {d['score']}")
    before, after = summary.get("accuracy_on_shifted_before"), summary.get("accuracy_on_shifted_after")
    if before is not None:
        after_text = f", {after:.4f} after (v{summary['promoted_version']})" if after is not None else ""
        lines.append(f"accuracy on the shifted hold-out: {before:.4f} before retraining{after_text}")
    if "test_accuracy" in summary:
        lines.append(
            f"latest model: test accuracy {summary['test_accuracy']:.4f}, macro F1 {summary['test_macro_f1']:.4f}"
        )
    lines.append(f"{summary['seconds'] / 60:.1f} minutes; summary in reports/demo_summary.json")
    for line in lines:
        console.print(line)


if __name__ == "__main__":
    sys.exit(run_demo(Path.cwd()))
