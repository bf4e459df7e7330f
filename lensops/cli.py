"""The `lensops` command line. Each command loads settings, calls one stage function, shows the result.

Exit codes: 0 success, 1 the data or model failed a check, 2 a usage or settings error.
Stage packages are imported inside the commands, so `lensops --help` stays fast and this
module depends on no stage at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lensops.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="lensops: the lifecycle of image models.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the demo digits, validation, splits.")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

Overrides = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", help="Override a params.yaml value, e.g. -S prepare.seed=7 (repeatable)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    # Unwrapped, so paths in the message stay whole for copying and grepping.
    # Escaped: messages quote user input and lists like [low, high], which are not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_for(ctx: typer.Context, overrides: list[str] | None) -> Settings:
    try:
        return load_settings(ctx.obj.get("params") if ctx.obj else None, overrides or [])
    except SettingsError as e:
        fail(str(e))


@app.callback()
def main(
    ctx: typer.Context,
    params: Annotated[
        Path | None, typer.Option("--params", envvar="LENSOPS_PARAMS", help="Params file (default ./params.yaml).")
    ] = None,
) -> None:
    # Great Expectations would otherwise send usage analytics; lensops never phones home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ctx.obj = {"params": params}


@app.command("config")
def show_config(ctx: typer.Context, overrides: Overrides = None) -> None:
    """Print the settings in force: params.yaml with overrides applied, as JSON."""
    settings = settings_for(ctx, overrides)
    out.print_json(json.dumps({"root": str(settings.root), **settings.model_dump(mode="json", by_alias=True)}))


@data_app.command("demo")
def data_demo(
    ctx: typer.Context,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write (default data.raw).")] = None,
    overrides: Overrides = None,
) -> None:
    """Write scikit-learn's handwritten digits as PNG files, one folder per digit."""
    from data.demo import write_digits

    settings = settings_for(ctx, overrides)
    target = out_dir or settings.path(settings.data.raw)
    counts = write_digits(target, size=settings.demo.size)
    out.print(f"wrote {sum(counts.values())} digits ({settings.demo.size}x{settings.demo.size} PNG) to {target}")


@data_app.command("traffic")
def data_traffic(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write <label>/<image>.png.")],
    split: Annotated[list[str] | None, typer.Option(help="Split(s) of data/prepared to take (default test).")] = None,
    shift: Annotated[bool, typer.Option(help="Apply the demo's distribution shift (blur, dark, tilt, noise).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the shift.")] = 0,
    overrides: Overrides = None,
) -> None:
    """Write the images of a prepared split as production traffic, optionally shifted (for demos and tests)."""
    from data.demo import write_traffic

    settings = settings_for(ctx, overrides)
    try:
        counts = write_traffic(
            settings.path(settings.data.prepared), out_dir, splits=tuple(split or ["test"]), shift=shift, seed=seed
        )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    kind = f"shifted (seed {seed})" if shift else "clean"
    out.print(f"wrote {sum(counts.values())} {kind} images of {', '.join(split or ['test'])} to {out_dir}")


