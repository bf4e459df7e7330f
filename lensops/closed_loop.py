"""The end-to-end demo on the built-in digits, as `make demo` runs it: the production data loop.

digits → validate (near duplicates) → prepare → train → review → promote → audit (likely label
errors, outliers, near duplicates) → serve → clean traffic (no drift) →
shifted traffic (a new scanner: blurred, darkened, tilted digits) → drift → `lensops label
export` → a scripted labeller fills labels.csv from the true labels (it stands in for a person)
→ `lensops label import` → a new DVC data version → `lensops retrain` (review by slice, promote)
→ the server follows the new champion → the same shifted traffic → no drift, accuracy recovered →
inverted digits, a shift no training data covers → drift.

Every step is a command a user could type (the lensops CLI or DVC), run as a subprocess, or an
HTTP client talking to the running `lensops serve`; the demo imports no stage package. The steps,
their durations and outcomes are printed as a table and written to `reports/demo_summary.json`.

Held-out honesty: the images exported for labelling come from the shifted copies of the train
and validation splits only (the export's `--since` starts after the hold-out was sent); accuracy
before and after retraining is measured on shifted copies (another seed) of the test split, which
no version trained on in any form.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from .client import SHIFTED_PREFIX, Server, one_per_class, tool

console = Console()
DVC_REMOTE = ".dvc-storage"  # the demo's local DVC remote; git-ignored
TRAFFIC = Path("reports/demo")  # the demo's traffic folders
TRACE = Path("reports/demo_trace")  # `lensops trace` of one wrong answer
CARD = Path("reports/demo_card")  # the champion's model card
LABELS = 600  # images the scripted labeller labels (of about 1,500 shifted images sent, most captured)
STATE = (
    "reports/production_log",
    "reports/capture",
    "reports/labelling",
    "reports/drift",
    "reports/retrain",
    "reports/audit",
)


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

    def reset(self) -> int:
        """Remove what an earlier demo run added to data/raw (its DVC version keeps it) and its reports."""
        raw = self.root / "data" / "raw"
        imported = [raw / json.loads(line)["path"] for f in (raw / ".provenance").glob("*.jsonl") for line in f.open()]
        stale = [p for p in imported if p.is_file()] + (list(raw.glob(f"*/{SHIFTED_PREFIX}*")) if raw.is_dir() else [])
        for path in stale:
            path.unlink()
        shutil.rmtree(raw / ".provenance", ignore_errors=True)
        if stale:
            console.print(f"removed {len(stale)} images an earlier demo run added to data/raw")
        for folder in (TRAFFIC, TRACE, CARD, *STATE):
            shutil.rmtree(self.root / folder, ignore_errors=True)
        for name in ("demo_served.json", "demo_summary.json"):
            (self.root / "reports" / name).unlink(missing_ok=True)
        return 0

    def first_repro(self) -> int:
        code = _run([tool("dvc"), "repro"], self.root)
        evaluation = self.json("metrics/eval.json")
        if evaluation:  # kept: the retraining overwrites metrics/eval.json
            self.results["first_eval"] = {k: evaluation[k] for k in ("accuracy", "macro_f1")}
        self.results["first_review"] = self.json("reports/review/review.json")
        return code

    def start_server(self) -> int:
        self.server = Server(self.root)
        self.server.start()
        console.print(f"serving at {self.server.url}, version {self.server.served_version()}")
        return 0

    def answer_one_per_class(self) -> int:
        answers = one_per_class(self.server, self.root)
        self.results["served"] = {"answers": answers, "correct": sum(a["label"] == a["predicted"] for a in answers)}
        return 0 if answers else 1

    def send(self, key: str, folder: Path) -> int:
        """Send a traffic folder; the window's start time is kept for `--since`."""
        self.windows.setdefault(key, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + "Z")
        sent = self.server.send_folder(self.root / folder)
        self.results.setdefault("traffic", {})[f"{key}:{folder.name}"] = sent
        console.print(f"sent {sent['requests']} requests from {folder}: accuracy {sent['accuracy']:.4f}, "
                      f"answered by version {', '.join(sent['versions'])}")  # fmt: skip
        return 0

    def drift(self, key: str, *extra: str) -> int:
        command = [tool("lensops"), "drift", "--since", self.windows[key], "--report-dir", f"reports/drift/{key}"]
        return _run([*command, *extra], self.root)

    def trace_wrong_answer(self) -> int:
        """`lensops trace` of one wrong answer on shifted traffic: which training images it looked like."""
        wrong = self.results["traffic"].get("traffic:shifted", {}).get("first_wrong") or []
        if not wrong:
            console.print("every shifted image was answered right: nothing to trace")
            return 0
        self.results["traced"] = wrong[0]
        command = [tool("lensops"), "trace", wrong[0]["request_id"], "--k", "8", "--out", str(TRACE)]
        return _run(command, self.root)

    def export_labels(self) -> int:
        out = self.root / TRAFFIC / "labelling"
        since = ["--since", self.windows["traffic"]]  # the shifted train/val traffic, never the hold-out
        code = _run([tool("lensops"), "label", "export", "--n", str(LABELS), *since, "--out", str(out)], self.root)
        batches = sorted(out.glob("batch-*/labels.csv"))
        self.results["batch"] = str(batches[-1]) if batches else None
        return code

    def label_like_a_person(self) -> int:
        """The scripted labeller fills `label` from the true labels (the traffic folders), standing in for a person."""
        from .client import fill_labels, sha256_of_file

        truth = {sha256_of_file(p): p.parent.name for p in (self.root / TRAFFIC).glob("*/*/*.png")}
        labels = Path(self.results["batch"])
        filled = fill_labels(labels, truth)
        console.print(f"[bold]a scripted labeller stands in for a person[/]: {filled} labels filled in {labels}")
        self.results["exported"] = filled
        return 0

    def import_labels(self) -> int:
        who = ["--labelled-by", "scripted labeller (make demo)"]
        return _run([tool("lensops"), "label", "import", self.results["batch"], *who], self.root)

    def retrain(self) -> int:
        drift_run = (self.json("reports/drift/shifted/drift.json") or {}).get("run_id") or ""
        reason = ["--reason", "make demo: drift on shifted traffic, labelled production images imported"]
        return _run([tool("lensops"), "retrain", *reason, "--drift-run", drift_run], self.root)

    def wait_for_new_version(self, timeout: float = 60) -> int:
        """The running server follows @champion: wait until it answers with the promoted version."""
        target = (self.json("reports/retrain/retrain.json") or {}).get("version")
        deadline = time.monotonic() + timeout
        while target and self.server.served_version() != target:
            if time.monotonic() > deadline:
                console.print(f"[red]the server still answers with {self.server.served_version()}, not {target}[/]")
                return 1
            time.sleep(1)
        console.print(f"the same server now answers with version {target}, without a restart")
        return 0 if target else 1

    def stop_server(self) -> int:
        code = self.server.stop() if self.server else 0
        self.results.setdefault("served", {})["exit_code"] = code
        self.server = None
        return code

    def json(self, relative: str) -> dict | None:
        path = self.root / relative
        return json.loads(path.read_text()) if path.is_file() else None


