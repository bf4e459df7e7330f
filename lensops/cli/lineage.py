"""Lineage commands: trace an answer back to its version, run, code and data; reproduce a version; its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import Overrides, fail, out, settings_for


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
    app.command("card")(card_command)
    app.command("reproduce")(reproduce_command)


def card_command(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="A version reference (default @champion).")] = None,
    intended_use: Annotated[str | None, typer.Option("--intended-use", help="What the model is for.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for card.md, card.html and the chart.")] = None,
    overrides: Overrides = None,
) -> None:
    """A model card (Markdown and self-contained HTML) for a version, logged to its training run."""
    from training.card import DEFAULT_USE, card

    written = card(settings_for(ctx, overrides), version, intended_use=intended_use or DEFAULT_USE, out=out_dir)
    logged = f"; logged to run {written.run_id} under card/" if written.run_id else ""
    out.print(f"model card: {escape(str(written.md))} and {escape(str(written.html))}{logged}", soft_wrap=True)


def trace_command(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request id an answer carried (its `request_id`).")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="How many nearest training images.")] = 8,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for trace.json and the grid.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The trace as JSON.")] = False,
    overrides: Overrides = None,
) -> None:
    """One answer back to its version, training run, commit, data, review, promotions and nearest training images."""
    from training.trace import trace

    result = trace(settings_for(ctx, overrides), request_id, k=k, out=out_dir)
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
        return
    request, version, run = result.request, result.version, result.run
    table = Table(title=f"trace of {escape(request_id)}", title_justify="left", show_header=False)
    table.add_row("answer", f"{escape(str(request['label']))} (score {request['score']:.3f}) at {request['time']}")
    table.add_row("version", f"{version['name']} v{version['version']} {' '.join('@' + a for a in version['aliases'])}")
    table.add_row("training run", f"{run.get('run_id', '')} ({run.get('status', 'unknown')})")
    for key in ("git_commit", "data_hash", "raw_hash", "params_hash", "test_accuracy"):
        table.add_row(key.replace("_", " "), escape(str(version[key])))
    review = result.review
    if review:
        failed = ", ".join(review["failed_gates"]) or "none"
        table.add_row("review", f"{review['verdict']} against v{review['champion'] or '-'} by {review['by']} at "
                                f"{review['at']}; failed gates: {failed}")  # fmt: skip
    for move in result.moves:
        why = escape(move.get("reason", ""))
        table.add_row(f"made @{move['alias']}", f"{move['set_at']} by {escape(move.get('set_by', ''))}: {why}")
    out.print(table)
    neighbours = Table(title=f"nearest training images ({escape(result.neighbours_from)})", title_justify="left")
    for column in ("distance", "label", "image", "source"):
        neighbours.add_column(column)
    for n in result.neighbours:
        source = n["source"] + (f" ({n['batch']}, labelled by {n['labelled_by']})" if n["batch"] else "")
        neighbours.add_row(f"{n['distance']:.4f}", escape(str(n["label"])), escape(n["path"]), escape(source))
    out.print(neighbours)
    out.print(f"grid: {escape(result.files['grid'])}; JSON: {escape(result.files['json'])}", soft_wrap=True)


def reproduce_command(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="A version reference: 3, @champion, models:/name/3.")],
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when the reproduction falls outside the tolerances.")
    ] = False,
    allow_dirty: Annotated[
        bool, typer.Option("--allow-dirty", help="Reproduce a version trained on uncommitted changes from its commit.")
    ] = False,
    remote: Annotated[
        str | None, typer.Option("--remote", help="DVC remote (name or URL); default LENSOPS_DVC_REMOTE, else DVC's.")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register the reproduced model as a new version.")
    ] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the worktree the reproduction trained in.")] = False,
    accuracy_points: Annotated[
        float, typer.Option("--accuracy-tolerance", min=0, help="Test accuracy, in points.")
    ] = 0.5,
    recall_points: Annotated[
        float, typer.Option("--recall-tolerance", min=0, help="Each class's recall, in points.")
    ] = 2.0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the reproduction report.")] = None,
    overrides: Overrides = None,
) -> None:
    """Train a version again from its recorded commit, data version and params, and compare the two."""
    from training.reproduce import reproduce

    result = reproduce(
        settings_for(ctx, overrides), version, allow_dirty=allow_dirty, remote=remote, register=register, keep=keep,
        tolerances=(accuracy_points, recall_points), out=out_dir,
    )  # fmt: skip
    table = Table(title=f"reproduction of {escape(result.version)}: {result.verdict}", title_justify="left")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for c in result.checks:
        table.add_row(escape(c.name), "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail))
    out.print(table)
    registered = f"; registered as version {result.registered}" if result.registered else ""
    out.print(f"report: {escape(result.files['markdown'])}; MLflow run {result.run_id}{registered}", soft_wrap=True)
    if check and not result.ok:
        fail(f"{result.version} did not reproduce: " + ", ".join(c.name for c in result.checks if not c.passed), 1)
