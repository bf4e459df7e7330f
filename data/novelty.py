"""Novelty: is an image from a region of the embedding space the model was trained on?

A version's registered baseline holds the embeddings of its training images (up to
`train.reference_max`) and of its validation images, which it never trained on. An embedding's
distance to the training data is the mean distance to its `k` nearest training embeddings
(L2-normalised, so the scale of a network's features does not matter). The validation images
show how far covered but unseen images lie: the `quantile` of their distances is the threshold,
and a record's novelty is its distance divided by that threshold. Above 1, the record is novel:
further from everything the model learnt than 99 % (by default) of held-out images of the
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


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


@dataclass
class NoveltyReference:
    """Nearest-neighbour distances to a version's training embeddings, scaled by held-out validation images."""

    train: np.ndarray  # L2-normalised training embeddings
    threshold: float
    k: int
    quantile: float

    def __post_init__(self) -> None:
        from sklearn.neighbors import NearestNeighbors

        self._index = NearestNeighbors(n_neighbors=min(self.k + 1, len(self.train))).fit(self.train)

    @classmethod
    def from_baseline(cls, baseline: pd.DataFrame, *, k: int = 5, quantile: float = 0.99) -> NoveltyReference:
        embeddings = np.stack(baseline["embedding"].to_numpy())
        split = baseline["split"].to_numpy() if "split" in baseline else np.full(len(baseline), "val")
        train, held_out = embeddings[split == "train"], embeddings[split != "train"]
        leave_one_out = len(train) == 0  # an older baseline: validation embeddings only
        train = held_out if leave_one_out else train
        reference = cls(_normalised(train), 1.0, max(1, min(k, len(train) - int(leave_one_out))), quantile)
        reference.threshold = float(np.quantile(reference.distances(held_out, leave_one_out=leave_one_out), quantile))
        return reference

    def distances(self, embeddings: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
        """Mean distance of each embedding to its k nearest training embeddings (itself left out if asked)."""
        if len(embeddings) == 0:
            return np.zeros(0)
        found, _ = self._index.kneighbors(_normalised(embeddings), n_neighbors=self.k + int(leave_one_out))
        return found[:, int(leave_one_out) :].mean(axis=1)

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """Distance over the threshold: above 1 is further than `quantile` of held-out images."""
        return self.distances(embeddings) / max(self.threshold, 1e-12)

    def summary(self) -> dict[str, float]:
        return {
            "k": self.k,
            "quantile": self.quantile,
            "threshold_distance": self.threshold,
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
