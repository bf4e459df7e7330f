"""`lensops data ...`: the demo digits, demo traffic, validation, splits, diffs and the label audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import LensopsGroup, Overrides, fail, out, settings_for

app = typer.Typer(no_args_is_help=True, cls=LensopsGroup, help="Datasets: the demo digits, validation, splits, audit.")


@app.command("demo")
def data_demo(
    ctx: typer.Context,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write (default data.raw).")] = None,
    overrides: Overrides = None,
) -> None:
    """Write scikit-learn's handwritten digits as PNG files, one folder per digit."""
    from data.digits import write_digits

    settings = settings_for(ctx, overrides)
    target = out_dir or settings.path(settings.data.raw)
    counts = write_digits(target, size=settings.demo.size)
    out.print(f"wrote {sum(counts.values())} digits ({settings.demo.size}x{settings.demo.size} PNG) to {target}")


@app.command("traffic")
def data_traffic(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write <label>/<image>.png.")],
    split: Annotated[list[str] | None, typer.Option(help="Split(s) of data/prepared to take (default test).")] = None,
    shift: Annotated[bool, typer.Option(help="Apply a distribution shift (see --shift-kind).")] = False,
    shift_kind: Annotated[
        str, typer.Option(help="scanner (blurred, dark, tilted, noisy) or inverted (dark ink on a light page).")
    ] = "scanner",
    seed: Annotated[int, typer.Option(help="Seed of the shift.")] = 0,
    overrides: Overrides = None,
) -> None:
    """Write the images of a prepared split as production traffic, optionally shifted (for demos and tests)."""
    from data.digits import write_traffic

    settings = settings_for(ctx, overrides)
    counts = write_traffic(
        settings.path(settings.data.prepared),
        out_dir,
        splits=tuple(split or ["test"]),
        shift=shift_kind if shift else False,
        seed=seed,
    )
    kind = f"{shift_kind} (seed {seed})" if shift else "clean"
    out.print(f"wrote {sum(counts.values())} {kind} images of {', '.join(split or ['test'])} to {out_dir}")


@app.command("validate")
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
    result = validate_dataset(settings, raw=raw, report_path=report, quarantine_dir=quarantine)
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


@app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    raw: Annotated[Path | None, typer.Option(help="Image folder (default data.raw).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default data.prepared).")] = None,
    overrides: Overrides = None,
) -> None:
    """Split a valid dataset into train/val/test: manifest.parquet and classes.json."""
    from data.prepare import SPLITS, prepare_dataset

    settings = settings_for(ctx, overrides)
    prepared = prepare_dataset(settings, raw=raw, out=out_dir)
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


@app.command("diff")
def data_diff(
    ctx: typer.Context,
    rev_a: Annotated[str, typer.Argument(help="Git revision of the .dvc file to compare from.")] = "HEAD",
    rev_b: Annotated[str | None, typer.Argument(help="Git revision to compare to (default: the working tree).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    overrides: Overrides = None,
) -> None:
    """Images added, removed and relabelled between two versions of data/raw.dvc, per class."""
    from data.diff import diff_data

    settings = settings_for(ctx, overrides)
    raw = settings.path(settings.data.raw)
    try:
        target = raw.resolve().relative_to(settings.root.resolve()).as_posix()
    except ValueError:
        fail(f"data.raw ({raw}) is not inside the project {settings.root}")
    result = diff_data(settings.root, rev_a, rev_b, target)
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


@app.command("audit")
def data_audit(
    ctx: typer.Context,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder (default audit.report_dir).")] = None,
    folds: Annotated[int | None, typer.Option(help="k of the k-fold (default audit.folds).")] = None,
    top: Annotated[int | None, typer.Option(help="Suspects shown, for labels.csv (default audit.top).")] = None,
    overrides: Overrides = None,
) -> None:
    """Find likely mislabelled, outlying and near-duplicate images (k-fold out-of-sample predictions, cleanlab)."""
    from training.audit import audit

    extra = [f"audit.{k}={v}" for k, v in (("folds", folds), ("top", top)) if v is not None]
    settings = settings_for(ctx, [*(overrides or []), *extra])
    report = audit(settings, out=out_dir)
    _print_audit(report)


def _print_audit(report) -> None:
    s = report.summary
    table = Table(title=f"top {s['top']} suspects of {s['n_images']} images", title_justify="left")
    for column in ("rank", "image", "given", "predicted", "label score", "issue"):
        table.add_column(column, justify="right" if column in ("rank", "label score") else "left", overflow="fold")
    for r in report.top.itertuples(index=False):
        table.add_row(str(r.rank), escape(r.path), escape(r.given_label), escape(r.predicted_label),
                      f"{r.label_score:.3f}", r.issue or "-")  # fmt: skip
    out.print(table)
    counts = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in s["issues"].items())
    accuracy = s["out_of_sample_accuracy"]
    out.print(f"flagged {s['flagged']} of {s['n_images']} images ({counts}); {s['folds']} folds, "
              f"out-of-sample accuracy {accuracy:.3f}, {s['seconds']:.0f} s", soft_wrap=True)  # fmt: skip
    folder = report.folder
    out.print(f"wrote {folder}/audit.csv, suspects.png, audit.json and labels.csv: fix the `label` column where it "
              f"is wrong, then `lensops label import {folder / 'labels.csv'}`", soft_wrap=True)  # fmt: skip
