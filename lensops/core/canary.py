"""The canary's state in the registry: the `canary` alias, its fraction, and every decision, on the version.

`lensops canary start VERSION --fraction F` points the alias at the version and tags it with the
fraction; serving follows the alias (its `Canary` deployment) and answers that share of requests
with the candidate. `stop` (by hand, or by serving when the candidate does worse than the
champion) removes the alias and records the decision on the version; `promote` promotes it and
records that. The alias moves only through these functions, so the version's tags always tell
what happened to its canary and why.
"""

from __future__ import annotations

from typing import Any

from . import tags as T
from .errors import UsageError
from .registry import CHAMPION, Registry, now, who

CANARY = "canary"
FRACTION = T.alias_tag(CANARY, "fraction")  # on the version: the share of requests it answers
DECISION = T.alias_tag(CANARY, "decision")  # stopped | stopped-automatically | promoted
DECIDED_AT, DECIDED_BY, WHY = (T.alias_tag(CANARY, f) for f in ("decided_at", "decided_by", "why"))


def start(registry: Registry, ref: str, fraction: float) -> str:
    """Point `canary` at the version `ref` names, answering `fraction` of requests; returns the version."""
    if not 0 < fraction <= 1:
        raise UsageError(f"--fraction {fraction:g}: give a share of requests above 0 and at most 1")
    version = registry.resolve(ref)
    aliases = registry.aliases()
    if aliases.get(CHAMPION) == version:
        raise UsageError(f"v{version} is the champion already; a canary is a candidate")
    running = aliases.get(CANARY)
    if running is not None and running != version:
        raise UsageError(f"v{running} is the canary now; `lensops canary stop` it first")
    registry.set_alias(CANARY, version, reason=f"canary at {fraction:g}", extra={"fraction": f"{fraction:g}"})
    registry.tag_version(version, {DECISION: "", DECIDED_AT: "", DECIDED_BY: "", WHY: ""})
    return version


def stop(registry: Registry, *, reason: str, automatic: bool = False, version: str | None = None) -> str | None:
    """Remove `canary` (only if it still names `version`, when given) and record why; returns the version."""
    current = registry.aliases().get(CANARY)
    if current is None or (version is not None and current != version):
        return None
    registry.delete_alias(CANARY)
    decision = "stopped-automatically" if automatic else "stopped"
    registry.tag_version(current, {DECISION: decision, DECIDED_AT: now(), DECIDED_BY: who(), WHY: reason})
    return current


def record_promotion(registry: Registry, version: str, reason: str) -> None:
    """After the canary's version became champion: the alias goes, the decision stays on the version."""
    if registry.aliases().get(CANARY) == version:
        registry.delete_alias(CANARY)
    registry.tag_version(version, {DECISION: "promoted", DECIDED_AT: now(), DECIDED_BY: who(), WHY: reason})


def status(registry: Registry) -> dict[str, Any]:
    """The running canary (version, fraction, who started it, when), or the last decision recorded."""
    aliases = registry.aliases()
    version = aliases.get(CANARY)
    if version is None:
        return {"running": False, "champion": aliases.get(CHAMPION)}
    with registry.open(version) as handle:
        tags = handle.tags
    return {
        "running": True,
        "version": version,
        "champion": aliases.get(CHAMPION),
        "fraction": float(tags.get(FRACTION, "0") or 0),
        "started_by": tags.get(T.alias_tag(CANARY, "set_by"), ""),
        "started_at": tags.get(T.alias_tag(CANARY, "set_at"), ""),
    }


def decision(registry: Registry, version: str) -> dict[str, str]:
    """What was decided about a version's canary ({} if it never ran one)."""
    with registry.open(version) as handle:
        tags = handle.tags
    fields = {"decision": DECISION, "at": DECIDED_AT, "by": DECIDED_BY, "why": WHY}
    return {name: tags.get(tag, "") for name, tag in fields.items()}
