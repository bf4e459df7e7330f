"""Drift that explains itself: which predicted classes and which regions of the embedding space moved.

Evidently has no grouped drift for embeddings, so the breakdown is computed here from the same
inputs as the verdict (`monitoring.drift`): the production records, each one's novelty, and the
version's baseline.

- **Per predicted class**: records on each side, the class's share of production against its
  share of the held-out validation images, the share of its records that are novel, and how far
  its embeddings moved (the distance between the class's mean embedding in production and in the
  baseline, in units of the baseline class's own spread). A class is flagged when its novel
  records are significantly more than `drift.novelty_share` of it (a one-sided binomial test at
  `drift.column_threshold`), or when its share of production changed by `drift.cluster_ratio` or
  more, significantly. Flagged classes rank first, then by novel records beyond what held-out
  images would give.
- **Per cluster**: k-means (`drift.clusters`) fitted on the baseline's and production's
  embeddings together, so a region that only production fills gets clusters of its own. A cluster
  is flagged when production's share of it is at least `drift.cluster_ratio` times the
  baseline's, it holds at least `drift.group_min_records` production records, and the excess is
  significant (binomial test, corrected for the number of clusters). Each cluster names its
  dominant predicted labels.

Every test needs `drift.group_min_records` records in the group: a handful never flags anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data.novelty import _normalised
from lensops.core.settings import DriftSettings


def _binomial_p(successes: int, trials: int, p: float, alternative: str = "two-sided") -> float:
    """The binomial test's p-value of `successes` in `trials` at rate `p` (1 when there is nothing to test)."""
    from scipy.stats import binomtest

    if trials == 0:
        return 1.0
    return float(binomtest(int(successes), int(trials), min(max(p, 1e-9), 1 - 1e-9), alternative=alternative).pvalue)


def breakdown(
    baseline: pd.DataFrame, log: pd.DataFrame, novel: np.ndarray, cfg: DriftSettings, *, expected_novel: float
) -> tuple[dict[str, Any], Groups]:
    """The class and cluster breakdown of production records against the baseline, and the groups.

    `novel` holds each log record's verdict (novel or not); `expected_novel` is the share of
    held-out images that novelty calls novel (the rate a class of covered images shows).
    """
    held_out = baseline[baseline["split"] != "train"] if "split" in baseline else baseline
    classes = class_breakdown(held_out, log, novel, cfg, expected_novel=expected_novel)
    ids = fit_clusters(baseline, log, cfg)
    groups = Groups(baseline_clusters=ids[: len(baseline)], log_clusters=ids[len(baseline) :], novel=novel)
    clusters = cluster_breakdown(groups, log, cfg)
    summary = {
        "classes": classes,
        "clusters": clusters,
        "flagged_classes": [c["label"] for c in classes if c["flagged"]],
        "flagged_clusters": [c["cluster"] for c in clusters if c["flagged"]],
    }
    return summary, groups


@dataclass
class Groups:
    """Which cluster each baseline and log record fell in, and which log records are novel."""

    baseline_clusters: np.ndarray
    log_clusters: np.ndarray
    novel: np.ndarray