def demo_steps(loop: ClosedLoop) -> list[Step]:
    return [*first_version_steps(loop), *traffic_steps(loop), *labelling_steps(loop), *after_steps(loop)]


def first_version_steps(loop: ClosedLoop) -> list[Step]:
    """From the digits to a served champion: data, DVC, the pipeline, promotion, the server."""
    lensops, dvc = tool("lensops"), tool("dvc")
    # The team stack's object store when `lensops stack up` set LENSOPS_DVC_REMOTE, else a local folder.
    where = os.environ.get("LENSOPS_DVC_REMOTE") or str(loop.root / DVC_REMOTE)
    remote = [dvc, "remote", "add", "--local", "--force", "--default", "demo", where]
    return [
        Step("reset what an earlier demo run added", action=loop.reset),
        Step("write the digits as PNG files", [lensops, "data", "demo"]),
        Step(f"configure the DVC remote: {'the stack' if where.startswith('s3://') else 'a local folder'}", remote),
        Step("version data/raw with DVC", [dvc, "add", "--quiet", "data/raw"]),
        Step("push the data version to the remote", [dvc, "push", "--quiet"]),
        Step("dvc repro (validate, prepare, train, review)", action=loop.first_repro),
        Step("promote the reviewed challenger", [lensops, "promote", "--reason", "make demo: review passed"]),
        Step("audit the digits: likely label errors, outliers, near duplicates", [lensops, "data", "audit"]),
        Step("serve the champion", action=loop.start_server),
        Step("answer one image per class", action=loop.answer_one_per_class),
    ]


