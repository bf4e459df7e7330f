"""Operating a model: serve, drift, retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lensops.core.settings import Settings

from .common import Overrides, fail, out, settings_for


def register(app: typer.Typer) -> None:
    """Add the operating commands to the top-level app."""
    for command in (serve_command, drift_command, retrain_command, monitor_command):
        app.command(command.__name__.removesuffix("_command"))(command)


def _print_drift(result) -> None:
    table = Table(title=f"drift of {result.model['name']} v{result.model['version']}", title_justify="left")
    for column in ("check", "method", "score", "threshold", "drift"):
        table.add_column(column)
    score = "" if result.score is None else f"{result.score:.4f}"
    flag = {"drift": "[red]yes[/]", "no_drift": "[green]no[/]"}.get(result.verdict, "[yellow]too few[/]")
    table.add_row("[bold]verdict", result.method, score, f"{result.threshold:g}", flag)
    for name, check in result.details.items():
        if isinstance(check, dict) and "drift" in check:
            mark = "[red]yes[/]" if check["drift"] else "[green]no[/]"
            table.add_row(name, check["method"], f"{check['score']:.4g}", f"{check['threshold']:g}", mark)
    out.print(table)
    _print_breakdown(result.details.get("breakdown"))
    for skipped in result.skipped_files:
        out.print(f"[yellow]skipped[/] {escape(skipped['file'])}: {escape(skipped['reason'])}", soft_wrap=True)
    out.print(
        f"{result.n_current} production records against {result.n_reference} baseline; "
        f"verdict [bold]{result.verdict}[/] in {result.seconds_to_verdict:.2f} s"
        + (f". Report: {result.report_html}" if result.report_html else "")
    )
    if result.verdict == "too_few_records":
        out.print(result.details.get("reason", ""))


def _print_breakdown(breakdown: dict | None) -> None:
    """The flagged classes and clusters: what moved, and where its images are."""
    import os

    where = lambda c: escape(os.path.relpath(c["grid"])) if c.get("grid") else ""  # noqa: E731
    if not breakdown or not (breakdown["flagged_classes"] or breakdown["flagged_clusters"]):
        return
    table = Table(title="what moved", title_justify="left")
    for column in ("group", "production", "baseline", "novel", "why", "images"):
        table.add_column(column)
    for c in (c for c in breakdown["classes"] if c["flagged"]):
        table.add_row(
            f"predicted {escape(c['label'])}", f"{c['production_share']:.1%}", f"{c['baseline_share']:.1%}",
            f"{c['novel_share']:.0%}", c["why"], where(c),
        )  # fmt: skip
    for c in (c for c in breakdown["clusters"] if c["flagged"]):
        labels = ", ".join(f"{escape(k)} x{v}" for k, v in c["dominant_labels"].items())
        table.add_row(
            f"cluster {c['cluster']}", f"{c['production_share']:.1%}", f"{c['baseline_share']:.1%}", "",
            f"said {labels}", where(c),
        )  # fmt: skip
    out.print(table)


def drift_command(
    ctx: typer.Context,
    last: Annotated[int | None, typer.Option(help="Only the last N production records.")] = None,
    since: Annotated[str | None, typer.Option(help="Only records since this time (ISO 8601).")] = None,
    model: Annotated[str | None, typer.Option(help="Version, alias or models:/ URI (default @champion).")] = None,
    report_dir: Annotated[Path | None, typer.Option(help="Where drift.json and drift.html go.")] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Run the retraining pipeline when drift is found.")
    ] = False,
    html: Annotated[bool, typer.Option(help="Render the HTML report after the verdict.")] = True,
    overrides: Overrides = None,
) -> None:
    """Production embeddings against the served version's baseline (Evidently).

    Exit 0 no drift, 4 drift, 5 too few records to judge, 2 a usage error.
    With --retrain and drift: the retraining's outcome is printed; exit 1 if its pipeline failed.
    """
    from monitoring.drift import run_drift

    settings = settings_for(ctx, overrides)
    if last is not None and since is not None:
        fail("give --last or --since, not both")
    result = run_drift(settings, model=model, last=last, since=since, report_dir=report_dir, html=html)
    _print_drift(result)
    if retrain and result.verdict == "drift":
        outcome = _retrain(
            settings, reason=f"drift run {result.run_id}: score {result.score:.3f}", drift_run_id=result.run_id
        )
        if outcome.outcome == "nothing_new":
            _ask_for_labels(settings, model)
            raise typer.Exit(outcome.exit_code)
        if outcome.outcome == "failed":
            raise typer.Exit(1)
    raise typer.Exit(result.exit_code)


def _ask_for_labels(settings: Settings, model: str | None) -> Path | None:
    """Drift, and nothing new to train on: what is needed is labels, so a labelling batch is exported."""
    from monitoring.labelling import export_batch

    batch = export_batch(settings, model=model)
    if batch.folder is None:
        out.print("[yellow]no captured image is left to label[/]: capture more production images (monitoring.capture)")
        return None
    out.print(
        f"[bold yellow]labels needed[/]: {len(batch.picked)} images wait in {batch.folder}; fill its labels.csv "
        f"(or label tasks.json in Label Studio), then `lensops label import {batch.folder / 'labels.csv'}` "
        "and `lensops retrain`",
        soft_wrap=True,
    )
    return batch.folder


def _retrain(settings: Settings, *, reason: str, drift_run_id: str | None = None, force: bool = False, on_start=None):
    from monitoring.retrain import retrain
    from training.promotion import promote

    def promote_version(version: str, why: str) -> None:
        promote(settings, version, reason=why)

    result = retrain(
        settings,
        reason=reason,
        drift_run_id=drift_run_id,
        force=force,
        promote=promote_version,
        echo=out.print,
        on_start=on_start,
    )
    colour = {"promoted": "green", "trained": "green", "failed": "red"}.get(result.outcome, "yellow")
    out.print(f"retrain: [bold {colour}]{result.outcome}[/]: {escape(result.reason)}")
    if result.run_id:
        out.print(
            f"MLflow retrain run {result.run_id}"
            + (f", training run {result.training_run_id}" if result.training_run_id else "")
        )
    return result


def retrain_command(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why; recorded on the retrain run.")] = "requested",
    drift_run: Annotated[str | None, typer.Option(help="The MLflow drift run that triggered this.")] = None,
    force: Annotated[bool, typer.Option(help="Ignore the cooldown (never the lock).")] = False,
    overrides: Overrides = None,
) -> None:
    """Run the retraining pipeline (retrain.command, default `dvc repro`), then promote if the review passed.

    Exit 0 promoted (or trained with promotion off), 3 held or nothing new, 6 skipped (another
    retraining runs, or cooling down), 1 the pipeline failed.
    """
    settings = settings_for(ctx, overrides)
    result = _retrain(settings, reason=reason, drift_run_id=drift_run, force=force)
    raise typer.Exit(result.exit_code)


def serve_command(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Version, alias or models:/ URI (default @champion).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
    shadow: Annotated[
        str | None, typer.Option(help="A version or alias also run on answered images, after the answer.")
    ] = None,
    shadow_fraction: Annotated[
        float | None, typer.Option(min=0, max=1, help="Share of answered images the shadow sees (default 1).")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Serve the model with Ray Serve in the foreground; Ctrl-C or SIGTERM stops it cleanly."""
    from serving.server import run_foreground

    settings = settings_for(ctx, overrides)
    given = {"serve.shadow": shadow, "serve.shadow_fraction": shadow_fraction}
    settings = settings.updated({k: v for k, v in given.items() if v is not None})
    run_foreground(
        settings, model, host=host, port=port,
        on_ready=lambda url: out.print(f"serving at {url} (docs at {url}/docs); Ctrl-C to stop"),
    )  # fmt: skip
    out.print("stopped")


