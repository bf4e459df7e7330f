"""cleanlab's checks on the audit's out-of-sample predictions and embeddings, and the ranking.

- `label`: `cleanlab.filter.find_label_issues` (confident learning: the image is off the diagonal
  of the confident joint) flags; `cleanlab.rank.get_label_quality_scores` scores (self-confidence:
  the out-of-sample probability of the given label). Both on the k-fold probabilities.
- `outlier`: `cleanlab.outlier.OutOfDistribution` on the embeddings, fitted on a fold model's
  training images, scores its held-out images by their mean distance to the `audit.neighbours`
  nearest, over the held-out images' median. Flagged beyond Q3 + (1/0.37 - 1) IQR of all images'
  log distances (Datalab's rule for features, on a log scale).
- `near_duplicate`: the nearest other image in the fold model's feature space (cleanlab's kNN,
  cosine), its distance over the median nearest-neighbour distance there. Flagged under 0.13
  (Datalab's rule); the image it is near is flagged too.

Each image's embedding is compared only in the space of the fold model that never trained on it,
so every score is out of sample. Datalab applies the same rules, but needs Hugging Face
`datasets` installed; the building blocks above need only cleanlab itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LABEL, OUTLIER, NEAR_DUPLICATE = "label", "outlier", "near_duplicate"
ISSUES = (LABEL, OUTLIER, NEAR_DUPLICATE)
OUTLIER_THRESHOLD = 0.37037  # cleanlab Datalab's OutlierIssueManager default for features
NEAR_DUPLICATE_THRESHOLD = 0.13  # cleanlab Datalab's NearDuplicateIssueManager default


def find_issues(
    labels: np.ndarray, probabilities: np.ndarray, embeddings: list[np.ndarray], folds: np.ndarray, *, neighbours: int
) -> pd.DataFrame:
    """One row per image: each issue's score (lower is worse, 0-1) and flag, and its nearest image."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(labels)
    outlier_distance, near_distance = np.zeros(n), np.full(n, np.inf)
    near_of = np.full(n, -1, dtype=np.int64)
    for fold, space in enumerate(embeddings):
        held = np.flatnonzero(folds == fold)
        outlier_distance[held] = _outlier_distances(space[folds != fold], space[held], neighbours)
        near_distance[held], near_of[held] = _nearest(space, held)
    is_near = near_distance < NEAR_DUPLICATE_THRESHOLD
    for i in np.flatnonzero(is_near):  # near is mutual: the image it is near is a near duplicate too
        j = near_of[i]
        if not is_near[j]:
            is_near[j], near_of[j], near_distance[j] = True, i, near_distance[i]
    return pd.DataFrame(
        {
            "label_score": get_label_quality_scores(labels, probabilities),
            "is_label_issue": find_label_issues(labels, probabilities, n_jobs=1),
            "outlier_score": np.exp(-outlier_distance),  # cleanlab's transform: 1 typical, towards 0 outlying
            "is_outlier_issue": _beyond_iqr(outlier_distance, OUTLIER_THRESHOLD),
            "near_duplicate_score": 1 - np.exp(-near_distance),
            "is_near_duplicate_issue": is_near,
            "near_duplicate_of": np.where(is_near, near_of, -1),
        }
    )


def _outlier_distances(train: np.ndarray, held_out: np.ndarray, neighbours: int) -> np.ndarray:
    """Held-out images' mean distance to their nearest training images, over the held-out images' median.

    cleanlab scales by the training images' own median distance; but a model packs the images it
    trained on tightly, so held-out images would all look far. Their own median is the scale of
    an unseen, ordinary image in this fold's space, and it makes the folds comparable.
    """
    from cleanlab.outlier import OutOfDistribution

    ood = OutOfDistribution(params={"k": min(neighbours, len(train) - 1)})
    ood.fit(features=train, verbose=False)
    scores = ood.score(features=held_out)  # exp(-distance / training median), cleanlab's default t=1
    distances = -np.log(np.clip(scores, 1e-300, 1.0))
    return distances / max(float(np.median(distances)), 1e-12)


def _nearest(space: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance over the median nearest-neighbour distance, index) of each held-out image's nearest other image."""
    from cleanlab.internal.neighbor.knn_graph import features_to_knn

    knn = features_to_knn(space, n_neighbors=1)
    distances, indices = knn.kneighbors()  # without a query: each image's nearest other image
    median = max(float(np.median(distances[:, 0])), 1e-12)
    return distances[held, 0] / median, indices[held, 0]


def _beyond_iqr(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Datalab's rule, Q3 + (1/threshold - 1) IQR, on the logarithm of the distances: they span orders
    of magnitude (a model packs its classes tightly), and on the distances themselves the rule flags
    the whole long tail (154 of the 1,797 digits against 24)."""
    spread = np.log(np.maximum(distances, 1e-12))
    q1, q3 = np.percentile(spread, [25, 75])
    return spread > q3 + (1 / threshold - 1) * (q3 - q1)


def rank_suspects(
    manifest: pd.DataFrame, classes: list[str], probabilities: np.ndarray, issues: pd.DataFrame
) -> pd.DataFrame:
    """Every image, most suspect of a wrong label first: cleanlab's label issues, then the rest, each by
    label score. Outliers and near duplicates are marked in `issue` wherever their label puts them: the
    ranking feeds the labelling review, and a typical image with a clear label needs no new one."""
    predicted = probabilities.argmax(axis=1)
    flags = issues[[f"is_{name}_issue" for name in ISSUES]].to_numpy()
    table = pd.DataFrame(
        {
            "path": manifest["path"].to_numpy(),
            "sha256": manifest["sha256"].to_numpy(),
            "split": manifest["split"].to_numpy(),
            "given_label": manifest["label"].astype(str).to_numpy(),
            "predicted_label": [classes[i] for i in predicted],
            "predicted_probability": probabilities[np.arange(len(predicted)), predicted],
            "label_score": issues["label_score"].to_numpy(),
            "issue": ["+".join(n for n, f in zip(ISSUES, row, strict=True) if f) for row in flags],
            "outlier_score": issues["outlier_score"].to_numpy(),
            "near_duplicate_score": issues["near_duplicate_score"].to_numpy(),
            "near_duplicate_of": [manifest["path"].iloc[j] if j >= 0 else "" for j in issues["near_duplicate_of"]],
        }
    )
    keys = (table["path"].to_numpy(), table["label_score"].to_numpy(), ~issues["is_label_issue"].to_numpy())
    order = np.lexsort(keys)
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