def traffic_steps(loop: ClosedLoop) -> list[Step]:
    """Clean traffic (no drift), then a new scanner's traffic (drift)."""
    traffic = [tool("lensops"), "data", "traffic", "--out"]
    shifted = ["--split", "train", "--split", "val", "--shift", "--seed", "1"]
    holdout = ["--split", "test", "--shift", "--seed", "2"]
    inverted = ["--split", "test", "--shift", "--shift-kind", "inverted", "--seed", "3"]
    return [
        Step("write clean traffic (test split)", [*traffic, str(TRAFFIC / "clean"), "--split", "test"]),
        Step("send clean traffic", action=lambda: loop.send("clean", TRAFFIC / "clean")),
        Step("drift on clean traffic: none expected", action=lambda: loop.drift("clean")),
        Step(
            "write shifted traffic (train and val splits, a new scanner)",
            [*traffic, str(TRAFFIC / "shifted"), *shifted],
        ),
        Step(
            "write the shifted hold-out (test split, another seed)",
            [*traffic, str(TRAFFIC / "shifted_holdout"), *holdout],
        ),
        Step("write inverted digits (a shift no data covers)", [*traffic, str(TRAFFIC / "inverted"), *inverted]),
        Step("send the shifted hold-out", action=lambda: loop.send("shifted", TRAFFIC / "shifted_holdout")),
        Step("send shifted traffic", action=lambda: loop.send("traffic", TRAFFIC / "shifted")),
        Step("drift on shifted traffic: drift expected", action=lambda: loop.drift("shifted"), expect=(4,)),
        Step(
            "trace one wrong answer back to its version, data and nearest training images",
            action=loop.trace_wrong_answer,
        ),
    ]


def labelling_steps(loop: ClosedLoop) -> list[Step]:
    """Production images to labelled data: export, label, import (a new data version), retrain."""
    return [
        Step(f"label export: the {LABELS} captured images most worth labelling", action=loop.export_labels),
        Step("a scripted labeller fills labels.csv (standing in for a person)", action=loop.label_like_a_person),
        Step("label import: checked, added with provenance, dvc add", action=loop.import_labels),
        Step("push the new data version", [tool("dvc"), "push", "--quiet"]),
        Step("retrain (dvc repro), review by slice, promote", action=loop.retrain),
        Step("the running server follows @champion", action=loop.wait_for_new_version),
    ]


def after_steps(loop: ClosedLoop) -> list[Step]:
    """The same shifted traffic settles; a shift nobody trained on still alarms."""
    lensops, dvc = tool("lensops"), tool("dvc")
    return [
        Step("send the shifted hold-out again", action=lambda: loop.send("after", TRAFFIC / "shifted_holdout")),
        Step("send the same shifted traffic again", action=lambda: loop.send("after", TRAFFIC / "shifted")),
        Step("drift after retraining: none expected", action=lambda: loop.drift("after")),
        Step("send inverted digits", action=lambda: loop.send("uncovered", TRAFFIC / "inverted")),
        Step("drift on inverted digits: drift expected", action=lambda: loop.drift("uncovered"), expect=(4,)),
        Step("stop serving", action=loop.stop_server),
        Step("list the registered versions", [lensops, "models"]),
        Step("write the champion's model card", [lensops, "card", "--out", str(CARD)]),
        Step("push the pipeline outputs", [dvc, "push", "--quiet"]),
        Step("show DVC metrics", [dvc, "metrics", "show"]),
    ]


def _run(command: list[str], root: Path) -> int:
    return subprocess.run(command, cwd=root, check=False).returncode


def run_demo(root: Path) -> int:
    from .closed_loop_summary import print_table, summarize

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


if __name__ == "__main__":
    sys.exit(run_demo(Path.cwd()))
