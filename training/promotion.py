"""Promotion and rollback: moving `champion` only on a passed review, keeping `previous` for rollback.

Every move is recorded on the version it points to (who, when, why, the review verdict) by
`Registry.set_alias`, so the registry itself is the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lensops.core import tags as T
from lensops.core.errors import CheckFailed, UsageError
from lensops.core.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
from lensops.core.settings import Settings


class PromotionRefused(CheckFailed):
    """The move is not allowed (no passing review, stale review, nothing to roll back to)."""

    prefix = "refused: "


@dataclass
class Move:
    champion: str
    previous: str | None
    reason: str
    forced: bool = False
    changed: bool = True


def check_review(version: str, tags: dict[str, str], champion: str | None) -> str:
    """The verdict a promotion rests on; PromotionRefused unless the latest review passed against `champion`."""
    verdict = tags.get(T.REVIEW_VERDICT)
    if verdict is None:
        raise PromotionRefused(f"v{version} has not been reviewed; run `lensops review --challenger {version}` first")
    if verdict != "promote":
        failed = tags.get(T.REVIEW_FAILED_GATES) or "see the review report"
        raise PromotionRefused(
            f"v{version}'s latest review says {verdict!r} (failed gates: {failed}); "
            "fix the model, or --force with --reason"
        )
    reviewed_against = tags.get(T.REVIEW_CHAMPION, "")
    if reviewed_against != (champion or ""):
        against = f"v{reviewed_against}" if reviewed_against else "no champion"
        raise PromotionRefused(
            f"v{version} was reviewed against {against}, but the champion is now v{champion}; review it again"
        )
    return verdict


def promote(settings: Settings, version: str | None = None, *, reason: str | None = None, force: bool = False) -> Move:
    registry = Registry.of(settings)
    aliases = repair_aliases(registry)
    if force and not (reason and reason.strip()):
        raise UsageError("--force needs --reason: say why this version skips its review")
    if version is None and CHALLENGER not in aliases:
        raise UsageError(f"no version given and no @{CHALLENGER}: {registry.describe()}")
    handle = registry.open(version or CHALLENGER)
    champion = aliases.get(CHAMPION)
    if champion == handle.version:  # idempotent: pipelines may promote the same version twice
        return Move(handle.version, aliases.get(PREVIOUS), "already the champion", force, changed=False)
    verdict = handle.tags.get(T.REVIEW_VERDICT) if force else check_review(handle.version, handle.tags, champion)
    why = reason or f"review {verdict} at {handle.tags.get(T.REVIEW_AT, '?')}"
    extra = {
        T.PROMOTION_VERDICT: verdict or "none",
        T.PROMOTION_FORCED: str(force).lower(),
        T.PROMOTION_LIVE: handle.tags.get(T.REVIEW_LIVE, ""),
    }
    replaced = f"replaced by v{handle.version}"
    move_aliases(registry, handle.version, champion, reason=why, extra=extra, previous_reason=replaced)
    return Move(handle.version, champion, why, force)


def move_aliases(
    registry: Registry, champion: str, previous: str | None, *, reason: str, extra: dict, previous_reason: str
) -> None:
    """`champion` and `previous` moved so that no reader ever sees both on one version, or neither.

    Three writes: `previous` is removed, `champion` moves, `previous` is set. Between any two a
    reader sees a champion and at most one other alias, never the same version twice (promoting
    the previous version, or rolling back, swaps the two: moving either first would show both on
    one version). The new champion is tagged with the version `previous` must end on before
    anything moves, so a process that dies between two writes leaves a champion, no previous,
    and the tag: `repair_aliases` (run by every promotion and rollback) sets `previous` from it.
    """
    if previous is not None and str(previous) == str(champion):
        raise ValueError(f"v{champion} cannot be both @{CHAMPION} and @{PREVIOUS}")  # a caller's bug, never a state
    registry.tag_version(champion, {T.alias_tag(CHAMPION, T.REPLACED): previous or ""})
    if previous is not None and PREVIOUS in registry.aliases():
        registry.delete_alias(PREVIOUS)
    registry.set_alias(CHAMPION, champion, reason=reason, extra=extra)
    if previous is not None:
        registry.set_alias(PREVIOUS, previous, reason=previous_reason)


def repair_aliases(registry: Registry) -> dict[str, str]:
    """`previous` restored where a move died between its writes; the aliases as they are then."""
    aliases = registry.aliases()
    champion = aliases.get(CHAMPION)
    if champion and PREVIOUS not in aliases:
        with registry.open(champion) as handle:
            replaced = handle.tags.get(T.alias_tag(CHAMPION, T.REPLACED))
        if replaced and replaced != champion:
            registry.set_alias(PREVIOUS, replaced, reason=f"restored: a move to v{champion} stopped half way")
            aliases[PREVIOUS] = replaced
    return aliases


def rollback(settings: Settings, *, reason: str | None = None) -> Move:
    """`champion` back to `previous`; the demoted version becomes `previous` (a second rollback undoes the first)."""
    registry = Registry.of(settings)
    aliases = repair_aliases(registry)
    previous, champion = aliases.get(PREVIOUS), aliases.get(CHAMPION)
    if previous is None:
        raise PromotionRefused(f"nothing to roll back to: no @{PREVIOUS} ({registry.describe()})")
    why = reason or f"rollback from v{champion}"
    extra = {T.PROMOTION_VERDICT: "rollback"}
    move_aliases(registry, previous, champion, reason=why, extra=extra, previous_reason=f"rolled back: {why}")
    return Move(previous, champion, why)


def list_models(settings: Settings) -> pd.DataFrame:
    """One row per version: aliases, key metrics, data version, created, review verdict."""
    rows = [
        {
            "version": int(v.version),
            "aliases": ",".join(v.aliases),
            "test_accuracy": float(v.tags[T.TEST_ACCURACY]) if T.TEST_ACCURACY in v.tags else None,
            "data": v.tags.get(T.DATA_HASH, "")[:12],
            "created": pd.Timestamp(v.created_ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
            "review": v.tags.get(T.REVIEW_VERDICT, ""),
            "run_id": v.run_id or "",
        }
        for v in Registry.of(settings).versions()
    ]
    return pd.DataFrame(rows, columns=["version", "aliases", "test_accuracy", "data", "created", "review", "run_id"])