def monitor_command(
    ctx: typer.Context,
    every: Annotated[str | None, typer.Option(help="Between iterations: 90s, 15m, 2h (default monitor.every).")] = None,
    retrain: Annotated[
        bool | None, typer.Option("--retrain/--no-retrain", help="Retrain on drift (default monitor.retrain).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(min=1, help="Stop after this many iterations.")] = None,
    html: Annotated[bool, typer.Option(help="Render each iteration's HTML report.")] = True,
    overrides: Overrides = None,
) -> None:
    """Drift (and retraining) on a schedule, in the foreground; each change of state goes to monitor.webhooks.

    SIGTERM or Ctrl-C stops it once the iteration in progress is done (exit 0).
    """
    from monitoring.monitor import Monitor

    settings = settings_for(ctx, overrides)
    changes = {k: v for k, v in {"monitor.every": every, "monitor.retrain": retrain}.items() if v is not None}
    if changes:
        settings = settings.updated(changes)

    def retrain_on_drift(result, on_start):
        reason = f"monitor: drift run {result.run_id}, score {result.score:.3f}"
        outcome = _retrain(settings, reason=reason, drift_run_id=result.run_id, on_start=on_start)
        batch = _ask_for_labels(settings, None) if outcome.outcome == "nothing_new" else None
        return outcome, batch

    retrain_fn = retrain_on_drift if settings.monitor.retrain else None
    monitor = Monitor(settings, retrain=retrain_fn, echo=out.print, html=html)
    raise typer.Exit(monitor.run(iterations))