@data_app.command("validate")
def data_validate(
    ctx: typer.Context,
    raw: Annotated[Path | None, typer.Option(help="Image folder, one subfolder per class (default data.raw).")] = None,
    report: Annotated[Path | None, typer.Option(help="JSON report (default validate.report).")] = None,
    quarantine: Annotated[
        Path | None, typer.Option(help="Move bad files here, with their reasons in quarantine.jsonl.")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Check every image (decodes, format, size, pixel limit, duplicates, class balance). Exit 1 if invalid."""
    from data.validation import validate_dataset

    settings = settings_for(ctx, overrides)
    try:
        result = validate_dataset(settings, raw=raw, report_path=report, quarantine_dir=quarantine)
    except FileNotFoundError as e:
        fail(str(e))
    _print_validation(result)
    report_path = report or settings.path(settings.validate_.report)
    if result.quarantined:
        dest = quarantine
        out.print(f"moved {len(result.quarantined)} bad files to {dest} (reasons in {dest}/quarantine.jsonl)")
    if result.ok:
        out.print(f"[green]valid[/]: {result.n_images} images in {result.n_classes} classes. Report: {report_path}")
    else:
        out.print(f"[red]invalid[/]: see the table above. Report: {report_path}")
        raise typer.Exit(1)


def _print_validation(result) -> None:
    checks = Table(title="checks", title_justify="left")
    checks.add_column("expectation")
    checks.add_column("")
    checks.add_column("detail", overflow="fold")
    for e in result.expectations:
        checks.add_row(e.name, "[green]pass[/]" if e.success else "[red]FAIL[/]", e.detail)
    out.print(checks)
    if result.bad_files:
        shown = result.bad_files[:50]
        bad = Table(title=f"bad files ({len(result.bad_files)})", title_justify="left")
        bad.add_column("file", overflow="fold")
        bad.add_column("reason", overflow="fold")
        for b in shown:
            bad.add_row(b["path"], b["reason"])
        out.print(bad)
        if len(result.bad_files) > len(shown):
            out.print(f"… and {len(result.bad_files) - len(shown)} more in the report")
    if result.near_duplicates:
        n = sum(len(g) for g in result.near_duplicates)
        out.print(f"near-duplicate groups: {len(result.near_duplicates)} ({n} images; listed in the report)")


@data_app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    raw: Annotated[Path | None, typer.Option(help="Image folder (default data.raw).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default data.prepared).")] = None,
    overrides: Overrides = None,
) -> None:
    """Split a valid dataset into train/val/test: manifest.parquet and classes.json."""
    from data.prepare import SPLITS, DatasetInvalidError, prepare_dataset

    settings = settings_for(ctx, overrides)
    try:
        prepared = prepare_dataset(settings, raw=raw, out=out_dir)
    except FileNotFoundError as e:
        fail(str(e))
    except DatasetInvalidError as e:
        fail(str(e), code=1)
    table = Table(title="splits", title_justify="left")
    table.add_column("class")
    for s in SPLITS:
        table.add_column(s, justify="right")
    for c in prepared.classes:
        table.add_row(c, *(str(prepared.counts[s].get(c, 0)) for s in SPLITS))
    table.add_row("[bold]all", *(f"[bold]{sum(prepared.counts[s].values())}" for s in SPLITS))
    out.print(table)
    target = out_dir or settings.path(settings.data.prepared)
    out.print(f"wrote {target}/manifest.parquet and classes.json; split sizes in metrics/data.json")


@data_app.command("diff")
def data_diff(
    ctx: typer.Context,
    rev_a: Annotated[str, typer.Argument(help="Git revision of the .dvc file to compare from.")] = "HEAD",
    rev_b: Annotated[str | None, typer.Argument(help="Git revision to compare to (default: the working tree).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    overrides: Overrides = None,
) -> None:
    """Images added, removed and relabelled between two versions of data/raw.dvc, per class."""
    from data.diff import DiffError, diff_data

    settings = settings_for(ctx, overrides)
    raw = settings.path(settings.data.raw)
    try:
        target = raw.resolve().relative_to(settings.root.resolve()).as_posix()
        result = diff_data(settings.root, rev_a, rev_b, target)
    except ValueError as e:  # DiffError, or data.raw outside the project
        fail(str(e) if isinstance(e, DiffError) else f"data.raw ({raw}) is not inside the project {settings.root}")
    if as_json:
        typer.echo(result.to_json())
        return
    _print_diff(result)


def _print_diff(result) -> None:
    table = Table(title=f"data/raw: {result.rev_a} -> {result.rev_b}", title_justify="left")
    for column in ("class", "before", "after", "added", "removed", "relabelled in", "relabelled out", "share"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c in result.classes:
        change = f"{c['share_before']:.1%} -> {c['share_after']:.1%} ({c['share_change']:+.1%})"
        counts = [c[k] for k in ("before", "after", "added", "removed", "relabelled_in", "relabelled_out")]
        table.add_row(escape(c["label"]), *(str(v) for v in counts), change)
    table.add_row("[bold]all", f"[bold]{result.n_before}", f"[bold]{result.n_after}", str(len(result.added)),
                  str(len(result.removed)), str(len(result.relabelled)), "", "")  # fmt: skip
    out.print(table)
    for r in result.relabelled[:20]:
        moved = f"relabelled {', '.join(r['paths_before'])} -> {', '.join(r['paths_after'])}"
        out.print(escape(moved), highlight=False, soft_wrap=True)
    if len(result.relabelled) > 20:
        out.print(f"… and {len(result.relabelled) - 20} more relabelled images (--json lists them all)")
    sources = sorted({r["source"] for r in result.provenance})
    if sources:
        named = sum(1 for a in result.added if "provenance" in a)
        out.print(f"provenance: {len(result.provenance)} records in {', '.join(sources)}; "
                  f"{named} of {len(result.added)} added images named there", soft_wrap=True)  # fmt: skip


@app.command("train")
def train_command(
    ctx: typer.Context,
    resume: Annotated[str | None, typer.Option(help="MLflow run id of a stopped run to continue.")] = None,
    overrides: Overrides = None,
) -> None:
    """Train with Ray Train (DDP), track in MLflow, register a version aliased `challenger`."""
    from data.transforms import AugmentationError
    from training.models import ModelError
    from training.train import TrainingError, train

    settings = settings_for(ctx, overrides)
    try:
        result = train(settings, resume=resume)
    except (AugmentationError, ModelError, ValueError) as e:
        fail(str(e))
    except TrainingError as e:
        fail(str(e), code=1)
    table = Table(title="training", title_justify="left", show_header=False)
    table.add_row("MLflow run", result.run_id)
    table.add_row("model version", f"{settings.registry.model_name} v{result.model_version} (@challenger)")
    table.add_row("epochs", f"{result.epochs_run}" + (" (stopped early)" if result.stopped_early else ""))
    table.add_row("test accuracy", f"{result.test_metrics['accuracy']:.4f}")
    table.add_row("test macro F1", f"{result.test_metrics['macro_f1']:.4f}")
    worst = min(result.test_metrics["per_class"].items(), key=lambda kv: kv[1]["recall"])
    table.add_row("lowest class recall", f"{worst[0]}: {worst[1]['recall']:.4f}")
    out.print(table)


@app.command("tune")
def tune_command(ctx: typer.Context, overrides: Overrides = None) -> None:
    """Search tune.space with Ray Tune and ASHA; every trial is an MLflow child run of one parent."""
    from data.transforms import AugmentationError
    from training.models import ModelError
    from training.train import TrainingError
    from training.tune import tune

    settings = settings_for(ctx, overrides)
    try:
        result = tune(settings)
    except (AugmentationError, ModelError, ValueError) as e:
        fail(str(e))
    except TrainingError as e:
        fail(str(e), code=1)
    table = Table(title=f"trials (parent MLflow run {result.parent_run_id})", title_justify="left")
    for column in result.trials.columns:
        table.add_column(str(column), overflow="fold")
    for row in result.trials.itertuples(index=False):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_config.items())
    out.print(f"[bold]best[/]: {best}  val_accuracy {result.best_metrics['best_val_accuracy']:.4f}")
    out.print(f"train it with: {result.command}")


@app.command("review")
def review_command(
    ctx: typer.Context,
    challenger: Annotated[
        str | None, typer.Option(help="Version, alias or models:/ URI (default @challenger).")
    ] = None,
    champion: Annotated[str | None, typer.Option(help="Version, alias or models:/ URI (default @champion).")] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where review.json and review.html go (default review.report_dir).")
    ] = None,
    extra: Annotated[Path | None, typer.Option(help="A labelled production sample: <label>/<image> files.")] = None,
    hold_ok: Annotated[bool, typer.Option("--hold-ok", help="Exit 0 on a hold verdict too (for pipelines).")] = False,
    overrides: Overrides = None,
) -> None:
    """Challenger against champion on the same test split; gates; report; verdict on the version.

    Exit 0 when the verdict is promote, 3 when it is hold, 2 for a usage error.
    """
    from training.review import ReviewError, review

    settings = settings_for(ctx, overrides)
    try:
        result = review(
            settings, challenger_ref=challenger, champion_ref=champion, report_dir=report_dir, extra_dir=extra
        )
    except ReviewError as e:
        fail(str(e))
    models = [m for m in (result.challenger, result.champion) if m is not None]
    table = Table(title="review", title_justify="left")
    table.add_column("")
    for m in models:
        table.add_column(f"{m.role} v{m.version}", justify="right")
    for key in ("accuracy", "macro_f1", "ece"):
        table.add_row(key, *(f"{m.metrics[key]:.4f}" for m in models))
    for key in result.challenger.latency:
        table.add_row(f"latency {key}", *(f"{m.latency[key]:.3f}" for m in models))
    table.add_row("size MB", *(f"{m.size_mb:.2f}" for m in models))
    out.print(table)
    gates = Table(title="gates", title_justify="left")
    for column in ("gate", "value", "threshold", "result", "detail"):
        gates.add_column(column)
    for g in result.gates:
        gates.add_row(
            g.name, f"{g.value:.4f}", f"{g.threshold:g}", "[green]pass[/]" if g.passed else "[red]FAIL[/]", g.detail
        )
    out.print(gates)
    if result.champion is None:
        out.print("no champion yet: only the absolute gates apply")
    colour = "green" if result.verdict == "promote" else "yellow"
    out.print(f"verdict: [bold {colour}]{result.verdict}[/]. Report: {result.report_dir / 'review.html'}")
    if result.verdict != "promote" and not hold_ok:
        raise typer.Exit(3)


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Version to promote (default: the challenger).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; recorded on the version.")] = None,
    force: Annotated[bool, typer.Option(help="Promote without a passing review (needs --reason).")] = False,
    overrides: Overrides = None,
) -> None:
    """Move @champion to a version whose latest review passed; the old champion becomes @previous."""
    from training.promotion import PromotionRefused, promote
    from training.review import ReviewError

    settings = settings_for(ctx, overrides)
    try:
        move = promote(settings, version, reason=reason, force=force)
    except ReviewError as e:
        fail(str(e))
    except PromotionRefused as e:
        fail(f"refused: {e}", code=1)
    if not move.changed:
        out.print(f"{settings.registry.model_name} v{move.champion} is already @champion; nothing changed")
        return
    previous = f"; v{move.previous} is now @previous" if move.previous else ""
    out.print(
        f"[green]promoted[/] {settings.registry.model_name} v{move.champion} to @champion ({move.reason}){previous}"
    )


@app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why; recorded on the version.")] = None,
    overrides: Overrides = None,
) -> None:
    """Point @champion back at @previous."""
    from training.promotion import PromotionRefused, rollback
    from training.review import ReviewError

    settings = settings_for(ctx, overrides)
    try:
        move = rollback(settings, reason=reason)
    except ReviewError as e:
        fail(str(e))
    except PromotionRefused as e:
        fail(f"refused: {e}", code=1)
    out.print(f"[green]rolled back[/]: v{move.champion} is @champion again; v{move.previous} is @previous")


@app.command("models")
def models_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    overrides: Overrides = None,
) -> None:
    """The registered versions: aliases, test accuracy, data version, created, review verdict."""
    from training.promotion import list_models
    from training.review import ReviewError

    settings = settings_for(ctx, overrides)
    try:
        frame = list_models(settings)
    except ReviewError as e:
        fail(str(e))
    if as_json:
        typer.echo(frame.to_json(orient="records", indent=2))
        return
    table = Table(title=f"model {settings.registry.model_name}", title_justify="left")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*("" if v is None or v != v else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)


def _print_drift(result) -> None:
    table = Table(title=f"drift of {result.model['name']} v{result.model['version']}", title_justify="left")
    for column in ("check", "method", "score", "threshold", "drift"):
        table.add_column(column)
    score = "" if result.score is None else f"{result.score:.4f}"
    flag = {"drift": "[red]yes[/]", "no_drift": "[green]no[/]"}.get(result.verdict, "[yellow]too few[/]")
    table.add_row("embeddings", result.method, score, f"{result.threshold:g}", flag)
    for name, check in result.details.items():
        if isinstance(check, dict) and "drift" in check:
            mark = "[red]yes[/]" if check["drift"] else "[green]no[/]"
            table.add_row(name, check["method"], f"{check['score']:.4g}", f"{check['threshold']:g}", mark)
    out.print(table)
    out.print(
        f"{result.n_current} production records against {result.n_reference} baseline; "
        f"verdict [bold]{result.verdict}[/] in {result.seconds_to_verdict:.2f} s"
        + (f". Report: {result.report_html}" if result.report_html else "")
    )
    if result.verdict == "too_few_records":
        out.print(result.details.get("reason", ""))


@app.command("drift")
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
    from monitoring.drift import DriftError, run_drift

    settings = settings_for(ctx, overrides)
    if last is not None and since is not None:
        fail("give --last or --since, not both")
    try:
        result = run_drift(settings, model=model, last=last, since=since, report_dir=report_dir, html=html)
    except DriftError as e:
        fail(str(e))
    _print_drift(result)
    if retrain and result.verdict == "drift":
        outcome = _retrain(
            settings, reason=f"drift run {result.run_id}: score {result.score:.3f}", drift_run_id=result.run_id
        )
        if outcome.outcome == "failed":
            raise typer.Exit(1)
    raise typer.Exit(result.exit_code)


def _retrain(settings: Settings, *, reason: str, drift_run_id: str | None = None, force: bool = False):
    from monitoring.retrain import retrain
    from training.promotion import promote

    def promote_version(version: str, why: str) -> None:
        promote(settings, version, reason=why)

    result = retrain(
        settings, reason=reason, drift_run_id=drift_run_id, force=force, promote=promote_version, echo=out.print
    )
    colour = {"promoted": "green", "trained": "green", "failed": "red"}.get(result.outcome, "yellow")
    out.print(f"retrain: [bold {colour}]{result.outcome}[/]: {escape(result.reason)}")
    if result.run_id:
        out.print(
            f"MLflow retrain run {result.run_id}"
            + (f", training run {result.training_run_id}" if result.training_run_id else "")
        )
    return result


@app.command("retrain")
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


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Version, alias or models:/ URI (default @champion).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
    overrides: Overrides = None,
) -> None:
    """Serve the model with Ray Serve in the foreground; Ctrl-C or SIGTERM stops it cleanly."""
    from serving.server import ServeError, run_foreground

    settings = settings_for(ctx, overrides)
    try:
        run_foreground(
            settings, model, host=host, port=port,
            on_ready=lambda url: out.print(f"serving at {url} (docs at {url}/docs); Ctrl-C to stop"),
        )  # fmt: skip
    except ServeError as e:
        fail(str(e))
    out.print("stopped")


if __name__ == "__main__":
    app()
