"""`lensops canary ...`: a candidate answers a share of production requests before it is promoted."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import LensopsGroup, Overrides, out, settings_for

app = typer.Typer(
    no_args_is_help=True, cls=LensopsGroup, help="Canary: a candidate answers a share of requests; stop or promote it."
)


def _registry(ctx: typer.Context, overrides):
    from lensops.core.registry import Registry

    return Registry.of(settings_for(ctx, overrides))


@app.command("start")
def canary_start(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version or alias of the candidate.")],
    fraction: Annotated[float, typer.Option(help="Share of requests it answers, above 0 and at most 1.")] = 0.05,
    overrides: Overrides = None,
) -> None:
    """Point the `canary` alias at VERSION: serving answers FRACTION of requests with it (a running canary's
    fraction can be changed by starting it again)."""
    from lensops.core import canary

    started = canary.start(_registry(ctx, overrides), version, fraction)
    out.print(f"canary: v{started} answers {fraction:.1%} of requests (clients with a key stick to one version)")


@app.command("status")
def canary_status(ctx: typer.Context, overrides: Overrides = None) -> None:
    """The running canary (version, fraction, who started it), or that there is none."""
    from lensops.core import canary

    state = canary.status(_registry(ctx, overrides))
    if not state["running"]:
        out.print(f"no canary running; champion v{state['champion']}")
        return
    out.print(
        f"canary v{state['version']} answers {state['fraction']:.1%} of requests (champion v{state['champion']}); "
        f"started by {state['started_by']} at {state['started_at']}"
    )


@app.command("stop")
def canary_stop(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "stopped by hand",
    overrides: Overrides = None,
) -> None:
    """Stop the canary: every request goes to the champion again; the decision is recorded on the version."""
    from lensops.core import canary

    stopped = canary.stop(_registry(ctx, overrides), reason=reason)
    out.print(f"canary v{stopped} stopped: {reason}" if stopped else "no canary running")


@app.command("promote")
def canary_promote(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why (recorded on the version).")] = None,
    force: Annotated[bool, typer.Option(help="Promote without a passing review (needs --reason).")] = False,
    overrides: Overrides = None,
) -> None:
    """Promote the canary's version to champion (its review must have passed, as for `lensops promote`)."""
    from lensops.core import canary
    from lensops.core.errors import UsageError
    from lensops.core.registry import Registry
    from training.promotion import promote

    settings = settings_for(ctx, overrides)
    registry = Registry.of(settings)
    state = canary.status(registry)
    if not state["running"]:
        raise UsageError("no canary running: `lensops canary start VERSION` first, or `lensops promote VERSION`")
    move = promote(settings, state["version"], reason=reason, force=force)
    canary.record_promotion(registry, state["version"], move.reason)
    out.print(f"v{move.champion} is champion (v{move.previous} is previous); the canary is over: {move.reason}")
