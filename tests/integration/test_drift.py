"""Drift on a real registered model's production log, and the retraining trigger's lock and cooldown.

The production log is written by `monitoring.replay` in the real format from the real
network's answers, computed in process through the shared preprocessing: the same numbers
serving logs (tests/integration/test_serving.py proves serving answers as this path does).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, TINY_TRAINING_FAST_INPUT, champion_project, mlflow_client

pytestmark = pytest.mark.slow

# The tiny dataset's test split has about 80 images; judge from 40 records on.
SMALL = [*TINY_TRAINING_FAST_INPUT, "drift.min_records=40", "drift.report_sample=60"]


@pytest.fixture(scope="module")
def monitored(ray_session, digits_project, tmp_path_factory):
    """A trained, promoted `tiny` model and its held-out images, clean and shifted."""
    from data.digits import write_traffic

    settings = champion_project(digits_project, tmp_path_factory.mktemp("drift") / "project", SMALL, "drift tests")
    root = settings.root
    prepared = settings.path(settings.data.prepared)
    write_traffic(prepared, root / "traffic" / "clean", splits=("test",))
    write_traffic(prepared, root / "traffic" / "shifted", splits=("test",), shift=True, seed=1)
    return settings


def write_log(settings, images: list[Path], log_dir: Path) -> float:
    """Answer images with the champion as serving does, append them to a production log; returns accuracy."""
    from monitoring.replay import replay

    answers = replay(settings, images, log_dir)
    assert len(answers) == len(images) and set(answers.version) == {"1"}
    return float((answers.label == answers.predicted).mean())


def images_of(root: Path, kind: str) -> list[Path]:
    return sorted((root / "traffic" / kind).glob("*/*.png"))


def test_clean_held_out_traffic_is_not_drift_over_seeds(monitored, tmp_path):
    from monitoring.drift import run_drift

    settings = monitored
    clean = images_of(settings.root, "clean")
    assert len(clean) >= 60
    # Other draws of held-out images (distinct ones: a bootstrap repeats images, and an image sent
    # three times is a real excess the cluster test rightly flags), and another seed for the test.
    for seed in range(5):
        picked = list(np.random.default_rng(seed).choice(clean, size=int(0.85 * len(clean)), replace=False))
        log_dir = tmp_path / f"log{seed}"
        write_log(settings, picked, log_dir)
        seeded = settings.updated({"monitoring.log_dir": str(log_dir), "drift.seed": seed})
        result = run_drift(seeded, report_dir=tmp_path / f"report{seed}", html=False, track=False)
        assert result.verdict == "no_drift", (seed, result.score)
        assert result.score < settings.drift.novelty_share and result.n_current == len(picked)
        assert {"predicted_label", "brightness", "contrast", "width", "height"} <= set(result.details)
        breakdown = result.details["breakdown"]  # nothing to explain: no class and no cluster flagged
        assert breakdown["flagged_classes"] == [] and breakdown["flagged_clusters"] == [], (seed, breakdown)
        assert {c["label"] for c in breakdown["classes"]} == {"0", "1", "7"} and len(breakdown["clusters"]) == 8


def test_a_one_class_shift_is_explained_by_its_class_and_clusters_with_images(monitored, tmp_path):
    """Only the ones come from the new scanner: the breakdown names them, and only their clusters."""
    from monitoring.drift import run_drift

    settings = monitored
    shifted = [p for p in images_of(settings.root, "shifted") if p.parent.name == "1"]
    mixed = [p for p in images_of(settings.root, "clean") if p.parent.name != "1"] + shifted
    log_dir, capture = tmp_path / "log", tmp_path / "capture"
    settings = settings.updated({"monitoring.log_dir": str(log_dir), "monitoring.capture.dir": str(capture)})
    write_log(settings, mixed, log_dir)
    result = run_drift(settings, report_dir=tmp_path / "report", track=False)
    assert result.verdict == "drift"
    breakdown = json.loads((tmp_path / "report" / "drift.json").read_text())["details"]["breakdown"]
    first = breakdown["classes"][0]
    assert first["label"] == "1" and first["flagged"] and first["n_novel"] >= 0.5 * len(shifted)
    assert first["moved"] > max(c["moved"] or 0 for c in breakdown["classes"][1:])
    grown = [c for c in breakdown["clusters"] if c["production_share"] >= 2 * c["baseline_share"] and c["n_production"]]
    assert grown and breakdown["flagged_clusters"] == [c["cluster"] for c in grown if c["flagged"]]
    for cluster in grown:  # every cluster production fills beyond twice its baseline share is the ones'
        assert max(cluster["dominant_labels"], key=cluster["dominant_labels"].get) == "1", cluster
    # A grid per flagged group, drawn from the captured images, and the section in the HTML report.
    assert sorted(Path(g).name for g in result.grids) == sorted(
        ["class-1.png", *[f"cluster-{c}.png" for c in breakdown["flagged_clusters"]]]
    )
    assert all(Path(g).stat().st_size > 5_000 for g in result.grids)
    html = (tmp_path / "report" / "drift.html").read_text()
    assert "Drift breakdown" in html and html.count("data:image/png;base64") >= len(result.grids)


def test_shifted_traffic_is_drift_with_a_report_and_a_monitoring_run(monitored, cli, monkeypatch):
    settings = monitored
    monkeypatch.chdir(settings.root)
    accuracy = write_log(settings, images_of(settings.root, "shifted"), settings.path("reports/production_log"))
    result = cli("drift", *[a for o in SMALL for a in ("-S", o)])
    assert result.exit_code == 4, result.output
    assert "drift" in result.output and "novelty" in result.output and "embedding_shift" in result.output

    report = json.loads((settings.root / "reports" / "drift" / "drift.json").read_text())
    assert report["drift"] is True and report["verdict"] == "drift" and report["method"] == "novelty"
    assert report["score"] > report["threshold"] == settings.drift.novelty_share
    assert report["details"]["novelty"]["n_novel"] > 0.5 * report["n_current"]
    assert report["details"]["embedding_shift"]["drift"] and report["details"]["embedding_shift"]["method"] == "model"
    assert report["n_reference"] > 0 and report["n_current"] == len(images_of(settings.root, "shifted"))
    assert report["details"]["brightness"]["drift"] and report["details"]["contrast"]["drift"]
    assert set(report["details"]["label_share"]["reference"]) <= {"0", "1", "7"}
    assert report["model"]["version"] == "1" and accuracy < 1.0
    html = (settings.root / "reports" / "drift" / "drift.html").read_text()
    assert len(html) > 10_000 and "embedding" in html  # Evidently's report, self-contained

    client = mlflow_client(settings)
    run = client.get_run(report["run_id"])
    assert run.data.tags["lensops.model.version"] == "1" and run.data.tags["lensops.stage"] == "drift"
    assert run.data.metrics["score"] == pytest.approx(report["score"])
    artifacts = {a.path for a in client.list_artifacts(report["run_id"])}
    assert {"drift.json", "drift.html"} <= artifacts

    # --retrain on unchanged data, code and params: no retraining, a labelling batch instead (exit 7).
    command = json.dumps([sys.executable, "-c", "print('pipeline ran')"])
    options = ["--no-html", "-S", f"retrain.command={command}", *[a for o in SMALL for a in ("-S", o)]]
    waiting = cli("drift", "--retrain", *options)
    assert waiting.exit_code == 7 and "retrain: nothing_new" in waiting.output and "labels needed" in waiting.output
    assert len(list(settings.path(settings.label.export_dir).glob("batch-*/labels.csv"))) == 1
    assert "pipeline ran" not in waiting.output

    # --retrain after the params changed: the pipeline runs, linked both ways in MLflow.
    again = cli("drift", "--retrain", *options, "-S", "train.lr=0.004")
    assert again.exit_code == 4 and "retrain: no_new_version" in again.output, again.output
    drift_run_id = json.loads((settings.root / "reports" / "drift" / "drift.json").read_text())["run_id"]
    retrain_run_id = client.get_run(drift_run_id).data.tags["lensops.link.retrain_run"]
    retrain_run = client.get_run(retrain_run_id)
    assert retrain_run.data.tags["lensops.link.drift_run"] == drift_run_id
    assert retrain_run.data.tags["lensops.retrain.outcome"] == "no_new_version"


def test_too_few_records_is_no_verdict(monitored, cli, tmp_path, monkeypatch):
    settings = monitored
    monkeypatch.chdir(settings.root)
    log_dir = tmp_path / "ten"
    write_log(settings, images_of(settings.root, "shifted")[:10], log_dir)  # ten very shifted requests
    args = [a for o in [*SMALL, f"monitoring.log_dir={log_dir}"] for a in ("-S", o)]
    result = cli("drift", "--report-dir", str(tmp_path / "r"), *args)
    assert result.exit_code == 5, result.output
    report = json.loads((tmp_path / "r" / "drift.json").read_text())
    assert report["verdict"] == "too_few_records" and report["drift"] is False and report["n_current"] == 10
    assert "need 40" in report["details"]["reason"] and not (tmp_path / "r" / "drift.html").exists()
    # --last and --since narrow the window the same way
    assert cli("drift", "--last", "5", "--report-dir", str(tmp_path / "r"), *args).exit_code == 5


def test_bad_drift_arguments_are_usage_errors(monitored, cli, monkeypatch):
    monkeypatch.chdir(monitored.root)
    args = [a for o in SMALL for a in ("-S", o)]
    unknown = cli("drift", "--model", "42", *args)
    assert unknown.exit_code == 2 and "has versions 1" in unknown.output
    assert cli("drift", "--since", "yesterday-ish", *args).exit_code == 2
    assert cli("drift", "--last", "0", *args).exit_code == 2
    assert cli("drift", "--last", "5", "--since", "2026-01-01", *args).exit_code == 2
    assert cli("drift", "-S", "drift.method=psi", *args).exit_code == 2  # not an embeddings method


# --- the monitor: a schedule, webhooks once per change of state ---------------------------------


def test_the_monitor_posts_each_change_once_and_survives_a_failing_iteration(monitored, tmp_path):
    from monitoring.monitor import Monitor
    from tests.receiver import Receiver

    clean, shifted = images_of(monitored.root, "clean"), images_of(monitored.root, "shifted")
    log_dir = tmp_path / "log"
    with Receiver(fail_first=2) as receiver:  # the first event needs three tries
        changes = {
            "monitoring.log_dir": str(log_dir),
            "monitoring.capture.enabled": False,
            "monitor.webhooks": [receiver.url],
            "monitor.webhook_backoff_s": 0.05,
            "monitor.state_dir": str(tmp_path / "monitor"),
            "drift.report_dir": str(tmp_path / "report"),
        }
        settings = monitored.updated(changes)
        write_log(settings, clean, log_dir)
        monitor = Monitor(settings, echo=lambda line: None)
        monitor.run_id = monitor._start_run()
        first = monitor.iteration()  # posts the state it finds
        assert first["outcome"] == "no_drift" and first["events"][0]["deliveries"][0]["attempts"] == 3
        assert monitor.iteration()["events"] == []  # unchanged: nothing posted
        write_log(settings, shifted * 2, log_dir)  # the new scanner outnumbers the clean records
        assert [e["event"] for e in monitor.iteration()["events"]] == ["drift_found"]
        assert monitor.iteration()["events"] == []
        monitor.settings = settings.updated({"registry.model_name": "absent"})  # the registry has no such model
        failed = monitor.iteration()
        assert failed["outcome"] == "failed" and "absent" in failed["detail"]
        assert [e["event"] for e in failed["events"]] == ["iteration_failed"]
        assert monitor.iteration()["events"] == []  # still failing: posted once
        monitor.settings = settings
        recovered = monitor.iteration()  # the next iteration runs; the verdict it finds was posted already
        assert recovered["outcome"] == "drift" and recovered["events"] == []
        monitor._end_run()
        again = Monitor(settings.updated({"monitor.post_on_start": False}), echo=lambda line: None)
        assert again.iteration()["events"] == []  # a scheduled job's next start: nothing changed, nothing posted

    posted = receiver.delivered()
    assert [e["event"] for e in posted] == ["no_drift", "drift_found", "iteration_failed"]
    assert posted[0]["first"] is True and posted[1]["first"] is False and len(receiver.calls) == 5
    assert posted[1]["model"] == {"name": "tiny", "version": "1"} and posted[1]["score"] > 0.1
    assert posted[1]["run_id"] and posted[1]["report"].endswith("drift.html")
    history = [json.loads(line) for line in (tmp_path / "monitor" / "history.jsonl").read_text().splitlines()]
    outcomes = ["no_drift", "no_drift", "drift", "drift", "failed", "failed", "drift", "drift"]
    assert [h["outcome"] for h in history] == outcomes
    scores = mlflow_client(settings).get_metric_history(monitor.run_id, "score")  # the time series
    assert [m.step for m in scores] == [1, 2, 3, 4, 7] and scores[2].value > scores[0].value


def test_the_monitor_command_keeps_its_schedule_never_overlaps_and_stops_on_sigterm(monitored, tmp_path):
    import filelock

    from lensops.client import tool

    state = tmp_path / "monitor"
    state.mkdir()
    log_dir = tmp_path / "log"
    write_log(monitored, images_of(monitored.root, "clean"), log_dir)
    options = [*SMALL, f"monitoring.log_dir={log_dir}", f"monitor.state_dir={state}", f"drift.report_dir={tmp_path}/r"]
    command = [tool("lensops"), "monitor", "--every", "1s", *[a for o in options for a in ("-S", o)]]
    history = state / "history.jsonl"
    entries = lambda: [json.loads(line) for line in history.read_text().splitlines()] if history.exists() else []  # noqa: E731
    lock = filelock.FileLock(str(state / "monitor.lock"))
    lock.acquire()  # another iteration is running: the monitor must wait its turn
    process = subprocess.Popen(command, cwd=monitored.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(entries()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        lock.release()
        while not any(e["outcome"] == "no_drift" for e in entries()) and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, output
    skipped = [e for e in entries() if e["outcome"] == "skipped"]
    assert len(skipped) >= 3 and "skipped: another iteration is running" in output
    times = [pd.Timestamp(e["time"]) for e in skipped]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(0.8 < gap < 5 for gap in gaps), gaps  # every second, from the previous start
    assert entries()[-1]["outcome"] == "no_drift" and "stopped after" in output


def test_the_monitor_retrains_on_drift_and_posts_what_the_retraining_needs(monitored, cli, tmp_path, monkeypatch):
    from tests.receiver import Receiver

    monkeypatch.chdir(monitored.root)
    log_dir = tmp_path / "log"
    capturing = monitored.updated({"monitoring.capture.dir": str(tmp_path / "capture")})
    write_log(capturing, images_of(monitored.root, "shifted"), log_dir)
    command = json.dumps([sys.executable, "-c", "print('pipeline ran')"])
    with Receiver() as receiver:
        options = [
            *SMALL,
            f"monitoring.log_dir={log_dir}",
            f"monitoring.capture.dir={tmp_path / 'capture'}",
            f"monitor.state_dir={tmp_path / 'monitor'}",
            f'monitor.webhooks=["{receiver.url}"]',
            f"drift.report_dir={tmp_path / 'report'}",
            f"label.export_dir={tmp_path / 'labelling'}",
            f"retrain.command={command}",
            f"retrain.state_file={tmp_path / 'retrain' / 'last.json'}",
            f"retrain.lock_file={tmp_path / 'retrain' / 'lock'}",
        ]
        args = [a for o in options for a in ("-S", o)]
        # Drift, nothing new to train on: a labelling batch, posted once however long the drift lasts.
        waiting = cli("monitor", "--every", "0.1s", "--iterations", "2", "--retrain", "--no-html", *args)
        assert waiting.exit_code == 0, waiting.output
        assert [e["event"] for e in receiver.delivered()] == ["drift_found", "labels_waiting"]
        assert "batch-" in receiver.delivered()[1]["detail"]
        # New training params: the pipeline runs, and its start is posted before its outcome.
        again = cli("monitor", "--iterations", "1", "--retrain", "--no-html", *args, "-S", "train.lr=0.004")
        assert again.exit_code == 0 and "no_new_version" in again.output, again.output
    ran = json.loads((tmp_path / "retrain" / "retrain.json").read_text())
    assert ran["outcome"] == "no_new_version" and ran["returncode"] == 0 and ran["changed"] == ["params"]
    assert [e["event"] for e in receiver.delivered()][2:] == ["drift_found", "retraining_started"]
    assert len(list((tmp_path / "labelling").glob("batch-*/labels.csv"))) == 1


def test_the_monitor_posts_a_promotion_and_a_rollback_once_each(monitored, tmp_path):
    """Run last of the module's registry users: it registers a second version and moves the champion."""
    from monitoring.monitor import Monitor
    from tests.receiver import Receiver
    from training.promotion import promote, rollback

    log_dir = tmp_path / "log"
    write_log(monitored, images_of(monitored.root, "shifted"), log_dir)
    with Receiver() as receiver:
        changes = {
            "monitoring.log_dir": str(log_dir),
            "monitor.webhooks": [receiver.url],
            "monitor.state_dir": str(tmp_path / "monitor"),
            "drift.report_dir": str(tmp_path / "report"),
        }
        settings = monitored.updated(changes)
        monitor = Monitor(settings, echo=lambda line: None, html=False)
        monitor.iteration()  # drift_found, first
        client = mlflow_client(settings)
        one, files = client.get_model_version("tiny", "1"), client.get_model_version_download_uri("tiny", "1")
        two = str(client.create_model_version("tiny", files, run_id=one.run_id, tags=one.tags).version)  # same files
        promote(settings, two, reason="monitor test", force=True)
        monitor.iteration()  # v2 has no production records yet: promoted, too few records
        monitor.iteration()  # nothing changed
        rollback(settings, reason="monitor test")
        monitor.iteration()  # back on v1 and its drifting records
    events = [(e["event"], e["model"]["version"]) for e in receiver.delivered()]
    assert events == [
        ("drift_found", "1"),
        ("promoted", two),
        ("too_few_records", two),
        ("rollback", "1"),
        ("drift_found", "1"),
    ]


