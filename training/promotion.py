"""Promotion and rollback: moving `champion` only on a passed review, keeping `previous` for rollback.

Every move is recorded on the version it points to (who, when, why, the review verdict) by
`lensops.registry.set_alias`, so the registry itself is the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lensops import registry
from lensops.settings import Settings

from .review import ReviewError


class PromotionRefused(RuntimeError):
    """The move is not allowed (no passing review, stale review, nothing to roll back to)."""


@dataclass
class Move:
    champion: str
    previous: str | None
    reason: str
    forced: bool = False
    changed: bool = True


def _aliases(settings: Settings) -> dict[str, str]:
    import mlflow

    client = registry.client(settings)
    try:
        return {k: str(v) for k, v in client.get_registered_model(settings.registry.model_name).aliases.items()}
    except mlflow.exceptions.MlflowException:
        raise ReviewError(registry.existing_refs(settings)) from None


def _tags(settings: Settings, version: str) -> dict[str, str]:
    import mlflow

    try:
        return dict(registry.client(settings).get_model_version(settings.registry.model_name, version).tags)
    except mlflow.exceptions.MlflowException:
        raise ReviewError(f"unknown version {version!r}: {registry.existing_refs(settings)}") from None


def promote(settings: Settings, version: str | None = None, *, reason: str | None = None, force: bool = False) -> Move:
    aliases = _aliases(settings)
    if force and not (reason and reason.strip()):
        raise ReviewError("--force needs --reason: say why this version skips its review")
    if version is None:
        if registry.CHALLENGER not in aliases:
            raise ReviewError(f"no version given and no @{registry.CHALLENGER}: {registry.existing_refs(settings)}")
        version = aliases[registry.CHALLENGER]
    version = version.removeprefix("v")
    tags = _tags(settings, version)
    champion = aliases.get(registry.CHAMPION)
    if champion == version:  # idempotent: pipelines may promote the same version twice
        return Move(version, aliases.get(registry.PREVIOUS), "already the champion", force, changed=False)
    verdict = tags.get("lensops.review.verdict")
    if not force:
        if verdict is None:
            raise PromotionRefused(
                f"v{version} has not been reviewed; run `lensops review --challenger {version}` first"
            )
        if verdict != "promote":
            failed = tags.get("lensops.review.failed_gates") or "see the review report"
            raise PromotionRefused(
                f"v{version}'s latest review says {verdict!r} (failed gates: {failed}); "
                "fix the model, or --force with --reason"
            )
        reviewed_against = tags.get("lensops.review.champion", "")
        if reviewed_against != (champion or ""):
            against = f"v{reviewed_against}" if reviewed_against else "no champion"
            raise PromotionRefused(
                f"v{version} was reviewed against {against}, but the champion is now v{champion}; review it again"
            )
    why = reason or f"review {verdict} at {tags.get('lensops.review.at', '?')}"
    client = registry.client(settings)
    name = settings.registry.model_name
    if champion:
        registry.set_alias(settings, registry.PREVIOUS, champion, reason=f"replaced by v{version}")
    registry.set_alias(settings, registry.CHAMPION, version, reason=why)
    client.set_model_version_tag(name, version, "lensops.champion.review_verdict", verdict or "none")
    client.set_model_version_tag(name, version, "lensops.champion.forced", str(force).lower())
    return Move(version, champion, why, force)


def rollback(settings: Settings, *, reason: str | None = None) -> Move:
    """`champion` back to `previous`; the demoted version becomes `previous` (a second rollback undoes the first)."""
    aliases = _aliases(settings)
    previous, champion = aliases.get(registry.PREVIOUS), aliases.get(registry.CHAMPION)
    if previous is None:
        raise PromotionRefused(f"nothing to roll back to: no @{registry.PREVIOUS} ({registry.existing_refs(settings)})")
    why = reason or f"rollback from v{champion}"
    registry.set_alias(settings, registry.CHAMPION, previous, reason=why)
    if champion:
        registry.set_alias(settings, registry.PREVIOUS, champion, reason=f"rolled back: {why}")
    registry.client(settings).set_model_version_tag(
        settings.registry.model_name, previous, "lensops.champion.review_verdict", "rollback"
    )
    return Move(previous, champion, why)


def list_models(settings: Settings) -> pd.DataFrame:
    """One row per version: aliases, key metrics, data version, created, review verdict."""
    client = registry.client(settings)
    name = settings.registry.model_name
    aliases = _aliases(settings)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        tags = v.tags
        rows.append(
            {
                "version": int(v.version),
                "aliases": ",".join(sorted(by_version.get(str(v.version), []))),
                "test_accuracy": float(tags["lensops.test_accuracy"]) if "lensops.test_accuracy" in tags else None,
                "data": tags.get("lensops.data_hash", "")[:12],
                "created": pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
                "review": tags.get("lensops.review.verdict", ""),
                "run_id": tags.get("lensops.run_id", ""),
            }
        )
    return pd.DataFrame(
        rows, columns=["version", "aliases", "test_accuracy", "data", "created", "review", "run_id"]
    ).sort_values("version", ascending=False, ignore_index=True)
