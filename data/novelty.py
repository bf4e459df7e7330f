"""Novelty: is an image from a region of the embedding space the model was trained on?

A version's registered baseline holds the embeddings of its training images (up to
`train.reference_max`) and of its validation images, which it never trained on. Embeddings are
L2-normalised, so the scale of a network's features does not matter. A record is scored against
the training embeddings by one of two methods (`drift.novelty_method`):

- `lof` (the default): scikit-learn's Local Outlier Factor in novelty mode, the density around
  the record relative to the density around its `k` nearest training embeddings. About 1 inside
  what was learnt, however sparsely; large only away from it.
- `knn`: the mean distance to the `k` nearest training embeddings.

Why LOF: after a retrain on a few hundred labelled production images, the newly learnt region
holds far fewer training images than the original data, so its images lie further from their
neighbours than held-out images of the dense original region. A plain distance calls a quarter
of that covered traffic novel (`benchmarks/drift_settles.py`); a density-relative score does not,
and an image far from everything still scores high.

The validation images show what covered but unseen images score: the `quantile` of their scores
is the threshold, and a record's novelty is its score divided by that threshold. Above 1, the
record is novel: less like the training data than 99 % (by default) of held-out images of the
training distribution.

That makes drift one-sided: production that is a subset of what the model was trained on (only
clean digits, or only new-scanner digits after training on both) is not novel, however different
its mix; production in regions no training data covers is. Serving uses the same score to decide
which images to capture, and labelling to pick the images worth a person's time.

A baseline registered before training embeddings were kept holds validation embeddings only;
then they serve as both, each compared with the others (leave one out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

METHODS = ("lof", "knn")


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


@dataclass
class NoveltyReference:
    """Scores against a version's training embeddings, scaled by held-out validation images."""

    train: np.ndarray  # L2-normalised training embeddings
    threshold: float
    k: int
    quantile: float
    method: str = "lof"

    def __post_init__(self) -> None:
        from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

        if self.method not in METHODS:
            raise ValueError(f"novelty method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "lof":
            self._index = LocalOutlierFactor(n_neighbors=min(self.k, len(self.train) - 1), novelty=True)
        else:
            self._index = NearestNeighbors(n_neighbors=min(self.k + 1, len(self.train)))
        self._index.fit(self.train)

    @classmethod
    def from_settings(cls, baseline: pd.DataFrame, drift) -> NoveltyReference:
        """With `drift.novelty_method`, `novelty_k` and `novelty_quantile` (the `drift` settings section)."""
        return cls.from_baseline(
            baseline, k=drift.novelty_k, quantile=drift.novelty_quantile, method=drift.novelty_method
        )

    @classmethod
    def from_baseline(
        cls, baseline: pd.DataFrame, *, k: int = 20, quantile: float = 0.99, method: str = "lof"
    ) -> NoveltyReference:
        embeddings = np.stack(baseline["embedding"].to_numpy())
        split = baseline["split"].to_numpy() if "split" in baseline else np.full(len(baseline), "val")
        train, held_out = embeddings[split == "train"], embeddings[split != "train"]
        leave_one_out = len(train) == 0  # an older baseline: validation embeddings only
        train = held_out if leave_one_out else train
        if len(train) < 3:
            raise ValueError(f"a novelty reference needs at least 3 embeddings; the baseline has {len(train)}")
        k = max(1, min(k, len(train) - 1 - int(leave_one_out)))
        reference = cls(_normalised(train), 1.0, k, quantile, method)
        reference.threshold = float(np.quantile(reference.scores(held_out, leave_one_out=leave_one_out), quantile))
        return reference

    def scores(self, embeddings: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
        """Each embedding's raw score (LOF, or mean k-NN distance); for the reference's own points, leave one out."""
        if len(embeddings) == 0:
            return np.zeros(0)
        if self.method == "lof":
            if leave_one_out:  # the training points' own LOF, each computed without itself
                return -self._index.negative_outlier_factor_
            return -self._index.score_samples(_normalised(embeddings))
        found, _ = self._index.kneighbors(_normalised(embeddings), n_neighbors=self.k + int(leave_one_out))
        return found[:, int(leave_one_out) :].mean(axis=1)

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """Score over the threshold: above 1 is less like the training data than `quantile` of held-out images."""
        return self.scores(embeddings) / max(self.threshold, 1e-12)

    def summary(self) -> dict[str, float | str]:
        return {
            "method": self.method,
            "k": self.k,
            "quantile": self.quantile,
            "threshold_score": self.threshold,
            "n_train": len(self.train),
        }


def stat_ranges(baseline: pd.DataFrame, columns=("brightness", "contrast", "width", "height"), tail: float = 0.005):
    """{column: (low, high)}: the range holding all but `tail` of the baseline on each side."""
    return {
        c: (float(baseline[c].quantile(tail)), float(baseline[c].quantile(1 - tail)))
        for c in columns
        if c in baseline and len(baseline)
    }


def outside(stats: dict[str, float], ranges: dict[str, tuple[float, float]]) -> bool:
    """Whether any image statistic falls outside its baseline range."""
    return any(c in stats and not low <= stats[c] <= high for c, (low, high) in ranges.items())