# --- the retraining trigger: lock, cooldown, outcome ------------------------------------------


def _settings(project: Path, *overrides: str):
    from lensops.core.settings import load_settings

    command = json.dumps([sys.executable, "-c", "print('pipeline ran')"])
    return load_settings(project / "params.yaml", [f"retrain.command={command}", *overrides])


HOLD_LOCK = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_lock_skips_and_dies_with_its_holder(project, tmp_path):
    from monitoring.retrain import retrain

    settings = _settings(project, "retrain.cooldown_seconds=0")
    lock_path = settings.path(settings.retrain.lock_file)
    lock_path.parent.mkdir(parents=True)
    (tmp_path / "hold.py").write_text(HOLD_LOCK)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "hold.py"), str(lock_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        busy = retrain(settings, reason="test")
        assert busy.outcome == "skipped" and "another retraining holds" in busy.reason and busy.exit_code == 6
    finally:
        holder.kill()  # a retraining that dies without releasing anything
        holder.wait()
    outcome = retrain(settings, reason="test")  # the kernel released its lock: no stale-lock guessing
    assert outcome.outcome == "no_new_version" and outcome.exit_code == 3 and outcome.returncode == 0


RACE = """
import json, sys
from lensops.core.settings import load_settings
from monitoring.retrain import retrain
settings = load_settings(sys.argv[1], [f"retrain.command={sys.argv[2]}", "retrain.cooldown_seconds=0"])
print(json.dumps(retrain(settings, reason="race").to_dict()))
"""


def test_two_retrainings_started_together_run_one_pipeline(project, tmp_path):
    (tmp_path / "race.py").write_text(RACE)
    marker = tmp_path / "ran"
    slow = json.dumps([sys.executable, "-c", f"import time; open({str(marker)!r}, 'a').write('x'); time.sleep(3)"])
    racers = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "race.py"), str(project / "params.yaml"), slow],
            cwd=project,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(2)
    ]
    outcomes = sorted(json.loads(r.communicate(timeout=300)[0].strip().splitlines()[-1])["outcome"] for r in racers)
    assert outcomes == ["no_new_version", "skipped"] and marker.read_text() == "x"  # the pipeline ran once


