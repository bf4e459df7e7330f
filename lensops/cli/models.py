"""Model commands: train, tune, review, promote, rollback, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import Overrides, out, settings_for


def register(app: typer.Typer) -> None:
    """Add the model commands to the top-level app."""
    for command in (train_command, tune_command, review_command, promote_command, rollback_command, models_command):
        app.command(command.__name__.removesuffix("_command"))(command)


def train_command(
    ctx: typer.Context,
    resume: Annotated[str | None, typer.Option(help="MLflow run id of a stopped run to continue.")] = None,
    overrides: Overrides = None,
) -> None:
    """Train with Ray Train (DDP), track in MLflow, register a version aliased `challenger`."""
    from training.train import train

    settings = settings_for(ctx, overrides)
    result = train(settings, resume=resume)
    table = Table(title="training", title_justify="left", show_header=False)
    table.add_row("MLflow run", result.run_id)
    table.add_row("model version", f"{settings.registry.model_name} v{result.model_version} (@challenger)")
    table.add_row("epochs", f"{result.epochs_run}" + (" (stopped early)" if result.stopped_early else ""))
    table.add_row("test accuracy", f"{result.test_metrics['accuracy']:.4f}")
    table.add_row("test macro F1", f"{result.test_metrics['macro_f1']:.4f}")
    worst = min(result.test_metrics["per_class"].items(), key=lambda kv: kv[1]["recall"])
    table.add_row("lowest class recall", f"{worst[0]}: {worst[1]['recall']:.4f}")
    out.print(table)


def tune_command(ctx: typer.Context, overrides: Overrides = None) -> None:
    """Search tune.space with Ray Tune and ASHA; every trial is an MLflow child run of one parent."""
    from training.tune import tune

    settings = settings_for(ctx, overrides)
    result = tune(settings)
    table = Table(title=f"trials (parent MLflow run {result.parent_run_id})", title_justify="left")
    for column in result.trials.columns:
        table.add_column(str(column), overflow="fold")
    for row in result.trials.itertuples(index=False):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_config.items())
    out.print(f"[bold]best[/]: {best}  val_accuracy {result.best_metrics['best_val_accuracy']:.4f}")
    out.print(f"train it with: {result.command}")


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
    live: Annotated[
        bool, typer.Option("--live", help="Judge on production traffic too: the challenger's shadow answers.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="With --live: shadowed requests since this time (2026-12-01T08:00).")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Challenger against champion on the same test split; gates; report; verdict on the version.

    Exit 0 when the verdict is promote, 3 when it is hold, 2 for a usage error.
    """
    from training.review import review

    settings = settings_for(ctx, overrides)
    if since is not None and not live:
        raise typer.BadParameter("--since needs --live", param_hint="--since")
    result = review(
        settings, challenger_ref=challenger, champion_ref=champion, report_dir=report_dir, extra_dir=extra,
        live=live, since=since,
    )  # fmt: skip
    _print_review(result)
    if result.verdict != "promote" and not hold_ok:
        raise typer.Exit(3)


def _print_review(result) -> None:
    models = result.contenders
    table = Table(title="review", title_justify="left")
    table.add_column("")
    for m in models:
        table.add_column(f"{m.role} v{m.version.version}", justify="right")
    for key in ("accuracy", "macro_f1", "ece"):
        table.add_row(key, *(f"{m.metrics[key]:.4f}" for m in models))
    for key in result.challenger.latency:
        table.add_row(f"latency {key}", *(f"{m.latency[key]:.3f}" for m in models))
    table.add_row("size MB", *(f"{m.size_mb:.2f}" for m in models))
    for name, first in sorted(result.challenger.slices.items()):
        accuracy = [f"{m.slices[name]['accuracy']:.4f}" if name in m.slices else "-" for m in models]
        table.add_row(f"accuracy on {name} ({first['n']})", *accuracy)
    out.print(table)
    if (evidence := result.challenger.live) is not None:
        _print_live(evidence)
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


def _print_live(live: dict) -> None:
    if not live["n"]:
        out.print(f"live: no request answered by v{live['champion_version']} was shadowed by "
                  f"v{live['challenger_version']} ({live['shadow_records']} shadow records)")  # fmt: skip
        return
    table = Table(title=f"live: {live['n']} shadowed requests, agreement {live['agreement']:.3f}", title_justify="left")
    for column in ("champion's label", "requests", "agreement"):
        table.add_column(column, justify="right")
    for name, c in sorted(live["per_class"].items()):
        table.add_row(name, str(c["n"]), f"{c['agreement']:.3f}")
    out.print(table)
    if (labelled := live["labelled"])["n"]:
        out.print(f"live accuracy on {labelled['n']} labelled: champion {labelled['champion_accuracy']:.3f}, "
                  f"challenger {labelled['challenger_accuracy']:.3f}")  # fmt: skip


def promote_command(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="Version to promote (default: the challenger).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; recorded on the version.")] = None,
    force: Annotated[bool, typer.Option(help="Promote without a passing review (needs --reason).")] = False,
    overrides: Overrides = None,
) -> None:
    """Move @champion to a version whose latest review passed; the old champion becomes @previous."""
    from training.promotion import promote

    settings = settings_for(ctx, overrides)
    move = promote(settings, version, reason=reason, force=force)
    if not move.changed:
        out.print(f"{settings.registry.model_name} v{move.champion} is already @champion; nothing changed")
        return
    previous = f"; v{move.previous} is now @previous" if move.previous else ""
    out.print(
        f"[green]promoted[/] {settings.registry.model_name} v{move.champion} to @champion ({move.reason}){previous}"
    )


def rollback_command(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why; recorded on the version.")] = None,
    overrides: Overrides = None,
) -> None:
    """Point @champion back at @previous."""
    from training.promotion import rollback

    settings = settings_for(ctx, overrides)
    move = rollback(settings, reason=reason)
    out.print(f"[green]rolled back[/]: v{move.champion} is @champion again; v{move.previous} is @previous")


def models_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    overrides: Overrides = None,
) -> None:
    """The registered versions: aliases, test accuracy, data version, created, review verdict."""
    from training.promotion import list_models

    settings = settings_for(ctx, overrides)
    frame = list_models(settings)
    if as_json:
        typer.echo(frame.to_json(orient="records", indent=2))
        return
    table = Table(title=f"model {settings.registry.model_name}", title_justify="left")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*("" if v is None or v != v else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
