"""What every command shares: the consoles, settings with `-S` overrides, and the one error mapping."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lensops.core.errors import LensopsError
from lensops.core.settings import Settings, load_settings

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


class LensopsGroup(TyperGroup):
    """The command group that maps every lensops error to its message and exit code, in one place.

    Stages raise subclasses of `lensops.core.errors.LensopsError`, each carrying its exit code
    (2 usage, 1 a failed check or run); commands stay thin and never catch them themselves.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LensopsError as e:
            fail(e.describe(), e.exit_code)


def settings_for(ctx: typer.Context, overrides: list[str] | None) -> Settings:
    return load_settings(ctx.obj.get("params") if ctx.obj else None, overrides or [])


def options_of(overrides: list[str] | None) -> list[str]:
    """`-S` overrides as arguments again, for a command that starts another."""
    return [a for o in overrides or [] for a in ("-S", o)]
