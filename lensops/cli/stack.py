"""`lensops stack up|down|status`: PostgreSQL, an object store and an MLflow server on this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import err, out

app = typer.Typer(no_args_is_help=True, help="A team's services on this machine: PostgreSQL, object storage, MLflow.")

Folder = Annotated[
    Path | None,
    typer.Option("--dir", envvar="LENSOPS_STACK_DIR", help="The stack's folder (default .lensops/stack here)."),
]


def _stack(folder: Path | None):
    from lensops.stack import Stack, default_dir

    return Stack(folder or default_dir(Path.cwd()), log=lambda line: err.print(escape(line), highlight=False))


@app.command("up")
def up(folder: Folder = None) -> None:
    """Start the stack (or find it running) and print the variables to export.

    Standard output is only the `export` lines, so `eval "$(lensops stack up)"` sets them in a
    shell; they are also in `stack.env` in the stack's folder.
    """
    stack = _stack(folder)
    env = stack.up()
    _print_services(stack.status(), to=err)
    err.print(f"to use it: [bold]source {escape(os.path.relpath(stack.env_file))}[/] (or eval this command's output)")
    for key, value in env.items():
        out.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@app.command("down")
def down(folder: Folder = None) -> None:
    """Stop what `up` started in this folder, and nothing else. Runs, versions and objects are kept."""
    stack = _stack(folder)
    if not stack.down():
        err.print(f"nothing of the stack in {escape(str(stack.dir))} was running")


@app.command("status")
def status(
    folder: Folder = None,
    as_json: Annotated[bool, typer.Option("--json", help="The services as JSON.")] = False,
) -> None:
    """Each service, its address and whether it runs. Exit 0 when all run, 1 otherwise."""
    stack = _stack(folder)
    services = stack.status()
    if as_json:
        shown = {name: {k: s[k] for k in ("pid", "url", "log", "running")} for name, s in services.items()}
        out.print_json(json.dumps({"dir": str(stack.dir), "running": stack.running(), "services": shown}))
    elif services:
        _print_services(services, to=out)
    else:
        out.print(f"no stack is running from {escape(str(stack.dir))}; start one with `lensops stack up`")
    raise typer.Exit(0 if stack.running() else 1)


def _print_services(services: dict, to) -> None:
    table = Table(title="lensops stack", title_justify="left")
    for column in ("service", "address", "pid", "state", "log"):
        table.add_column(column)
    for name, s in services.items():
        state = "[green]running[/]" if s["running"] else "[red]stopped[/]"
        table.add_row(name, s["url"], str(s["pid"]), state, escape(s["log"]))
    to.print(table)