def test_a_timeout_stops_the_whole_pipeline_process_group(project, tmp_path):
    from monitoring.retrain import retrain

    child = tmp_path / "child.pid"
    spawner = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    settings = _settings(project, "retrain.timeout_seconds=2").updated(
        {"retrain.command": [sys.executable, "-c", spawner]}
    )
    result = retrain(settings, reason="test", force=True)
    assert result.outcome == "failed" and "process group was stopped" in result.reason
    pid = int(child.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)  # the pipeline's own child went too
    assert (
        json.loads((settings.path(settings.retrain.state_file).parent / "retrain.json").read_text())["outcome"]
        == "failed"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie still answers kill 0
        return f.read().split(") ")[1][0] != "Z"


def test_cooldown_between_triggers_and_force(project, cli):
    from monitoring.retrain import retrain

    settings = _settings(project, "retrain.cooldown_seconds=3600")
    first = retrain(settings, reason="first")
    assert first.outcome == "no_new_version" and first.returncode == 0
    second = retrain(settings, reason="second")
    assert second.outcome == "skipped" and "cooling down" in second.reason
    forced = retrain(settings, reason="third", force=True)
    assert forced.outcome == "no_new_version"
    state = json.loads(settings.path(settings.retrain.state_file).read_text())
    assert state["reason"] == "third"
    report = json.loads((settings.path(settings.retrain.state_file).parent / "retrain.json").read_text())
    assert report["outcome"] == "no_new_version" and "registered no new version" in report["reason"]
    assert report["changed"] == ["no champion yet"]

    command = json.dumps([sys.executable, "-c", "print('pipeline ran')"])
    result = cli("retrain", "-S", f"retrain.command={command}")  # through the CLI: cooling down
    assert result.exit_code == 6 and "cooling down" in result.output


def test_a_failing_pipeline_is_reported_and_recorded(project):
    settings = _settings(project, "retrain.cooldown_seconds=0")
    failing = settings.updated({"retrain.command": [sys.executable, "-c", "raise SystemExit(7)"]})
    result = retrain_with(failing)
    assert result.outcome == "failed" and result.returncode == 7 and result.exit_code == 1
    run = mlflow_client(settings).get_run(result.run_id)
    assert run.info.status == "FAILED" and run.data.tags["lensops.retrain.outcome"] == "failed"
    missing = settings.updated({"retrain.command": ["no-such-lensops-tool"]})
    assert "not found" in retrain_with(missing).reason


def retrain_with(settings):
    from monitoring.retrain import retrain

    return retrain(settings, reason="test", force=True)
