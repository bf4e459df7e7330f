"""The `lensops` command line. Each command loads settings, calls one stage function, shows the result.

The command line is the front door: it stands above the stages and is the only part of `lensops`
that calls them. Stage packages are imported inside the commands, so `lensops --help` stays fast.
Errors are mapped to their exit codes in one place (`common.LensopsGroup`): 0 success, 1 the
data or a model failed a check (or a run failed, or a move was refused), 2 a usage or settings
error; `review`, `drift` and `retrain` add their own codes for their outcomes (see the README).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from . import canary, data, label, lineage, models, operate, stack
from .common import LensopsGroup, Overrides, out, settings_for

app = typer.Typer(
    no_args_is_help=True, add_completion=False, cls=LensopsGroup, help="lensops: the lifecycle of image models."
)
app.add_typer(data.app, name="data")
app.add_typer(label.app, name="label")
app.add_typer(stack.app, name="stack")
app.add_typer(canary.app, name="canary")
models.register(app)
lineage.register(app)
operate.register(app)


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


if __name__ == "__main__":
    app()