def class_breakdown(
    held_out: pd.DataFrame, log: pd.DataFrame, novel: np.ndarray, cfg: DriftSettings, *, expected_novel: float
) -> list[dict[str, Any]]:
    """One row per predicted class (either side), flagged ones first."""
    reference = _normalised(np.stack(held_out["embedding"].to_numpy()))
    current = _normalised(np.stack(log["embedding"].to_numpy()))
    base_labels, labels = held_out["predicted"].astype(str).to_numpy(), log["label"].astype(str).to_numpy()
    names = sorted(set(base_labels) | set(labels))
    alpha = cfg.column_threshold / max(len(names), 1)
    rows = []
    for name in names:
        in_base, in_log = base_labels == name, labels == name
        n_base, n_log, n_novel = int(in_base.sum()), int(in_log.sum()), int(novel[in_log].sum())
        base_share, share = n_base / max(len(held_out), 1), n_log / max(len(log), 1)
        moved = _moved(reference[in_base], current[in_log]) if n_base >= 2 and n_log else None
        enough = n_log >= cfg.group_min_records
        novel_p = _binomial_p(n_novel, n_log, cfg.novelty_share, "greater")
        share_p = _binomial_p(n_log, len(log), base_share) if n_base else 0.0
        ratio = share / base_share if base_share else None
        share_changed = ratio is None or ratio >= cfg.cluster_ratio or ratio <= 1 / cfg.cluster_ratio
        expected = base_share * len(log)
        share_flag = share_changed and share_p < alpha and max(n_log, expected) >= cfg.group_min_records
        rows.append(
            {
                "label": name,
                "n_baseline": n_base,
                "n_production": n_log,
                "baseline_share": round(base_share, 4),
                "production_share": round(share, 4),
                "share_ratio": None if ratio is None else round(ratio, 3),
                "n_novel": n_novel,
                "novel_share": round(n_novel / n_log, 4) if n_log else 0.0,
                "excess_novel": round(n_novel - expected_novel * n_log, 2),
                "moved": None if moved is None else round(moved, 3),
                "flagged": bool((enough and novel_p < cfg.column_threshold) or share_flag),
                "why": _why(enough and novel_p < cfg.column_threshold, share_flag),
            }
        )
    return sorted(rows, key=lambda r: (not r["flagged"], -r["excess_novel"], -(r["moved"] or 0.0)))


def _why(novel: bool, share: bool) -> str:
    reasons = (["novel records"] if novel else []) + (["share changed"] if share else [])
    return ", ".join(reasons)


def _moved(reference: np.ndarray, current: np.ndarray) -> float:
    """Distance between the two means, over the reference's root-mean-square distance to its mean."""
    centre = reference.mean(axis=0)
    spread = float(np.sqrt(((reference - centre) ** 2).sum(axis=1).mean()))
    return float(np.linalg.norm(current.mean(axis=0) - centre) / max(spread, 1e-9))


def cluster_breakdown(groups: Groups, log: pd.DataFrame, cfg: DriftSettings) -> list[dict[str, Any]]:
    """Each cluster's share on either side, flagged ones first."""
    base_ids, log_ids = groups.baseline_clusters, groups.log_clusters
    labels = log["label"].astype(str).to_numpy()
    k = int(max(base_ids.max(initial=-1), log_ids.max(initial=-1))) + 1
    alpha = cfg.column_threshold / max(k, 1)
    rows = []
    for cluster in range(k):
        n_base, n_log = int((base_ids == cluster).sum()), int((log_ids == cluster).sum())
        base_share, share = n_base / max(len(base_ids), 1), n_log / max(len(log_ids), 1)
        # A cluster of production only is compared with one baseline record's share (never zero).
        floor = max(base_share, 1 / max(len(base_ids), 1))
        ratio = share / floor
        significant = _binomial_p(n_log, len(log_ids), floor, "greater") < alpha
        dominant = pd.Series(labels[log_ids == cluster]).value_counts().head(3)
        rows.append(
            {
                "cluster": cluster,
                "n_baseline": n_base,
                "n_production": n_log,
                "baseline_share": round(base_share, 4),
                "production_share": round(share, 4),
                "share_ratio": round(ratio, 3),
                "dominant_labels": {str(name): int(count) for name, count in dominant.items()},
                "flagged": bool(ratio >= cfg.cluster_ratio and n_log >= cfg.group_min_records and significant),
            }
        )
    return sorted(rows, key=lambda r: (not r["flagged"], -r["share_ratio"]))


def fit_clusters(baseline: pd.DataFrame, log: pd.DataFrame, cfg: DriftSettings) -> np.ndarray:
    """Cluster ids of the baseline's rows followed by the log's (k-means on normalised embeddings)."""
    from sklearn.cluster import KMeans

    both = np.concatenate([np.stack(baseline["embedding"].to_numpy()), np.stack(log["embedding"].to_numpy())])
    both = _normalised(both)
    k = max(1, min(cfg.clusters, len(both) // 2))
    return KMeans(n_clusters=k, n_init=4, random_state=cfg.seed).fit_predict(both)
