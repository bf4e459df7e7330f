"""Lineage commands: trace an answer back to its version, run, code and data; a model card for a version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import Overrides, out, settings_for


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)
    app.command("card")(card_command)


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
