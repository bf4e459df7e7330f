"""`lensops label ...`: turn captured production images into labelled training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import LensopsGroup, Overrides, err, out, settings_for

app = typer.Typer(no_args_is_help=True, cls=LensopsGroup, help="Labelling: export captured images, import labels.")


@app.command("export")
def label_export(
    ctx: typer.Context,
    n: Annotated[int | None, typer.Option("--n", help="Images in the batch (default label.batch_size).")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="balanced (default), novel, uncertain, diverse or random.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only images answered since this time (ISO 8601).")] = None,
    model: Annotated[str | None, typer.Option(help="Version whose answers to consider (default @champion).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where the batch folder goes.")] = None,
    overrides: Overrides = None,
) -> None:
    """Pick the captured images most worth labelling: a folder with the images, labels.csv and Label Studio tasks."""
    from monitoring.labelling import export_batch

    settings = settings_for(ctx, overrides)
    batch = export_batch(settings, n=n, strategy=strategy, since=since, model=model, out=out_dir)
    if batch.folder is None:
        excluded = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in batch.excluded.items())
        err.print(f"nothing to label: no captured image qualifies ({excluded})")
        raise typer.Exit(3)
    shown = batch.picked.head(10)
    table = Table(title=f"{batch.batch}: {len(batch.picked)} of {batch.candidates} candidates ({batch.strategy})")
    for column in ("sha256", "predicted", "score", "novelty", "requests"):
        table.add_column(column)
    for row in shown.itertuples(index=False):
        table.add_row(row.sha256[:12], row.label, f"{row.score:.3f}", f"{row.novelty:.2f}", str(row.requests))
    out.print(table)
    out.print(
        f"wrote {batch.folder}: fill the `label` column of labels.csv (or import tasks.json into Label Studio), "
        f"then `lensops label import {batch.folder / 'labels.csv'}`",
        soft_wrap=True,
    )


@app.command("import")
def label_import(
    ctx: typer.Context,
    source: Annotated[
        Path, typer.Argument(help="A filled labels.csv, a Label Studio JSON export, or <label>/<image>.")
    ],
    labelled_by: Annotated[str | None, typer.Option(help="Who labelled the batch (recorded as provenance).")] = None,
    skip_unlabelled: Annotated[bool, typer.Option(help="Leave out rows without a label instead of refusing.")] = False,
    version: Annotated[bool, typer.Option(help="Validate data/raw and `dvc add` it afterwards.")] = True,
    overrides: Overrides = None,
) -> None:
    """Add labelled images to data/raw with their provenance, all or nothing; then validate and version the data."""
    from data.labels import LabelImportRefused, import_labels, version_data

    settings = settings_for(ctx, overrides)
    try:
        result = import_labels(settings, source, labelled_by=labelled_by, skip_unlabelled=skip_unlabelled)
    except LabelImportRefused as e:
        table = Table(title=f"problems ({len(e.problems)})", title_justify="left")
        table.add_column("row", overflow="fold")
        table.add_column("problem", overflow="fold")
        for p in e.problems:
            table.add_row(escape(p["row"]), escape(p["problem"]))
        out.print(table)
        raise
    out.print(
        f"imported {len(result.imported)} images of batch {result.batch} into {settings.data.raw}, "
        f"relabelled {len(result.relabelled)} "
        f"({result.already_present} already there, {result.skipped_unlabelled} unlabelled rows left out)"
    )
    for record in result.relabelled[:20]:
        out.print(escape(f"relabelled {record['previous_path']} -> {record['path']}"), highlight=False, soft_wrap=True)
    if version and (result.imported or result.relabelled):
        outcome = version_data(settings)
        out.print(outcome.message, soft_wrap=True)
        if not outcome.ok:
            raise typer.Exit(1)
